"""Chat templates and tokenizing run on prep workers, never on an I/O
thread: with a single event loop, /health and /metrics are answered while
a prompt of megabytes is being tokenized, and a client that leaves while
its request is in prep is logged, counted and freed (the ASan build runs
these too)."""
import json
import socket
import threading
import time

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from test_server import metric, server_log, start_server, stop_server

# A context long enough that megabytes of text pass the byte gate (no token
# is longer than 48 bytes in the default model's vocabulary), with a small
# KV cache: the prompts here are refused once tokenized, never run.
CTX = 32768
SLOW = "a" * 1_500_000  # one repeated byte: about a second of tokenizing, 187,501 tokens


@pytest.fixture(scope="module")
def server(lmd_bin, default_model):
    proc, base = start_server(lmd_bin, default_model, "--io-threads", "1", "-c", str(CTX), "--kv-blocks", "64",
                              "--log-format", "json")
    yield proc, base
    stop_server(proc)


def preparing(base):
    return metric(base, "lmd_requests_preparing")


def access_lines(proc, rid):
    out = []
    for line in server_log(proc).splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get("msg") == "access" and obj.get("id") == rid:
            out.append(obj)
    return out


def wait_for(cond, what, limit=60):
    """Poll until cond() holds; the limit only keeps a broken server from hanging the suite."""
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


BIG = {
    "/v1/completions": {"prompt": SLOW, "max_tokens": 1},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": SLOW}], "max_tokens": 1},
    "/v1/embeddings": {"input": SLOW[:1_000_000]},  # the endpoint's text bound is 1 MiB
}


@pytest.mark.parametrize("path", list(BIG))
def test_event_loop_answers_while_a_prompt_is_prepared(server, path):
    """One client's megabytes of prompt are tokenized off the only event
    loop: /health answers between two /metrics readings that both show the
    request in prep, so it was answered while the tokenizer ran. Before,
    the loop was held until the prompt was refused, and no reading could
    show it."""
    proc, base = server
    assert preparing(base) == 0
    out = {}

    def big():
        out["r"] = httpx.post(base + path, json=BIG[path], timeout=120)

    t = threading.Thread(target=big)
    t.start()
    answered_in_prep = 0
    last_in_prep = False
    health_since = 0
    with httpx.Client(timeout=60) as c:
        while t.is_alive():
            in_prep = float(c.get(base + "/metrics").text.split("\nlmd_requests_preparing ")[1].split()[0]) >= 1
            if in_prep and last_in_prep:
                answered_in_prep += health_since
            last_in_prep = in_prep
            assert c.get(base + "/health").status_code == 200
            health_since = 1
    t.join()
    r = out["r"]
    # Refused once tokenized (the tokenizer's count, not the byte gate's bound): the work was done.
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded", err
    assert "make at least" not in err["message"], err
    assert answered_in_prep >= 1, "no /health answer fell between two readings of the request in prep"
    assert preparing(base) == 0


def h2_send(host, port, path, body, rid):
    """An HTTP/2 (prior knowledge) POST whose whole body is sent, honouring
    flow control; returns the open socket without reading the answer."""
    s = socket.create_connection((host, port), timeout=60)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "POST"), (":path", path), (":scheme", "http"), (":authority", host),
                            ("content-type", "application/json"), ("content-length", str(len(body))),
                            ("x-request-id", rid)])
    s.sendall(conn.data_to_send())
    off = 0
    while off < len(body):
        n = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size, len(body) - off)
        if n > 0:
            conn.send_data(sid, body[off:off + n], end_stream=off + n == len(body))
            off += n
            s.sendall(conn.data_to_send())
            continue
        data = s.recv(65536)  # the server's WINDOW_UPDATE (and SETTINGS)
        assert data, "the server closed the connection"
        conn.receive_data(data)
        s.sendall(conn.data_to_send())
    return s


def h1_send(host, port, path, body, rid):
    s = socket.create_connection((host, port), timeout=60)
    s.sendall(("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
               "X-Request-Id: %s\r\n\r\n" % (path, host, len(body), rid)).encode() + body)
    return s


def requests_total(base):
    """lmd_requests_total over its series; 0 before the first request is
    counted (a labeled counter has no series until then), as when this
    test runs first (the ASan subset runs it alone)."""
    try:
        return metric(base, "lmd_requests_total")
    except KeyError:
        return 0.0


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "h2c"])
@pytest.mark.parametrize("path", list(BIG))
def test_client_gone_during_prep_is_freed(server, path, http2):
    """A client that hangs up while its prompt is tokenized: the request is
    freed when the job comes back (no leak, no use after free: the ASan
    build exits clean), its access line says 499 (HTTP/2, where the hang-up
    disposes the request at once; on HTTP/1.1 the server may not see it
    before answering, and the answer goes nowhere), and the server goes on
    serving."""
    proc, base = server
    host, port = base[len("http://"):].split(":")
    rid = "gone-%s%s" % ("h2" if http2 else "h1", path.replace("/", "-"))
    before = requests_total(base)
    s = (h2_send if http2 else h1_send)(host, int(port), path, json.dumps(BIG[path]).encode(), rid)
    wait_for(lambda: preparing(base) >= 1, "the request never showed in prep")
    s.close()
    wait_for(lambda: preparing(base) == 0, "the request stayed in prep")
    wait_for(lambda: access_lines(proc, rid), "no access line for the request")
    lines = access_lines(proc, rid)
    assert len(lines) == 1, lines
    if http2:
        assert lines[0]["status"] == 499, lines
    else:
        assert lines[0]["status"] in (499, 400), lines
    assert requests_total(base) == before + 1
    r = httpx.post(base + "/v1/completions", json={"prompt": "Hello", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200, r.text


def test_tokenize_client_gone_during_prep(server):
    """/tokenize shares the workers: a client gone meanwhile is logged as 499."""
    proc, base = server
    host, port = base[len("http://"):].split(":")
    s = h2_send(host, int(port), "/tokenize", json.dumps({"content": SLOW}).encode(), "gone-tokenize")
    wait_for(lambda: preparing(base) >= 1, "the request never showed in prep")
    s.close()
    wait_for(lambda: access_lines(proc, "gone-tokenize"), "no access line for the request")
    assert access_lines(proc, "gone-tokenize")[0]["status"] == 499
    wait_for(lambda: preparing(base) == 0, "the request stayed in prep")


def rejections(base, reason):
    total = 0.0
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith("lmd_rejections_total{") and 'reason="%s"' % reason in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_full_prep_queue_is_503(lmd_bin, default_model):
    """One worker busy with a slow prompt and 64 requests waiting for it (the
    bound): the next is refused at once with 503 and Retry-After, counted as
    a queue_full refusal, while the waiting ones are all answered later."""
    proc, base = start_server(lmd_bin, default_model, "--io-threads", "1", "--prep-threads", "1", "-c", str(CTX),
                              "--kv-blocks", "64")
    host, port = base[len("http://"):].split(":")
    waiting = []
    try:
        before = rejections(base, "queue_full")
        # About 2.5 s of tokenizing: the 65 requests below queue within a few milliseconds of it.
        slow = h1_send(host, int(port), "/tokenize", json.dumps({"content": "a" * 3_500_000}).encode(), "slow")
        wait_for(lambda: preparing(base) >= 1, "the slow request never showed in prep")
        small = json.dumps({"content": "Hello world"}).encode()
        for i in range(64):
            waiting.append(h1_send(host, int(port), "/tokenize", small, "wait-%d" % i))
        wait_for(lambda: preparing(base) >= 65, "the small requests never queued")
        r = httpx.post(base + "/tokenize", json={"content": "Hello world"}, timeout=60)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "queue_full"
        assert rejections(base, "queue_full") == before + 1
        for s in [slow] + waiting:
            head = s.recv(4096)
            assert head.startswith(b"HTTP/1.1 200"), head[:200]
    finally:
        for s in waiting:
            s.close()
        stop_server(proc)
