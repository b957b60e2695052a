"""The static `lmd` of `make static` (build-static/lmd, or LMD_STATIC_BIN).

These tests build nothing: where the static build is absent they skip.
They check that the file needs no dynamic loader and no shared library,
that it answers --version, and that it serves the default model and
gateways to another lmd, giving the same greedy text as the dynamic build,
and that the root filesystem deploy/Containerfile describes, built in a
folder with the same steps, runs lmd as the image would.
"""
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time

import httpx
import openai
import pytest

from test_server import free_port, server_log, start_server, stop_server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STATIC_BIN = os.environ.get("LMD_STATIC_BIN", os.path.join(ROOT, "build-static", "lmd"))
PROMPT = "The capital of France is"

pytestmark = pytest.mark.skipif(not os.access(STATIC_BIN, os.X_OK),
                                reason="no static build (make static builds build-static/lmd)")


def readelf(*args):
    return subprocess.run(["readelf", "-W", *args, STATIC_BIN], capture_output=True, text=True, check=True,
                          timeout=60).stdout


def test_no_interpreter_and_no_shared_libraries():
    headers = readelf("--program-headers")
    assert "INTERP" not in headers, headers
    assert "DYNAMIC" not in headers, headers  # no dynamic section: nothing to load, nothing needed
    assert "NEEDED" not in readelf("--dynamic")
    # What a person would run, in the words the issue names.
    ldd = subprocess.run(["ldd", STATIC_BIN], capture_output=True, text=True, timeout=60)
    assert "not a dynamic executable" in ldd.stdout + ldd.stderr


def test_version():
    p = subprocess.run([STATIC_BIN, "--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("lmd ") and "kernels:" in p.stdout, p.stdout


def _completion(base, model):
    c = openai.OpenAI(base_url=base + "/v1", api_key="unused", timeout=120, max_retries=0)
    r = c.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0)
    return r.choices[0].text, r.choices[0].finish_reason


def test_serves_the_default_model_as_the_dynamic_build_does(lmd_bin, default_model):
    model = os.path.basename(default_model)[:-len(".gguf")]
    proc, base = start_server(STATIC_BIN, default_model)
    try:
        got = _completion(base, model)
        assert httpx.get(base + "/metrics", timeout=10).status_code == 200
    finally:
        stop_server(proc)
    dproc, dbase = start_server(lmd_bin, default_model)
    try:
        want = _completion(dbase, model)
    finally:
        stop_server(dproc)
    # The same engine code on the same CPU: the same greedy tokens.
    assert got == want and got[0], (got, want)


def test_gateway_to_an_upstream(lmd_bin, default_model):
    model = os.path.basename(default_model)[:-len(".gguf")]
    up, up_base = start_server(lmd_bin, default_model)
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")
    gw = subprocess.Popen([STATIC_BIN, "serve", "--port", str(port), "--upstream", "gemma=" + up_base],
                          stdout=log, stderr=subprocess.STDOUT, text=True)
    gw.log = log
    base = "http://127.0.0.1:%d" % port
    try:
        deadline = time.monotonic() + 60  # a guard against a hung start, not a verdict
        while True:
            assert gw.poll() is None, server_log(gw)
            try:
                if httpx.get(base + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, server_log(gw)
            time.sleep(0.1)
        through = _completion(base, "gemma")
        direct = _completion(up_base, model)
        assert through == direct and through[0], (through, direct)
    finally:
        stop_server(gw)
        stop_server(up)


CONTAINERFILE = os.path.join(ROOT, "deploy", "Containerfile")


def parse_containerfile(path):
    """The final stage of a Containerfile as a list of (INSTRUCTION, args
    string), comments dropped and continuation lines joined."""
    stages, logical = [], ""
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not logical and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.endswith("\\"):
                logical += line[:-1] + " "
                continue
            logical += line
            word, _, rest = logical.strip().partition(" ")
            logical = ""
            if word.upper() == "FROM":
                stages.append([])
            assert stages, "%s: %s before FROM" % (path, word)
            stages[-1].append((word.upper(), rest.strip()))
    return stages[-1]


def _exec_form(arg):
    v = json.loads(arg)
    assert isinstance(v, list) and all(isinstance(x, str) for x in v), arg
    return v


class Rootfs:
    """The root filesystem of the Containerfile's final stage, built in
    `root` with the same steps: each COPY from the build context (the
    repository root; build-static/lmd is the binary under test) or from
    an earlier Debian stage (whose files are the same on this Debian
    host). The other instructions are kept to run the entry point as the
    image would: its environment, user, command and exposed port."""

    def __init__(self, path, root):
        self.root, self.env, self.user, self.volumes, self.expose = root, {}, None, [], []
        self.entrypoint = self.cmd = None
        steps = parse_containerfile(path)
        assert steps[0] == ("FROM", "scratch"), steps[0]
        for word, arg in steps[1:]:
            if word == "COPY":
                self._copy(shlex.split(arg))
            elif word == "ENV":
                for kv in shlex.split(arg):
                    k, eq, v = kv.partition("=")
                    assert eq, "ENV %s: only the KEY=VALUE form is built here" % arg
                    self.env[k] = v
            elif word == "USER":
                assert all(x.isdigit() for x in arg.split(":")), "USER %s: a scratch image has no user names" % arg
                self.user = arg
            elif word == "VOLUME":
                self.volumes += _exec_form(arg)
            elif word == "EXPOSE":
                self.expose += [int(p.split("/")[0]) for p in arg.split()]
            elif word == "ENTRYPOINT":
                self.entrypoint = _exec_form(arg)
            elif word == "CMD":
                self.cmd = _exec_form(arg)
            else:
                pytest.fail("deploy/Containerfile: %s is not built by this check; teach Rootfs about it" % word)
        for v in self.volumes:
            os.makedirs(self.inside(v), exist_ok=True)

    def inside(self, p):
        return os.path.join(self.root, p.lstrip("/"))

    def _copy(self, args):
        stage = None
        while args[0].startswith("--"):
            flag = args.pop(0)
            assert flag.startswith("--from="), "COPY %s: not built by this check" % flag
            stage = flag[len("--from="):]
        assert len(args) == 2, "COPY with one source and one destination: %r" % args
        src, dst = args
        if stage:
            host = src  # a Debian stage: the same file as this Debian host's
        elif src == "build-static/lmd":
            host = STATIC_BIN
        else:
            host = os.path.join(ROOT, src)
        assert os.path.isfile(host), "COPY %s: %s is missing here" % (src, host)
        assert not dst.endswith("/"), "COPY to a folder: give the file's name (%s)" % dst
        os.makedirs(os.path.dirname(self.inside(dst)), exist_ok=True)
        shutil.copy2(host, self.inside(dst))

    def argv(self, cmd):
        """How to run `cmd` (the exec form) in the root filesystem: chroot
        as USER where this process may chroot; otherwise the binary itself
        with the root as working folder and the absolute paths among the
        arguments made relative to it."""
        if self._can_chroot():
            return [shutil.which("chroot"), "--userspec=" + (self.user or "0:0"), self.root, *cmd], None
        rel = [("./" + a.lstrip("/")) if a.startswith("/") else a for a in cmd]
        return [self.inside(cmd[0]), *rel[1:]], self.root

    def _can_chroot(self):
        if not hasattr(self, "_chroot"):
            chroot = shutil.which("chroot")
            self._chroot = chroot and subprocess.run(
                [chroot, "--userspec=" + (self.user or "0:0"), self.root, *self.entrypoint, "--version"],
                capture_output=True, env=self.env, timeout=60).returncode == 0
        return self._chroot

    def popen(self, args, **kw):
        argv, cwd = self.argv(self.entrypoint + args)
        return subprocess.Popen(argv, cwd=cwd, env=dict(self.env), **kw)  # only the image's environment

    def run(self, args, **kw):
        argv, cwd = self.argv(self.entrypoint + args)
        return subprocess.run(argv, cwd=cwd, env=dict(self.env), **kw)


def _flag(args, name):
    return args[args.index(name) + 1]


def test_containerfile_rootfs_runs_lmd(default_model, tmp_path):
    fs = Rootfs(CONTAINERFILE, str(tmp_path / "rootfs"))
    assert fs.entrypoint and fs.cmd and fs.user and not fs.user.startswith("0"), (fs.entrypoint, fs.user)
    # The exposed port is the one the default command listens on.
    assert fs.expose == [int(_flag(fs.cmd, "--port"))], (fs.expose, fs.cmd)
    # Every file in the image is readable by its user; the CA bundle is where
    # SSL_CERT_FILE says.
    assert os.path.isfile(fs.inside(fs.env["SSL_CERT_FILE"]))
    for d, _, files in os.walk(fs.root):
        for f in files:
            assert os.stat(os.path.join(d, f)).st_mode & 0o004, os.path.join(d, f)

    p = fs.run(["--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("lmd "), p.stderr

    # The default command, on the default model mounted where it expects
    # one (a hard link or a copy standing in for the volume), on a free port.
    model = _flag(fs.cmd, "-m").split("=")[-1]
    assert any(model.startswith(v.rstrip("/") + "/") for v in fs.volumes), (model, fs.volumes)
    try:
        os.link(os.path.realpath(default_model), fs.inside(model))
    except OSError:
        shutil.copyfile(default_model, fs.inside(model))
    port = free_port()
    args = list(fs.cmd)
    args[args.index("--port") + 1] = str(port)
    log = tempfile.TemporaryFile(mode="w+")
    proc = fs.popen(args + ["-t", "1"], stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log = log
    base = "http://127.0.0.1:%d" % port
    try:
        deadline = time.monotonic() + 60  # a guard against a hung start, not a verdict
        while True:
            assert proc.poll() is None, server_log(proc)
            try:
                if httpx.get(base + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, server_log(proc)
            time.sleep(0.1)
        c = openai.OpenAI(base_url=base + "/v1", api_key="unused", timeout=120, max_retries=0)
        r = c.completions.create(model=os.path.basename(model)[:-len(".gguf")], prompt=PROMPT, max_tokens=4,
                                 temperature=0)
        assert r.usage.completion_tokens == 4 and r.choices[0].text, r
        assert httpx.get(base + "/metrics", timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, server_log(proc)
    finally:
        stop_server(proc)
