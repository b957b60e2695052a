"""`/v1/embeddings` end to end: a real `lmd serve` on the default model
(a causal decoder: last-token pooling, L2-normalized), the official
`openai` client's `client.embeddings.create`, and httpx for the shapes the
client does not send."""
import base64
import concurrent.futures
import math
import os
import struct

import httpx
import openai
import pytest

from test_server import CTX, error_of, metric, start_server, stop_server

N_EMBD = 640  # the default model's hidden width (Gemma 3 270M)


@pytest.fixture(scope="module")
def server(lmd_bin, default_model):
    global MODEL
    MODEL = os.path.basename(default_model)[:-len(".gguf")]
    # A small step budget, so that long inputs are prefilled in several
    # chunks and batched with others.
    proc, base = start_server(lmd_bin, default_model, "--max-batch-tokens", "64")
    yield base
    stop_server(proc)


MODEL = "default"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", timeout=120, max_retries=0)


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def f32(v):
    """The float32 values a JSON list of floats spells (9 digits: exact)."""
    return list(struct.unpack("<%df" % len(v), struct.pack("<%df" % len(v), *v)))


def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / (norm(a) * norm(b))


LONG = " ".join("word%d" % i for i in range(120))  # a few hundred tokens: several prefill chunks


def test_string_input(client, server):
    r = client.embeddings.create(model=MODEL, input="The capital of France is Paris.")
    assert r.object == "list" and r.model == MODEL
    assert len(r.data) == 1 and r.data[0].object == "embedding" and r.data[0].index == 0
    v = r.data[0].embedding
    assert len(v) == N_EMBD
    assert abs(norm(v) - 1.0) < 1e-5
    # Counted with the BOS token the tokenizer adds.
    tok = httpx.post(server + "/tokenize", json={"content": "The capital of France is Paris.", "add_special": True})
    assert r.usage.prompt_tokens == len(tok.json()["tokens"])
    assert r.usage.total_tokens == r.usage.prompt_tokens


def test_list_input_identical_and_different(client):
    texts = ["a cat sat on the mat", "quarterly revenue grew by nine percent", "a cat sat on the mat", LONG]
    r = client.embeddings.create(model=MODEL, input=texts)
    assert [d.index for d in r.data] == [0, 1, 2, 3]
    v = [d.embedding for d in r.data]
    assert all(abs(norm(x) - 1.0) < 1e-5 for x in v)
    assert v[0] == v[2]  # identical inputs, identical vectors
    assert v[0] != v[1] and cos(v[0], v[1]) < 0.9999
    # Each input alone gives the same vector as in the list (bit for bit:
    # every position's hidden state is computed alike in any batch).
    for i, t in enumerate(texts):
        alone = client.embeddings.create(model=MODEL, input=t).data[0].embedding
        assert alone == v[i], i
    # Usage: the sum of the inputs' tokens.
    total = sum(client.embeddings.create(model=MODEL, input=t).usage.prompt_tokens for t in texts)
    assert r.usage.prompt_tokens == total


def test_base64_equals_float(client, server):
    text = ["base64 is the same vector", "twice"]
    f = client.embeddings.create(model=MODEL, input=text, encoding_format="float")
    raw = httpx.post(server + "/v1/embeddings",
                     json={"model": MODEL, "input": text, "encoding_format": "base64"}).json()
    for d, fd in zip(raw["data"], f.data):
        b = base64.b64decode(d["embedding"])
        assert len(b) == 4 * N_EMBD
        assert list(struct.unpack("<%df" % N_EMBD, b)) == f32(fd.embedding)
    # The client's own default asks for base64 and decodes it (numpy or not).
    c = client.embeddings.create(model=MODEL, input=text)
    assert [f32(d.embedding) for d in c.data] == [f32(d.embedding) for d in f.data]


def test_token_id_inputs(client, server):
    tok = httpx.post(server + "/tokenize", json={"content": "hello world", "add_special": True}).json()["tokens"]
    by_text = client.embeddings.create(model=MODEL, input="hello world").data[0].embedding
    by_ids = client.embeddings.create(model=MODEL, input=tok).data[0].embedding
    assert by_ids == by_text
    two = client.embeddings.create(model=MODEL, input=[tok, tok[:2]])
    assert two.data[0].embedding == by_text and two.data[1].embedding != by_text
    assert two.usage.prompt_tokens == len(tok) + 2


def test_concurrent_equals_alone(client):
    texts = ["request %d about topic %d" % (i, i * 7) for i in range(8)] + [LONG]
    alone = [client.embeddings.create(model=MODEL, input=t).data[0].embedding for t in texts]
    with concurrent.futures.ThreadPoolExecutor(len(texts)) as ex:
        futs = [ex.submit(client.embeddings.create, model=MODEL, input=t) for t in texts]
        together = [f.result().data[0].embedding for f in futs]
    assert together == alone
    assert len({tuple(v) for v in alone}) == len(texts)


def test_with_generation_in_the_same_batches(client):
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        gen = ex.submit(client.completions.create, model=MODEL, prompt="Once upon a time", max_tokens=24,
                        temperature=0)
        embs = [ex.submit(client.embeddings.create, model=MODEL, input="shared batch %d" % i) for i in range(3)]
        assert gen.result().choices[0].text
        for i, f in enumerate(embs):
            assert f.result().data[0].embedding == client.embeddings.create(
                model=MODEL, input="shared batch %d" % i).data[0].embedding


def test_dimensions(client):
    full = client.embeddings.create(model=MODEL, input="x y z", dimensions=N_EMBD)
    assert len(full.data[0].embedding) == N_EMBD
    with pytest.raises(openai.BadRequestError) as ei:
        client.embeddings.create(model=MODEL, input="x y z", dimensions=64)
    assert "Matryoshka" in str(ei.value) and str(N_EMBD) in str(ei.value)


def test_bad_inputs(server):
    url = server + "/v1/embeddings"
    cases = [
        ({"model": MODEL, "input": ""}, "input", "input[0]"),
        ({"model": MODEL, "input": ["ok", ""]}, "input", "input[1]"),
        ({"model": MODEL, "input": []}, "input", "empty"),
        ({"model": MODEL, "input": [[1, 2], []]}, "input", "input[1]"),
        ({"model": MODEL, "input": ["ok", [1, 2]]}, "input", "input[1]"),
        ({"model": MODEL, "input": 5}, "input", "input"),
        ({"model": MODEL, "input": [1, 99999999]}, "input", "vocabulary"),
        ({"model": MODEL, "input": [-1]}, "input", "vocabulary"),
        ({"model": MODEL}, "input", "required"),
        ({"model": MODEL, "input": "x", "encoding_format": "int8"}, "encoding_format", "base64"),
        ({"model": MODEL, "input": "x", "dimensions": 0}, "dimensions", "positive"),
        ({"model": MODEL, "input": "x", "dimensions": "640"}, "dimensions", "positive"),
        ({"model": MODEL, "input": "x", "truncate_prompt_tokens": 5}, "truncate_prompt_tokens", "not a field"),
        ({"model": MODEL, "input": "x", "priority": [1]}, "priority", "priority"),
    ]
    for body, param, words in cases:
        e = error_of(httpx.post(url, json=body, timeout=30), 400)
        assert e["param"] == param and words in e["message"], (body, e)
    error_of(httpx.post(url, content=b"{not json", timeout=30), 400)
    error_of(httpx.post(url, content=b"[1]", timeout=30), 400)
    e = error_of(httpx.post(url, json={"model": "nope", "input": "x"}, timeout=30), 404)
    assert e["param"] == "model"
    assert httpx.get(url, timeout=30).status_code == 405
    # Longer than the context: 400 naming the input.
    e = error_of(httpx.post(url, json={"model": MODEL, "input": [[5, 6], [5] * (CTX + 1)]}, timeout=30), 400)
    assert e["code"] == "context_length_exceeded" and "input[1]" in e["message"]
    e = error_of(httpx.post(url, json={"model": MODEL, "input": ["short", "word " * (CTX + 10)]}, timeout=30), 400)
    assert e["code"] == "context_length_exceeded" and "input[1]" in e["message"]
    # More inputs than the queue holds: a 400 saying the limit, not a 503 no retry could pass.
    e = error_of(httpx.post(url, json={"model": MODEL, "input": ["x"] * 49}, timeout=30), 400)
    assert "at most 48 inputs" in e["message"] and "--max-queue" in e["message"]
    # More than 1 MiB of text in one request: refused before tokenizing.
    e = error_of(httpx.post(url, json={"model": MODEL, "input": ["w " * 300000, "w " * 300000]}, timeout=30), 400)
    assert "input[1]" in e["message"] and "bytes of text" in e["message"]
    # A whole context is fine (no room for output is needed).
    ok = httpx.post(url, json={"model": MODEL, "input": [[5] * CTX]}, timeout=120)
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == CTX


def test_without_v1_and_user_field(server):
    r = httpx.post(server + "/embeddings", json={"model": MODEL, "input": "plain", "user": "someone"}, timeout=30)
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == N_EMBD


def test_metrics_count_prompt_tokens(client, server):
    before = metric(server, "lmd_prompt_tokens_total")
    r = client.embeddings.create(model=MODEL, input=["metrics one", "metrics two, a little longer"])
    after = metric(server, "lmd_prompt_tokens_total")
    assert after - before == r.usage.prompt_tokens


# ---- docs/compatibility.md's embeddings table, row by row ------------------------------------

SAMPLES = {
    "input": ["a", [5, 6]],
    "model": None,
    "encoding_format": "base64",
    "dimensions": N_EMBD,
    "user": "u",
    "priority": 0,
    "truncate_prompt_tokens": 5,
    "normalize": False,
    "add_special_tokens": False,
}


def embeddings_rows():
    import re
    path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "compatibility.md")
    rows = []
    for line in open(path, encoding="utf-8"):
        m = re.match(r"^\| `([a-z_]+)` \| embeddings \| (accepted|ignored|refused) \|", line)
        if m:
            rows.append(m.groups())
    return rows


def test_compat_table_matches_the_server(server):
    rows = embeddings_rows()
    assert {f for f, _ in rows} == set(SAMPLES)
    failures = []
    for field, verdict in rows:
        body = {"model": MODEL, "input": "Hi"}
        v = SAMPLES[field]
        if field == "input":
            for one in v:
                r = httpx.post(server + "/v1/embeddings", json=dict(body, input=one), timeout=60)
                if r.status_code != 200:
                    failures.append((field, one, r.status_code, r.text[:200]))
            continue
        body[field] = MODEL if field == "model" else v
        r = httpx.post(server + "/v1/embeddings", json=body, timeout=60)
        ok = (r.status_code == 400 and r.json()["error"]["param"] == field) if verdict == "refused" \
            else r.status_code == 200
        if not ok:
            failures.append((field, verdict, r.status_code, r.text[:200]))
    assert not failures, "\n".join(map(repr, failures))


def test_gateway_model_is_501(lmd_bin, tmp_path):
    from test_multimodel import Serve, free_port
    g = Serve(lmd_bin, tmp_path, "--upstream", "gemma=http://127.0.0.5:%d" % free_port())
    try:
        r = httpx.post(g.base + "/v1/embeddings", json={"model": "gemma", "input": "x"}, timeout=30)
        e = error_of(r, 501)
        assert e["param"] == "model" and e["code"] == "unsupported_model"
        assert "upstream servers" in e["message"] and "/v1/embeddings" in e["message"]
    finally:
        assert g.stop() == 0, g.log()


def test_disconnect_cancels(server):
    """A client that hangs up while its inputs wait or prefill: they are
    dropped, their KV blocks come back, and the server goes on."""
    import time
    from test_server_api import raw_post
    port = int(server.rsplit(":", 1)[1])
    idle = metric(server, "lmd_kv_blocks_free")
    p0 = metric(server, "lmd_prompt_tokens_total")
    n = 40  # within the queue (--max-queue 64, three quarters for the default class)
    s = raw_post(port, "/v1/embeddings", {"model": MODEL, "input": [[5 + i] * 1000 for i in range(n)]})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and metric(server, "lmd_kv_blocks_free") == idle:
        time.sleep(0.02)
    s.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and metric(server, "lmd_kv_blocks_free") != idle:
        time.sleep(0.05)
    assert metric(server, "lmd_kv_blocks_free") == idle
    assert metric(server, "lmd_prompt_tokens_total") - p0 < n * 1000  # cancelled before every input was pooled
    r = httpx.post(server + "/v1/embeddings", json={"model": MODEL, "input": "still serving"}, timeout=60)
    assert r.status_code == 200


TENANTS = """\
classes:
  urgent: {}
  batch: {}
default_class: batch
tenants:
  - name: small
    keys: ["sk-small"]
    tokens_per_minute: 0.001
    tokens_burst: 30
  - name: big
    keys: ["sk-big"]
"""


def test_tenant_buckets_and_classes(lmd_bin, default_model, tmp_path):
    """Admission as for generation: a key is required, the tenant's token
    bucket is charged the inputs' tokens, and the class is counted."""
    from test_observability import Server, write_tenants
    s = Server(lmd_bin, default_model, tmp_path, "--tenants", write_tenants(tmp_path / "t.yaml", TENANTS))
    try:
        url = s.base + "/v1/embeddings"
        r = httpx.post(url, json={"input": "no key"}, timeout=30)
        assert r.status_code == 401
        small = openai.OpenAI(base_url=s.base + "/v1", api_key="sk-small", timeout=60, max_retries=0)
        ok = small.embeddings.create(input=["one two three", "four five"], model=model_of(s.base, "sk-small"))
        used = ok.usage.prompt_tokens
        assert 0 < used < 30
        # What is left of the burst cannot pay for a request larger than it.
        with pytest.raises(openai.RateLimitError):
            small.embeddings.create(input=["word " * (31 - used)], model=model_of(s.base, "sk-small"))
        # Larger than the whole bucket: never admissible (413, as for generation).
        r = httpx.post(url, json={"input": "word " * 40}, headers={"Authorization": "Bearer sk-small"}, timeout=30)
        assert r.status_code == 413 and "tokens_burst" in r.json()["error"]["message"], r.text
        # The class by name: served and counted under it.
        big = {"Authorization": "Bearer sk-big"}
        before = s.metrics().sum("lmd_requests_total", status="200", tenant="big", **{"class": "urgent"})
        r = httpx.post(url, json={"input": "urgent text", "priority": "urgent"}, headers=big, timeout=60)
        assert r.status_code == 200, r.text
        after = s.metrics().sum("lmd_requests_total", status="200", tenant="big", **{"class": "urgent"})
        assert after == before + 1
    finally:
        s.stop()


def model_of(base, key):
    return httpx.get(base + "/v1/models", headers={"Authorization": "Bearer " + key}, timeout=10).json()["data"][0]["id"]
