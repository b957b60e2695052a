"""The static `lmd` of `make static` (build-static/lmd, or LMD_STATIC_BIN).

These tests build nothing: where the static build is absent they skip.
They check that the file needs no dynamic loader and no shared library,
that it answers --version, and that it serves the default model and
gateways to another lmd, giving the same greedy text as the dynamic build.
"""
import os
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
