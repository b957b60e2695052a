"""`lmd serve` end to end: a real server on a free loopback port with the
default model, driven by the official `openai` client and by httpx over
HTTP/1.1 and HTTP/2 (prior knowledge).

Every wait is bounded; generations are short so the file runs in well under
a minute on two cores."""
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time

import httpx
import openai
import pytest

CTX = 1024


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(lmd_bin, model, *extra, **popen):
    """A ready `lmd serve`; `popen` goes to subprocess.Popen (e.g. preexec_fn)."""
    port = free_port()
    cmd = [lmd_bin, "serve", "-m", model, "--port", str(port), "-t", "2", "-c", str(CTX), *extra]
    # The log goes to a file, not a pipe: a pipe nobody reads fills after
    # 64 KiB of access lines and then blocks the server's writes.
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, **popen)
    proc.log = log
    base = "http://127.0.0.1:%d" % port
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("lmd serve exited early:\n" + server_log(proc))
        try:
            if httpx.get(base + "/ready", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("lmd serve did not become ready in 60 s")


def server_log(proc):
    """Everything the server has logged so far."""
    proc.log.flush()
    proc.log.seek(0)
    return proc.log.read()


# Set by `make test-integration-asan`: the server is the ASan + UBSan build,
# and a clean exit (status 0, no sanitizer report) is part of every test.
SANITIZED = os.environ.get("LMD_SANITIZED") == "1"


def stop_server(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60 if SANITIZED else 20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if SANITIZED:
        log = server_log(proc)
        assert "Sanitizer" not in log and "runtime error" not in log, log[-6000:]
        assert proc.returncode == 0, "exit status %s:\n%s" % (proc.returncode, log[-6000:])


@pytest.fixture(scope="module")
def server(lmd_bin, default_model):
    # Two event loops, so concurrent connections exercise cross-thread wakeups on both.
    proc, base = start_server(lmd_bin, default_model, "--io-threads", "2")
    yield base
    stop_server(proc)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", timeout=60, max_retries=0)


@pytest.fixture(scope="module")
def model_id(server):
    return httpx.get(server + "/v1/models").json()["data"][0]["id"]


def metric(base, name):
    """The value of a metric, summed over its labeled series."""
    total, seen = 0.0, False
    for line in httpx.get(base + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    if not seen:
        raise KeyError(name)
    return total


def rss_kib(pid):
    """Resident anonymous memory, leaving out the mappings over 64 MiB: the
    KV cache, allocated at start-up and touched lazily as sequences grow
    (file-backed model pages are left out too). What remains is where
    unsent response text would pile up."""
    total, size, anon = 0, 0, False
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and ":" in head[3]:
                anon = len(head) < 6
            elif head[0] == "Size:":
                size = int(head[1])
            elif head[0] == "Rss:" and anon and size <= 64 * 1024:
                total += int(head[1])
    return total


PROMPT = "The capital of France is"
PROMPT_IDS = [2, 818, 5279, 529, 7001, 563]  # PROMPT with BOS, as the tokenizer gives it


def test_models(server, default_model, model_id):
    r = httpx.get(server + "/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and len(body["data"]) == 1
    assert body["data"][0]["object"] == "model"
    stem = os.path.basename(default_model)[:-len(".gguf")]
    for name in (model_id, stem, os.path.basename(default_model)):
        assert httpx.get(server + "/v1/models/" + name).status_code == 200


def test_completion_shape_and_usage(client, model_id):
    r = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=5, temperature=0)
    assert r.object == "text_completion" and r.id and r.created > 0 and r.model == model_id
    assert len(r.choices) == 1
    ch = r.choices[0]
    assert ch.index == 0 and isinstance(ch.text, str) and ch.text
    assert ch.finish_reason == "length" and ch.logprobs is None
    assert r.usage.prompt_tokens == len(PROMPT_IDS)
    assert r.usage.completion_tokens == 5
    assert r.usage.total_tokens == len(PROMPT_IDS) + 5
    # The same prompt as token ids gives the same tokens.
    r2 = client.completions.create(model=model_id, prompt=PROMPT_IDS, max_tokens=5, temperature=0)
    assert r2.choices[0].text == ch.text and r2.usage.prompt_tokens == len(PROMPT_IDS)


def test_greedy_matches_lmd_run(client, model_id, lmd_bin, default_model):
    n = 12
    r = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=n, temperature=0)
    out = subprocess.run([lmd_bin, "run", "-m", default_model, "-p", PROMPT, "-n", str(n), "--temp", "0", "-t", "2"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout[:-1] == r.choices[0].text  # lmd run ends with a newline
    # Chat: the template rendering and special-token parsing agree with `lmd run --chat`.
    q = "Name three colors."
    r = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": q}], max_tokens=n,
                                       temperature=0)
    out = subprocess.run([lmd_bin, "run", "-m", default_model, "--chat", "-p", q, "-n", str(n), "--temp", "0", "-t",
                          "2"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout[:-1] == r.choices[0].message.content


def test_chat_shape(client, model_id):
    r = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Name one color."}],
                                       max_tokens=8, temperature=0)
    assert r.object == "chat.completion"
    msg = r.choices[0].message
    assert msg.role == "assistant" and isinstance(msg.content, str) and msg.content
    assert r.choices[0].finish_reason in ("stop", "length")
    u = r.usage
    assert u.completion_tokens <= 8 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    # max_completion_tokens is the newer spelling.
    r = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Count to ten."}],
                                       max_completion_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_seed_reproduces(client, model_id):
    kw = dict(model=model_id, prompt="Once upon a time", max_tokens=12, temperature=1.0, seed=1234)
    a = client.completions.create(**kw).choices[0].text
    b = client.completions.create(**kw).choices[0].text
    assert a == b


def test_stop_string(client, model_id):
    full = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=16, temperature=0).choices[0].text
    # A stop string from the middle of the text, spanning what is likely a
    # token boundary, whose first occurrence is not at the start.
    k = len(full) // 2
    stop = full[k:k + 4]
    k = full.index(stop)
    assert k > 0
    r = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=16, temperature=0, stop=[stop, "zzzz"])
    assert r.choices[0].text == full[:k]
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 16
    # Streamed: the same text, and the stop string never appears.
    chunks = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=16, temperature=0, stop=stop,
                                       stream=True)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full[:k]


def test_streaming_concatenates(client, model_id, server):
    full = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=10, temperature=0)
    chunks = list(client.completions.create(model=model_id, prompt=PROMPT, max_tokens=10, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10 and chunks[-1].usage.prompt_tokens == len(PROMPT_IDS)

    # Chat: the first delta carries the role; the content concatenates.
    msgs = [{"role": "user", "content": "Say hello."}]
    whole = client.chat.completions.create(model=model_id, messages=msgs, max_tokens=8, temperature=0)
    parts = list(client.chat.completions.create(model=model_id, messages=msgs, max_tokens=8, temperature=0,
                                                stream=True))
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts) == whole.choices[0].message.content
    assert parts[-1].choices[0].finish_reason == whole.choices[0].finish_reason

    # Raw SSE framing.
    with httpx.stream("POST", server + "/v1/completions", timeout=30,
                      json={"prompt": PROMPT, "max_tokens": 3, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        body = r.read().decode()
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_concurrent_equals_alone(client, model_id):
    prompts = ["The capital of France is", "Once upon a time", "1, 2, 3, 4,", "The best way to learn is",
               "In the beginning", "Water boils at", "My favourite food is", "The sky is"]
    alone = [client.completions.create(model=model_id, prompt=p, max_tokens=8, temperature=0).choices[0].text
             for p in prompts]
    together = [None] * len(prompts)

    def go(i):
        together[i] = client.completions.create(model=model_id, prompt=prompts[i], max_tokens=8,
                                                temperature=0).choices[0].text

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert together == alone


def test_http2_prior_knowledge(server):
    with httpx.Client(http1=False, http2=True, base_url=server, timeout=30) as c:
        r = c.get("/health")
        assert r.http_version == "HTTP/2" and r.json() == {"status": "ok"}
        r = c.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        with c.stream("POST", "/v1/completions", json={"prompt": PROMPT, "max_tokens": 4, "stream": True}) as s:
            assert s.http_version == "HTTP/2"
            body = s.read().decode()
        assert body.rstrip().endswith("data: [DONE]")
        assert c.get("/nope").status_code == 404
    with httpx.Client(base_url=server, timeout=30) as c:
        assert c.get("/health").http_version == "HTTP/1.1"


def error_of(r, status):
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert isinstance(e["message"], str) and e["message"] and "type" in e and "param" in e and "code" in e
    return e


def test_errors(server, model_id):
    url = server + "/v1/completions"
    error_of(httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}), 400)
    error_of(httpx.post(url, content=b"[1, 2]"), 400)
    e = error_of(httpx.post(url, json={"prompt": "x", "temperature": 5}), 400)
    assert e["param"] == "temperature"
    e = error_of(httpx.post(url, json={"prompt": "x", "max_tokens": 0}), 400)
    assert e["param"] == "max_tokens"
    e = error_of(httpx.post(url, json={"prompt": "x", "n": 17}), 400)
    assert e["param"] == "n" and "16" in e["message"]
    e = error_of(httpx.post(url, json={"prompt": "x", "n": 0}), 400)
    assert e["param"] == "n"
    e = error_of(httpx.post(server + "/v1/chat/completions", json={"model": model_id}), 400)
    assert e["param"] == "messages"
    e = error_of(httpx.post(url, json={"model": "no-such-model", "prompt": "x"}), 404)
    assert e["code"] == "model_not_found"
    error_of(httpx.get(server + "/v1/nothing-here"), 404)
    error_of(httpx.get(url), 405)
    error_of(httpx.post(server + "/health"), 405)
    error_of(httpx.post(url, content=b"x" * (5 << 20), timeout=30), 413)
    e = error_of(httpx.post(url, json={"prompt": "hello " * 1500, "max_tokens": 4}, timeout=30), 400)
    assert str(CTX) in e["message"] and "tokens" in e["message"]
    # The server is still fine.
    assert httpx.get(server + "/health").status_code == 200


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_disconnect_frees_kv(server, http2):
    idle = metric(server, "lmd_kv_blocks_free")
    assert idle == metric(server, "lmd_kv_blocks_capacity")
    # HTTP/1.1: the connection closes; HTTP/2: the stream is reset.
    with httpx.Client(timeout=30, http1=not http2, http2=http2) as c:
        with c.stream("POST", server + "/v1/completions",
                      json={"prompt": PROMPT, "max_tokens": 600, "stream": True, "temperature": 1}) as r:
            lines = r.iter_lines()
            got = 0
            for line in lines:
                if line.startswith("data: "):
                    got += 1
                    if got == 3:
                        break
            assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            assert metric(server, "lmd_kv_blocks_free") < idle
        # Leaving the stream block mid-stream closes it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and metric(server, "lmd_kv_blocks_free") != idle:
            time.sleep(0.05)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and metric(server, "lmd_kv_blocks_free") != idle:
        time.sleep(0.05)
    assert metric(server, "lmd_kv_blocks_free") == idle
    assert metric(server, "lmd_requests_running") == 0


def test_sigterm_drains_stream(lmd_bin, default_model):
    proc, base = start_server(lmd_bin, default_model, "--drain-timeout", "20")
    try:
        probe = httpx.Client(base_url=base, timeout=10)
        assert probe.get("/ready").status_code == 200  # keeps a connection open for after the signal
        with httpx.stream("POST", base + "/v1/completions", timeout=60,
                          json={"prompt": PROMPT, "max_tokens": 40, "temperature": 0, "stream": True,
                                "stream_options": {"include_usage": True}}) as r:
            lines = r.iter_lines()
            events = []
            for line in lines:
                if line.startswith("data: "):
                    events.append(line[6:])
                    break
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            ready = probe.get("/ready")
            assert ready.status_code == 503
            for line in lines:
                if line.startswith("data: "):
                    events.append(line[6:])
        assert events[-1] == "[DONE]"
        usage = json.loads(events[-2])["usage"]
        assert usage["completion_tokens"] == 40
        assert proc.wait(timeout=30) == 0, server_log(proc)[-6000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_queue_full_is_503(lmd_bin, default_model):
    proc, base = start_server(lmd_bin, default_model, "--max-running", "1", "--max-queue", "1")
    try:
        # Greedy counting runs on without an end-of-generation token.
        body = {"prompt": "1, 2, 3, 4, 5,", "max_tokens": 300, "temperature": 0, "stream": True}
        with httpx.Client(base_url=base, timeout=30) as a:
            with a.stream("POST", "/v1/completions", json=body) as ra:
                lines = ra.iter_lines()  # kept: dropping the iterator closes the connection
                next(lines)  # running
                # A second one waits (its headers come when it starts, so
                # it is sent from a thread that gives up at once).
                waiter = threading.Thread(target=_post_and_drop, args=(base, {"prompt": "y", "max_tokens": 4}))
                waiter.start()
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and metric(base, "lmd_requests_waiting") < 1:
                    time.sleep(0.02)
                r = httpx.post(base + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=30)
                assert r.status_code == 503 and r.headers["retry-after"] == "1"
                assert r.json()["error"]["code"] == "queue_full"
        waiter.join(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (metric(base, "lmd_kv_blocks_free") != metric(base, "lmd_kv_blocks_capacity")
                                               or metric(base, "lmd_requests_waiting") != 0):
            time.sleep(0.05)
        assert metric(base, "lmd_kv_blocks_free") == metric(base, "lmd_kv_blocks_capacity")
        assert metric(base, "lmd_requests_waiting") == 0
    finally:
        stop_server(proc)
        assert proc.returncode == 0


def _post_and_drop(base, body):
    """Send a request and disconnect after a second, whatever its state."""
    try:
        httpx.post(base + "/v1/completions", json=body, timeout=1)
    except httpx.HTTPError:
        pass
