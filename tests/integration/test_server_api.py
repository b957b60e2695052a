"""`lmd serve`: n choices, log-probabilities, logit_bias, echo, ignore_eos,
X-Request-Id, stream backpressure and disconnect detection — end to end
with the official `openai` client (sync, async, streaming) and httpx."""
import asyncio
import json
import os
import socket
import threading
import time

import httpx
import openai
import pytest

from test_server import PROMPT, PROMPT_IDS, error_of, metric, rss_kib, server_log, start_server, stop_server

PARIS = 9079  # " Paris" in the default model's vocabulary (checked through echo below)
EOS = 1       # <eos>


@pytest.fixture(scope="module")
def server(lmd_bin, default_model):
    global MODEL
    MODEL = os.path.basename(default_model)[:-len(".gguf")]
    proc, base = start_server(lmd_bin, default_model, "--io-threads", "2")
    yield base
    stop_server(proc)


MODEL = "default"  # the file stem of the model lmd serves (set by the server fixture)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", timeout=60, max_retries=0)


@pytest.fixture(scope="module")
def aclient(server):
    return openai.AsyncOpenAI(base_url=server + "/v1", api_key="unused", timeout=60, max_retries=0)


def streamed_texts(chunks, n):
    """Per-choice text of a completion stream, and the finish reasons."""
    texts, finish = [""] * n, [None] * n
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] += ch.text
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    return texts, finish


# ---- n ---------------------------------------------------------------------

def test_n_choices(client):
    r = client.completions.create(prompt=PROMPT, model=MODEL, max_tokens=4, temperature=1, n=3,
                                  extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" for c in r.choices)
    # The prompt is counted once; every choice's tokens are counted.
    assert r.usage.prompt_tokens == len(PROMPT_IDS)
    assert r.usage.completion_tokens == 3 * 4
    assert r.usage.total_tokens == len(PROMPT_IDS) + 12

    greedy = client.completions.create(prompt=PROMPT, model=MODEL, max_tokens=8, temperature=0, n=2)
    assert len(greedy.choices) == 2 and greedy.choices[0].text == greedy.choices[1].text

    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Name a color."}],
                                          max_tokens=6, temperature=0, n=2)
    assert [c.index for c in chat.choices] == [0, 1]
    assert chat.choices[0].message.content == chat.choices[1].message.content


def test_n_seeded_reproduces(client):
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=1.0, seed=77, n=3)
    a = [c.text for c in client.completions.create(**kw).choices]
    b = [c.text for c in client.completions.create(**kw).choices]
    assert a == b
    # Choice i draws from seed + i: the choices differ from one another,
    # and choice 0 is what a single seeded request gives.
    assert len(set(a)) > 1
    one = client.completions.create(**dict(kw, n=1)).choices[0].text
    assert one == a[0]
    # Streamed, the same choices arrive interleaved, each under its index.
    texts, finish = streamed_texts(client.completions.create(**kw, stream=True), 3)
    assert texts == a and all(finish)


def test_n_streaming_chat_and_usage(client):
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=5, temperature=0, n=3,
        stream=True, stream_options={"include_usage": True}))
    roles = sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.role == "assistant")
    assert roles == [0, 1, 2]
    contents = {}
    for c in chunks:
        for ch in c.choices:
            contents[ch.index] = contents.get(ch.index, "") + (ch.delta.content or "")
    assert len(set(contents.values())) == 1
    usage = chunks[-1].usage
    assert usage.completion_tokens <= 15 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_n_async(aclient):
    async def go():
        rs = await asyncio.gather(*[aclient.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0,
                                                               n=2) for _ in range(3)])
        texts = {c.text for r in rs for c in r.choices}
        assert len(texts) == 1
        stream = await aclient.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0, n=2,
                                                  stream=True)
        idx = set()
        async for c in stream:
            idx.update(ch.index for ch in c.choices)
        assert idx == {0, 1}
    asyncio.run(go())


# ---- logprobs ----------------------------------------------------------------

def check_entry(e):
    assert e.logprob <= 0
    assert e.bytes == list(e.token.encode()) or e.token.startswith("bytes:")


def test_chat_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Name three colors."}],
                                       max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for e in content:
        check_entry(e)
        assert len(e.top_logprobs) == 3
        for t in e.top_logprobs:
            check_entry(t)
        # Greedy: the chosen token is the most likely one.
        assert e.logprob == max(t.logprob for t in e.top_logprobs)
        assert e.token == e.top_logprobs[0].token
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
    assert "".join(e.token for e in content) == r.choices[0].message.content
    # top_logprobs 0: the chosen tokens only; logprobs off: null.
    r0 = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                        temperature=0, logprobs=True)
    assert all(e.top_logprobs == [] for e in r0.choices[0].logprobs.content)
    off = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert off.choices[0].logprobs is None


def test_chat_logprobs_streamed(client):
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name three colors."}], max_tokens=8, temperature=0,
        logprobs=True, top_logprobs=2, stream=True, stream_options={"include_usage": True}))
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(entries) == chunks[-1].usage.completion_tokens
    assert all(e.logprob == e.top_logprobs[0].logprob for e in entries)


def test_completion_logprobs(client):
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    n = r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    for tok, l, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert l <= 0 and l == max(top.values()) and top[tok] == l and len(top) == 3
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == [sum(len(t.encode()) for t in lp.tokens[:i]) for i in range(n)]
    # Streamed: the same tokens and values, spread over the chunks.
    tokens, values = [], []
    for c in client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3,
                                       stream=True):
        if c.choices and c.choices[0].logprobs:
            tokens += c.choices[0].logprobs.tokens
            values += c.choices[0].logprobs.token_logprobs
    assert tokens == lp.tokens and values == lp.token_logprobs


def test_logprobs_errors(server):
    chat, comp = server + "/v1/chat/completions", server + "/v1/completions"
    msgs = [{"role": "user", "content": "x"}]
    assert error_of(httpx.post(chat, json={"messages": msgs, "logprobs": True, "top_logprobs": 21}), 400)["param"] \
        == "top_logprobs"
    assert error_of(httpx.post(chat, json={"messages": msgs, "top_logprobs": 2}), 400)["param"] == "top_logprobs"
    assert error_of(httpx.post(chat, json={"messages": msgs, "logprobs": 3}), 400)["param"] == "logprobs"
    assert error_of(httpx.post(comp, json={"prompt": "x", "logprobs": 6}), 400)["param"] == "logprobs"
    assert error_of(httpx.post(comp, json={"prompt": "x", "logprobs": True}), 400)["param"] == "logprobs"
    e = error_of(httpx.post(comp, json={"prompt": "x", "logprobs": 1, "echo": True}), 400)
    assert e["param"] == "echo" and "logprobs" in e["message"]


# ---- logit_bias, echo, ignore_eos, sampling fields --------------------------------

def test_echo(client):
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0).choices[0].text
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True)
    assert r.choices[0].text == PROMPT + plain
    assert r.usage.completion_tokens == 4 and r.usage.prompt_tokens == len(PROMPT_IDS)
    texts, _ = streamed_texts(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0,
                                                        echo=True, stream=True), 1)
    assert texts[0] == PROMPT + plain
    # Token-id prompts echo their text.
    r = client.completions.create(model=MODEL, prompt=PROMPT_IDS, max_tokens=4, temperature=0, echo=True)
    assert r.choices[0].text == PROMPT + plain


def test_logit_bias(client, server):
    # The id really is " Paris": echo decodes it.
    assert client.completions.create(model=MODEL, prompt=[PARIS], max_tokens=1, temperature=0,
                                     echo=True).choices[0].text.lstrip().startswith("Paris")
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0,
                                  logit_bias={str(PARIS): 100}, logprobs=0)
    assert r.choices[0].text == " Paris" * 4
    assert all(l > -0.01 for l in r.choices[0].logprobs.token_logprobs)
    # -100 on the greedy first token: the output starts differently.
    greedy = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=0)
    first = greedy.choices[0].logprobs.tokens[0]
    assert first == " the"
    THE = 506
    assert client.completions.create(model=MODEL, prompt=[THE], max_tokens=1, temperature=0,
                                     echo=True).choices[0].text.lstrip().startswith("the")
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, logit_bias={str(THE): -100},
                                  logprobs=0)
    assert r.choices[0].logprobs.tokens[0] != first and r.choices[0].text != greedy.choices[0].text
    # Chat takes it too.
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
                                       temperature=0, logit_bias={str(PARIS): 100})
    assert r.choices[0].message.content == " Paris Paris"

    url = server + "/v1/completions"
    for bias, word in [({"abc": 1}, "abc"), ({"-3": 1}, "-3"), ({"1.5": 1}, "1.5"), ({"262144": 1}, "262144"),
                       ({"5": 101}, "5"), ({"5": "x"}, "5")]:
        e = error_of(httpx.post(url, json={"prompt": "x", "logit_bias": bias}), 400)
        assert e["param"] == "logit_bias" and word in e["message"], e
    assert error_of(httpx.post(url, json={"prompt": "x", "logit_bias": [1]}), 400)["param"] == "logit_bias"


def test_ignore_eos(client):
    # A bias that makes <eos> certain ends the text at once, unless ignore_eos.
    kw = dict(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, logit_bias={str(EOS): 100})
    r = client.completions.create(**kw)
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == 0 and r.choices[0].text == ""
    r = client.completions.create(**kw, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5


def test_sampling_fields(client, server):
    # min_p and repetition_penalty are honoured: seeded runs reproduce, and a
    # strong repetition penalty stops greedy counting from going on.
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=1, seed=5, extra_body={"min_p": 0.2})
    assert client.completions.create(**kw).choices[0].text == client.completions.create(**kw).choices[0].text
    count = dict(model=MODEL, prompt="1, 2, 3, 4, 5,", max_tokens=12, temperature=0)
    plain = client.completions.create(**count).choices[0].text
    assert plain.startswith(" 6, 7, 8")
    pen = client.completions.create(**count, extra_body={"repetition_penalty": 1.5}).choices[0].text
    assert pen != plain
    # user is accepted; fields of the wrong type are named.
    assert client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1, user="someone").choices
    url = server + "/v1/completions"
    for body, param in [({"min_p": 1.5}, "min_p"), ({"repetition_penalty": 0}, "repetition_penalty"),
                        ({"user": 5}, "user"), ({"ignore_eos": "yes"}, "ignore_eos"), ({"echo": 1}, "echo")]:
        assert error_of(httpx.post(url, json=dict(prompt="x", **body)), 400)["param"] == param


# ---- X-Request-Id ------------------------------------------------------------

@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_request_id(server, http2):
    with httpx.Client(base_url=server, timeout=30, http1=not http2, http2=http2) as c:
        r = c.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2})
        assert r.headers["x-request-id"] == r.json()["id"]
        with c.stream("POST", "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                            "max_tokens": 2, "stream": True}) as s:
            lines = [l for l in s.iter_lines() if l.startswith("data: {")]
            first = json.loads(lines[0][6:])
            assert s.headers["x-request-id"] == first["id"] and first["id"].startswith("chatcmpl-")
        # Errors and other routes carry one too.
        for r in (c.get("/nope"), c.post("/v1/completions", json={"prompt": "x", "n": 99}), c.get("/health"),
                  c.get("/v1/completions")):
            rid = r.headers["x-request-id"]
            assert 0 < len(rid) <= 64 and all(ch.isalnum() or ch in "._-" for ch in rid)
        assert c.get("/nope").headers["x-request-id"] != c.get("/nope").headers["x-request-id"]
        # A sane id of the client's is echoed, generation included; others are replaced.
        mine = "Client-42_a.b"
        assert c.get("/health", headers={"X-Request-Id": mine}).headers["x-request-id"] == mine
        r = c.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 1}, headers={"x-request-id": mine})
        assert r.headers["x-request-id"] == mine and r.json()["id"].startswith("cmpl-")
        assert error_of(c.post("/v1/completions", json={"prompt": "x", "temperature": 9},
                               headers={"X-REQUEST-ID": mine}), 400) and True
        for bad in ("a" * 65, "has space", "semi;colon", "é"):
            rid = c.get("/health", headers={"x-request-id": bad.encode("utf-8")}).headers["x-request-id"]
            assert rid != bad and rid.startswith("req-")


# ---- backpressure and disconnects ---------------------------------------------

def raw_post(port, path, body, rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    data = json.dumps(body).encode()
    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
              % (path.encode(), len(data)) + data)
    return s


def _until(pred, what, guard=90):
    """Waits for an event the test causes; the guard only stops a hung
    server from hanging the suite, no verdict depends on how long it took."""
    deadline = time.monotonic() + guard
    while not pred():
        assert time.monotonic() < deadline, "never happened: " + what
        time.sleep(0.05)


# The stalled request is fat, so that it fills the socket buffers quickly
# even on a slow machine: 16 choices, 20 alternatives per token, and it is
# 16 x 900 tokens long, so that it cannot end on its own while the test
# watches it (the other streams need 4 engine steps, it needs 900).
STALLED = {"messages": [{"role": "user", "content": "Count from one to one thousand."}], "max_tokens": 900,
           "temperature": 1, "ignore_eos": True, "stream": True, "logprobs": True, "top_logprobs": 20, "n": 16}


def _stall(base):
    """A client that sends STALLED and never reads, behind a tiny receive
    window; returned once its choices hold KV blocks."""
    idle = metric(base, "lmd_kv_blocks_free")
    s = raw_post(int(base.rsplit(":", 1)[1]), "/v1/chat/completions", STALLED, rcvbuf=4096)
    _until(lambda: metric(base, "lmd_kv_blocks_free") < idle, "the stalled request started")
    return s, idle


def test_stalled_stream_is_bounded(lmd_bin, default_model):
    # No stall timeout here: what is checked cannot race a timer.
    proc, base = start_server(lmd_bin, default_model, "--stall-timeout", "0", "--max-running", "20")
    try:
        stalled, idle = _stall(base)
        rss0 = peak = rss_kib(proc.pid)  # every choice is in the batch by now
        # Meanwhile other streams complete normally.
        c = openai.OpenAI(base_url=base + "/v1", api_key="unused", timeout=60, max_retries=0)
        results = []

        def other():
            results.append(streamed_texts(c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4,
                                                               temperature=0, stream=True), 1))
        threads = [threading.Thread(target=other) for _ in range(3)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            peak = max(peak, rss_kib(proc.pid))
            time.sleep(0.05)
        assert len(results) == 3 and all(f == ["length"] and t[0] for t, f in results)
        assert metric(base, "lmd_kv_blocks_free") < idle  # the stalled one still holds its blocks
        # The others retire (their last chunk may reach the client first);
        # the stalled one's running choices stay: 10 of its 16, one
        # request's share of 20 slots by default (max_request_slots: half
        # of --max-running, rounded up); the other 6 wait for a sibling.
        _until(lambda: metric(base, "lmd_requests_running") == 10, "the other streams retired")
        # Memory stayed bounded: the unsent text never piled up in the server.
        peak = max(peak, rss_kib(proc.pid))
        assert peak - rss0 < 8 * 1024, (rss0, peak)
        # A stalled client that hangs up is seen and cancelled.
        stalled.close()
        _until(lambda: metric(base, "lmd_kv_blocks_free") == idle, "the hung-up request's blocks came back")
        assert metric(base, "lmd_requests_running") == 0
        assert httpx.get(base + "/health").status_code == 200
    finally:
        stop_server(proc)


def test_stalled_stream_is_dropped(lmd_bin, default_model):
    # The shortest stall timeout: the drop comes a second after the socket
    # buffers fill, whatever the machine's speed.
    proc, base = start_server(lmd_bin, default_model, "--stall-timeout", "1", "--max-running", "20")
    try:
        gen0 = metric(base, "lmd_generation_tokens_total")
        stalled, idle = _stall(base)
        rss0 = peak = rss_kib(proc.pid)

        def back():
            nonlocal peak
            peak = max(peak, rss_kib(proc.pid))
            return metric(base, "lmd_kv_blocks_free") == idle
        # Dropping it cancels it: its KV blocks come back long before
        # 16 x 900 tokens could be generated.
        _until(back, "the stalled request was dropped")
        assert metric(base, "lmd_requests_running") == 0
        assert metric(base, "lmd_generation_tokens_total") - gen0 < 16 * 900
        assert peak - rss0 < 8 * 1024, (rss0, peak)
        stalled.close()
        assert httpx.get(base + "/health").status_code == 200
    finally:
        stop_server(proc)
    assert "took no response bytes" in server_log(proc)


def test_nonstreamed_disconnect_cancels(server):
    port = int(server.rsplit(":", 1)[1])
    idle = metric(server, "lmd_kv_blocks_free")
    gen0 = metric(server, "lmd_generation_tokens_total")
    s = raw_post(port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 900, "temperature": 1,
                                            "ignore_eos": True})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and metric(server, "lmd_kv_blocks_free") == idle:
        time.sleep(0.02)
    s.close()  # HTTP/1.1, while the answer is still being generated
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and metric(server, "lmd_kv_blocks_free") != idle:
        time.sleep(0.05)
    assert metric(server, "lmd_kv_blocks_free") == idle
    # Cancelled well before max_tokens.
    assert metric(server, "lmd_generation_tokens_total") - gen0 < 850
