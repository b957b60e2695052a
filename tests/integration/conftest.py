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


@pytest.fixture(scope="session")
def synth_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("models") / "synth-tiny.gguf")
    subprocess.check_call([sys.executable, os.path.join(ROOT, "tests", "golden", "make_synth.py"), path],
                          stdout=subprocess.DEVNULL)
    return path
