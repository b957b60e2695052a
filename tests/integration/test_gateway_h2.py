"""Gateway mode over HTTP/2: `--upstream NAME=h2c://HOST:PORT` (and h2://
over TLS) in front of real `lmd serve` upstreams on loopback addresses,
which serve h2c with prior knowledge on their normal port.

What is checked, against the upstreams' own view where it matters: greedy
answers over h2c equal the HTTP/1.1 path's, streamed or not, completions
and chat, with the upstream's usage; several concurrent streams travel on
ONE connection (counted by `ss` on the gateway's side and by the
upstream's lmd_http_connections_open); a client that disconnects resets
only its own stream (the upstream counts it as a 499, the others finish on
the same connection); an upstream killed mid-stream ends the client's
stream with an error event; a dead upstream is retried elsewhere before
the first byte and ejected; an upstream that restarts (GOAWAY on its way
down) is reconnected to; an h2c URL pointing at an HTTP/1.1-only server is
ejected with a clear message; a tenant is charged with the upstream's
usage; SIGHUP dropping an h2c upstream closes its connection once its
stream ends; SIGTERM drains a stream; h2:// negotiates h2 by ALPN with a
TLS upstream and fails clearly against one that does not offer it."""
import http.server
import json
import os
import shutil
import signal
import ssl
import subprocess
import threading

import httpx
import openai
import pytest

from test_gateway import PROMPT, UpServe, client, upstreams_served, wait_ready
from test_multimodel import Serve, free_port
from test_observability import wait_until

UP_ARGS = ("-t", "1", "-c", "512", "--max-running", "4")


def conns_to(port):
    """Established TCP connections to `port` on this machine, seen from the
    connecting side (the gateway's sockets to its upstream)."""
    out = subprocess.run(["ss", "-tnH", "state", "established", "( dport = :%d )" % port], capture_output=True,
                         text=True, check=True).stdout
    return len([ln for ln in out.splitlines() if ln.strip()])


def local_ports_to(port):
    out = subprocess.run(["ss", "-tnH", "state", "established", "( dport = :%d )" % port], capture_output=True,
                         text=True, check=True).stdout
    return sorted(ln.split()[-2].rsplit(":", 1)[1] for ln in out.splitlines() if ln.strip())


def h2c(up):
    return up.base.replace("http://", "h2c://")


@pytest.fixture(scope="module")
def ups(lmd_bin, default_model, tmp_path_factory):
    if shutil.which("ss") is None:
        pytest.skip("needs ss (iproute2) to count connections")
    d = tmp_path_factory.mktemp("gateway_h2")
    a = UpServe(lmd_bin, d, "127.0.0.12", "-m", default_model, *UP_ARGS)
    yield d, a
    a.stop()


def stream_text(resp, chat):
    """The text of an SSE response and its last usage."""
    text, usage = [], None
    for ln in resp.iter_lines():
        if not ln.startswith("data: {"):
            continue
        ev = json.loads(ln[6:])
        if ev.get("usage"):
            usage = ev["usage"]
        for ch in ev.get("choices") or []:
            text.append((ch["delta"].get("content") or "") if chat else ch["text"])
    return "".join(text), usage


def test_h2c_answers_equal_http1(lmd_bin, ups):
    d, a = ups
    # One gateway, the same upstream twice: over HTTP/1.1 and over h2c.
    g = Serve(lmd_bin, d, "--upstream", "h1=lmd+%s" % a.url, "--upstream", "h2=lmd+%s" % h2c(a))
    try:
        c = client(g)
        for chat in (False, True):
            for stream in (False, True):
                out = {}
                for model in ("h1", "h2"):
                    if chat:
                        kw = dict(model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=12,
                                  temperature=0, stream=stream)
                        if stream:
                            kw["stream_options"] = {"include_usage": True}
                            chunks = list(c.chat.completions.create(**kw))
                            out[model] = ("".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices),
                                          chunks[-1].usage.completion_tokens, chunks[-1].usage.prompt_tokens)
                        else:
                            r = c.chat.completions.create(**kw)
                            out[model] = (r.choices[0].message.content, r.usage.completion_tokens,
                                          r.usage.prompt_tokens)
                    else:
                        kw = dict(model=model, prompt=PROMPT, max_tokens=12, temperature=0, stream=stream)
                        if stream:
                            kw["stream_options"] = {"include_usage": True}
                            chunks = list(c.completions.create(**kw))
                            out[model] = ("".join(ch.choices[0].text for ch in chunks if ch.choices),
                                          chunks[-1].usage.completion_tokens, chunks[-1].usage.prompt_tokens)
                        else:
                            r = c.completions.create(**kw)
                            out[model] = (r.choices[0].text, r.usage.completion_tokens, r.usage.prompt_tokens)
                assert out["h2"] == out["h1"], (chat, stream, out)
                assert out["h2"][0] and out["h2"][1] == 12
        # The upstream's 4xx comes back with its status and message.
        with pytest.raises(openai.BadRequestError) as ei:
            c.completions.create(model="h2", prompt="word " * 700, max_tokens=4)
        assert "context" in str(ei.value).lower() or "token" in str(ei.value).lower(), str(ei.value)
        m = g.metrics()
        assert m.sum("lmd_upstream_requests_total", model="h2", outcome="ok") == 4
        assert m.sum("lmd_upstream_requests_total", model="h2", outcome="refused") == 1
        assert m.value("lmd_upstream_healthy", model="h2", backend="lmd+" + h2c(a)) == 1
        # The upstream's load gauges are scraped over the same connection.
        assert wait_until(lambda: g.metrics().series("lmd_upstream_load", model="h2"), timeout=30)
    finally:
        assert g.stop() == 0, g.log()


def test_concurrent_streams_share_one_connection(lmd_bin, ups):
    d, a = ups
    g = Serve(lmd_bin, d, "--upstream", "gemma=%s" % h2c(a), "--upstream-inflight", "4")
    try:
        body = {"model": "gemma", "prompt": PROMPT, "max_tokens": 40, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        with httpx.Client(timeout=120) as h:
            streams = [h.stream("POST", g.base + "/v1/completions", json=body) for _ in range(4)]
            resps = [s.__enter__() for s in streams]
            try:
                assert all(r.status_code == 200 for r in resps)
                assert wait_until(lambda: g.metrics().sum("lmd_upstream_inflight") == 4, timeout=60)
                # Four requests in flight, one connection from the gateway
                # (the probes ride on it too). The upstream sees it plus
                # the scrape asking.
                assert conns_to(a.port) == 1
                # (wait_until: the upstream notices a previous test's
                # gateway going only as it reads the close)
                assert wait_until(lambda: a.metrics().value("lmd_http_connections_open") == 2, timeout=30)
                results = [stream_text(r, False) for r in resps]
            finally:
                for s in streams:
                    s.__exit__(None, None, None)
        for text, usage in results:
            assert text and usage["completion_tokens"] == 40
        assert conns_to(a.port) == 1
    finally:
        assert g.stop() == 0, g.log()


def test_client_disconnect_resets_only_its_stream(lmd_bin, ups):
    d, a = ups
    g = Serve(lmd_bin, d, "--upstream", "gemma=%s" % h2c(a), "--upstream-inflight", "4")
    try:
        before = upstreams_served(a.metrics(), "499")
        long_body = {"model": "gemma", "prompt": PROMPT, "max_tokens": 400, "ignore_eos": True, "stream": True}
        keep_body = {"model": "gemma", "prompt": PROMPT, "max_tokens": 30, "ignore_eos": True, "stream": True,
                     "stream_options": {"include_usage": True}}
        with httpx.Client(timeout=120) as h, httpx.Client(timeout=120) as h2:
            with h2.stream("POST", g.base + "/v1/completions", json=keep_body) as keep:
                assert keep.status_code == 200
                with h.stream("POST", g.base + "/v1/completions", json=long_body) as gone:
                    assert gone.status_code == 200
                    for line in gone.iter_lines():
                        if line.startswith("data: {") and '"text":"' in line and '"text":""' not in line:
                            break  # output has begun: hang up
                ports = local_ports_to(a.port)
                assert len(ports) == 1
                # The upstream saw that request go (its own 499) ...
                assert wait_until(lambda: upstreams_served(a.metrics(), "499") > before, timeout=60)
                # ... while the other stream goes on to its end.
                text, usage = stream_text(keep, False)
        assert usage["completion_tokens"] == 30 and text
        # The same connection all along: the reset ended one stream only.
        assert local_ports_to(a.port) == ports
        assert wait_until(lambda: g.metrics().sum("lmd_upstream_inflight") == 0, timeout=30)
        m = g.metrics()
        assert m.sum("lmd_upstream_requests_total", outcome="cancelled") == 1
        assert m.sum("lmd_upstream_requests_total", outcome="ok") == 1
        assert m.sum("lmd_upstream_requests_total", outcome="error") == 0
    finally:
        assert g.stop() == 0, g.log()


def test_upstream_killed_mid_stream_h2c(lmd_bin, default_model, ups):
    d, _ = ups
    victim = UpServe(lmd_bin, d, "127.0.0.13", "-m", default_model, *UP_ARGS)
    g = Serve(lmd_bin, d, "--upstream", "gemma=%s" % h2c(victim))
    try:
        c = client(g)
        stream = c.chat.completions.create(model="gemma", messages=[{"role": "user", "content": PROMPT}],
                                           max_tokens=300, stream=True, extra_body={"ignore_eos": True})
        got = []
        with pytest.raises(openai.APIError) as ei:
            for ch in stream:
                if ch.choices:
                    got.append(ch.choices[0].delta.content)
                if len(got) == 3 and victim.proc.poll() is None:
                    victim.kill()  # output has begun: the upstream dies
        assert "mid-stream" in str(ei.value), str(ei.value)
        assert len(got) >= 3
        # Nobody left to serve: ejected, and the next request is a 503.
        assert wait_until(lambda: g.metrics().sum("lmd_upstream_ejections_total") >= 1, timeout=30)
        r = httpx.post(g.base + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}, timeout=60)
        assert r.status_code in (502, 503), r.text
    finally:
        assert g.stop() == 0, g.log()
        if victim.proc.poll() is None:
            victim.stop()


def test_upstream_restart_is_reconnected(lmd_bin, default_model, ups):
    d, _ = ups
    up = UpServe(lmd_bin, d, "127.0.0.14", "-m", default_model, *UP_ARGS)
    g = Serve(lmd_bin, d, "--upstream", "gemma=%s" % h2c(up))
    try:
        c = client(g)
        assert c.completions.create(model="gemma", prompt=PROMPT, max_tokens=3).usage.completion_tokens == 3
        first = local_ports_to(up.port)
        assert len(first) == 1
        # A graceful stop: the upstream says GOAWAY and closes.
        assert up.stop() == 0
        assert wait_until(lambda: conns_to(up.port) == 0, timeout=30)
        # The same address comes back: the gateway connects anew.
        log = d / "up-restarted.log"
        with open(log, "wb") as f:
            up.proc = subprocess.Popen([os.environ.get("LMD_UPSTREAM_BIN", lmd_bin), "serve", "--host", "127.0.0.14",
                                        "--port", str(up.port), "-m", default_model, *UP_ARGS], stdout=f,
                                       stderr=subprocess.STDOUT)
        wait_ready(up.base, up.proc, log.read_text)

        def served():
            try:
                return c.completions.create(model="gemma", prompt=PROMPT, max_tokens=3).usage.completion_tokens == 3
            except openai.APIError:
                return False

        assert wait_until(served, timeout=60, step=0.5), g.log()
        again = local_ports_to(up.port)
        assert len(again) == 1 and again != first
        assert g.metrics().value("lmd_upstream_healthy", backend=h2c(up)) == 1
    finally:
        assert g.stop() == 0, g.log()
        up.stop()


def test_dead_h2c_upstream_is_retried_before_first_byte(lmd_bin, ups):
    d, a = ups
    dead = "h2c://127.0.0.17:%d" % free_port()  # nothing listens there
    g = Serve(lmd_bin, d, "--upstream", "gemma=%s,%s" % (dead, h2c(a)), "--route", "rr")
    try:
        c = client(g)
        for _ in range(4):
            r = c.completions.create(model="gemma", prompt=PROMPT, max_tokens=3)
            assert r.usage.completion_tokens == 3
        m = g.metrics()
        assert m.value("lmd_upstream_healthy", model="gemma", backend=dead) == 0
        assert m.sum("lmd_upstream_requests_total", backend=dead, outcome="ok") == 0
        assert m.sum("lmd_upstream_requests_total", backend=h2c(a), outcome="ok") == 4
        assert "backend %s ejected" % dead in g.log()
    finally:
        assert g.stop() == 0, g.log()


class _Http1Only(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_h2c_to_http1_only_server_is_ejected(lmd_bin, tmp_path):
    srv = http.server.ThreadingHTTPServer(("127.0.0.15", 0), _Http1Only)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    url = "h2c://127.0.0.15:%d" % srv.server_address[1]
    g = Serve(lmd_bin, tmp_path, "--upstream", "gemma=openai+%s" % url)
    try:
        r = httpx.post(g.base + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}, timeout=60)
        assert r.status_code in (502, 503), r.text
        assert wait_until(lambda: g.metrics().value("lmd_upstream_healthy", backend="openai+" + url) == 0, timeout=30)
        log = g.log()
        assert "backend openai+%s ejected" % url in log
        assert "(last: the upstream does not speak HTTP/2" in log, log
    finally:
        assert g.stop() == 0, g.log()
        srv.shutdown()
        srv.server_close()


def test_tenant_charged_with_upstream_usage_h2c(lmd_bin, ups):
    d, a = ups
    tenants = d / "tenants-h2.yaml"
    tenants.write_text("""\
tenants:
  - name: metered
    keys: ["key-metered"]
    tokens_per_minute: 6
    tokens_burst: 600
""")
    g = Serve(lmd_bin, d, "--upstream", "gemma=%s" % h2c(a), "--tenants", str(tenants))
    try:
        c = openai.OpenAI(base_url=g.base + "/v1", api_key="key-metered", max_retries=0, timeout=60)
        prompt = "a " * 400  # ~200 tokens by lmd's estimate, ~400 by the upstream's tokenizer
        r = c.completions.create(model="gemma", prompt=prompt, max_tokens=1, temperature=0)
        assert r.usage.prompt_tokens > 300, r.usage
        # Charged with the upstream's usage, the bucket cannot take it again.
        with pytest.raises(openai.RateLimitError):
            c.completions.create(model="gemma", prompt=prompt, max_tokens=1, temperature=0)
    finally:
        assert g.stop() == 0, g.log()


def test_sighup_drops_h2c_upstream_after_its_stream(lmd_bin, default_model, ups):
    d, a = ups
    b = UpServe(lmd_bin, d, "127.0.0.16", "-m", default_model, *UP_ARGS)
    cfg = d / "gw-h2.yaml"

    def write(url):
        cfg.write_text("models:\n  - name: gemma\n    engine: remote\n    upstreams:\n      - url: %s\n" % url)

    write(h2c(b))
    g = Serve(lmd_bin, d, "--config", str(cfg))
    try:
        body = {"model": "gemma", "prompt": PROMPT, "max_tokens": 40, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        with httpx.Client(timeout=120) as h:
            with h.stream("POST", g.base + "/v1/completions", json=body) as s:
                assert s.status_code == 200
                assert wait_until(lambda: g.metrics().sum("lmd_upstream_inflight", backend=h2c(b)) == 1, timeout=30)
                write(h2c(a))
                g.proc.send_signal(signal.SIGHUP)
                assert wait_until(lambda: "backend %s added" % h2c(a) in g.log(), timeout=30)
                # The dropped upstream's connection stays for its stream.
                assert conns_to(b.port) == 1
                text, usage = stream_text(s, False)
        assert usage["completion_tokens"] == 40
        # Then it goes, and the new upstream serves.
        assert wait_until(lambda: conns_to(b.port) == 0, timeout=30)
        assert wait_until(lambda: "backend %s removed" % h2c(b) in g.log(), timeout=30)
        r = client(g).completions.create(model="gemma", prompt=PROMPT, max_tokens=2)
        assert r.usage.completion_tokens == 2
        assert conns_to(a.port) == 1
    finally:
        assert g.stop() == 0, g.log()
        b.stop()


def test_sigterm_drains_h2c_stream(lmd_bin, ups):
    d, a = ups
    g = Serve(lmd_bin, d, "--upstream", "gemma=%s" % h2c(a))
    with httpx.Client(timeout=60) as h:
        with h.stream("POST", g.base + "/v1/chat/completions",
                      json={"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 40, "ignore_eos": True,
                            "stream": True, "stream_options": {"include_usage": True}}) as s:
            assert s.status_code == 200
            g.proc.send_signal(signal.SIGTERM)
            lines = [ln for ln in s.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["usage"]["completion_tokens"] == 40
    assert g.proc.wait(timeout=30) == 0, g.log()


def _cert(tmp_path):
    cert, key = str(tmp_path / "up.crt"), str(tmp_path / "up.key")
    subprocess.check_call(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                           "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-keyout", key, "-out", cert],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


def test_h2_over_tls(lmd_bin, default_model, tmp_path):
    """h2:// to an lmd upstream serving TLS (ALPN picks h2), by host name,
    its certificate checked against LMD_UPSTREAM_CA; and to a TLS server
    that offers no h2: a clear error."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command line")
    cert, key = _cert(tmp_path)
    port = free_port()
    log = tmp_path / "up-tls.log"
    with open(log, "wb") as f:
        up = subprocess.Popen([os.environ.get("LMD_UPSTREAM_BIN", lmd_bin), "serve", "-m", default_model, "--port",
                               str(port), "-t", "1", "-c", "256", "--tls-cert", cert, "--tls-key", key], stdout=f,
                              stderr=subprocess.STDOUT)
    plain_port = free_port()
    # A TLS server without HTTP/2 (it answers TLS, and no ALPN protocol).
    plain = subprocess.Popen(["openssl", "s_server", "-accept", str(plain_port), "-cert", cert, "-key", key, "-www",
                              "-quiet"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    os.environ["LMD_UPSTREAM_CA"] = cert
    try:
        ctx = ssl.create_default_context(cafile=cert)

        def ready():
            try:
                return httpx.get("https://localhost:%d/ready" % port, verify=ctx, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(ready, timeout=60), log.read_text()
        url = "h2://localhost:%d" % port
        g = Serve(lmd_bin, tmp_path, "--upstream", "gemma=lmd+%s" % url,
                  "--upstream", "nope=h2://localhost:%d" % plain_port)
        try:
            c = client(g)
            r = c.completions.create(model="gemma", prompt=PROMPT, max_tokens=3)
            assert r.usage.completion_tokens == 3
            chunks = list(c.completions.create(model="gemma", prompt=PROMPT, max_tokens=3, stream=True))
            assert "".join(ch.choices[0].text for ch in chunks if ch.choices)
            assert g.metrics().sum("lmd_upstream_requests_total", model="gemma", outcome="ok") == 2
            r = httpx.post(g.base + "/v1/completions", json={"model": "nope", "prompt": PROMPT, "max_tokens": 2},
                           timeout=60)
            assert r.status_code in (502, 503), r.text
            assert wait_until(lambda: "the upstream did not accept h2" in g.log(), timeout=30), g.log()
        finally:
            assert g.stop() == 0, g.log()
    finally:
        del os.environ["LMD_UPSTREAM_CA"]
        plain.terminate()
        plain.wait(timeout=10)
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=30)
