"""`lmd serve --tenants` end to end: API keys (401 + WWW-Authenticate),
models and classes a tenant may use (403 / 400), the request and token
buckets (429 + Retry-After), tenant quotas, the global queue (503 +
Retry-After), class selection by body field and header, every refusal
counted in lmd_rejections_total by reason and tenant, and the SLA
scheduler letting one urgent request of a gold tenant overtake a flood of
best-effort requests of a bronze tenant.

Every wait is bounded and every request is answered; generations are
short, so the file runs in about a minute on two cores."""
import os
import signal
import threading
import time

import httpx
import openai
import pytest

from test_observability import Server, auth, model_id, sse_events, wait_until, write_tenants

REASONS = {"unauthorized", "rate_requests", "rate_tokens", "tenant_concurrency", "tenant_queue_full", "queue_full",
           "deadline", "model_not_allowed", "class_not_allowed", "draining", "timeout"}

GOLD, BRONZE, TRICKLE, TOKENS, SINGLE, NARROW = ("sk-qos-gold", "sk-qos-bronze", "sk-qos-trickle", "sk-qos-tokens",
                                                 "sk-qos-single", "sk-qos-narrow")
LOOPER = "sk-qos-looper"
TENANT_NAMES = {"anonymous", "gold", "bronze", "trickle", "tokens", "single", "narrow", "looper"}

TENANTS = """\
# The default classes: urgent (index 0) and best_effort (index 1).
default_class: best_effort
admin_keys: ["sk-qos-admin"]
tenants:
  - name: gold
    tier: gold
    keys: ["%s"]
    weight: 3
    classes: [urgent, best_effort]
    default_class: urgent
  - name: bronze
    tier: bronze
    keys: ["%s"]
    classes: [best_effort]
  - name: trickle
    keys: ["%s"]
    requests_per_second: 0.05   # one request every 20 s
    requests_burst: 1
  - name: tokens
    keys: ["%s"]
    tokens_per_minute: 60
    tokens_burst: 60
  - name: single
    keys: ["%s"]
    max_concurrent: 1
  - name: narrow
    keys: ["%s"]
    models: ["some-other-model"]
  - name: looper
    keys: ["%s"]
    requests_per_second: 0.01   # one request every 100 s
    requests_burst: 2
""" % (GOLD, BRONZE, TRICKLE, TOKENS, SINGLE, NARROW, LOOPER)


@pytest.fixture(scope="module")
def srv(lmd_bin, default_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("qos")
    s = Server(lmd_bin, default_model, d, "--tenants", write_tenants(d / "tenants.yaml", TENANTS),
               "--sched", "sla", "--max-running", "2", "--max-queue", "32", "--io-threads", "2")
    s.model = model_id(s.base, GOLD)
    yield s
    s.stop()


def client(s, key):
    return openai.OpenAI(base_url=s.base + "/v1", api_key=key, timeout=120, max_retries=0)


def post(s, key, timeout=60, headers=None, **body):
    h = dict(headers or {})
    if key is not None:
        h.update(auth(key))
    body.setdefault("model", s.model)
    return httpx.post(s.base + "/v1/completions", json=body, headers=h, timeout=timeout)


def error_of(r, status, code=None):
    assert r.status_code == status, (r.status_code, r.text)
    e = r.json()["error"]
    assert set(e) >= {"message", "type", "param", "code"}, e
    assert isinstance(e["message"], str) and e["message"]
    if code is not None:
        assert e["code"] == code, e
    return e


def retry_after(r):
    v = r.headers.get("retry-after")
    assert v is not None and v.isdigit() and int(v) >= 1, (r.status_code, r.headers)
    return int(v)


def rejections(s, reason, tenant):
    return s.metrics().sum("lmd_rejections_total", reason=reason, tenant=tenant)


# ---- keys ------------------------------------------------------------------------

def test_unauthorized(srv):
    before = rejections(srv, "unauthorized", "anonymous")
    url = srv.base + "/v1/completions"
    body = {"model": srv.model, "prompt": "Hello", "max_tokens": 2}
    sent = 0
    for headers in ({}, auth("sk-not-a-key"), {"Authorization": "Basic " + GOLD}, {"Authorization": "Bearer"},
                    {"Authorization": GOLD}):
        r = httpx.post(url, json=body, headers=headers, timeout=10)
        sent += 1
        error_of(r, 401, "invalid_api_key")
        assert r.headers.get("www-authenticate", "").startswith("Bearer"), r.headers
        assert r.headers.get("x-request-id")
        assert GOLD not in r.text and "sk-not-a-key" not in r.text  # keys are never echoed
    # Every /v1 route needs a key.
    for method, path in (("GET", "/v1/models"), ("GET", "/v1/models/" + srv.model), ("POST", "/v1/chat/completions")):
        r = httpx.request(method, srv.base + path, timeout=10,
                          json={"model": srv.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
                          if method == "POST" else None)
        sent += 1
        error_of(r, 401, "invalid_api_key")
        assert r.headers.get("www-authenticate", "").startswith("Bearer")

    # The official client: a wrong key, and no Authorization header at all.
    c = client(srv, "sk-wrong")
    with pytest.raises(openai.AuthenticationError) as ei:
        c.completions.create(model=srv.model, prompt="Hello", max_tokens=2)
    sent += 1
    assert ei.value.status_code == 401 and ei.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model=srv.model, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                  extra_headers={"Authorization": openai.Omit()})
    sent += 1
    with pytest.raises(openai.AuthenticationError):
        c.models.list()
    sent += 1

    # Health, readiness and metrics need no key.
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(srv.base + path, timeout=10).status_code == 200, path

    # Unknown keys count as the anonymous tenant.
    assert rejections(srv, "unauthorized", "anonymous") - before == sent
    assert srv.metrics().sum("lmd_rejections_total", reason="unauthorized") - before == sent


def test_correct_key_works(srv):
    c = client(srv, GOLD)
    assert [m.id for m in c.models.list()] == [srv.model]
    r = c.completions.create(model=srv.model, prompt="The capital of France is", max_tokens=3,
                             extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3
    r = c.chat.completions.create(model=srv.model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=3)
    assert 1 <= r.usage.completion_tokens <= 3
    # The second form of the header: scheme case-insensitive, several spaces.
    r = httpx.post(srv.base + "/v1/completions", headers={"Authorization": "bearer   " + BRONZE}, timeout=60,
                   json={"model": srv.model, "prompt": "Hello", "max_tokens": 2})
    assert r.status_code == 200, r.text


# ---- models and classes ----------------------------------------------------------

def test_model_not_allowed(srv):
    before = rejections(srv, "model_not_allowed", "narrow")
    error_of(post(srv, NARROW, prompt="Hello", max_tokens=2), 403, "model_not_allowed")
    with pytest.raises(openai.PermissionDeniedError) as ei:
        client(srv, NARROW).completions.create(model=srv.model, prompt="Hello", max_tokens=2)
    assert ei.value.code == "model_not_allowed"
    assert rejections(srv, "model_not_allowed", "narrow") - before == 2


def test_class_not_allowed(srv):
    before = rejections(srv, "class_not_allowed", "bronze")
    error_of(post(srv, BRONZE, prompt="Hello", max_tokens=2, priority="urgent"), 403, "class_not_allowed")
    # vLLM's integer priority: below 0 maps to urgent under the built-in map.
    error_of(post(srv, BRONZE, prompt="Hello", max_tokens=2, priority=-1), 403, "class_not_allowed")
    error_of(post(srv, BRONZE, prompt="Hello", max_tokens=2, headers={"X-Priority": "urgent"}), 403,
             "class_not_allowed")
    error_of(post(srv, BRONZE, prompt="Hello", max_tokens=2, headers={"X-SLA": "urgent"}), 403, "class_not_allowed")
    with pytest.raises(openai.PermissionDeniedError) as ei:
        client(srv, BRONZE).completions.create(model=srv.model, prompt="Hello", max_tokens=2,
                                               extra_body={"priority": "urgent"})
    assert ei.value.status_code == 403 and ei.value.code == "class_not_allowed"
    assert rejections(srv, "class_not_allowed", "bronze") - before == 5

    # An unknown class is a bad request, pointing at the field.
    before = rejections(srv, "class_not_allowed", "gold")
    e = error_of(post(srv, GOLD, prompt="Hello", max_tokens=2, priority="platinum"), 400)
    assert e["param"] == "priority"
    with pytest.raises(openai.BadRequestError):
        client(srv, GOLD).completions.create(model=srv.model, prompt="Hello", max_tokens=2,
                                             extra_body={"priority": "platinum"})
    assert rejections(srv, "class_not_allowed", "gold") - before == 2


def test_class_selection(srv):
    """The class a request runs in, seen through lmd_requests_total."""
    def served(tenant, cls):
        return srv.metrics().sum("lmd_requests_total", status="200", tenant=tenant, **{"class": cls})

    cases = [  # (key, tenant, body extras, headers, expected class)
        (GOLD, "gold", {}, {}, "urgent"),                            # the tenant's default_class
        (GOLD, "gold", {"priority": "best_effort"}, {}, "best_effort"),
        # vLLM's integers under the built-in map: below 0 urgent, 0 the
        # tenant's default class, above 0 the last class.
        (GOLD, "gold", {"priority": 1}, {}, "best_effort"),
        (GOLD, "gold", {"priority": 0}, {}, "urgent"),
        (GOLD, "gold", {"priority": -3}, {}, "urgent"),
        (BRONZE, "bronze", {"priority": 0}, {}, "best_effort"),      # not promoted to urgent
        (BRONZE, "bronze", {"priority": 10}, {}, "best_effort"),
        (GOLD, "gold", {}, {"X-Priority": "5"}, "best_effort"),
        (GOLD, "gold", {}, {"X-Priority": "best_effort"}, "best_effort"),
        (GOLD, "gold", {}, {"X-SLA": "best_effort"}, "best_effort"),
        (BRONZE, "bronze", {}, {}, "best_effort"),                   # the file's default_class
    ]
    for key, tenant, extra, headers, cls in cases:
        before = served(tenant, cls)
        r = post(srv, key, prompt="Hi", max_tokens=1, headers=headers, **extra)
        assert r.status_code == 200, r.text
        assert wait_until(lambda: served(tenant, cls) == before + 1, timeout=5), (extra, headers, cls)
    # Through the official client.
    before = served("gold", "best_effort")
    client(srv, GOLD).completions.create(model=srv.model, prompt="Hi", max_tokens=1,
                                         extra_body={"priority": "best_effort"})
    assert wait_until(lambda: served("gold", "best_effort") == before + 1, timeout=5)


# ---- buckets and quotas --------------------------------------------------------------

def test_request_bucket_429(srv):
    before = rejections(srv, "rate_requests", "trickle")
    r = post(srv, TRICKLE, prompt="Hello", max_tokens=1)
    assert r.status_code == 200, r.text
    r = post(srv, TRICKLE, prompt="Hello", max_tokens=1)
    error_of(r, 429, "rate_limit_exceeded")
    assert 1 <= retry_after(r) <= 20  # one request every 20 s
    with pytest.raises(openai.RateLimitError) as ei:
        client(srv, TRICKLE).completions.create(model=srv.model, prompt="Hello", max_tokens=1)
    assert ei.value.status_code == 429 and ei.value.code == "rate_limit_exceeded"
    assert 1 <= int(ei.value.response.headers["retry-after"]) <= 20
    assert rejections(srv, "rate_requests", "trickle") - before == 2
    # The others are not limited by it.
    assert post(srv, GOLD, prompt="Hello", max_tokens=1).status_code == 200


def test_token_bucket(srv):
    before = rejections(srv, "rate_tokens", "tokens")
    # prompt + max_tokens above the burst can never pass: 413, no point retrying.
    r = post(srv, TOKENS, prompt="Hi", max_tokens=100)
    error_of(r, 413)
    assert "retry-after" not in r.headers
    # Prompt + 40 of the 60 tokens, all used (ignore_eos); the next such
    # request finds the bucket short (it refills one token a second).
    r = post(srv, TOKENS, prompt="Hi", max_tokens=40, ignore_eos=True)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 40, r.text
    r = post(srv, TOKENS, prompt="Hi", max_tokens=40, ignore_eos=True)
    error_of(r, 429, "rate_limit_exceeded")
    assert 1 <= retry_after(r) <= 60
    assert rejections(srv, "rate_tokens", "tokens") - before == 2


def test_tenant_concurrency_429(srv):
    before = rejections(srv, "tenant_concurrency", "single")
    with httpx.Client(timeout=60) as c:
        with c.stream("POST", srv.base + "/v1/completions", headers=auth(SINGLE),
                      json={"model": srv.model, "prompt": "Hello", "max_tokens": 200, "ignore_eos": True,
                            "stream": True}) as r:
            assert r.status_code == 200
            events = sse_events(r.iter_lines())
            next(events)  # it runs
            r2 = post(srv, SINGLE, prompt="Hello", max_tokens=1)
            error_of(r2, 429)
            assert retry_after(r2) == 1
        # Leaving the block drops the stream; its slot frees.
    assert rejections(srv, "tenant_concurrency", "single") - before == 1
    # Once the server has seen the disconnect, the tenant may send again.
    assert wait_until(lambda: post(srv, SINGLE, prompt="Hi", max_tokens=1).status_code == 200, timeout=15, step=0.2)


# ---- the SLA scheduler ---------------------------------------------------------------

def test_urgent_overtakes_flood(srv):
    """Twelve long best-effort requests of bronze fill the two running slots
    and the queue; then gold sends one short urgent request. It must finish
    before most of the flood (FCFS would finish it last), and every request
    must be answered in full."""
    assert wait_until(lambda: srv.metrics().sum("lmd_requests_running") == 0, timeout=30)
    pre0 = srv.metrics().sum("lmd_preemptions_total")
    n_flood, flood_tokens = 12, 40
    done = {}  # name -> (monotonic end, status, completion tokens)
    lock = threading.Lock()

    def go(name, key, prompt, max_tokens, priority):
        try:
            r = post(srv, key, timeout=180, prompt=prompt, max_tokens=max_tokens, ignore_eos=True,
                     priority=priority)
            got = (time.monotonic(), r.status_code, r.json().get("usage", {}).get("completion_tokens"))
        except Exception as e:  # noqa: BLE001 (recorded and asserted on below)
            got = (time.monotonic(), repr(e), None)
        with lock:
            done[name] = got

    threads = [threading.Thread(target=go, args=("bronze%d" % i, BRONZE, "Story %d:" % i, flood_tokens,
                                                 "best_effort")) for i in range(n_flood)]
    for t in threads:
        t.start()
    # Wait until the flood holds both running slots and the rest waits.
    def flooded():
        m = srv.metrics()
        return m.sum("lmd_requests_running") == 2 and m.sum("lmd_requests_waiting") == n_flood - 2
    assert wait_until(flooded, timeout=30), srv.metrics().text
    urgent = threading.Thread(target=go, args=("gold", GOLD, "Quick:", 8, "urgent"))
    urgent.start()
    for t in threads + [urgent]:
        t.join(timeout=180)
    assert len(done) == n_flood + 1, sorted(done)
    for name, (_, status, tokens) in done.items():
        assert status == 200 and tokens == (8 if name == "gold" else flood_tokens), (name, status, tokens)
    t_gold = done["gold"][0]
    before_gold = sorted(name for name, (t, _, _) in done.items() if name != "gold" and t < t_gold)
    assert len(before_gold) <= n_flood // 2, "urgent finished after %d of %d bronze requests: %s" % (
        len(before_gold), n_flood, before_gold)
    print("bronze done before the urgent request: %d of %d; preemptions: %d" % (
        len(before_gold), n_flood, srv.metrics().sum("lmd_preemptions_total") - pre0))


# ---- every refusal is counted --------------------------------------------------------

def test_rejection_labels(srv):
    # A few refusals of its own, so the test stands alone; the tests above
    # check each reason's count where they cause it.
    assert post(srv, None, prompt="Hi", max_tokens=1).status_code == 401
    assert post(srv, NARROW, prompt="Hi", max_tokens=1).status_code == 403
    assert post(srv, BRONZE, prompt="Hi", max_tokens=1, priority="urgent").status_code == 403
    m = srv.metrics()
    assert m.types.get("lmd_rejections_total") == "counter"
    series = m.series("lmd_rejections_total")
    for labels, v in series:
        assert set(labels) == {"reason", "tenant"}, labels
        assert labels["reason"] in REASONS and labels["tenant"] in TENANT_NAMES, labels
        assert v >= 1  # only label sets that counted are listed
    seen = {(lab["reason"], lab["tenant"]) for lab, _ in series}
    assert seen >= {("unauthorized", "anonymous"), ("model_not_allowed", "narrow"), ("class_not_allowed", "bronze")}
    # The global queue (32) never filled on this server.
    assert m.sum("lmd_rejections_total", reason="queue_full") == 0


# ---- without a tenants file ------------------------------------------------------------

def test_open_mode_is_anonymous(lmd_bin, default_model, tmp_path):
    s = Server(lmd_bin, default_model, tmp_path)
    try:
        model = model_id(s.base)
        for headers in ({}, auth("sk-anything")):  # no key needed; any key is ignored
            r = httpx.post(s.base + "/v1/completions", headers=headers, timeout=60,
                           json={"model": model, "prompt": "Hi", "max_tokens": 2, "priority": "urgent"})
            assert r.status_code == 200, r.text
        assert httpx.get(s.base + "/v1/models", timeout=10).status_code == 200
        def counted():
            m = s.metrics()
            return m if m.sum("lmd_requests_total") == 2 else None
        m = wait_until(counted, timeout=5)
        assert m, s.metrics().text
        assert m.sum("lmd_requests_total", status="200", tenant="anonymous", **{"class": "urgent"}) == 2
        assert m.sum("lmd_rejections_total") == 0
    finally:
        s.stop()


# ---- the global queue and the tenant queue quota ----------------------------------------

QUEUE_TENANTS = """\
tenants:
  - name: anyone
    keys: ["sk-q-anyone"]
  - name: q1
    keys: ["sk-q-one"]
    max_queued: 1
"""


@pytest.fixture(scope="module")
def small(lmd_bin, default_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("qos-small")
    s = Server(lmd_bin, default_model, d, "--tenants", write_tenants(d / "tenants.yaml", QUEUE_TENANTS),
               "--max-running", "1", "--max-queue", "2")
    s.model = model_id(s.base, "sk-q-anyone")
    yield s
    s.stop()


def test_global_queue_full_503(small):
    before = rejections(small, "queue_full", "anyone")
    results = []
    lock = threading.Lock()

    def go(i):
        try:
            r = post(small, "sk-q-anyone", timeout=120, prompt="Item %d:" % i, max_tokens=24, ignore_eos=True)
            item = (r.status_code, r)
        except Exception as e:  # noqa: BLE001
            item = (repr(e), None)
        with lock:
            results.append(item)

    n = 6
    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    statuses = sorted(str(s) for s, _ in results)
    # One runs, two wait, and a request that finds the queue full is refused.
    assert len(results) == n and set(statuses) <= {"200", "503"}, statuses
    refused = [r for s, r in results if s == 503]
    assert refused and len(refused) < n, statuses
    for r in refused:
        error_of(r, 503, "queue_full")
        retry_after(r)
    for s, r in results:
        if s == 200:
            assert r.json()["usage"]["completion_tokens"] == 24
    assert rejections(small, "queue_full", "anyone") - before == len(refused)


def test_tenant_queue_full_503(small):
    before = rejections(small, "tenant_queue_full", "q1")
    queued = []
    with httpx.Client(timeout=60) as c:
        # anyone holds the one running slot...
        with c.stream("POST", small.base + "/v1/completions", headers=auth("sk-q-anyone"),
                      json={"model": small.model, "prompt": "Hello", "max_tokens": 200, "ignore_eos": True,
                            "stream": True}) as r:
            assert r.status_code == 200
            events = sse_events(r.iter_lines())
            next(events)
            # ...q1's first request waits (answered once the stream ends)...
            waiter = threading.Thread(target=lambda: queued.append(post(small, "sk-q-one", timeout=120, prompt="Hi",
                                                                        max_tokens=2)))
            waiter.start()
            assert wait_until(lambda: small.metrics().sum("lmd_requests_waiting") == 1, timeout=15)
            # ...and its second is over its queue quota (the global queue, 2, is not full).
            r2 = post(small, "sk-q-one", prompt="Hi", max_tokens=2)
            error_of(r2, 503)
            assert retry_after(r2) == 1
        # Dropping the stream lets the waiting request run.
        waiter.join(timeout=60)
    assert len(queued) == 1 and queued[0].status_code == 200, queued
    assert rejections(small, "tenant_queue_full", "q1") - before == 1
    assert small.metrics().sum("lmd_rejections_total", reason="queue_full", tenant="q1") == 0


# ---- reloading the tenants file ----------------------------------------------------------

RELOAD_BEFORE = """\
tenants:
  - name: acme
    keys: ["sk-acme-old"]
    max_concurrent: 4
  - name: gone
    keys: ["sk-gone"]
"""

RELOAD_AFTER = """\
tenants:
  - name: acme
    keys: ["sk-acme-new"]
    models: ["no-such-model"]
"""


def status_of(s, key, model):
    return httpx.post(s.base + "/v1/completions", headers=auth(key), timeout=60,
                      json={"model": model, "prompt": "Hi", "max_tokens": 2}).status_code


def test_tenants_reload_on_sighup(lmd_bin, default_model, tmp_path):
    """A rotated key works and the old one stops working without a restart;
    a tenant dropped from the file takes no new requests; its metrics label
    stays; a file that would need a restart (a new tenant) is refused and
    the tenants in force stay."""
    path = tmp_path / "tenants.yaml"
    write_tenants(path, RELOAD_BEFORE)
    s = Server(lmd_bin, default_model, tmp_path, "--tenants", str(path))
    try:
        model = model_id(s.base, "sk-acme-old")
        assert status_of(s, "sk-acme-old", model) == 200
        assert status_of(s, "sk-gone", model) == 200
        assert status_of(s, "sk-acme-new", model) == 401
        write_tenants(path, RELOAD_AFTER)
        s.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: status_of(s, "sk-acme-new", model) != 401), s.output()
        # The model list of acme changed too: its key now reaches no model.
        assert status_of(s, "sk-acme-new", model) == 403
        assert status_of(s, "sk-acme-old", model) == 401
        assert status_of(s, "sk-gone", model) == 401
        assert "tenants gone from the file take no new requests" in s.output()
        assert s.metrics().sum("lmd_requests_total", tenant="gone") >= 1

        # Needs a restart: refused, with the reason in the log; nothing changes.
        write_tenants(path, RELOAD_AFTER + "  - name: newcomer\n    keys: [\"sk-new\"]\n")
        s.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "tenant 'newcomer' is new" in s.output()), s.output()
        assert status_of(s, "sk-new", model) == 401
        assert status_of(s, "sk-acme-new", model) == 403
    finally:
        s.stop()


def test_tenants_reload_on_watch(lmd_bin, default_model, tmp_path):
    """--watch-config notices a replaced tenants file (as a Kubernetes
    Secret update swaps it) and applies it."""
    path = tmp_path / "tenants.yaml"
    write_tenants(path, RELOAD_BEFORE)
    s = Server(lmd_bin, default_model, tmp_path, "--tenants", str(path), "--watch-config")
    try:
        model = model_id(s.base, "sk-acme-old")
        assert status_of(s, "sk-acme-old", model) == 200
        tmp = tmp_path / "tenants.yaml.new"
        write_tenants(tmp, RELOAD_BEFORE.replace("sk-acme-old", "sk-acme-rotated"))
        os.replace(tmp, path)
        assert wait_until(lambda: status_of(s, "sk-acme-rotated", model) == 200, timeout=30), s.output()
        assert status_of(s, "sk-acme-old", model) == 401
    finally:
        s.stop()


def test_refused_requests_count_against_the_request_rate(srv):
    """A prompt past the context is refused after it is read (400), and
    still takes a request from the tenant's requests/s bucket: a client
    looping such requests is held to its rate (429 before its prompt is
    read) like any other (issue: refused requests went uncounted)."""
    long_prompt = "hello " * 40000  # past any context this server has
    for _ in range(2):
        r = post(srv, LOOPER, prompt=long_prompt, max_tokens=1)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "context_length_exceeded"
    r = post(srv, LOOPER, prompt=long_prompt, max_tokens=1)
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) >= 1
    assert "request rate" in r.json()["error"]["message"]
