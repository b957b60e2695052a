"""Several models in one `lmd serve`: the default model and a synthetic
Llama model served from one process, configured by a YAML --config file,
driven by the official `openai` client.

Both models answer, each with its own tokenizer and weights (greedy output
equals `lmd run` on that model's file); /v1/models lists both with their
metadata; requests route by `model` through ids and aliases; an unknown
model is a 404 model_not_found, a missing one a 400 when several are
served; per-model metrics count exactly what each model served. A second,
short-lived server takes its models from repeated `-m [NAME=]PATH` and a
tenants file whose model list names a model by an alias. Malformed config
files stop the server before it loads anything, with the line and key.

Contexts are small and generations short: the file runs in well under a
minute on two cores."""
import json
import os
import re
import signal
import socket
import subprocess
import time

import httpx
import openai
import pytest

from test_observability import Metrics

PROMPT = "The capital of France is"
N = 6


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slug(path):
    """The id lmd gives a model file: its stem, bytes outside [A-Za-z0-9._-] as '-'."""
    stem = os.path.basename(path)
    if stem.endswith(".gguf"):
        stem = stem[:-5]
    return re.sub(r"[^A-Za-z0-9._-]", "-", stem)


class Serve:
    """A running `lmd serve` with the given arguments; the log goes to a
    file (a pipe nobody reads would fill up and block the server)."""

    def __init__(self, lmd_bin, d, *args):
        self.port = free_port()
        self.base = "http://127.0.0.1:%d" % self.port
        self.log_path = d / ("lmd-%d.log" % self.port)
        cmd = [lmd_bin, "serve", "--port", str(self.port), *args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("lmd serve exited early (%s):\n%s" % (" ".join(cmd), self.log()))
            try:
                if httpx.get(self.base + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("lmd serve did not become ready in 60 s:\n" + self.log())
            time.sleep(0.1)

    def log(self):
        return self.log_path.read_text(errors="replace")

    def metrics(self):
        return Metrics(httpx.get(self.base + "/metrics", timeout=10).text)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


CONFIG = """\
# Two models with their own engine settings; the flags given on the
# command line take precedence over this file (the test waits for the
# server on the --port it gives, so it finds it only if the flag wins).
listen:
  port: 9
  io_threads: 2
debug_endpoints: true
scheduler:
  policy: sla
defaults:
  threads: 1
  ctx: 256
  max_running: 4
  max_batch_tokens: 128
models:
  - path: %s
    owned_by: google
  - name: tiny
    path: %s
    aliases: [synth, "llama/tiny"]
    ctx: 128
    kv_blocks: 32
    chat_template: chatml
"""


@pytest.fixture(scope="module")
def srv(lmd_bin, default_model, synth_models, tmp_path_factory):
    d = tmp_path_factory.mktemp("multimodel")
    cfg = d / "lmd.yaml"
    cfg.write_text(CONFIG % (default_model, synth_models["llama"]))
    s = Serve(lmd_bin, d, "--config", str(cfg))
    s.default_id = slug(default_model)
    s.paths = {s.default_id: default_model, "tiny": synth_models["llama"]}
    s.ctx = {s.default_id: 256, "tiny": 128}
    yield s
    assert s.stop() == 0, s.log()


@pytest.fixture(scope="module")
def client(srv):
    return openai.OpenAI(base_url=srv.base + "/v1", api_key="unused", timeout=60, max_retries=0)


def lmd_run(lmd_bin, path, ctx, *extra):
    out = subprocess.run([lmd_bin, "run", "-m", path, "-n", str(N), "--temp", "0", "-t", "1", "-c", str(ctx), *extra],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout[:-1]  # lmd run ends with a newline


def test_models_listed(srv, client):
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {srv.default_id, "tiny"}
    raw = {m["id"]: m for m in httpx.get(srv.base + "/v1/models", timeout=10).json()["data"]}
    g, t = raw[srv.default_id], raw["tiny"]
    assert g["object"] == "model" and g["owned_by"] == "google" and t["owned_by"] == "lmd"
    assert g["max_model_len"] == 256 and t["max_model_len"] == 128
    assert g["metadata"]["architecture"] == "gemma3" and t["metadata"]["architecture"] == "llama"
    assert g["metadata"]["engine"] == t["metadata"]["engine"] == "native"
    # general.name is metadata, and an alias, never the id.
    assert g["metadata"]["general_name"] == "Gemma 3 270m" and "Gemma 3 270m" in g["aliases"]
    assert t["metadata"]["general_name"].startswith("lmd synthetic llama")
    assert t["aliases"][:2] == ["synth", "llama/tiny"]
    assert "synth-llama" in t["aliases"] and "synth-llama.gguf" in t["aliases"]
    for name, want in (("tiny", "tiny"), ("synth", "tiny"), ("llama/tiny", "tiny"), ("Gemma 3 270m", srv.default_id),
                       (os.path.basename(srv.paths[srv.default_id]), srv.default_id)):
        r = httpx.get(srv.base + "/v1/models/" + name, timeout=10)
        assert r.status_code == 200 and r.json()["id"] == want, (name, r.text)
    r = httpx.get(srv.base + "/v1/models/nope", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_each_model_answers_as_lmd_run(srv, client, lmd_bin):
    """Greedy output of each model equals `lmd run` on its own file: the
    request reached that model's engine, tokenizer and weights."""
    texts, prompt_tokens = {}, {}
    for mid in (srv.default_id, "tiny"):
        r = client.completions.create(model=mid, prompt=PROMPT, max_tokens=N, temperature=0,
                                      extra_body={"ignore_eos": True})
        assert r.model == mid and r.usage.completion_tokens == N
        assert r.choices[0].text == lmd_run(lmd_bin, srv.paths[mid], srv.ctx[mid], "-p", PROMPT, "--ignore-eos")
        texts[mid], prompt_tokens[mid] = r.choices[0].text, r.usage.prompt_tokens
    assert texts[srv.default_id] != texts["tiny"]
    assert prompt_tokens[srv.default_id] != prompt_tokens["tiny"]  # two tokenizers


def test_aliases_route(srv, client):
    by_id = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=N, temperature=0,
                                      extra_body={"ignore_eos": True})
    for alias in ("synth", "llama/tiny", "synth-llama.gguf"):
        r = client.completions.create(model=alias, prompt=PROMPT, max_tokens=N, temperature=0,
                                      extra_body={"ignore_eos": True})
        assert r.model == "tiny" and r.choices[0].text == by_id.choices[0].text, alias
    # The old id of the default model, general.name, still works.
    r = client.chat.completions.create(model="Gemma 3 270m", messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=2)
    assert r.model == srv.default_id


def test_stream_on_second_model(srv, client):
    parts = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=N, temperature=0, stream=True,
                                                stream_options={"include_usage": True}))
    assert all(p.model == "tiny" for p in parts)
    assert parts[-1].usage.completion_tokens >= 1


def test_trace_has_an_engine_track_per_model(srv, client):
    client.completions.create(model="tiny", prompt=PROMPT, max_tokens=2)
    events = httpx.get(srv.base + "/debug/trace?seconds=600", timeout=10).json()["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert names[1] == "engine " + srv.default_id and names[11] == "engine tiny", names
    begins = [e for e in events if e["name"] == "request" and e["ph"] == "b"]
    assert any(e["args"]["model"] == "tiny" and e["tid"] == 11 for e in begins), begins
    steps = {e["tid"] for e in events if e["name"] == "step"}
    assert steps <= {1, 11} and 11 in steps


def test_unknown_or_missing_model(srv, client):
    with pytest.raises(openai.NotFoundError) as ei:
        client.completions.create(model="gpt-4o", prompt=PROMPT, max_tokens=1)
    assert ei.value.status_code == 404 and ei.value.code == "model_not_found"
    body = ei.value.body
    assert body["type"] == "invalid_request_error" and body["param"] == "model"
    assert "'gpt-4o' does not exist" in body["message"] and "'tiny'" in body["message"]
    r = httpx.post(srv.base + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 1}, timeout=10)
    assert r.status_code == 400, r.text
    e = r.json()["error"]
    assert e["param"] == "model" and e["code"] == "model_required" and "'model' is required" in e["message"]


def test_metrics_per_model(srv, client):
    """A fresh round of requests moves exactly its model's series."""
    before = srv.metrics()
    sent = {srv.default_id: [], "tiny": []}
    for mid, n in ((srv.default_id, 2), ("tiny", 3)):
        for _ in range(n):
            r = client.completions.create(model=mid, prompt=PROMPT, max_tokens=3, temperature=0,
                                          extra_body={"ignore_eos": True})
            sent[mid].append(r.usage)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt=PROMPT, max_tokens=1)
    after = srv.metrics()

    def delta(name, **labels):
        return after.sum(name, **labels) - before.sum(name, **labels)

    for mid, usages in sent.items():
        assert delta("lmd_requests_total", status="200", model=mid) == len(usages)
        assert delta("lmd_time_to_first_token_seconds_count", model=mid) == len(usages)
        assert delta("lmd_e2e_request_latency_seconds_count", model=mid) == len(usages)
        assert delta("lmd_prompt_tokens_total", model=mid) == sum(u.prompt_tokens for u in usages)
        assert delta("lmd_generation_tokens_total", model=mid) == sum(u.completion_tokens for u in usages)
        assert delta("lmd_engine_step_seconds_count", model=mid) >= 3
        # The engine gauges are the model's own: an idle cache is all free.
        assert after.value("lmd_kv_blocks_free", model=mid) == after.value("lmd_kv_blocks_capacity", model=mid) > 0
        assert after.value("lmd_requests_running", model=mid) == 0
    assert after.value("lmd_kv_blocks_capacity", model="tiny") == 32
    # Refused before a model was chosen: no model label value.
    assert delta("lmd_requests_total", status="404", model="") == 1
    assert not after.series("lmd_requests_total", model="nope")


# ---- models from -m, tenants by alias -------------------------------------------------

TENANTS = """\
tenants:
  - name: narrow
    keys: ["sk-narrow"]
    models: ["synth-llama.gguf"]
  - name: wide
    keys: ["sk-wide"]
"""


def test_m_flags_and_tenant_models(lmd_bin, default_model, synth_models, tmp_path):
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(TENANTS)
    os.chmod(tenants, 0o600)
    s = Serve(lmd_bin, tmp_path, "-m", "main=" + default_model, "-m", synth_models["llama"], "-t", "1", "-c", "128",
              "--tenants", str(tenants))
    try:
        h = {"Authorization": "Bearer sk-narrow"}
        data = httpx.get(s.base + "/v1/models", headers=h, timeout=10).json()["data"]
        assert [m["id"] for m in data] == ["main", "synth-llama"]
        assert [m["max_model_len"] for m in data] == [128, 128]  # -c applies to every model
        narrow = openai.OpenAI(base_url=s.base + "/v1", api_key="sk-narrow", timeout=60, max_retries=0)
        r = narrow.completions.create(model="synth-llama", prompt=PROMPT, max_tokens=2)
        assert r.model == "synth-llama"
        with pytest.raises(openai.PermissionDeniedError) as ei:
            narrow.completions.create(model="main", prompt=PROMPT, max_tokens=2)
        assert ei.value.code == "model_not_allowed"
        wide = openai.OpenAI(base_url=s.base + "/v1", api_key="sk-wide", timeout=60, max_retries=0)
        assert wide.completions.create(model="synth-llama.gguf", prompt=PROMPT, max_tokens=2).model == "synth-llama"
    finally:
        assert s.stop() == 0, s.log()


@pytest.mark.parametrize("text,want", [
    ("models:\n  - path: x.gguf\n    ctx: 8\n", ":3:10: models[0].ctx: must be between 16 and 1048576 (got 8)"),
    ("models:\n  - path: x.gguf\n    engine: vllm\n",
     ":3:13: models[0].engine: engine 'vllm' is not available: expected native or remote"),
    ("models:\n  - path: x.gguf\n  - {path: y.gguf, name: x, aliases: [x]}\n",
     ":3:39: models[1].aliases[0]: 'x' already names a model (line 3)"),
    ("listen: {port: 80, port: 81}\n", ":1:20: listen: duplicate key 'port' (first at line 1)"),
    ("models: [\n", "YAML syntax error"),
])
def test_bad_config_file(lmd_bin, tmp_path, text, want):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    out = subprocess.run([lmd_bin, "serve", "--config", str(cfg), "--port", "0"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("lmd serve: " + str(cfg)) and want in out.stderr, out.stderr


def test_clashing_names_refused(lmd_bin, default_model, synth_models):
    out = subprocess.run([lmd_bin, "serve", "-m", "a=" + default_model, "-m", "a=" + synth_models["llama"], "--port",
                          "0", "-t", "1", "-c", "64"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "model 'a' (-m) and model 'a' (-m) have the same id; name one of them" in out.stderr, out.stderr
