"""What clients written for vLLM and llama-server expect of lmd serve, on
the real default model: vLLM's integer `priority` mapped onto lmd's service
classes by thresholds (--priority-map and the config file's priority_map),
sent by the official openai client through extra_body.

Every wait is bounded; generations are one or two tokens."""
import subprocess

import httpx
import openai
import pytest

from test_observability import Server, model_id, wait_until, write_tenants

# Three classes, most urgent first; the file's default class is the middle one.
TENANTS = """\
classes:
  urgent:   {ttft_ms: 500}
  standard: {ttft_ms: 2000}
  batch:    {}
default_class: standard
tenants:
  - name: all
    keys: ["sk-all"]
  - name: lowly
    keys: ["sk-lowly"]
    classes: [standard, batch]
    default_class: batch
"""


@pytest.fixture(scope="module")
def classes_srv(lmd_bin, default_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("compat-prio")
    s = Server(lmd_bin, default_model, d, "--tenants", write_tenants(d / "tenants.yaml", TENANTS),
               "--priority-map", "urgent<=-10, default<=0, standard<=5, batch")
    s.model = model_id(s.base, "sk-all")
    yield s
    s.stop()


def served(s, tenant, cls):
    return s.metrics().sum("lmd_requests_total", status="200", tenant=tenant, **{"class": cls})


def client(s, key):
    return openai.OpenAI(base_url=s.base + "/v1", api_key=key, timeout=120, max_retries=0)


def test_priority_map_from_flag(classes_srv):
    s = classes_srv
    assert "integer priorities map onto classes as urgent<=-10,default<=0,standard<=5,batch" in s.output()
    cases = [  # (key, tenant, priority, expected class)
        ("sk-all", "all", -100, "urgent"),
        ("sk-all", "all", -10, "urgent"),
        ("sk-all", "all", -9, "standard"),   # default<=0: the tenant's default class
        ("sk-all", "all", 0, "standard"),
        ("sk-lowly", "lowly", 0, "batch"),   # vLLM's default 0 is the tenant's own default, never promoted
        ("sk-all", "all", 3, "standard"),
        ("sk-all", "all", 6, "batch"),
        ("sk-all", "all", 10**12, "batch"),
        ("sk-all", "all", "urgent", "urgent"),  # lmd's class names keep working
    ]
    for key, tenant, prio, cls in cases:
        before = served(s, tenant, cls)
        r = client(s, key).completions.create(model=s.model, prompt="Hi", max_tokens=1,
                                              extra_body={"priority": prio})
        assert r.usage.completion_tokens == 1
        assert wait_until(lambda: served(s, tenant, cls) == before + 1, timeout=5), (prio, cls)
    # Chat takes the same field.
    before = served(s, "all", "urgent")
    client(s, "sk-all").chat.completions.create(model=s.model, messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=1, extra_body={"priority": -50})
    assert wait_until(lambda: served(s, "all", "urgent") == before + 1, timeout=5)


def test_priority_refusals(classes_srv):
    s = classes_srv
    # A priority mapped onto a class the key may not use: 403 naming the class.
    with pytest.raises(openai.PermissionDeniedError) as ei:
        client(s, "sk-lowly").completions.create(model=s.model, prompt="Hi", max_tokens=1,
                                                 extra_body={"priority": -20})
    assert ei.value.code == "class_not_allowed"
    assert "'urgent'" in ei.value.body["message"] and "-20" in ei.value.body["message"]
    # Not an integer nor a class name: 400 naming the field.
    for bad in (1.5, True, [1], {"a": 1}):
        r = httpx.post(s.base + "/v1/completions", headers={"Authorization": "Bearer sk-all"}, timeout=30,
                       json={"model": s.model, "prompt": "Hi", "max_tokens": 1, "priority": bad})
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["param"] == "priority"
    r = httpx.post(s.base + "/v1/completions", headers={"Authorization": "Bearer sk-all"}, timeout=30,
                   json={"model": s.model, "prompt": "Hi", "max_tokens": 1, "priority": "platinum"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_priority"


def test_priority_map_from_config_file(lmd_bin, default_model, tmp_path):
    cfg = tmp_path / "lmd.yaml"
    cfg.write_text('priority_map: "urgent<=0,best_effort"\n')
    s = Server(lmd_bin, default_model, tmp_path, "--config", str(cfg))
    try:
        s.model = model_id(s.base)
        assert "integer priorities map onto classes as urgent<=0,best_effort" in s.output()
        for prio, cls in ((0, "urgent"), (1, "best_effort")):
            before = served(s, "anonymous", cls)
            client(s, "none").completions.create(model=s.model, prompt="Hi", max_tokens=1,
                                                 extra_body={"priority": prio})
            assert wait_until(lambda: served(s, "anonymous", cls) == before + 1, timeout=5)
    finally:
        s.stop()
    # The flag wins over the file.
    s = Server(lmd_bin, default_model, tmp_path, "--config", str(cfg), "--priority-map", "best_effort")
    try:
        assert "integer priorities map onto classes as best_effort" in s.output()
    finally:
        s.stop()


@pytest.mark.parametrize("spec,needle", [
    ("platinum<=0,best_effort", "unknown service class 'platinum'"),
    ("urgent<=0,best_effort<=5", "must have no bound"),
    ("urgent<=5,best_effort<=1,urgent", "must increase"),
])
def test_bad_priority_map_fails_start(lmd_bin, default_model, spec, needle):
    p = subprocess.run([lmd_bin, "serve", "-m", default_model, "--port", "0", "--priority-map", spec],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "priority map" in p.stderr and needle in p.stderr, p.stderr


# ---- the OpenAI routes without /v1 --------------------------------------------------


@pytest.fixture(scope="module")
def srv(lmd_bin, default_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("compat")
    s = Server(lmd_bin, default_model, d)
    s.model = model_id(s.base)
    yield s
    s.stop()


def test_routes_without_v1(srv):
    bare = openai.OpenAI(base_url=srv.base, api_key="none", timeout=120, max_retries=0)
    assert [m.id for m in bare.models.list()] == [srv.model]
    assert bare.models.retrieve(srv.model).id == srv.model
    r = bare.completions.create(model=srv.model, prompt="The capital of France is", max_tokens=2, temperature=0)
    want = openai.OpenAI(base_url=srv.base + "/v1", api_key="none", timeout=120, max_retries=0).completions.create(
        model=srv.model, prompt="The capital of France is", max_tokens=2, temperature=0)
    assert r.choices[0].text == want.choices[0].text and r.id.startswith("cmpl-")
    r = bare.chat.completions.create(model=srv.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert r.id.startswith("chatcmpl-") and r.usage.completion_tokens >= 1
    chunks = list(bare.completions.create(model=srv.model, prompt="Hi", max_tokens=2, stream=True))
    assert chunks and chunks[0].id.startswith("cmpl-")
    # Their errors are the /v1 routes' errors.
    r = httpx.get(srv.base + "/models/nope", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.get(srv.base + "/completions", timeout=10)
    assert r.status_code == 405
    r = httpx.post(srv.base + "/chat/completions", json={"model": srv.model}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    # Other unprefixed paths are still no route.
    assert httpx.post(srv.base + "/embeddingz", json={}, timeout=10).status_code == 404


def test_routes_without_v1_need_keys(classes_srv):
    s = classes_srv
    for path in ("/models", "/models/" + s.model):
        r = httpx.get(s.base + path, timeout=10)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
    r = httpx.post(s.base + "/completions", json={"model": s.model, "prompt": "Hi", "max_tokens": 1}, timeout=10)
    assert r.status_code == 401
    r = httpx.get(s.base + "/models", headers={"Authorization": "Bearer sk-all"}, timeout=10)
    assert r.status_code == 200 and r.json()["data"][0]["id"] == s.model


# ---- /tokenize and /detokenize ------------------------------------------------------------


def test_tokenize_llama_server_shapes(srv):
    r = httpx.post(srv.base + "/tokenize", json={"content": "Hello world"}, timeout=30)
    assert r.status_code == 200, r.text
    ids = r.json()["tokens"]
    assert ids and all(isinstance(i, int) for i in ids)
    # add_special puts the BOS first, as llama-server does.
    with_bos = httpx.post(srv.base + "/tokenize", json={"content": "Hello world", "add_special": True},
                          timeout=30).json()["tokens"]
    assert with_bos[1:] == ids and with_bos[0] != ids[0]
    pieces = httpx.post(srv.base + "/tokenize", json={"content": "Hello world", "with_pieces": True},
                        timeout=30).json()["tokens"]
    assert [p["id"] for p in pieces] == ids and "".join(p["piece"] for p in pieces) == "Hello world"
    # A character split over byte tokens: its pieces are byte lists.
    odd = httpx.post(srv.base + "/tokenize", json={"content": "\U0001F9EC\U0001FAE0", "with_pieces": True},
                     timeout=30).json()["tokens"]
    assert all(isinstance(p["piece"], (str, list)) for p in odd)
    # The ids come back as the same text, and agree with what a completion counts.
    r = httpx.post(srv.base + "/detokenize", json={"tokens": ids}, timeout=30)
    assert r.status_code == 200 and r.json()["content"] == "Hello world"
    c = openai.OpenAI(base_url=srv.base + "/v1", api_key="none", max_retries=0).completions.create(
        model=srv.model, prompt="Hello world", max_tokens=1)
    assert c.usage.prompt_tokens == len(with_bos)


def test_tokenize_vllm_shapes(srv):
    r = httpx.post(srv.base + "/tokenize", json={"model": srv.model, "prompt": "Hello world"}, timeout=30)
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["count"] == len(j["tokens"]) and j["max_model_len"] > 0 and j["token_strs"] is None
    llama = httpx.post(srv.base + "/tokenize", json={"content": "Hello world", "add_special": True},
                       timeout=30).json()["tokens"]
    assert j["tokens"] == llama  # vLLM adds the special tokens by default
    j2 = httpx.post(srv.base + "/tokenize", timeout=30, json={"prompt": "Hello world", "add_special_tokens": False,
                                                             "return_token_strs": True}).json()
    assert j2["count"] == j["count"] - 1 and len(j2["token_strs"]) == j2["count"]
    r = httpx.post(srv.base + "/detokenize", json={"model": srv.model, "tokens": j2["tokens"]}, timeout=30)
    assert r.json()["prompt"] == "Hello world"
    models = httpx.get(srv.base + "/v1/models", timeout=10).json()["data"]
    assert j["max_model_len"] == models[0]["max_model_len"]


@pytest.mark.parametrize("path,body,status,param", [
    ("/tokenize", {}, 400, "content"),
    ("/tokenize", {"content": None}, 400, "content"),
    ("/tokenize", {"content": ["a"]}, 400, "content"),
    ("/tokenize", {"content": "a", "prompt": "a"}, 400, "prompt"),
    ("/tokenize", {"content": "a", "with_pieces": 1}, 400, "with_pieces"),
    ("/tokenize", {"messages": [{"role": "user", "content": "hi"}]}, 400, "messages"),
    ("/tokenize", {"content": "a", "model": "gpt-4o"}, 404, "model"),
    ("/detokenize", {"tokens": [1, "2"]}, 400, "tokens"),
    ("/detokenize", {"tokens": [10**9]}, 400, "tokens"),
    ("/detokenize", {"tokens": {"a": 1}}, 400, "tokens"),
    ("/detokenize", {}, 400, "tokens"),
])
def test_tokenize_refusals(srv, path, body, status, param):
    r = httpx.post(srv.base + path, json=body, timeout=30)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param
    r = httpx.post(srv.base + path, content=b"{not json", timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    assert httpx.get(srv.base + path, timeout=30).status_code == 405


def test_tokenize_needs_a_key(classes_srv):
    s = classes_srv
    r = httpx.post(s.base + "/tokenize", json={"content": "Hi"}, timeout=30)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(s.base + "/tokenize", json={"content": "Hi"}, headers={"Authorization": "Bearer sk-all"},
                   timeout=30)
    assert r.status_code == 200 and r.json()["tokens"]


def test_huge_tokenize_leaves_the_io_thread_free(lmd_bin, default_model, tmp_path):
    """Megabytes of text are tokenized off the I/O thread: with one I/O
    thread, other requests are answered while the big one is still being
    tokenized (its answer has not arrived when theirs have). The order is
    the verdict, not a clock: tokenizing 3 MB takes seconds on any CPU,
    fifty /health round trips a small fraction of that."""
    import json
    import select
    import socket
    s = Server(lmd_bin, default_model, tmp_path, "--io-threads", "1", "--max-body", str(8 << 20))
    s.model = model_id(s.base)
    try:
        text = "The quick brown fox jumps over the lazy dog. " * 70000
        body = json.dumps({"content": text}).encode()
        big = socket.create_connection(("127.0.0.1", s.port))
        big.sendall(b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        with httpx.Client(base_url=s.base, timeout=60) as c:
            for _ in range(50):
                assert c.get("/health").status_code == 200
                assert c.get("/v1/models").json()["data"][0]["id"] == s.model
        ready, _, _ = select.select([big], [], [], 0)
        assert not ready, "the big /tokenize was answered before the small requests: it held the I/O thread"
        big.settimeout(120)
        resp = b""
        while True:
            chunk = big.recv(1 << 20)
            if not chunk:
                break
            resp += chunk
        big.close()
        head, _, payload = resp.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert len(json.loads(payload)["tokens"]) >= 10 * 70000  # ten tokens a sentence, and the last space
    finally:
        s.stop()


def test_tokenize_picks_the_model(lmd_bin, default_model, tmp_path):
    s = Server(lmd_bin, default_model, tmp_path, "-m", "b=" + default_model, "-c", "1024")
    try:
        ids = [m["id"] for m in httpx.get(s.base + "/v1/models", timeout=10).json()["data"]]
        assert len(ids) == 2 and "b" in ids
        r = httpx.post(s.base + "/tokenize", json={"content": "Hi"}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["code"] == "model_required"
        r = httpx.post(s.base + "/tokenize", json={"model": "b", "prompt": "Hi"}, timeout=30)
        assert r.status_code == 200 and r.json()["count"] >= 1
        # The alias works too (the file's GGUF general.name is one of the default model's names).
        r = httpx.post(s.base + "/detokenize", json={"model": ids[0], "tokens": [9259]}, timeout=30)
        assert r.status_code == 200 and r.json()["content"] == "Hello"
    finally:
        s.stop()


# ---- /v1/models ---------------------------------------------------------------------------


def test_models_context_length_and_names(srv):
    data = httpx.get(srv.base + "/v1/models", timeout=10).json()["data"]
    assert len(data) == 1
    m = data[0]
    # The id is the file's stem as a slug, never general.name with its spaces.
    assert m["id"] == "default" and " " not in m["id"]
    assert m["max_model_len"] == m["context_length"] == m["meta"]["n_ctx"] == 1024  # the suite's -c
    assert m["meta"]["n_vocab"] == 262144
    assert "Gemma 3 270m" in m["aliases"] and "default.gguf" in m["aliases"]
    assert m["metadata"]["general_name"] == "Gemma 3 270m"
    # Every name answers, in the model route and in requests; responses carry the id.
    c = openai.OpenAI(base_url=srv.base + "/v1", api_key="none", max_retries=0, timeout=60)
    for name in ["default", "default.gguf", "Gemma 3 270m"]:
        assert c.models.retrieve(name).id == "default"
        assert c.completions.create(model=name, prompt="Hi", max_tokens=1).model == "default"


# ---- CORS ---------------------------------------------------------------------------------

APP, OTHER = "http://app.example:3000", "https://evil.example"


@pytest.fixture(scope="module")
def cors_srv(lmd_bin, default_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("compat-cors")
    s = Server(lmd_bin, default_model, d, "--cors-origin", APP, "--cors-origin", "https://b.example",
               "--tenants", write_tenants(d / "tenants.yaml", TENANTS))
    s.model = model_id(s.base, "sk-all")
    yield s
    s.stop()


def test_cors_off_by_default(srv):
    r = httpx.options(srv.base + "/v1/completions", timeout=10,
                      headers={"Origin": APP, "Access-Control-Request-Method": "POST"})
    assert r.status_code in (404, 405) and not any(k.startswith("access-control-") for k in r.headers)
    r = httpx.post(srv.base + "/v1/completions", headers={"Origin": APP}, timeout=60,
                   json={"model": srv.model, "prompt": "Hi", "max_tokens": 1})
    assert r.status_code == 200 and not any(k.startswith("access-control-") for k in r.headers)


def test_cors_preflight(cors_srv):
    s = cors_srv
    for path in ("/v1/chat/completions", "/v1/models", "/completions", "/tokenize"):
        r = httpx.options(s.base + path, timeout=10, headers={
            "Origin": APP, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert r.status_code == 204, (path, r.text)
        assert r.headers["access-control-allow-origin"] == APP
        assert "POST" in r.headers["access-control-allow-methods"]
        assert "GET" in r.headers["access-control-allow-methods"]
        assert r.headers["access-control-allow-headers"] == "authorization, content-type"
        assert int(r.headers["access-control-max-age"]) > 0
        assert "Origin" in r.headers["vary"]
    # Headers asked for in an odd spelling are not echoed; the usual list is sent.
    r = httpx.options(s.base + "/v1/completions", timeout=10, headers={
        "Origin": APP, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x\"y"})
    assert r.status_code == 204 and "Authorization" in r.headers["access-control-allow-headers"]
    # Another origin gets no permission (and no 204).
    r = httpx.options(s.base + "/v1/completions", timeout=10,
                      headers={"Origin": OTHER, "Access-Control-Request-Method": "POST"})
    assert r.status_code != 204 and "access-control-allow-origin" not in r.headers
    # An origin differing only by port or scheme is another origin.
    for o in ("http://app.example:3001", "https://app.example:3000", "http://app.example:3000/"):
        r = httpx.options(s.base + "/v1/models", timeout=10,
                          headers={"Origin": o, "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in r.headers, o


def test_cors_headers_on_answers(cors_srv):
    s = cors_srv
    key = {"Authorization": "Bearer sk-all"}

    def allowed(r):
        return r.headers.get("access-control-allow-origin") == APP and \
            "x-request-id" in r.headers.get("access-control-expose-headers", "").lower()

    r = httpx.post(s.base + "/v1/completions", headers={"Origin": APP, **key}, timeout=60,
                   json={"model": s.model, "prompt": "Hi", "max_tokens": 1})
    assert r.status_code == 200 and allowed(r)
    # An event stream.
    with httpx.stream("POST", s.base + "/v1/chat/completions", headers={"Origin": APP, **key}, timeout=60,
                      json={"model": s.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
                            "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream") and allowed(r)
        assert any(line == "data: [DONE]" for line in r.iter_lines())
    # Errors: a bad body, a missing key, an unknown route.
    r = httpx.post(s.base + "/v1/completions", headers={"Origin": APP, **key}, json={"prompt": 5}, timeout=10)
    assert r.status_code == 400 and allowed(r)
    r = httpx.get(s.base + "/v1/models", headers={"Origin": APP}, timeout=10)
    assert r.status_code == 401 and allowed(r)
    r = httpx.get(s.base + "/nope", headers={"Origin": APP}, timeout=10)
    assert r.status_code == 404 and allowed(r)
    r = httpx.post(s.base + "/tokenize", headers={"Origin": APP, **key}, json={"content": "Hi"}, timeout=10)
    assert r.status_code == 200 and allowed(r)
    # The other configured origin; a foreign one gets its answer without any permission.
    r = httpx.get(s.base + "/health", headers={"Origin": "https://b.example"}, timeout=10)
    assert r.headers["access-control-allow-origin"] == "https://b.example"
    r = httpx.post(s.base + "/v1/completions", headers={"Origin": OTHER, **key}, timeout=60,
                   json={"model": s.model, "prompt": "Hi", "max_tokens": 1})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    assert "Origin" in r.headers["vary"]
    # No Origin (not a browser): nothing CORS.
    r = httpx.get(s.base + "/health", timeout=10)
    assert not any(k.startswith("access-control-") for k in r.headers)


def test_cors_any_origin_from_config_file(lmd_bin, default_model, tmp_path):
    cfg = tmp_path / "lmd.yaml"
    cfg.write_text('listen:\n  cors_origins: ["*"]\n')
    s = Server(lmd_bin, default_model, tmp_path, "--config", str(cfg))
    try:
        r = httpx.options(s.base + "/v1/completions", timeout=10,
                          headers={"Origin": OTHER, "Access-Control-Request-Method": "POST"})
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"
        r = httpx.get(s.base + "/v1/models", headers={"Origin": "http://localhost:5173"}, timeout=10)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
    finally:
        s.stop()
    # The flags replace the file's list.
    s = Server(lmd_bin, default_model, tmp_path, "--config", str(cfg), "--cors-origin", APP)
    try:
        r = httpx.get(s.base + "/v1/models", headers={"Origin": OTHER}, timeout=10)
        assert "access-control-allow-origin" not in r.headers
        r = httpx.get(s.base + "/v1/models", headers={"Origin": APP}, timeout=10)
        assert r.headers["access-control-allow-origin"] == APP
    finally:
        s.stop()


@pytest.mark.parametrize("origin", ["app.example", "http://app.example/", "http://app.example/x", "ftp://a.example",
                                    "http://", "http://a b", "http://a:99999", "*.example.com"])
def test_bad_cors_origin_fails_start(lmd_bin, default_model, origin):
    p = subprocess.run([lmd_bin, "serve", "-m", default_model, "--port", "0", "--cors-origin", origin],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--cors-origin" in p.stderr, p.stderr


# ---- docs/compatibility.md, row by row ----------------------------------------------------

# A value for each field of the table that asks for something: accepted and
# ignored fields must be served with it, refused ones answered 400 naming
# the field. An entry may be a dict of several fields sent together.
SAMPLES = {
    "model": None,  # filled in with the served id
    "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    "prompt": [9259],
    "max_tokens": 1, "max_completion_tokens": 1, "n": 2, "temperature": 0.5, "top_p": 0.9,
    "presence_penalty": 0.5, "frequency_penalty": 0.5, "seed": 7, "stop": ["\n"], "logit_bias": {"9259": 1},
    "logprobs": {"chat": True, "completions": 2},
    "top_logprobs": {"logprobs": True, "top_logprobs": 2},
    "stream": True, "stream_options": {"stream": True, "stream_options": {"include_usage": True}},
    "echo": True, "user": "u", "store": True, "metadata": {"a": "b"}, "service_tier": "auto",
    "prediction": {"type": "content", "content": "x"}, "reasoning_effort": "low", "safety_identifier": "s",
    "prompt_cache_key": "k", "parallel_tool_calls": True, "verbosity": "low",
    "audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"],
    "web_search_options": {"search_context_size": "low"}, "suffix": "end", "best_of": 2,
    "response_format": {"type": "json_object"},
    # The default model has no chat template of its own, so it takes tools
    # only hidden from the prompt (tool_choice "none"); test_tools.py
    # serves them for real on a model with a tool-capable template.
    "tools": {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
              "tool_choice": "none"},
    "tool_choice": "auto", "functions": [{"name": "f", "parameters": {"type": "object"}}], "function_call": "auto",
    "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "ignore_eos": True, "priority": 5, "cache_salt": "s",
    "spaces_between_special_tokens": False, "length_penalty": 2.0, "n_keep": 4, "cache_prompt": False,
    "id_slot": 0, "skip_special_tokens": False, "stop_token_ids": [1], "include_stop_str_in_output": True,
    "min_tokens": 2, "use_beam_search": True, "prompt_logprobs": 1, "allowed_token_ids": [1, 2],
    "bad_words": ["x"], "truncate_prompt_tokens": 5, "logits_processors": ["x"], "return_tokens_as_token_ids": True,
    "guided_json": {"type": "object"}, "guided_regex": "a+", "guided_choice": ["a"], "guided_grammar": "root ::= \"a\"",
    "add_generation_prompt": False, "continue_final_message": True, "chat_template": "{{ messages }}",
    "chat_template_kwargs": {"enable_thinking": False}, "documents": [{"text": "d"}],
    "grammar": "root ::= \"a\"", "json_schema": {"type": "object"}, "repeat_penalty": 1.1, "n_predict": 4,
    "n_probs": 2, "typical_p": 0.9, "mirostat": 2, "tfs_z": 0.5, "top_n_sigma": 1.0, "xtc_probability": 0.5,
    "dry_multiplier": 0.8, "dynatemp_range": 0.5, "samplers": ["top_k"],
}


def compat_rows():
    import os
    import re
    path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "compatibility.md")
    rows = []
    for line in open(path, encoding="utf-8"):
        m = re.match(r"^\| `([a-z_]+)` \| (both|chat|completions) \| (accepted|ignored|refused) \|", line)
        if m:
            rows.append(m.groups())
    return rows


def test_compat_table_is_complete():
    rows = compat_rows()
    assert len(rows) > 70
    fields = {f for f, _, _ in rows}
    assert fields == set(SAMPLES), (fields ^ set(SAMPLES))


def test_compat_table_matches_the_server(srv):
    failures = []
    for field, where, verdict in compat_rows():
        for kind in (("chat", "completions") if where == "both" else (where,)):
            body = {"model": srv.model, "max_tokens": 1}
            if kind == "chat":
                body["messages"] = [{"role": "user", "content": "Hi"}]
            else:
                body["prompt"] = "Hi"
            v = SAMPLES[field]
            if field == "model":
                v = srv.model
            if isinstance(v, dict) and set(v) <= {"chat", "completions"}:
                v = v[kind]
            if isinstance(v, dict) and field in v:
                body.update(v)
            else:
                body[field] = v
            path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
            r = httpx.post(srv.base + path, json=body, timeout=60)
            if verdict == "refused":
                ok = r.status_code == 400 and r.json()["error"]["param"] == field
            else:
                ok = r.status_code == 200
            if not ok:
                failures.append((field, kind, verdict, r.status_code, r.text[:200]))
    assert not failures, "\n".join(map(repr, failures))


def test_alias_flag(lmd_bin, default_model, tmp_path):
    """--alias, as llama-server spells it: more names for the model of the
    -m before it (or the default model's when no -m is given)."""
    s = Server(lmd_bin, default_model, tmp_path, "--alias", "gemma-3-270m", "--alias", "google/gemma-3-270m")
    try:
        m = httpx.get(s.base + "/v1/models", timeout=10).json()["data"][0]
        assert m["id"] == "default" and {"gemma-3-270m", "google/gemma-3-270m"} <= set(m["aliases"])
        c = openai.OpenAI(base_url=s.base + "/v1", api_key="none", max_retries=0, timeout=60)
        assert c.completions.create(model="google/gemma-3-270m", prompt="Hi", max_tokens=1).model == "default"
    finally:
        s.stop()
    for args, needle in ((["--alias", "a b"], "not a model id"),
                         (["--alias", "early", "-m", default_model], "the -m before it"),
                         (["-m", "x=" + default_model, "-m", "y=" + default_model, "--alias", "x"], "x")):
        p = subprocess.run([lmd_bin, "serve", "--port", "0", "-c", "256", *args], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode != 0 and needle in p.stderr, p.stderr
