"""Shared fixtures: the lmd binary, the default model, and a synthetic
Llama-architecture model generated on the fly with the `gguf` package."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def lmd_bin():
    path = os.environ.get("LMD_BIN", os.path.join(ROOT, "build", "lmd"))
    if not os.access(path, os.X_OK):
        pytest.fail(f"lmd binary not found at {path}: run `make build`")
    return path


@pytest.fixture(scope="session")
def default_model():
    path = os.environ.get("LMD_MODEL", os.path.join(ROOT, "models", "default.gguf"))
    if not os.path.exists(path):
        pytest.fail(f"default model missing at {path}: run `make model`")
    return path


SYNTH_ARCHS = ["llama", "qwen2", "qwen3", "gemma3"]


@pytest.fixture(scope="session")
def synth_models(tmp_path_factory):
    """Tiny random-weight models, one per supported architecture, written
    by tests/golden/make_synth.py (deterministic: same bytes every time)."""
    d = tmp_path_factory.mktemp("models")
    paths = {}
    for arch in SYNTH_ARCHS:
        paths[arch] = str(d / ("synth-%s.gguf" % arch))
        subprocess.check_call([sys.executable, os.path.join(ROOT, "tests", "golden", "make_synth.py"), paths[arch],
                               "--arch", arch], stdout=subprocess.DEVNULL)
    return paths
