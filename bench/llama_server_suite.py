#!/usr/bin/env python3
"""Runs llama.cpp's own server test suite against lmd and against llama-server.

The suite is `tools/server/tests` of the llama.cpp source that the
`llama-cpp-python` sdist carries. Its `DEBUG_EXTERNAL=1` mode makes every
test fixture skip starting a server and send its requests to whatever answers
on 127.0.0.1:$PORT, so the same tests can be pointed at any server. Both
servers run the same GGUF with comparable settings (threads, parallel
sequences, context per sequence); the fixtures' own server options (model,
n_predict, slots, embeddings, ...) do not apply in that mode, so the tests
see the model the script started.

Steps: fetch the sdist with pip into build/llama-server-suite/ when absent and
copy the suite out of it; start each server on a free loopback port; run
pytest on the suite with a JUnit XML per server; print a table of every test
id with both outcomes and the class of each test that passes on llama-server
and fails on lmd (CLASSES below, keyed by test-id prefix).

    .venv/bin/python bench/llama_server_suite.py            # both servers
    .venv/bin/python bench/llama_server_suite.py --table    # table from the last run

llama-server comes from `make deps-bench` (llama-cpp-python built with
llama.cpp's tools, ../shared/bench/PEERS.md) or --llama-server PATH.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "build" / "llama-server-suite"
LCP_VERSION = "0.3.36"
SUITE_IN_SDIST = "vendor/llama.cpp/tools/server/tests"
SERVERS = ("llama-server", "lmd")

# Modules the suite imports that the project's .venv may lack, with a
# stand-in good enough for a run against an external server: one pytest
# process (no workers), so the cross-worker file lock has nothing to
# serialize; `wget.download` fetches a URL with urllib. Real packages win
# when .venv has them.
SHIMS = {
    "filelock": '''
class FileLock:
    """One pytest process: nothing to serialize against."""

    def __init__(self, path, *args, **kwargs):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
''',
    "wget": '''
import urllib.request


def download(url, out=None):
    """Fetches url into out (a file name), as wget.download does."""
    path = out or url.rsplit("/", 1)[-1]
    urllib.request.urlretrieve(url, path)
    return path
''',
}

# A per-test time limit, so that one request the server never answers (or a
# generation that runs to the end of the context) fails that test and not the
# whole run. SIGALRM interrupts the blocking socket read in the test.
TIMEOUT_PLUGIN = '''
import os
import signal

import pytest

_LIMIT = int(os.environ.get("LLSUITE_TEST_TIMEOUT", "60"))


class TestTimeout(Exception):
    pass


def _expired(signum, frame):
    raise TestTimeout(f"test ran past {_LIMIT} s")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    old = signal.signal(signal.SIGALRM, _expired)
    signal.alarm(_LIMIT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
'''

# Why a test that passes on llama-server fails on lmd, by test-id prefix (the
# longest matching prefix wins). Classes: (a) a llama.cpp-only extension lmd
# does not claim; (b) an artefact of model names, routes, ids or timing, not
# of the feature under test; (c) a real gap in an OpenAI-compatible feature
# lmd claims. Reasons are one line each; docs/compatibility.md summarizes.
CLASSES = {
    'unit/test_chat_completion.py::test_chat_completion_with_timings_per_token':
        ('a', 'llama.cpp\'s timings_per_token; lmd\'s first chunk carries content "" as OpenAI\'s does'),
    'unit/test_chat_completion.py::test_chat_completions_token_count':
        ('a', "/chat/completions/input_tokens is llama.cpp's route"),
    'unit/test_chat_completion.py::test_completion_with_json_schema':
        ('a', "top-level json_schema is llama.cpp's spelling, refused (400) by design"),
    'unit/test_chat_completion.py::test_completion_with_response_format[response_format0':
        ('a', "llama.cpp's `schema` inside json_object: lmd refuses the unknown field (400) instead of ignoring it"),
    'unit/test_chat_completion.py::test_completion_with_response_format[response_format1':
        ('a', "llama.cpp's `schema` inside json_object: lmd refuses the unknown field (400) instead of ignoring it"),
    'unit/test_chat_completion.py::test_completion_with_response_format[response_format2':
        ('a', 'json_schema without the `name` OpenAI requires: lmd answers 400 as OpenAI does'),
    'unit/test_chat_completion.py::test_invalid_chat_completion_req[messages7]':
        ('a', 'llama.cpp refuses two assistant turns in a row; OpenAI and lmd accept them'),
    'unit/test_chat_completion.py::test_logit_bias':
        ('b', 'the OpenAI client sends model gpt-3.5-turbo-instruct: 404 model_not_found'),
    'unit/test_chat_completion.py::test_logprobs':
        ('b', 'the OpenAI client sends model gpt-3.5-turbo-instruct: 404 model_not_found'),
    'unit/test_chat_completion.py::test_verbose_debug':
        ('a', "llama.cpp's __verbose debug field"),
    'unit/test_compat_anthropic.py::test_anthropic_':
        ('b', 'model "test": 404 model_not_found (llama-server ignores the name)'),
    'unit/test_compat_anthropic.py::test_anthropic_count_tokens':
        ('a', '/v1/messages/count_tokens is not a route lmd serves (and model "test")'),
    'unit/test_compat_anthropic.py::test_anthropic_empty_messages':
        ('a', 'llama.cpp accepts an empty messages list; Anthropic and lmd answer 400'),
    'unit/test_compat_anthropic.py::test_anthropic_thinking':
        ('a', 'extended thinking is refused (400), as docs/compatibility.md says'),
    'unit/test_compat_anthropic.py::test_anthropic_tool_result_with_image':
        ('b', "an image for a text-only model: lmd 400, the test wants llama-server's 500"),
    'unit/test_compat_anthropic.py::test_anthropic_vision_format_accepted':
        ('b', "an image for a text-only model: lmd 400, the test wants llama-server's 500"),
    'unit/test_compat_oai_responses.py::test_responses_stream_with_llama_telemetry':
        ('a', "llama.cpp's prompt_progress and timings in Responses events"),
    'unit/test_security.py::test_cors_options':
        ('b', 'lmd answers a preflight 204 (the test wants 200) and sends no credentials header'),
    'unit/test_security.py::test_cors_origins_localhost_reflects':
        ('b', "the test wants 200 for a preflight (lmd: 204); the localhost-only policy is llama.cpp's --cors-origins"),
    'unit/test_stream.py::test_stream_resume_and_stop_with_slashed_model_name':
        ('b', 'model ggml-org/tinygemma3-GGUF:Q8_0: 404 model_not_found'),
}


def log(msg):
    print(f"llama_server_suite: {msg}", file=sys.stderr, flush=True)


def fetch_suite(pip):
    """Returns the suite folder under CACHE, downloading the sdist if needed."""
    suite = CACHE / "tests"
    if (suite / "utils.py").is_file():
        return suite
    CACHE.mkdir(parents=True, exist_ok=True)
    sdists = sorted(CACHE.glob(f"llama_cpp_python-{LCP_VERSION}.tar.gz"))
    if not sdists:
        log(f"pip download llama-cpp-python=={LCP_VERSION} (sdist) into {CACHE}")
        subprocess.run(
            [pip, "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check",
             "-d", str(CACHE), f"llama-cpp-python=={LCP_VERSION}"],
            check=True,
        )
        sdists = sorted(CACHE.glob(f"llama_cpp_python-{LCP_VERSION}.tar.gz"))
    prefix = f"llama_cpp_python-{LCP_VERSION}/{SUITE_IN_SDIST}/"
    tmp = CACHE / "tests.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(sdists[0]) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())]
        if not members:
            sys.exit(f"llama_server_suite: {sdists[0]} has no {SUITE_IN_SDIST}")
        for m in members:
            m.name = m.name[len(prefix):]
            if m.name:
                tar.extract(m, tmp, filter="data")
    tmp.rename(suite)
    return suite


def write_shims(python):
    """Writes the stand-ins for modules .venv lacks; returns their folder."""
    shims = CACHE / "shims"
    shutil.rmtree(shims, ignore_errors=True)
    shims.mkdir(parents=True)
    (shims / "llsuite_timeout.py").write_text(TIMEOUT_PLUGIN)
    for name, text in SHIMS.items():
        have = subprocess.run([python, "-c", f"import {name}"], capture_output=True).returncode == 0
        if not have:
            log(f"{name} is not in .venv: using a stand-in from {shims}")
            (shims / f"{name}.py").write_text(text)
    return shims


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_llama_server(python, given):
    if given:
        return Path(given)
    sp = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        capture_output=True, text=True, check=True).stdout.strip()
    path = Path(sp) / "bin" / "llama-server"
    if not path.is_file():
        sys.exit(f"llama_server_suite: no {path}: run `make deps-bench` (llama-cpp-python with "
                 "llama.cpp's tools) or pass --llama-server PATH")
    return path


def server_command(name, args, port):
    """The command line and environment of one server; the settings match:
    threads, parallel sequences, context per sequence."""
    env = dict(os.environ)
    if name == "lmd":
        cmd = [str(args.lmd), "serve", "-m", str(args.model), "--host", "127.0.0.1",
               "--port", str(port), "-t", str(args.threads), "-c", str(args.ctx),
               "--max-running", str(args.parallel),
               # llama-server's default: CORS for any origin (its tests check it).
               "--cors-origin", "*"]
    else:
        binary = find_llama_server(args.python, args.llama_server)
        # pip puts the tools in site-packages/bin and their libraries in
        # site-packages/lib and site-packages/llama_cpp/lib.
        sp = binary.parent.parent
        env["LD_LIBRARY_PATH"] = ":".join(
            p for p in (str(sp / "lib"), str(sp / "llama_cpp" / "lib"), env.get("LD_LIBRARY_PATH")) if p)
        # -c is the whole KV cache, shared out over -np slots.
        cmd = [str(binary), "-m", str(args.model), "--host", "127.0.0.1", "--port", str(port),
               "-t", str(args.threads), "-np", str(args.parallel), "-c", str(args.ctx * args.parallel),
               "--metrics", "--no-webui"]
    return cmd, env


def wait_ready(proc, port, path, limit):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def run_one(name, args, suite, shims):
    out = CACHE / "results"
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd, env = server_command(name, args, port)
    log(f"{name}: {' '.join(cmd)}")
    with open(out / f"{name}.server.log", "w") as server_log:
        proc = subprocess.Popen(cmd, env=env, stdout=server_log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            # lmd answers /health while it loads and /ready once it serves;
            # llama-server's /health is 503 until the model is loaded.
            if not wait_ready(proc, port, "/ready" if name == "lmd" else "/health", 120):
                sys.exit(f"llama_server_suite: {name} did not become ready (see {server_log.name})")
            xml = out / f"{name}.xml"
            xml.unlink(missing_ok=True)
            tenv = dict(os.environ)
            tenv.update(DEBUG_EXTERNAL="1", PORT=str(port), LLSUITE_TEST_TIMEOUT=str(args.test_timeout),
                        PYTHONPATH=os.pathsep.join(p for p in (str(shims), os.environ.get("PYTHONPATH")) if p),
                        LLAMA_CACHE=str(CACHE / "llama-cache"))
            tenv.pop("SLOW_TESTS", None)
            pcmd = [args.python, "-m", "pytest", "-p", "llsuite_timeout", "-p", "no:cacheprovider",
                    "-v", "-rN", "--tb=line", f"--junitxml={xml}", "-o", "junit_family=xunit2"]
            if not args.slow:
                pcmd += ["-m", "not slow"]
            pcmd += args.pytest_args or ["unit"]
            log(f"{name}: DEBUG_EXTERNAL=1 PORT={port} {' '.join(pcmd)} (in {suite})")
            with open(out / f"{name}.pytest.log", "w") as plog:
                test = subprocess.Popen(pcmd, cwd=suite, env=tenv, stdout=plog, stderr=subprocess.STDOUT)
                try:
                    test.wait(timeout=args.run_timeout)
                except subprocess.TimeoutExpired:
                    # The verbose log keeps every finished test's outcome;
                    # an interrupted pytest may also still write its XML.
                    log(f"{name}: the suite ran past {args.run_timeout} s; its results are incomplete")
                    test.send_signal(signal.SIGINT)
                    try:
                        test.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        test.kill()
                        test.wait()
            if proc.poll() is not None:
                log(f"{name}: the server exited during the run (code {proc.returncode})")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    write_outcomes(name)


def read_outcomes(name):
    """Maps test id (module::name[params]) to passed, failed, error or skipped."""
    res = read_log(name)
    xml = CACHE / "results" / f"{name}.xml"
    if res or not xml.is_file():
        return res
    for case in ET.parse(xml).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/") + ".py"
        tid = f"{module}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                break
        # A setup error and a call failure of one test both count as its failure.
        if res.get(tid) in ("failed", "error"):
            continue
        res[tid] = outcome
    return res


def read_log(name):
    """The outcomes pytest -v printed, for a run cut short before its XML."""
    res = {}
    path = CACHE / "results" / f"{name}.pytest.log"
    if not path.is_file():
        return res
    words = {"PASSED": "passed", "FAILED": "failed", "ERROR": "error", "SKIPPED": "skipped",
             "XFAIL": "skipped", "XPASS": "passed"}
    # "unit/test_x.py::test_y[params, spaces allowed] PASSED [ 10%]"
    line_re = re.compile(r"^(unit/\S+\.py::.*?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
    for line in path.read_text(errors="replace").splitlines():
        m = line_re.match(line)
        if m and res.get(m.group(1)) not in ("failed", "error"):
            res[m.group(1)] = words[m.group(2)]
    return res


def write_outcomes(name):
    res = read_outcomes(name)
    with open(CACHE / "results" / f"{name}.tsv", "w") as f:
        for tid in sorted(res):
            f.write(f"{tid}\t{res[tid]}\n")


def classify(tid):
    best = None
    for prefix, value in CLASSES.items():
        if tid.startswith(prefix) and (best is None or len(prefix) > len(best)):
            best = prefix
    return CLASSES[best] if best else ("?", "not classified")


def print_table():
    peer, lmd = read_outcomes("llama-server"), read_outcomes("lmd")
    ids = sorted(set(peer) | set(lmd))
    print(f"{'test id':<100} {'llama-server':<12} {'lmd':<8} class")
    counts, gaps, both_fail = {}, [], 0
    ok = ("passed",)
    for tid in ids:
        p, l = peer.get(tid, "-"), lmd.get(tid, "-")
        cls = ""
        if p in ok and l not in ok and l != "skipped":
            c, reason = classify(tid)
            counts[c] = counts.get(c, 0) + 1
            cls = f"({c}) {reason}"
            gaps.append((c, tid, reason))
        elif p in ("failed", "error") and l in ("failed", "error"):
            both_fail += 1
        print(f"{tid:<100} {p:<12} {l:<8} {cls}")

    def count(res, outcome):
        return sum(1 for v in res.values() if v == outcome)

    print()
    for name, res in (("llama-server", peer), ("lmd", lmd)):
        print(f"{name}: {len(res)} tests: {count(res, 'passed')} passed, {count(res, 'failed')} failed, "
              f"{count(res, 'error')} errors, {count(res, 'skipped')} skipped")
    print(f"pass on llama-server, fail on lmd: {len(gaps)} "
          f"({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))})")
    print(f"pass on lmd, fail on llama-server: "
          f"{sum(1 for t in ids if lmd.get(t) in ok and peer.get(t) in ('failed', 'error'))}")
    print(f"fail on both: {both_fail}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", default=",".join(SERVERS), help="which to run (default: both)")
    ap.add_argument("--table", action="store_true", help="print the table of the last run; run nothing")
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "default.gguf")
    ap.add_argument("--lmd", type=Path, default=Path(os.environ.get("LMD_BIN", ROOT / "build" / "lmd")))
    ap.add_argument("--llama-server", help="llama-server binary (default: the one in .venv's site-packages/bin)")
    ap.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--parallel", type=int, default=8, help="sequences at once (-np, --max-running)")
    ap.add_argument("--ctx", type=int, default=1024, help="context per sequence")
    ap.add_argument("--test-timeout", type=int, default=60, help="seconds per test")
    ap.add_argument("--run-timeout", type=int, default=900, help="seconds per server for the whole suite")
    ap.add_argument("--slow", action="store_true", help="also the tests marked slow")
    ap.add_argument("pytest_args", nargs="*", help="test paths or pytest options (default: unit)")
    args, extra = ap.parse_known_args()
    args.pytest_args += extra
    if not args.table:
        pip = str(Path(args.python).with_name("pip"))
        suite = fetch_suite(pip)
        shims = write_shims(args.python)
        for name in args.servers.split(","):
            if name not in SERVERS:
                sys.exit(f"llama_server_suite: unknown server {name!r}")
            run_one(name, args, suite, shims)
    print_table()


if __name__ == "__main__":
    main()
