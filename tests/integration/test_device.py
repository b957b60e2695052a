"""--device: where a model's engine computes. On a machine without a GPU
(CI's), asking for CUDA fails at start with a message that says why, auto
serves on the CPU, and a bad name is refused; on a GPU machine the same
commands serve on the GPU (scripts/gpu-test.sh covers the CUDA engine
itself), and sampling on the GPU answers as sampling on the CPU does."""
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from test_server import start_server, stop_server


def gpus(lmd_bin):
    out = subprocess.run([lmd_bin, "--version"], capture_output=True, text=True, check=True).stdout
    line = [l for l in out.splitlines() if l.startswith("gpus:")]
    assert line, out
    return line[0][len("gpus:"):].strip()


def test_version_lists_gpus(lmd_bin):
    g = gpus(lmd_bin)
    assert g.startswith("cuda:0 ") or g.startswith("none") or g == "not built", g


def test_device_cuda_without_gpu_fails_clearly(lmd_bin, default_model):
    if gpus(lmd_bin).startswith("cuda:"):
        pytest.skip("this machine has a GPU")
    r = subprocess.run([lmd_bin, "serve", "-m", default_model, "--device", "cuda", "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "cuda:" in r.stderr and ("no usable GPU" in r.stderr or "built without CUDA" in r.stderr), r.stderr
    assert "--device cpu" in r.stderr or "built without CUDA" in r.stderr


def test_device_auto_serves(lmd_bin, default_model):
    proc, base = start_server(lmd_bin, default_model, "--device", "auto")
    try:
        r = httpx.post(base + "/v1/completions", json={"prompt": "Hello", "max_tokens": 4, "temperature": 0},
                       timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 4
    finally:
        stop_server(proc)


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "cuda:1x", "CPU", ""])
def test_device_bad_name(lmd_bin, default_model, bad):
    r = subprocess.run([lmd_bin, "serve", "-m", default_model, "--device", bad, "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 or r.returncode == 1
    assert "--device wants cpu, cuda, cuda:N or auto" in r.stderr, r.stderr


def test_device_in_config_file(lmd_bin, default_model, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("models:\n  - name: m\n    path: %s\n    device: tpu\n" % default_model)
    r = subprocess.run([lmd_bin, "serve", "--config", str(cfg), "--port", "0"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0
    assert "device" in r.stderr and "expected cpu, cuda, cuda:N or auto, got 'tpu'" in r.stderr, r.stderr


# Requests that take each way through the CUDA engine's sampling: greedy,
# greedy under bias and the three penalties, a seeded draw under top-k and
# top-p with log-probabilities (sorted on the device in sample.c's order,
# so the same seed gives the same tokens), min-p alone, and a grammar (that
# row is sampled on the CPU inside the engine).
DEVICE_SAMPLING_REQUESTS = [
    dict(prompt="The capital of France is", max_tokens=16, temperature=0),
    dict(prompt="The capital of France is", max_tokens=16, temperature=0, logprobs=3,
         logit_bias={"506": 3.0, "236761": -20}, presence_penalty=0.5, frequency_penalty=0.7, repetition_penalty=1.3),
    dict(prompt="Once upon a time", max_tokens=16, temperature=0.8, top_k=40, top_p=0.9, seed=7, logprobs=5),
    dict(prompt="Once upon a time", max_tokens=16, temperature=1.0, min_p=0.1, seed=11),
    dict(prompt="My favourite word is", max_tokens=12, temperature=0.7, seed=3, grammar='root ::= [a-z ]+ "."\n'),
]


def test_cuda_sampling_on_device_matches_logits_path(lmd_bin, default_model):
    """`lmd serve --device cuda` samples on the GPU; with LMD_CUDA_SAMPLE=0
    the engine returns logits and the scheduler samples them on the CPU.
    The same requests, one at a time, get the same text, the same tokens
    and log-probabilities within 1e-4 both ways; all at once (one batch on
    the device) they are answered in full."""
    if not gpus(lmd_bin).startswith("cuda:"):
        pytest.skip("no GPU on this machine")
    answers = {}
    for mode in ("1", "0"):
        env = dict(os.environ, LMD_CUDA_SAMPLE=mode)
        proc, base = start_server(lmd_bin, default_model, "--device", "cuda", env=env)
        try:
            got = []
            for body in DEVICE_SAMPLING_REQUESTS:
                r = httpx.post(base + "/v1/completions", json=body, timeout=120)
                assert r.status_code == 200, r.text
                got.append(r.json()["choices"][0])
            answers[mode] = got
            with ThreadPoolExecutor(len(DEVICE_SAMPLING_REQUESTS)) as ex:
                rs = list(ex.map(lambda b: httpx.post(base + "/v1/completions", json=b, timeout=120),
                                 DEVICE_SAMPLING_REQUESTS))
            for body, r in zip(DEVICE_SAMPLING_REQUESTS, rs):
                assert r.status_code == 200, r.text
                assert r.json()["usage"]["completion_tokens"] >= 1
        finally:
            stop_server(proc)
    for i, (dev, cpu) in enumerate(zip(answers["1"], answers["0"])):
        assert dev["text"] == cpu["text"], (i, DEVICE_SAMPLING_REQUESTS[i], dev["text"], cpu["text"])
        if DEVICE_SAMPLING_REQUESTS[i].get("logprobs"):
            a, b = dev["logprobs"], cpu["logprobs"]
            assert a["tokens"] == b["tokens"], i
            for x, y in zip(a["token_logprobs"], b["token_logprobs"]):
                assert abs(x - y) <= 1e-4, (i, x, y)
            for x, y in zip(a["top_logprobs"], b["top_logprobs"]):
                assert list(x) == list(y), (i, x, y)
                for k in x:
                    assert abs(x[k] - y[k]) <= 1e-4, (i, k, x[k], y[k])
