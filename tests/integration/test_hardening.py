"""`lmd serve` under hostile input and resource exhaustion: each test here
guards a failure that was once seen (a 500 for a client's mistake, an event
loop spinning out of file descriptors), with a real server and real sockets
on loopback."""
import json
import os
import resource
import signal
import socket
import threading
import time

import httpx
import pytest

from test_server import metric, rss_kib, server_log, start_server, stop_server


@pytest.fixture(scope="module")
def server(lmd_bin, default_model):
    proc, base = start_server(lmd_bin, default_model)
    yield base
    stop_server(proc)


@pytest.mark.parametrize("field", ["top_p", "repetition_penalty"])
def test_float_zero_is_400_not_500(server, field):
    """1e-46 is positive as a double and zero as the samplers' float."""
    r = httpx.post(server + "/v1/completions", json={"prompt": "x", "max_tokens": 1, field: 1e-46}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field
    assert "32-bit float" in err["message"]


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "h2c"])
@pytest.mark.parametrize("path", ["/v1/x%ff", "/v1/x%c3", "/v1/\xff"])
def test_non_utf8_path_is_404_json(server, path, http2):
    if "\xff" in path:
        # A raw byte: httpx would percent-encode it, so write the request by hand (HTTP/1.1 only).
        if http2:
            pytest.skip("a raw non-UTF-8 byte is sent over HTTP/1.1 only")
        host, port = server[len("http://"):].split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"GET /v1/\xff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404"), head
        assert b"application/json" in head.lower()
        assert b'"not_found"' in body
        body.decode("utf-8")  # valid UTF-8
        return
    with httpx.Client(http1=not http2, http2=http2, timeout=10) as c:
        r = c.get(server + path)
    assert r.status_code == 404, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == "not_found"


def raw_exchange(server, request, timeout=20):
    """Send request bytes on one HTTP/1.1 connection; everything the server
    sends until it closes the connection (or the timeout)."""
    host, port = server[len("http://"):].split(":")
    data = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        try:
            while chunk := s.recv(65536):
                data += chunk
        except socket.timeout:
            pass
    return data


SMUGGLED = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("headers", [
    b"Content-Length: 2\r\nContent-Length: 40\r\n",
    b"Content-Length: 40\r\ncontent-length: 2\r\n",
    b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
], ids=["two-lengths", "two-lengths-reversed", "length-and-chunked"])
def test_ambiguous_framing_is_400_and_closes(server, headers):
    """RFC 9112 6.3: a request whose length two parsers could read two ways
    is a 400 and the connection closes, so nothing after it is read as a
    request (a smuggled request behind a proxy)."""
    body = b"{}"
    req = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + headers + b"\r\n"
    if b"chunked" in headers:
        req += b"2\r\n{}\r\n0\r\n\r\n"
    else:
        req += body + b" " * 38
    data = raw_exchange(server, req + SMUGGLED)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), data[:300]
    assert b"framing" in rest and b"bad_framing" in rest, rest[:300]
    # One answer only: the request after the body was never read.
    assert data.count(b"HTTP/1.1 ") == 1, data


def test_repeated_equal_content_length_is_accepted(server):
    """The same length twice frames the body one way only: served."""
    req = (b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: 17\r\nContent-Length: 17\r\nConnection: close\r\n\r\n{\"content\": \"hi\"}")
    data = raw_exchange(server, req)
    assert data.startswith(b"HTTP/1.1 200"), data[:300]


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def test_out_of_file_descriptors_backs_off(lmd_bin, default_model):
    """With its descriptors exhausted the server stops accepting for a
    moment instead of spinning on a readable listener, logs it once, counts
    it, keeps serving the connections it has, and accepts again once they
    close."""
    limit = 48

    def low_fd_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    proc, base = start_server(lmd_bin, default_model, preexec_fn=low_fd_limit)
    host, port = base[len("http://"):].split(":")
    held = []
    try:
        keep = httpx.Client(timeout=30)  # one connection opened before the flood, reused after it
        assert keep.get(base + "/health").status_code == 200
        for _ in range(2 * limit):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((host, int(port)))
            held.append(s)
        time.sleep(1.0)  # let the server run out and settle
        c0 = cpu_seconds(proc.pid)
        time.sleep(2.0)
        used = cpu_seconds(proc.pid) - c0
        # Spinning on the listener burns the whole 2 s; backing off, a few ms.
        assert used < 0.5, f"the server used {used:.2f} s of CPU in 2 s while out of descriptors"
        # The connection it already had still works.
        assert keep.get(base + "/health").status_code == 200
        # (/metrics is read over the same connection: a new one would wait in the backlog.)
        pauses = 0
        for line in keep.get(base + "/metrics").text.splitlines():
            if line.startswith("lmd_http_accept_pauses_total "):
                pauses = float(line.split()[1])
        assert pauses >= 1
    finally:
        for s in held:
            s.close()
    # Room again: new connections are accepted and served.
    deadline = time.monotonic() + 30
    while True:
        try:
            r = httpx.post(base + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=10)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert r.status_code == 200, r.text
    log = server_log(proc)
    assert log.count("Too many open files") == 1, log[-2000:]
    keep.close()
    stop_server(proc)


def test_drain_timeout_cuts_are_errors_not_stops(lmd_bin, default_model):
    """Requests cut by --drain-timeout never come back as 200 with
    finish_reason "stop": a running stream ends with an error event after
    the tokens it had, a queued non-streamed request gets 503 with
    Retry-After, and the access log records both as 503."""
    proc, base = start_server(lmd_bin, default_model, "--drain-timeout", "1", "--max-running", "1",
                              "--log-format", "json")
    try:
        long_body = {"prompt": "1, 2, 3,", "max_tokens": 600, "ignore_eos": True, "temperature": 0}
        results = {}

        def queued():
            try:
                r = httpx.post(base + "/v1/completions", json={**long_body, "max_tokens": 50}, timeout=60,
                               headers={"X-Request-Id": "cut-queued"})
                results["queued"] = r
            except httpx.HTTPError as e:  # pragma: no cover - reported below
                results["queued"] = e

        with httpx.stream("POST", base + "/v1/completions", json={**long_body, "stream": True}, timeout=60,
                          headers={"X-Request-Id": "cut-stream"}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            events = []
            for line in lines:
                if line.startswith("data: "):
                    events.append(line[6:])
                    break
            t = threading.Thread(target=queued)
            t.start()
            # The second request waits in the queue (max-running 1) before the signal.
            deadline = time.monotonic() + 20
            while metric(base, "lmd_requests_waiting") < 1:
                assert time.monotonic() < deadline, "the second request never queued"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            for line in lines:
                if line.startswith("data: "):
                    events.append(line[6:])
            t.join(timeout=60)
        payloads = [json.loads(e) for e in events if e != "[DONE]"]
        errors = [p for p in payloads if "error" in p]
        assert len(errors) == 1, events[-3:]
        assert errors[0]["error"]["code"] == "server_shutdown"
        finishes = [c.get("finish_reason") for p in payloads if "choices" in p for c in p["choices"]]
        assert not any(finishes), finishes  # no choice claims to have finished
        assert sum(1 for p in payloads if "choices" in p and p["choices"][0]["text"]) >= 1  # tokens came first
        q = results["queued"]
        assert isinstance(q, httpx.Response), q
        assert q.status_code == 503, q.text
        assert q.json()["error"]["code"] == "server_shutdown"
        assert q.headers.get("retry-after")
        assert proc.wait(timeout=30) == 0
        access = access_by_id(proc)
        assert [a["status"] for a in access["cut-stream"]] == [503], access.get("cut-stream")
        assert [a["status"] for a in access["cut-queued"]] == [503], access.get("cut-queued")
        assert access["cut-stream"][0]["finish"] == "shutdown"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_huge_prompt_refused_before_tokenizing(server):
    """Megabytes of prompt that cannot fit the context are refused from
    their length alone (no token is longer than the vocabulary's longest
    piece), before the tokenizer would hold the I/O thread."""
    big = "hello world " * 330000  # 3.96 MB
    r = httpx.post(server + "/v1/completions", json={"prompt": big, "max_tokens": 1}, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded"
    assert "make at least" in err["message"]  # the byte gate, not the tokenizer's count
    r = httpx.post(server + "/v1/chat/completions", timeout=60,
                   json={"messages": [{"role": "user", "content": big}], "max_tokens": 1})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "messages"


def access_by_id(proc):
    """The JSON access-log objects so far, by request id."""
    out = {}
    for line in server_log(proc).splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get("msg") == "access":
            out.setdefault(obj.get("id"), []).append(obj)
    return out


def test_every_route_gets_an_access_line(lmd_bin, default_model):
    """Not only generation requests: /health, /ready, /metrics, /v1/models,
    an unknown path (a non-UTF-8 one too) and a wrong method each log one
    access line with the status they were answered."""
    proc, base = start_server(lmd_bin, default_model, "--log-format", "json")
    try:
        cases = [("GET", "/health", 200), ("GET", "/ready", 200), ("GET", "/metrics", 200),
                 ("GET", "/v1/models", 200), ("GET", "/no/such/route", 404), ("GET", "/v1/x%ff", 404),
                 ("GET", "/v1/completions", 405), ("POST", "/health", 405)]
        with httpx.Client(timeout=10) as c:
            for i, (method, path, status) in enumerate(cases):
                r = c.request(method, base + path, headers={"X-Request-Id": "route-%d" % i})
                assert r.status_code == status, (method, path, r.status_code)
        deadline = time.monotonic() + 10
        while True:
            got = access_by_id(proc)
            if all("route-%d" % i in got for i in range(len(cases))) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        for i, (method, path, status) in enumerate(cases):
            lines = got.get("route-%d" % i)
            assert lines and len(lines) == 1, (path, lines, server_log(proc)[-2000:])
            assert lines[0]["status"] == status
            assert lines[0]["method"] == method
    finally:
        stop_server(proc)


def test_overload_answers_complete_or_refuses(lmd_bin, default_model):
    """A bounded burst far past capacity (48 requests at once against 2
    running slots and a queue of 4): every request gets either a complete
    answer (its finish_reason and usage agree with what it asked for) or a
    429/503 with Retry-After, nothing hangs or is lost, every KV block comes
    back, and the server's memory does not grow with the burst."""
    proc, base = start_server(lmd_bin, default_model, "--max-running", "2", "--max-queue", "4")
    try:
        total_blocks = metric(base, "lmd_kv_blocks_capacity")
        # Warm up (weights paged in, buffers sized) so the memory bound below measures the burst.
        for stream in (False, True):
            r = httpx.post(base + "/v1/completions", timeout=60,
                           json={"prompt": "Count: 1, 2, 3,", "max_tokens": 8, "stream": stream})
            assert r.status_code == 200
        rss0 = rss_kib(proc.pid)
        n = 48
        out = [None] * n

        def one(i):
            body = {"prompt": "Count: 1, 2, 3,", "max_tokens": 8, "ignore_eos": True, "temperature": 0,
                    "stream": bool(i % 2)}
            try:
                if body["stream"]:
                    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=120) as r:
                        if r.status_code != 200:
                            r.read()
                            out[i] = (r.status_code, r.headers.get("retry-after"), None)
                            return
                        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
                        out[i] = (200, None, events)
                else:
                    r = httpx.post(base + "/v1/completions", json=body, timeout=120)
                    out[i] = (r.status_code, r.headers.get("retry-after"), r.json())
            except httpx.HTTPError as e:
                out[i] = ("error", str(e), None)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        assert all(not t.is_alive() for t in threads), "a request hung"
        served = refused = 0
        for i, (status, retry, payload) in enumerate(out):
            if status == 200:
                served += 1
                if isinstance(payload, list):  # a stream: text chunks, a final finish, [DONE]
                    assert payload[-1] == "[DONE]", payload[-3:]
                    objs = [json.loads(e) for e in payload[:-1]]
                    assert not any("error" in o for o in objs)
                    finishes = [c["finish_reason"] for o in objs for c in o["choices"] if c["finish_reason"]]
                    assert finishes == ["length"], finishes
                else:
                    assert payload["choices"][0]["finish_reason"] == "length"
                    assert payload["usage"]["completion_tokens"] == 8
            else:
                refused += 1
                assert status in (429, 503), (i, status, retry)
                assert retry and int(retry) >= 1, (i, status)
        # At least the running slots serve; the rest of the burst is refused at once.
        assert served >= 2 and refused >= 1 and served + refused == n, (served, refused)
        # Every block back once the burst is over.
        deadline = time.monotonic() + 10
        while metric(base, "lmd_kv_blocks_free") != total_blocks:
            assert time.monotonic() < deadline, "KV blocks still held after the burst"
            time.sleep(0.1)
        assert metric(base, "lmd_requests_running") == 0
        # Memory (anonymous, without the KV cache): the burst's buffers are returned or reused, not kept per
        # request (a generous bound).
        assert rss_kib(proc.pid) < rss0 + 64 * 1024, (rss0, rss_kib(proc.pid))
    finally:
        stop_server(proc)


def test_one_request_cannot_hold_every_slot(lmd_bin, default_model):
    """A chat request for four choices with no max_tokens (each runs to the
    end of the context) against two running slots holds one of them — half,
    the default share of one request — so a second client's short request
    is served while the first still streams, before any of its choices
    has finished. It used to take both slots, its other choices queued
    ahead of the second client, which waited behind all four."""
    proc, base = start_server(lmd_bin, default_model, "--max-running", "2")
    try:
        big = {"messages": [{"role": "user", "content": "Count to a thousand."}], "n": 4, "ignore_eos": True,
               "stream": True}
        seen = {"finishes": 0, "ended": False}
        first = threading.Event()
        stop = threading.Event()

        def stream():
            with httpx.stream("POST", base + "/v1/chat/completions", json=big, timeout=600) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        obj = json.loads(line[6:])
                        seen["finishes"] += sum(1 for c in obj.get("choices", []) if c.get("finish_reason"))
                        if any(c.get("delta", {}).get("content") for c in obj.get("choices", [])):
                            first.set()
                    if stop.is_set():
                        return  # closing the stream cancels the request
            seen["ended"] = True

        t = threading.Thread(target=stream)
        t.start()
        assert first.wait(timeout=120), "the big request produced nothing"
        r = httpx.post(base + "/v1/completions", json={"prompt": "Hello", "max_tokens": 4}, timeout=600)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 4
        # Served while the big request was still streaming, none of its choices finished.
        assert not seen["ended"] and seen["finishes"] == 0, seen
        stop.set()
        t.join(timeout=120)
        assert not t.is_alive()
    finally:
        stop_server(proc)


SHARE_TENANTS = """\
classes:
  short:  {default_max_tokens: 5, max_request_slots: 1}
  strict: {ttft_ms: %d, on_late: refuse}
default_class: short
tenants:
  - name: t
    keys: ["sk-t"]
"""


def write_tenants_file(tmp_path, ttft_ms):
    path = tmp_path / "tenants.yaml"
    path.write_text(SHARE_TENANTS % ttft_ms)
    os.chmod(path, 0o600)
    return str(path)


def test_class_default_max_tokens(lmd_bin, default_model, tmp_path):
    """A class's default_max_tokens bounds a request that gives no
    max_tokens (chat's default is otherwise the rest of the context); one
    that gives max_tokens keeps it."""
    proc, base = start_server(lmd_bin, default_model, "--tenants", write_tenants_file(tmp_path, 10000))
    try:
        h = {"Authorization": "Bearer sk-t"}
        msg = [{"role": "user", "content": "Tell me a long story."}]
        r = httpx.post(base + "/v1/chat/completions", headers=h, timeout=120,
                       json={"messages": msg, "ignore_eos": True})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 5
        assert r.json()["choices"][0]["finish_reason"] == "length"
        r = httpx.post(base + "/v1/chat/completions", headers=h, timeout=120,
                       json={"messages": msg, "ignore_eos": True, "max_tokens": 9})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 9
    finally:
        stop_server(proc)


def test_class_default_max_tokens_through_a_gateway(lmd_bin, default_model, tmp_path):
    """The same bound for a model the gateway forwards: the request goes
    upstream with the class's max_tokens (chat has no default length of
    its own there: the upstream's would apply)."""
    from test_gateway import UpServe
    from test_multimodel import Serve
    up = UpServe(lmd_bin, tmp_path, "127.0.0.2", "-m", default_model, "-t", "1", "-c", "256")
    g = None
    try:
        g = Serve(lmd_bin, tmp_path, "--upstream", "gemma=lmd+" + up.url, "--tenants",
                  write_tenants_file(tmp_path, 10000))
        h = {"Authorization": "Bearer sk-t"}
        msg = [{"role": "user", "content": "Tell me a long story."}]
        r = httpx.post(g.base + "/v1/chat/completions", headers=h, timeout=120,
                       json={"model": "gemma", "messages": msg, "ignore_eos": True})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 5
        r = httpx.post(g.base + "/v1/chat/completions", headers=h, timeout=120,
                       json={"model": "gemma", "messages": msg, "ignore_eos": True, "max_tokens": 9})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 9
    finally:
        if g:
            g.stop()
        up.stop()


def test_unmeetable_deadline_refused_at_once(lmd_bin, default_model, tmp_path):
    """A burst in a class that refuses late work, against one running slot:
    the requests that could only start past the class's TTFT target are
    refused when they arrive (503, Retry-After, deadline_unmeetable, the
    estimate in the message) rather than queued to be refused — or served —
    late. The target is three times one request's measured length, so the
    verdict does not depend on the machine's speed."""
    body = {"prompt": "Count: 1, 2, 3,", "max_tokens": 24, "ignore_eos": True, "temperature": 0}
    # One request's length on this machine, from a server without the class.
    proc, base = start_server(lmd_bin, default_model, "--max-running", "1")
    try:
        lengths = []
        for _ in range(3):
            t0 = time.monotonic()
            assert httpx.post(base + "/v1/completions", json=body, timeout=120).status_code == 200
            lengths.append(time.monotonic() - t0)
    finally:
        stop_server(proc)
    ttft_ms = int(3 * 1000 * max(lengths)) + 1
    proc, base = start_server(lmd_bin, default_model, "--max-running", "1", "--max-queue", "32",
                              "--tenants", write_tenants_file(tmp_path, ttft_ms))
    try:
        h = {"Authorization": "Bearer sk-t", "X-SLA": "strict"}
        # The server learns how long a request holds its slot.
        for _ in range(2):
            r = httpx.post(base + "/v1/completions", headers=h, json=body, timeout=120)
            assert r.status_code == 200, r.text
        n = 16
        out = [None] * n

        def one(i):
            try:
                r = httpx.post(base + "/v1/completions", headers=h, json=body, timeout=300)
                out[i] = (r.status_code, r.headers.get("retry-after"), r.json())
            except httpx.HTTPError as e:
                out[i] = ("error", str(e), None)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert all(not t.is_alive() for t in threads), "a request hung"
        served = at_once = late = 0
        for status, retry, payload in out:
            if status == 200:
                served += 1
                assert payload["usage"]["completion_tokens"] == 24
                continue
            assert status == 503, (status, retry, payload)
            assert retry and int(retry) >= 1
            assert payload["error"]["code"] == "deadline_unmeetable", payload
            if "would wait about" in payload["error"]["message"]:
                at_once += 1
            else:
                late += 1
        assert served >= 1 and at_once >= 1, (served, at_once, late)
        assert at_once > late, (served, at_once, late)
        text = httpx.get(base + "/metrics", timeout=5).text
        counted = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith("lmd_rejections_total{") and 'reason="deadline"' in line)
        assert counted >= at_once + late, text
    finally:
        stop_server(proc)
