"""Gateway mode: `lmd serve --upstream NAME=URL,...` in front of real
upstream servers on loopback addresses — other `lmd serve` processes on
127.0.0.2 and 127.0.0.3, and llama.cpp's `llama-server` when the peer is
installed — driven by the official `openai` client.

What is checked, each against the upstreams' own view where it matters:
requests are forwarded whole and answered in lmd's shape, streamed or not,
with the upstream's usage; both upstreams get traffic; the kind and model
of an upstream are learned from its /v1/models; an upstream killed
mid-stream ends the client's stream with an error event, and the next
requests go to the survivor (retried before the first byte, the dead one
ejected); a client that disconnects ends its upstream request (the
upstream counts it as cancelled); a full pool answers 503 with
Retry-After; an upstream's 4xx comes back with its status and message; a
tenant's token bucket is charged with the upstream's usage, not lmd's
estimate; bad --upstream values stop the server with a message.

Generations are short and contexts small: the file runs in well under a
minute on two cores."""
import json
import os
import shutil
import signal
import ssl
import subprocess
import sysconfig
import threading
import time

import httpx
import openai
import pytest

from test_multimodel import Serve, free_port
from test_observability import Metrics, wait_until

PROMPT = "The capital of France is"


def wait_ready(base, proc, log, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("exited early:\n" + log())
        try:
            if httpx.get(base + "/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("not ready:\n" + log())


class UpServe(Serve):
    """`lmd serve` on a given host (Serve binds the port it picked on 127.0.0.1)."""

    def __init__(self, lmd_bin, d, host, *args):
        self.port = free_port()
        self.base = "http://%s:%d" % (host, self.port)
        self.url = self.base
        self.log_path = d / ("up-%s-%d.log" % (host, self.port))
        # Upstreams may run another build than the gateway under test (the
        # sanitized run checks the gateway, not the upstreams' engines).
        cmd = [os.environ.get("LMD_UPSTREAM_BIN", lmd_bin), "serve", "--host", host, "--port", str(self.port), *args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_ready(self.base, self.proc, self.log)

    def metrics(self):
        return Metrics(httpx.get(self.base + "/metrics", timeout=10).text)

    def kill(self):
        self.proc.kill()
        self.proc.wait()


def upstreams_served(m, status=None):
    labels = {"status": status} if status else {}
    return m.sum("lmd_requests_total", **labels)


@pytest.fixture(scope="module")
def ups(lmd_bin, default_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("gateway")
    a = UpServe(lmd_bin, d, "127.0.0.2", "-m", default_model, "-t", "1", "-c", "512", "--max-running", "4")
    b = UpServe(lmd_bin, d, "127.0.0.3", "-m", default_model, "-t", "1", "-c", "512", "--max-running", "4")
    yield d, a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def gw(lmd_bin, ups):
    d, a, b = ups
    g = Serve(lmd_bin, d, "--upstream", "gemma=%s,lmd+%s" % (a.url, b.url), "--upstream-inflight", "2",
              "--route", "least", "--debug-endpoints")
    yield g
    assert g.stop() == 0, g.log()


def client(g):
    return openai.OpenAI(base_url=g.base + "/v1", api_key="none", max_retries=0, timeout=60)


def test_forwarded_answers_and_usage(gw, ups):
    _, a, b = ups
    c = client(gw)
    models = c.models.list().data
    assert [m.id for m in models] == ["gemma"]
    assert models[0].model_extra["metadata"]["engine"] == "remote"
    # Greedy through the gateway equals greedy straight from an upstream.
    direct = openai.OpenAI(base_url=a.base + "/v1", api_key="none", max_retries=0).completions.create(
        model="default", prompt=PROMPT, max_tokens=10, temperature=0)
    r = c.completions.create(model="gemma", prompt=PROMPT, max_tokens=10, temperature=0)
    assert r.choices[0].text == direct.choices[0].text
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == direct.usage.prompt_tokens
    assert r.usage.completion_tokens == 10
    assert r.model == "gemma" and r.id.startswith("cmpl-")
    # Streamed chat: lmd's own chunks, the upstream's usage at the end.
    chunks = list(c.chat.completions.create(model="gemma", messages=[{"role": "user", "content": "Hello"}],
                                            max_tokens=6, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens > 0
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    # Several choices: each its own upstream request.
    r = c.completions.create(model="gemma", prompt=PROMPT, max_tokens=4, n=3, temperature=0)
    assert sorted(ch.index for ch in r.choices) == [0, 1, 2]
    assert r.usage.completion_tokens == 12
    # The pool learned both upstreams' kind and model (the upstreams serve
    # 'default', not 'gemma').
    log = gw.log()
    assert "backend %s is lmd (from its /v1/models)" % a.url in log
    assert "serves 'default', not 'gemma'" in log


def test_limit_learned_from_an_lmd_upstream(lmd_bin, ups):
    """Without a configured limit the gateway takes as many requests at once
    as an lmd upstream runs (its /v1/models says max_running); a configured
    limit is kept whatever the upstream says."""
    d, a, b = ups
    models = httpx.get(a.base + "/v1/models", timeout=10).json()["data"]
    assert models[0]["max_running"] == 4
    g = Serve(lmd_bin, d, "--upstream", "gemma=%s" % a.url)
    try:
        assert wait_until(lambda: g.metrics().value("lmd_upstream_max_inflight", backend=a.url) == 4, timeout=30), \
            g.log()
        assert "serves 4 requests at once (its /v1/models)" in g.log()
        # The gateway's own /v1/models says what it runs at once (its admission cap).
        assert httpx.get(g.base + "/v1/models", timeout=10).json()["data"][0]["max_running"] >= 1
    finally:
        assert g.stop() == 0, g.log()
    g = Serve(lmd_bin, d, "--upstream", "gemma=lmd+%s" % a.url, "--upstream-inflight", "3")
    try:
        c = client(g)
        assert c.completions.create(model="gemma", prompt=PROMPT, max_tokens=2, temperature=0).choices[0].text
        assert g.metrics().value("lmd_upstream_max_inflight", model="gemma") == 3
        assert "requests at once (its" not in g.log()
    finally:
        assert g.stop() == 0, g.log()


def test_both_upstreams_get_traffic(gw, ups):
    _, a, b = ups
    before = [upstreams_served(u.metrics()) for u in (a, b)]
    c = client(gw)
    errors = []

    def one():
        try:
            c.completions.create(model="gemma", prompt=PROMPT, max_tokens=8, temperature=0)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=one) for _ in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    after = [upstreams_served(u.metrics()) for u in (a, b)]
    assert after[0] > before[0] and after[1] > before[1], (before, after)
    m = gw.metrics()
    assert m.sum("lmd_upstream_routed_total", model="gemma") >= 6
    assert m.value("lmd_upstream_max_inflight", model="gemma", backend=a.url) == 2
    assert m.sum("lmd_upstream_inflight", model="gemma") == 0
    assert m.types["lmd_upstream_response_head_seconds"] == "histogram"
    assert m.value("lmd_upstream_response_head_seconds_bucket", backend=a.url, le="+Inf") == \
        m.value("lmd_upstream_response_head_seconds_count", backend=a.url)
    if shutil.which("promtool"):
        p = subprocess.run(["promtool", "check", "metrics"], input=m.text, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr


def test_others_load_steers_routing(lmd_bin, ups):
    """An upstream busy with requests the gateway did not send (its own
    gauges, scraped) gets no new request while another is idle."""
    d, a, b = ups
    g = Serve(lmd_bin, d, "--upstream", "gemma=%s,%s" % (a.url, b.url), "--route", "ttft")
    try:
        assert wait_until(lambda: g.metrics().series("lmd_upstream_load", backend=a.url, state="running"),
                          timeout=30)
        with httpx.Client(timeout=60) as h:
            with h.stream("POST", a.base + "/v1/completions",
                          json={"prompt": PROMPT, "max_tokens": 400, "ignore_eos": True, "stream": True}) as direct:
                assert direct.status_code == 200
                assert wait_until(
                    lambda: g.metrics().value("lmd_upstream_load", backend=a.url, state="running") >= 1, timeout=30)
                c = client(g)
                for i in range(3):
                    c.completions.create(model="gemma", prompt="Hello %d" % i, max_tokens=2)
                routed = [g.metrics().sum("lmd_upstream_routed_total", backend=u.url) for u in (a, b)]
                assert routed == [0, 3], routed
    finally:
        assert g.stop() == 0, g.log()


def test_client_disconnect_cancels_upstream(gw, ups):
    _, a, b = ups
    before = sum(upstreams_served(u.metrics(), "499") for u in (a, b))
    with httpx.Client(timeout=30) as h:
        with h.stream("POST", gw.base + "/v1/completions",
                      json={"model": "gemma", "prompt": PROMPT, "max_tokens": 400, "ignore_eos": True,
                            "stream": True}) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.startswith("data: {") and '"text":"' in line and '"text":""' not in line:
                    break  # output has begun: hang up
    # The upstream itself saw its client (the gateway) go.
    assert wait_until(lambda: sum(upstreams_served(u.metrics(), "499") for u in (a, b)) > before, timeout=30)
    assert wait_until(lambda: gw.metrics().sum("lmd_upstream_inflight", model="gemma") == 0, timeout=30)
    assert gw.metrics().sum("lmd_upstream_requests_total", model="gemma", outcome="cancelled") >= 1


def test_upstream_4xx_passes_through(gw):
    # The upstreams' context is 512 tokens: a longer prompt is their 400.
    c = client(gw)
    with pytest.raises(openai.BadRequestError) as ei:
        c.completions.create(model="gemma", prompt="word " * 2000, max_tokens=4)
    assert "context" in str(ei.value)
    m = gw.metrics()
    assert m.sum("lmd_upstream_requests_total", model="gemma", outcome="refused") >= 1
    # Not retried elsewhere, and no upstream was blamed for it.
    assert m.sum("lmd_upstream_ejections_total", model="gemma") == 0


def test_refused_fields(gw):
    c = client(gw)
    with pytest.raises(openai.BadRequestError) as ei:
        c.completions.create(model="gemma", prompt=PROMPT, max_tokens=4, logprobs=2)
    assert "logprobs" in str(ei.value)
    with pytest.raises(openai.BadRequestError) as ei:
        c.completions.create(model="gemma", prompt=PROMPT, max_tokens=4, echo=True)
    assert "echo" in str(ei.value)


def test_structured_output_forwarded(gw):
    """response_format goes upstream in the body and the upstream (lmd here)
    enforces it; `grammar`, which not every upstream honours, is refused."""
    import jsonschema
    c = client(gw)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 1,
                                                                               "maximum": 9}},
              "required": ["ok", "n"], "additionalProperties": False}
    for seed in (1, 2):
        r = c.completions.create(model="gemma", prompt=PROMPT, max_tokens=40, temperature=1.0, seed=seed,
                                 extra_body={"response_format": {"type": "json_schema",
                                                                 "json_schema": {"name": "t", "schema": schema}}})
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].text), schema)
    with pytest.raises(openai.BadRequestError) as ei:
        c.completions.create(model="gemma", prompt=PROMPT, max_tokens=4, extra_body={"grammar": 'root ::= "a"'})
    assert "grammar" in str(ei.value)


def test_full_pool_is_503_with_retry_after(lmd_bin, ups):
    d, a, _ = ups
    g = Serve(lmd_bin, d, "--upstream", "gemma=%s" % a.url, "--upstream-inflight", "1", "--max-queue", "2")
    # Chat streams: their first chunk (the role) goes out at submission, so
    # the status is seen while a request still waits.
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 300, "ignore_eos": True,
            "stream": True}
    try:
        with httpx.Client(timeout=60) as h:
            with h.stream("POST", g.base + "/v1/chat/completions", json=body) as running:
                assert running.status_code == 200
                # The one upstream slot is taken: the next request waits in
                # lmd's queue, not in the upstream's (a queue of 2 keeps its
                # last quarter for the urgent class: one best_effort waits).
                assert wait_until(lambda: g.metrics().sum("lmd_upstream_inflight") == 1, timeout=30)
                with h.stream("POST", g.base + "/v1/chat/completions", json=body) as waiting:
                    assert waiting.status_code == 200
                    assert wait_until(lambda: g.metrics().sum("lmd_requests_waiting") == 1, timeout=30)
                    assert g.metrics().sum("lmd_upstream_inflight") == 1
                    r = h.post(g.base + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2})
                    assert r.status_code == 503, r.text
                    assert r.headers.get("retry-after")
                    assert r.json()["error"]["code"] == "queue_full"
    finally:
        assert g.stop() == 0, g.log()


def test_reserved_slot_serves_urgent_at_once(lmd_bin, ups):
    """An upstream cannot pause a request, so without a held slot an urgent
    request waits for a running one to end. With `reserved_slots: 1` on the
    urgent class and two upstream slots, best_effort work runs one at a time
    (the next waits in lmd's queue) and an urgent request starts at once."""
    d, a, _ = ups
    tenants = d / "tenants-reserved.yaml"
    tenants.write_text("""\
classes:
  urgent: {ttft_ms: 1000, reserved_slots: 1}
  best_effort: {ttft_ms: 15000}
tenants:
  - name: t
    keys: ["key-t"]
""")
    g = Serve(lmd_bin, d, "--upstream", "gemma=%s" % a.url, "--upstream-inflight", "2", "--tenants", str(tenants))
    body = {"model": "gemma", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 300,
            "ignore_eos": True, "stream": True, "priority": "best_effort"}
    auth = {"Authorization": "Bearer key-t"}
    try:
        with httpx.Client(timeout=60) as h:
            with h.stream("POST", g.base + "/v1/chat/completions", json=body, headers=auth) as first, \
                    h.stream("POST", g.base + "/v1/chat/completions", json=body, headers=auth) as second:
                assert first.status_code == 200 and second.status_code == 200
                assert wait_until(lambda: g.metrics().sum("lmd_requests_waiting") == 1, timeout=30)
                assert g.metrics().sum("lmd_upstream_inflight") == 1
                r = h.post(g.base + "/v1/completions", headers=auth,
                           json={"model": "gemma", "prompt": PROMPT, "max_tokens": 2, "priority": "urgent"})
                assert r.status_code == 200, r.text
                assert r.json()["usage"]["completion_tokens"] == 2
                # The best_effort requests are where they were.
                m = g.metrics()
                assert m.sum("lmd_requests_waiting") == 1 and m.sum("lmd_upstream_inflight") == 1
    finally:
        assert g.stop() == 0, g.log()


def test_tenant_charged_with_upstream_usage(lmd_bin, ups):
    d, a, _ = ups
    tenants = d / "tenants.yaml"
    tenants.write_text("""\
tenants:
  - name: metered
    keys: ["key-metered"]
    tokens_per_minute: 6
    tokens_burst: 600
""")
    g = Serve(lmd_bin, d, "--upstream", "gemma=%s" % a.url, "--tenants", str(tenants))
    try:
        c = openai.OpenAI(base_url=g.base + "/v1", api_key="key-metered", max_retries=0, timeout=60)
        # About 200 tokens by lmd's estimate (4 bytes a token), about 400
        # by the upstream's tokenizer.
        prompt = "a " * 400
        r = c.completions.create(model="gemma", prompt=prompt, max_tokens=1, temperature=0)
        assert r.usage.prompt_tokens > 300, r.usage
        # Charged with the usage (~400 of 600), the bucket no longer holds
        # the ~201 tokens the same request is admitted with; charged with
        # the estimate (~201) it would.
        with pytest.raises(openai.RateLimitError):
            c.completions.create(model="gemma", prompt=prompt, max_tokens=1, temperature=0)
    finally:
        assert g.stop() == 0, g.log()


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_upstream_killed_mid_stream(lmd_bin, default_model, ups, kind):
    """A chat stream whose upstream dies ends with an error event; a
    completion goes on, once, on another upstream from the text it had."""
    d, a, _ = ups
    victim = UpServe(lmd_bin, d, "127.0.0.4", "-m", default_model, "-t", "1", "-c", "512", "--max-running", "2")
    # Round robin from the first: the held stream goes to `a`, the next to
    # the victim.
    g = Serve(lmd_bin, d, "--upstream", "gemma=%s,%s" % (a.url, victim.url), "--upstream-inflight", "2",
              "--route", "rr")
    try:
        c = client(g)
        with httpx.Client(timeout=60) as h:
            with h.stream("POST", g.base + "/v1/completions",
                          json={"prompt": PROMPT, "max_tokens": 100, "ignore_eos": True, "stream": True}) as s1:
                assert s1.status_code == 200
                assert wait_until(lambda: g.metrics().sum("lmd_upstream_inflight", backend=a.url) == 1, timeout=30)
                if kind == "chat":
                    stream = c.chat.completions.create(model="gemma", messages=[{"role": "user", "content": PROMPT}],
                                                       max_tokens=300, stream=True, extra_body={"ignore_eos": True})
                else:
                    stream = c.completions.create(model="gemma", prompt=PROMPT, max_tokens=60, stream=True,
                                                  extra_body={"ignore_eos": True},
                                                  stream_options={"include_usage": True})
                got, last = [], None

                def consume():
                    nonlocal last
                    for ch in stream:
                        last = ch
                        if ch.choices:
                            got.append(ch.choices[0].delta.content if kind == "chat" else ch.choices[0].text)
                        if len(got) == 3 and victim.proc.poll() is None:
                            victim.kill()  # output has begun: the upstream dies

                if kind == "chat":
                    with pytest.raises(openai.APIError) as ei:
                        consume()
                    assert "mid-stream" in str(ei.value), str(ei.value)
                    assert len(got) >= 3
                else:
                    consume()
                    assert victim.proc.poll() is not None
                    # Seamless for the client: all 60 tokens, the usage of both.
                    assert last.usage.completion_tokens == 60, last.usage
                    assert "going on from there on another backend" in g.log()
        # The survivor keeps serving; the dead one is ejected after the
        # failures (the in-flight error and the probes).
        for _ in range(3):
            r = c.completions.create(model="gemma", prompt=PROMPT, max_tokens=3)
            assert r.usage.completion_tokens == 3
        assert wait_until(lambda: g.metrics().sum("lmd_upstream_ejections_total", backend=victim.url) >= 1,
                          timeout=30)
        assert g.metrics().value("lmd_upstream_healthy", model="gemma", backend=victim.url) == 0
        assert g.metrics().sum("lmd_upstream_requests_total", backend=victim.url, outcome="error") >= 1
    finally:
        assert g.stop() == 0, g.log()
        if victim.proc.poll() is None:
            victim.stop()


def test_dead_upstream_is_retried_before_first_byte(lmd_bin, ups):
    d, a, _ = ups
    dead = "http://127.0.0.5:%d" % free_port()  # nothing listens there
    g = Serve(lmd_bin, d, "--upstream", "gemma=%s,%s" % (dead, a.url), "--route", "rr")
    try:
        c = client(g)
        for _ in range(4):
            r = c.completions.create(model="gemma", prompt=PROMPT, max_tokens=3)
            assert r.usage.completion_tokens == 3
        m = g.metrics()
        assert m.value("lmd_upstream_healthy", model="gemma", backend=dead) == 0
        assert m.sum("lmd_upstream_requests_total", backend=dead, outcome="ok") == 0
    finally:
        assert g.stop() == 0, g.log()


def test_no_healthy_upstream_is_503(lmd_bin, tmp_path):
    dead = "http://127.0.0.5:%d" % free_port()
    g = Serve(lmd_bin, tmp_path, "--upstream", "gemma=%s" % dead)
    try:
        assert wait_until(lambda: g.metrics().value("lmd_upstream_healthy", backend=dead) == 0, timeout=30)
        r = httpx.post(g.base + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}, timeout=30)
        assert r.status_code == 503, r.text
        assert "no healthy upstream" in r.json()["error"]["message"]
    finally:
        assert g.stop() == 0, g.log()


@pytest.mark.parametrize("arg,msg", [
    ("gemma", "expected NAME=URL"),
    ("gemma=ftp://127.0.0.2:1", "expected [KIND+]http://"),
    ("gemma=foo+http://127.0.0.2:1", "unknown kind 'foo'"),
    ("gemma=http://127.0.0.2:99999", "port must be a number"),
    ("gemma=http://127.0.0.2:1,", "an empty URL"),
    ("bad name=http://127.0.0.2:1", "not a model id"),
])
def test_bad_upstream_flags(lmd_bin, arg, msg):
    p = subprocess.run([lmd_bin, "serve", "--port", "0", "--upstream", arg], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 2, p.stderr
    assert msg in p.stderr, p.stderr


def llama_server():
    sp = sysconfig.get_paths()["purelib"]
    path = os.path.join(sp, "bin", "llama-server")
    return (path, sp) if os.access(path, os.X_OK) else (None, None)


def test_llama_server_upstream(lmd_bin, default_model, tmp_path):
    path, sp = llama_server()
    if not path:
        pytest.skip("llama-server is not installed (scripts/install-deps.sh --peer builds it)")
    port = free_port()
    env = dict(os.environ, LD_LIBRARY_PATH="%s/lib:%s/llama_cpp/lib" % (sp, sp))
    log = tmp_path / "llama-server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([path, "-m", default_model, "--host", "127.0.0.6", "--port", str(port), "-np", "3",
                                 "-c", "1536", "-t", "1", "--metrics", "--no-webui"], stdout=f,
                                stderr=subprocess.STDOUT, env=env)
    try:
        base = "http://127.0.0.6:%d" % port
        assert wait_until(lambda: _ok(base + "/health"), timeout=120)
        # No --upstream-inflight: the gateway takes as many requests at once
        # as the server has slots (its /props total_slots, -np 3).
        g = Serve(lmd_bin, tmp_path, "--upstream", "gemma=%s" % base)
        try:
            assert wait_until(lambda: g.metrics().value("lmd_upstream_max_inflight", backend=base) == 3, timeout=30), \
                g.log()
            assert "serves 3 requests at once (its /props)" in g.log()
            c = client(g)
            r = c.completions.create(model="gemma", prompt=PROMPT, max_tokens=6, temperature=0)
            assert r.choices[0].text and r.usage.completion_tokens == 6
            chunks = list(c.chat.completions.create(model="gemma", messages=[{"role": "user", "content": "Hi"}],
                                                    max_tokens=5, stream=True,
                                                    stream_options={"include_usage": True}))
            assert chunks[-1].usage and chunks[-1].usage.completion_tokens == 5
            assert "is llamacpp (from its /v1/models)" in g.log()
        finally:
            assert g.stop() == 0, g.log()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _ok(url, verify=True):
    try:
        return httpx.get(url, timeout=1, verify=verify).status_code == 200
    except httpx.HTTPError:
        return False


def test_prefix_affinity(lmd_bin, ups):
    """Requests that share a long prefix go to the upstream that was sent it
    (its prefix cache then serves it), while unrelated prompts spread."""
    d, a, b = ups
    g = Serve(lmd_bin, d, "--upstream", "gemma=%s,%s" % (a.url, b.url), "--route", "ttft")
    try:
        c = client(g)
        system = "You are a careful assistant. " * 12  # about 350 bytes: five whole 64-byte blocks and more
        hits_before = [u.metrics().sum("lmd_prefix_cache_hits_total") for u in (a, b)]
        served_before = [upstreams_served(u.metrics()) for u in (a, b)]
        for i in range(5):
            # Greedy and past end-of-text: a sampled first token may be the
            # end (a base model after "Question 3:"), which would leave the
            # count short of what routing is checked against.
            r = c.completions.create(model="gemma", prompt=system + "Question %d:" % i, max_tokens=2, temperature=0,
                                     extra_body={"ignore_eos": True})
            assert r.usage.completion_tokens == 2
        served = [upstreams_served(u.metrics()) - s0 for u, s0 in zip((a, b), served_before)]
        assert sorted(served) == [0, 5], served
        m = g.metrics()
        assert m.sum("lmd_upstream_routed_total", reason="prefix") == 4
        # The chosen upstream computed the shared prefix once.
        hits = [u.metrics().sum("lmd_prefix_cache_hits_total") - h0 for u, h0 in zip((a, b), hits_before)]
        assert max(hits) > 0, hits
    finally:
        assert g.stop() == 0, g.log()


def test_sighup_replaces_upstreams(lmd_bin, ups):
    d, a, b = ups
    cfg = d / "gw.yaml"

    def write(url):
        cfg.write_text("models:\n  - name: gemma\n    engine: remote\n    upstreams:\n      - url: %s\n"
                       "        max_inflight: 3\n" % url)

    write(a.url)
    g = Serve(lmd_bin, d, "--config", str(cfg))
    try:
        c = client(g)
        assert c.completions.create(model="gemma", prompt=PROMPT, max_tokens=2).usage.completion_tokens == 2
        assert g.metrics().value("lmd_upstream_max_inflight", backend=a.url) == 3
        write(b.url)
        before_b = upstreams_served(b.metrics())
        g.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: not g.metrics().series("lmd_upstream_inflight", backend=a.url), timeout=30)
        assert g.metrics().value("lmd_upstream_max_inflight", backend=b.url) == 3
        for _ in range(2):
            assert c.completions.create(model="gemma", prompt=PROMPT, max_tokens=2).usage.completion_tokens == 2
        assert upstreams_served(b.metrics()) == before_b + 2
        assert "SIGHUP" in g.log() and "backend %s added" % b.url in g.log()
        # A broken file changes nothing.
        cfg.write_text("models: [\n")
        g.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "nothing changes" in g.log(), timeout=30)
        assert c.completions.create(model="gemma", prompt=PROMPT, max_tokens=2).usage.completion_tokens == 2
    finally:
        assert g.stop() == 0, g.log()


def test_tls_upstream(lmd_bin, default_model, tmp_path):
    """An https upstream, its certificate checked against LMD_UPSTREAM_CA,
    reached by host name (resolved off the loop); a gateway without that CA
    refuses it."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command line")
    cert, key = str(tmp_path / "up.crt"), str(tmp_path / "up.key")
    subprocess.check_call(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                           "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-keyout", key, "-out", cert],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = free_port()
    log = tmp_path / "up-tls.log"
    with open(log, "wb") as f:
        up = subprocess.Popen([os.environ.get("LMD_UPSTREAM_BIN", lmd_bin), "serve", "-m", default_model, "--port",
                               str(port), "-t", "1", "-c", "256", "--tls-cert", cert, "--tls-key", key], stdout=f,
                              stderr=subprocess.STDOUT)
    try:
        url = "https://localhost:%d" % port
        assert wait_until(lambda: _ok(url + "/ready", verify=ssl.create_default_context(cafile=cert)), timeout=60), \
            log.read_text()
        os.environ["LMD_UPSTREAM_CA"] = cert
        try:
            g = Serve(lmd_bin, tmp_path, "--upstream", "gemma=lmd+%s" % url)
        finally:
            del os.environ["LMD_UPSTREAM_CA"]
        try:
            r = client(g).completions.create(model="gemma", prompt=PROMPT, max_tokens=3)
            assert r.usage.completion_tokens == 3
        finally:
            assert g.stop() == 0, g.log()
        # The system's CAs do not vouch for a self-signed certificate.
        g = Serve(lmd_bin, tmp_path, "--upstream", "gemma=lmd+%s" % url)
        try:
            r = httpx.post(g.base + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}, timeout=60)
            assert r.status_code in (502, 503), r.text
        finally:
            assert g.stop() == 0, g.log()
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=30)


def test_sigterm_drains_forwarded_streams(lmd_bin, ups):
    d, a, _ = ups
    g = Serve(lmd_bin, d, "--upstream", "gemma=%s" % a.url)
    with httpx.Client(timeout=60) as h:
        with h.stream("POST", g.base + "/v1/chat/completions",
                      json={"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 40, "ignore_eos": True,
                            "stream": True, "stream_options": {"include_usage": True}}) as s:
            assert s.status_code == 200
            g.proc.send_signal(signal.SIGTERM)
            lines = [ln for ln in s.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    usage = json.loads(lines[-2][6:])["usage"]
    assert usage["completion_tokens"] == 40
    assert g.proc.wait(timeout=30) == 0, g.log()


def test_vllm_compatible_gauges(lmd_bin, default_model, tmp_path):
    """--metrics-compat vllm: vLLM's load gauges on an lmd replica, read by
    the gateway as it reads a vLLM upstream's."""
    up = UpServe(lmd_bin, tmp_path, "127.0.0.8", "-m", default_model, "-t", "1", "-c", "256", "--kv-blocks", "64",
                 "--metrics-compat", "vllm")
    g = None
    try:
        m = up.metrics()
        assert m.types["vllm:num_requests_running"] == "gauge"
        assert m.value("vllm:num_requests_waiting", model_name="default") == 0
        assert m.value("vllm:kv_cache_usage_perc", model_name="default") == 0
        assert m.value("vllm:cache_config_info", model_name="default", block_size="16", num_gpu_blocks="64") == 1
        if shutil.which("promtool"):
            # vLLM's names break one lint rule (':' is meant for recording
            # rules); they are the names its schedulers read. Nothing else.
            p = subprocess.run(["promtool", "check", "metrics"], input=m.text, capture_output=True, text=True)
            other = [ln for ln in (p.stdout + p.stderr).splitlines()
                     if ln.strip() and "should not contain ':'" not in ln]
            assert not other, other
        g = Serve(lmd_bin, tmp_path, "--upstream", "gemma=vllm+%s" % up.url)
        with httpx.Client(timeout=60) as h:
            with h.stream("POST", up.base + "/v1/completions",
                          json={"prompt": PROMPT, "max_tokens": 200, "ignore_eos": True, "stream": True}) as s:
                assert s.status_code == 200
                assert wait_until(lambda: up.metrics().value("vllm:num_requests_running", model_name="default") == 1,
                                  timeout=30)
                assert 0 < up.metrics().value("vllm:kv_cache_usage_perc", model_name="default") <= 1
                assert wait_until(lambda: g.metrics().value("lmd_upstream_load", backend="vllm+" + up.url,
                                                            state="running") == 1, timeout=30)
        r = client(g).completions.create(model="gemma", prompt=PROMPT, max_tokens=2)
        assert r.usage.completion_tokens == 2
    finally:
        if g:
            assert g.stop() == 0, g.log()
        up.stop()
