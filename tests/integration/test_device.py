"""--device: where a model's engine computes. On a machine without a GPU
(CI's), asking for CUDA fails at start with a message that says why, auto
serves on the CPU, and a bad name is refused; on a GPU machine the same
commands serve on the GPU (scripts/gpu-test.sh covers the CUDA engine
itself)."""
import subprocess

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
