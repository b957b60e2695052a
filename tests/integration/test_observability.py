"""`lmd serve` observability end to end: after a known set of requests the
Prometheus counters and histogram counts equal what was sent, `promtool`
accepts the exposition, the /debug endpoints are off by default and
admin-only with a tenants file, /debug/requests shows a live request,
/debug/trace returns Chrome trace-event JSON with batched steps, and the
JSON access log carries the id that X-Request-Id sent back.

Also the shared helpers of the QoS tests (test_qos.py imports them): a
server launcher that keeps the logs in files (a pipe nobody reads would
fill up with access lines and block the server) and a parser of the text
exposition that sums samples over label subsets.

Every wait is bounded; generations are short, so the file runs in well
under a minute on two cores."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import httpx
import openai
import pytest

CTX = 1024


# ---- helpers shared with test_qos.py ------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running `lmd serve`: stdout and stderr go to files under `d`."""

    def __init__(self, lmd_bin, model, d, *extra):
        self.port = free_port()
        self.base = "http://127.0.0.1:%d" % self.port
        self.stdout_path = d / ("lmd-%d.stdout" % self.port)
        self.stderr_path = d / ("lmd-%d.stderr" % self.port)
        self.cmd = [lmd_bin, "serve", "-m", model, "--port", str(self.port), "-t", "2", "-c", str(CTX), *extra]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=err)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("lmd serve exited early (%s):\n%s" % (" ".join(self.cmd), self.output()))
            try:
                if httpx.get(self.base + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("lmd serve did not become ready in 60 s:\n" + self.output())
            time.sleep(0.1)
        self.model = None  # set by the fixture, which knows a key that may list the models

    def stderr(self):
        return self.stderr_path.read_text(errors="replace")

    def output(self):
        return self.stdout_path.read_text(errors="replace") + self.stderr()

    def metrics(self):
        r = httpx.get(self.base + "/metrics", timeout=10)
        assert r.status_code == 200, r.text
        return Metrics(r.text)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?[ \t]+(\S+)(?:[ \t]+-?\d+)?$')
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def _parse_labels(s):
    labels, pos = {}, 0
    while pos < len(s):
        m = _LABEL.match(s, pos)
        if not m:
            raise ValueError("bad label set {%s}" % s)
        labels[m.group(1)] = re.sub(r'\\[\\"n]', lambda e: _UNESCAPE[e.group(0)], m.group(2))
        pos = m.end()
    return labels


class Metrics:
    """A parsed Prometheus text exposition (format 0.0.4)."""

    def __init__(self, text):
        self.text = text
        self.samples = []  # [(name, {label: value}, float)]
        self.types = {}    # family -> counter, gauge, histogram, ...
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 4 and parts[1] == "TYPE":
                    self.types[parts[2]] = parts[3].strip()
                continue
            m = _SAMPLE.match(line)
            assert m, "unparsable exposition line: %r" % line
            labels = _parse_labels(m.group(2)[1:-1]) if m.group(2) else {}
            self.samples.append((m.group(1), labels, float(m.group(3))))

    def series(self, name, **labels):
        """Every sample of `name` whose labels include `labels`."""
        return [(lab, v) for n, lab, v in self.samples
                if n == name and all(lab.get(k) == str(want) for k, want in labels.items())]

    def has(self, name):
        return any(n == name for n, _, _ in self.samples)

    def sum(self, name, **labels):
        """The sum over the matching samples; 0 when none match (counters
        with a label set that never counted are not listed)."""
        return sum(v for _, v in self.series(name, **labels))

    def value(self, name, **labels):
        """The one matching sample; fails when there is not exactly one."""
        s = self.series(name, **labels)
        assert len(s) == 1, "%s%r: %d samples: %r" % (name, labels, len(s), s)
        return s[0][1]


def wait_until(pred, timeout=20, step=0.05):
    """Poll `pred` until it is true or `timeout` seconds pass; returns its
    last value, so the caller asserts on it."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)


def write_tenants(path, text):
    path.write_text(text)
    os.chmod(path, 0o600)
    return str(path)


def model_id(base, key=None):
    h = {"Authorization": "Bearer " + key} if key else {}
    return httpx.get(base + "/v1/models", headers=h, timeout=10).json()["data"][0]["id"]


def sse_events(lines):
    """The data payloads of an SSE line iterator, as they come."""
    for line in lines:
        if line.startswith("data: "):
            yield line[6:]


# ---- fixtures ----------------------------------------------------------------

ADMIN = "sk-obs-admin"
ALPHA = "sk-obs-alpha"
BETA = "sk-obs-beta"
CLASSES = ("urgent", "best_effort")

TENANTS = """\
admin_keys: ["%s"]
tenants:
  - name: alpha
    keys: ["%s"]
  - name: beta
    keys: ["%s"]
""" % (ADMIN, ALPHA, BETA)


@pytest.fixture(scope="module")
def srv(lmd_bin, default_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("obs")
    s = Server(lmd_bin, default_model, d, "--tenants", write_tenants(d / "tenants.yaml", TENANTS),
               "--debug-endpoints", "--log-format", "json", "--max-running", "4", "--io-threads", "2")
    s.model = model_id(s.base, ALPHA)
    yield s
    s.stop()


def client_for(s, key):
    return openai.OpenAI(base_url=s.base + "/v1", api_key=key, timeout=60, max_retries=0)


def auth(key):
    return {"Authorization": "Bearer " + key}


def idle(s):
    """Wait until nothing runs or waits and every KV block is free again."""
    def quiet():
        m = s.metrics()
        return (m.sum("lmd_requests_running") == 0 and m.sum("lmd_requests_waiting") == 0
                and m.sum("lmd_kv_blocks_free") == m.sum("lmd_kv_blocks_capacity"))
    assert wait_until(quiet, timeout=30), s.metrics().text


# ---- metrics -----------------------------------------------------------------

TIME_HISTS = ("lmd_time_to_first_token_seconds", "lmd_e2e_request_latency_seconds", "lmd_request_queue_time_seconds",
              "lmd_request_prefill_time_seconds", "lmd_request_decode_time_seconds")


def test_counters_match_requests(srv):
    idle(srv)
    before = srv.metrics()
    c = client_for(srv, ALPHA)
    # Short distinct prompts (under one 16-token KV block, so no prefix-cache
    # reuse), n = 1, a fixed length (ignore_eos), both classes.
    sent = []  # (class, prompt_tokens, completion_tokens)
    plain = [("The capital of France is", "urgent", 5), ("One, two, three,", "best_effort", 6),
             ("Water boils at", "urgent", 4), ("My favourite food is", "best_effort", 7),
             ("In the beginning", "urgent", 3)]
    for prompt, cls, n in plain:
        r = c.completions.create(model=srv.model, prompt=prompt, max_tokens=n, temperature=0,
                                 extra_body={"ignore_eos": True, "priority": cls})
        assert r.usage.completion_tokens == n
        sent.append((cls, r.usage.prompt_tokens, r.usage.completion_tokens))
    streamed = [("The sky is", "best_effort", 6), ("Once upon a time", "urgent", 4),
                ("The best way to learn is", "best_effort", 5)]
    for prompt, cls, n in streamed:
        chunks = list(c.completions.create(model=srv.model, prompt=prompt, max_tokens=n, temperature=0, stream=True,
                                           stream_options={"include_usage": True},
                                           extra_body={"ignore_eos": True, "priority": cls}))
        usage = chunks[-1].usage
        assert usage is not None and usage.completion_tokens == n
        sent.append((cls, usage.prompt_tokens, usage.completion_tokens))

    # The counters are updated as a request ends, before or just after its
    # last byte: allow the last one a moment.
    def settled():
        m = srv.metrics()
        return m if m.sum("lmd_requests_total") - before.sum("lmd_requests_total") >= len(sent) else None
    after = wait_until(settled, timeout=10) or srv.metrics()

    def delta(name, **labels):
        return after.sum(name, **labels) - before.sum(name, **labels)

    assert delta("lmd_requests_total") == len(sent), after.text
    assert delta("lmd_requests_total", status="200", tenant="alpha", model=srv.model) == len(sent)
    for cls in CLASSES:
        n_cls = sum(1 for k, _, _ in sent if k == cls)
        assert delta("lmd_requests_total", status="200", tenant="alpha", model=srv.model, **{"class": cls}) == n_cls
        for h in TIME_HISTS:
            got = delta(h + "_count", **{"class": cls})
            assert got == n_cls, "%s_count{class=%s}: %s, want %d" % (h, cls, got, n_cls)
            assert delta(h + "_count", model=srv.model, **{"class": cls}) == n_cls
        # Every token after the first is one inter-token observation.
        itl = sum(ct - 1 for k, _, ct in sent if k == cls)
        assert delta("lmd_inter_token_latency_seconds_count", **{"class": cls}) == itl
    assert delta("lmd_prompt_tokens_total") == sum(pt for _, pt, _ in sent)
    assert delta("lmd_generation_tokens_total") == sum(ct for _, _, ct in sent)
    assert delta("lmd_engine_step_seconds_count") > 0
    assert delta("lmd_batch_size_count") > 0 and delta("lmd_batch_tokens_count") > 0
    # A batch has at least one token per sequence.
    assert delta("lmd_batch_tokens_sum") >= delta("lmd_batch_size_sum") > 0

    # Histogram invariants on the final exposition: cumulative buckets,
    # _count equal to the +Inf bucket.
    for h in TIME_HISTS + ("lmd_engine_step_seconds", "lmd_batch_size", "lmd_batch_tokens"):
        assert after.types.get(h) == "histogram", h
        for labels, count in after.series(h + "_count"):
            buckets = [(float(lab["le"]), v) for lab, v in after.series(h + "_bucket", **labels)]
            assert buckets, (h, labels)
            buckets.sort()
            assert buckets[-1][0] == float("inf") and buckets[-1][1] == count, (h, labels)
            assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), (h, labels, buckets)

    # Families and gauges that must exist, with their types.
    for name, typ in (("lmd_preemptions_total", "counter"), ("lmd_prompt_tokens_total", "counter"),
                      ("lmd_generation_tokens_total", "counter"), ("lmd_requests_total", "counter"),
                      ("lmd_requests_running", "gauge"), ("lmd_requests_waiting", "gauge"),
                      ("lmd_kv_cache_usage_ratio", "gauge"), ("lmd_kv_blocks_free", "gauge"),
                      ("lmd_kv_blocks_capacity", "gauge")):
        assert after.types.get(name) == typ, (name, after.types.get(name))
        assert after.has(name), name
    for cls in CLASSES:
        after.value("lmd_requests_waiting", **{"class": cls})
    idle(srv)
    m = srv.metrics()
    assert m.value("lmd_requests_running") == 0
    assert m.value("lmd_kv_blocks_capacity") > 0
    assert m.value("lmd_kv_blocks_free") == m.value("lmd_kv_blocks_capacity")
    assert m.value("lmd_kv_cache_usage_ratio") == 0


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian package prometheus)")
def test_promtool_accepts_exposition(srv):
    # Some traffic first, so that the histograms and labelled counters have
    # data and a refusal is listed.
    c = client_for(srv, BETA)
    c.completions.create(model=srv.model, prompt="Hello", max_tokens=2, extra_body={"priority": "urgent"})
    assert httpx.post(srv.base + "/v1/completions", json={"prompt": "x", "max_tokens": 1},
                      headers=auth("sk-nobody"), timeout=10).status_code == 401
    r = httpx.get(srv.base + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain") and "version=0.0.4" in r.headers["content-type"]
    out = subprocess.run([PROMTOOL, "check", "metrics"], input=r.content, capture_output=True, timeout=60)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), (out.stdout + out.stderr).decode()


# ---- X-Request-Id and the access log --------------------------------------------

def access_lines(s):
    """The JSON access-log objects on the server's stderr so far."""
    lines = []
    for line in s.stderr().splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)  # --log-format json: every log line is one JSON object
        if obj.get("msg") == "access":
            lines.append(obj)
    return lines


def test_every_response_has_request_id(srv):
    for method, path, headers in (("GET", "/health", {}), ("GET", "/ready", {}), ("GET", "/metrics", {}),
                                  ("GET", "/v1/models", auth(ALPHA)), ("GET", "/v1/models", {}),
                                  ("GET", "/no/such/route", {}), ("GET", "/debug/requests", {})):
        r = httpx.request(method, srv.base + path, headers=headers, timeout=10)
        assert r.headers.get("x-request-id"), (method, path, r.status_code)


def test_json_access_log(srv):
    # A server-made id (non-streamed), a client-chosen id (streamed), and a
    # refusal: each one's access line carries the id its response carried.
    url = srv.base + "/v1/completions"
    r1 = httpx.post(url, headers=auth(ALPHA), timeout=60,
                    json={"model": srv.model, "prompt": "Hello there", "max_tokens": 3, "ignore_eos": True,
                          "priority": "best_effort"})
    assert r1.status_code == 200, r1.text
    id1 = r1.headers["x-request-id"]
    mine = "itest-access-0001"
    with httpx.stream("POST", url, headers={**auth(BETA), "X-Request-Id": mine}, timeout=60,
                      json={"model": srv.model, "prompt": "Hi", "max_tokens": 4, "ignore_eos": True,
                            "stream": True, "stream_options": {"include_usage": True},
                            "priority": "urgent"}) as r2:
        assert r2.status_code == 200
        id2 = r2.headers["x-request-id"]
        events = list(sse_events(r2.iter_lines()))
    assert id2 == mine
    assert events[-1] == "[DONE]"
    usage2 = json.loads(events[-2])["usage"]
    r3 = httpx.post(url, headers=auth("sk-wrong"), json={"prompt": "x", "max_tokens": 1}, timeout=10)
    assert r3.status_code == 401
    id3 = r3.headers["x-request-id"]

    def find():
        by_id = {}
        for obj in access_lines(srv):
            by_id.setdefault(obj.get("id"), []).append(obj)
        return by_id if id1 in by_id and id2 in by_id else None
    by_id = wait_until(find, timeout=10)
    assert by_id, "no access line for %s and %s in:\n%s" % (id1, id2, srv.stderr()[-4000:])

    keys = ("id", "tenant", "class", "model", "status", "prompt_tokens", "output_tokens", "finish")
    [a1] = by_id[id1]
    assert all(k in a1 for k in keys), a1
    assert (a1["status"], a1["tenant"], a1["class"], a1["model"]) == (200, "alpha", "best_effort", srv.model)
    assert a1["prompt_tokens"] == r1.json()["usage"]["prompt_tokens"]
    assert a1["output_tokens"] == 3 and a1["finish"] == "length"
    assert a1.get("path") == "/v1/completions" and a1.get("method") == "POST"
    [a2] = by_id[id2]
    assert (a2["status"], a2["tenant"], a2["class"], a2["model"]) == (200, "beta", "urgent", srv.model)
    assert a2["prompt_tokens"] == usage2["prompt_tokens"] and a2["output_tokens"] == usage2["completion_tokens"] == 4
    assert a2["finish"] == "length"
    # The refusal is logged too (it is a finished HTTP request), with its status.
    a3 = wait_until(lambda: [o for o in access_lines(srv) if o.get("id") == id3], timeout=5)
    assert a3 and a3[0]["status"] == 401, a3


# ---- /debug ----------------------------------------------------------------------

def test_debug_endpoints_off_without_flag(lmd_bin, default_model, tmp_path):
    s = Server(lmd_bin, default_model, tmp_path)
    try:
        for path in ("/debug/requests", "/debug/trace?seconds=1"):
            r = httpx.get(s.base + path, timeout=10)
            assert r.status_code == 404, (path, r.status_code, r.text)
    finally:
        s.stop()
    # With the flag and no tenants file, they are open.
    s = Server(lmd_bin, default_model, tmp_path, "--debug-endpoints")
    try:
        r = httpx.get(s.base + "/debug/requests", timeout=10)
        assert r.status_code == 200 and r.json()["requests"] == [], r.text
        r = httpx.get(s.base + "/debug/trace?seconds=1", timeout=40)
        assert r.status_code == 200 and isinstance(r.json()["traceEvents"], list)
    finally:
        s.stop()


def test_debug_endpoints_admin_only(srv):
    for path in ("/debug/requests", "/debug/trace?seconds=1"):
        assert httpx.get(srv.base + path, timeout=10).status_code == 401, path
        assert httpx.get(srv.base + path, headers=auth("sk-wrong"), timeout=10).status_code == 401, path
        r = httpx.get(srv.base + path, headers=auth(ALPHA), timeout=10)  # a tenant, not an admin
        assert r.status_code == 403, (path, r.status_code)
        r = httpx.get(srv.base + path, headers=auth(ADMIN), timeout=40)
        assert r.status_code == 200, (path, r.status_code, r.text)
        r.json()


def test_debug_requests_shows_live_request(srv):
    idle(srv)
    body = {"model": srv.model, "prompt": "Once upon a time there was", "max_tokens": 300, "ignore_eos": True,
            "stream": True, "priority": "best_effort"}
    with httpx.Client(timeout=60) as c:
        with c.stream("POST", srv.base + "/v1/completions", json=body, headers=auth(BETA)) as r:
            assert r.status_code == 200
            events = sse_events(r.iter_lines())
            for _ in range(4):  # four tokens out: it is decoding
                json.loads(next(events))
            d = httpx.get(srv.base + "/debug/requests", headers=auth(ADMIN), timeout=10)
            assert d.status_code == 200, d.text
            reqs = d.json()["requests"]
            mine = [q for q in reqs if q.get("tenant") == "beta" and q.get("state") != "done"]
            assert len(mine) == 1, reqs
            q = mine[0]
            for k in ("id", "tenant", "class", "state", "prompt_tokens", "generated_tokens", "age_s", "queued_s",
                      "kv_blocks"):
                assert k in q, (k, q)
            assert q["state"] == "decode", q
            assert q["class"] == "best_effort"
            assert q["prompt_tokens"] > 0
            assert 4 <= q["generated_tokens"] < 300
            assert q["kv_blocks"] > 0
            assert q["age_s"] >= q["queued_s"] >= 0
        # Leaving the block drops the stream; the server cancels it.
    idle(srv)
    reqs = httpx.get(srv.base + "/debug/requests", headers=auth(ADMIN), timeout=10).json()["requests"]
    assert all(q["state"] == "done" for q in reqs if q.get("tenant") == "beta"), reqs


def test_debug_trace_has_batched_steps(srv):
    idle(srv)
    results = []

    def go(i):
        cls = CLASSES[i % 2]
        r = httpx.post(srv.base + "/v1/completions", headers=auth(ALPHA), timeout=120,
                       json={"model": srv.model, "prompt": "Count: %d," % i, "max_tokens": 8, "ignore_eos": True,
                             "priority": cls})
        results.append(r.status_code)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == [200] * 6
    r = httpx.get(srv.base + "/debug/trace?seconds=30", headers=auth(ADMIN), timeout=60)
    assert r.status_code == 200
    trace = json.loads(r.text)
    events = trace["traceEvents"]
    assert isinstance(events, list) and events
    steps = [e for e in events if e.get("name") == "step" and e.get("ph") == "X"]
    assert steps, events[:20]
    for e in steps:
        assert e["dur"] >= 0 and e["ts"] > 0 and "seqs" in e["args"] and "tokens" in e["args"]
        assert e["args"]["tokens"] >= e["args"]["seqs"] >= 1
    assert max(e["args"]["seqs"] for e in steps) > 1, [e["args"] for e in steps]
    # The six requests appear as async slices with their class and tenant.
    begins = [e for e in events if e.get("name") == "request" and e.get("ph") == "b"]
    ends = [e for e in events if e.get("name") == "request" and e.get("ph") == "e"]
    alpha = [e for e in begins if e["args"].get("tenant") == "alpha"]
    assert len(alpha) >= 6, begins
    assert {e["args"]["class"] for e in alpha} >= set(CLASSES)
    assert sum(1 for e in ends if e["args"].get("generated_tokens") == 8) >= 6
