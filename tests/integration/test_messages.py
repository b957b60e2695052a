"""Anthropic's Messages API (/v1/messages) end to end: `lmd serve` on the
default model, driven by the official `anthropic` client and by raw HTTP
for the event stream, the error shape and X-Api-Key. A Messages request
runs as the chat request it means, so greedy output must equal chat
completions' word for word."""
import json

import anthropic
import httpx
import openai
import pytest

from test_server import metric, start_server, stop_server
from test_observability import wait_until, write_tenants


@pytest.fixture(scope="module")
def server(lmd_bin, default_model):
    proc, base = start_server(lmd_bin, default_model)
    yield base
    stop_server(proc)


@pytest.fixture(scope="module")
def client(server):
    return anthropic.Anthropic(base_url=server, api_key="unused", timeout=120, max_retries=0)


def sse(r):
    out, event = [], None
    for line in r.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            out.append((event, json.loads(line[6:])))
            event = None
    return out


def anthropic_error(r, status, etype):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == etype, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]["message"]


def test_create_matches_chat(server, client):
    m = client.messages.create(model="default", system="Answer briefly.", max_tokens=12,
                               messages=[{"role": "user", "content": "Name three colours."}], metadata={"user_id": "u1"},
                               extra_body={"temperature": 0})
    oc = openai.OpenAI(base_url=server + "/v1", api_key="unused", timeout=120, max_retries=0)
    c = oc.chat.completions.create(model="default", temperature=0, max_tokens=12,
                                   messages=[{"role": "system", "content": "Answer briefly."},
                                             {"role": "user", "content": "Name three colours."}])
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant"
    assert m.content[0].type == "text" and m.content[0].text == c.choices[0].message.content
    assert m.usage.input_tokens == c.usage.prompt_tokens and m.usage.output_tokens == c.usage.completion_tokens
    assert m.stop_reason == ("max_tokens" if c.choices[0].finish_reason == "length" else "end_turn")
    assert m.stop_sequence is None


def test_blocks_and_strings_agree(client):
    a = client.messages.create(model="default", max_tokens=6, system="Be kind.", extra_body={"temperature": 0},
                               messages=[{"role": "user", "content": "Hello there"}])
    b = client.messages.create(model="default", max_tokens=6, extra_body={"temperature": 0},
                               system=[{"type": "text", "text": "Be "}, {"type": "text", "text": "kind."}],
                               messages=[{"role": "user", "content": [{"type": "text", "text": "Hello "},
                                                                      {"type": "text", "text": "there"}]}])
    assert a.content[0].text == b.content[0].text and a.usage.input_tokens == b.usage.input_tokens


def test_max_tokens_stop_reason(client):
    m = client.messages.create(model="default", max_tokens=5, messages=[{"role": "user", "content": "Count."}],
                               extra_body={"ignore_eos": True})
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 5


def test_stop_sequence(client):
    """Greedy text, then the same request stopped at a piece of it."""
    msgs = [{"role": "user", "content": "Write a long story."}]
    full = client.messages.create(model="default", max_tokens=40, messages=msgs,
                                  extra_body={"ignore_eos": True, "temperature": 0}).content[0].text
    stop = full[10:14]
    assert len(stop) == 4
    m = client.messages.create(model="default", max_tokens=40, messages=msgs, stop_sequences=[stop],
                               extra_body={"ignore_eos": True, "temperature": 0})
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == stop
    assert m.content[0].text == full[:full.index(stop)]


def test_stream_events_in_order(server):
    body = {"model": "default", "max_tokens": 10, "temperature": 0, "stream": True, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Tell me a story."}]}
    with httpx.stream("POST", server + "/v1/messages", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse(r)
    names = [e for e, _ in events]
    for e, d in events:
        assert d["type"] == e
    n = names.count("content_block_delta")
    assert n >= 1
    assert names == (["message_start", "ping", "content_block_start"] + ["content_block_delta"] * n +
                     ["content_block_stop", "message_delta", "message_stop"])
    text = "".join(d["delta"]["text"] for e, d in events if e == "content_block_delta")
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["usage"]["input_tokens"] > 0
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "max_tokens" and delta["usage"]["output_tokens"] == 10
    body["stream"] = False
    whole = httpx.post(server + "/v1/messages", json=body, timeout=60).json()
    assert whole["content"][0]["text"] == text


def test_stream_helper(client):
    with client.messages.stream(model="default", max_tokens=8, messages=[{"role": "user", "content": "Hi"}],
                                extra_body={"ignore_eos": True}) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert final.content[0].text == text and final.stop_reason == "max_tokens" and final.usage.output_tokens == 8


@pytest.mark.parametrize("extra,msg", [
    ({"max_tokens": None}, "'max_tokens' is required"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"messages": []}, "non-empty"),
    ({"messages": [{"role": "system", "content": "x"}]}, "role"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "type 'image'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "prefill"),
    ({"system": 3}, "system"),
    ({"temperature": 1.5}, "temperature"),
    ({"top_k": -1}, "top_k"),
    ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "at most 4"),
    ({"stop_sequences": [""]}, "non-empty"),
    ({"tools": [{"name": "f", "input_schema": {"type": "object"}}]}, "tools"),
    ({"tool_choice": {"type": "any"}}, "needs a non-empty 'tools' list"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "not supported"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
    ({"stream": 1}, "stream"),
    ({"output_config": {"effort": "high"}}, "output_config.effort"),
    ({"output_config": {"format": {"type": "json_schema"}}}, "schema"),
])
def test_bad_input_is_400(server, extra, msg):
    body = {"max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    body.update(extra)
    body = {k: v for k, v in body.items() if v is not None}
    got = anthropic_error(httpx.post(server + "/v1/messages", json=body, timeout=30), 400, "invalid_request_error")
    assert msg in got


SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
          "additionalProperties": False}


def test_output_config_format(client):
    m = client.messages.create(model="default", max_tokens=100, messages=[{"role": "user", "content": "A flag?"}],
                               output_config={"format": {"type": "json_schema", "schema": SCHEMA}},
                               extra_body={"seed": 2})
    assert m.stop_reason == "end_turn"
    assert isinstance(json.loads(m.content[0].text)["ok"], bool)


def test_client_raises_typed_errors(client):
    with pytest.raises(anthropic.BadRequestError) as ei:
        client.messages.create(model="default", max_tokens=4,
                               messages=[{"role": "user", "content": [{"type": "image", "source": {
                                   "type": "base64", "media_type": "image/png", "data": "AA=="}}]}])
    assert ei.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "x"}])


def test_not_json(server):
    assert "not valid JSON" in anthropic_error(httpx.post(server + "/v1/messages", content=b"{", timeout=30), 400,
                                               "invalid_request_error")


def test_disconnect_cancels(server):
    # Earlier tests' streams may still be winding down: measure idle once
    # nothing runs, or their blocks coming back would hide this one's.
    assert wait_until(lambda: metric(server, "lmd_requests_running") == 0 and
                      metric(server, "lmd_requests_waiting") == 0)
    idle = metric(server, "lmd_kv_blocks_free")
    with httpx.stream("POST", server + "/v1/messages", timeout=60,
                      json={"max_tokens": 600, "stream": True, "ignore_eos": True,
                            "messages": [{"role": "user", "content": "Write a long essay."}]}) as r:
        # Hold the iterator: a dropped one closes the response (and so the
        # connection) at the break, before the blocks could be seen held.
        lines = r.iter_lines()
        got = 0
        for line in lines:
            if line.startswith("event: content_block_delta"):
                got += 1
                if got == 3:
                    break
        assert wait_until(lambda: metric(server, "lmd_kv_blocks_free") < idle)
    assert wait_until(lambda: metric(server, "lmd_kv_blocks_free") == idle)
    assert wait_until(lambda: metric(server, "lmd_requests_running") == 0)


KEY = "sk-msg-tenant"
TENANTS = """\
tenants:
  - name: team
    keys: ["%s"]
""" % KEY


def test_x_api_key(lmd_bin, default_model, tmp_path):
    proc, base = start_server(lmd_bin, default_model, "--tenants", write_tenants(tmp_path / "t.yaml", TENANTS))
    try:
        c = anthropic.Anthropic(base_url=base, api_key=KEY, timeout=60, max_retries=0)
        m = c.messages.create(model="default", max_tokens=3, messages=[{"role": "user", "content": "Hi"}])
        assert m.type == "message"
        with pytest.raises(anthropic.AuthenticationError):
            anthropic.Anthropic(base_url=base, api_key="sk-wrong", timeout=60, max_retries=0).messages.create(
                model="default", max_tokens=3, messages=[{"role": "user", "content": "Hi"}])
        r = httpx.post(base + "/v1/messages", json={"max_tokens": 3, "messages": [{"role": "user", "content": "x"}]},
                       timeout=30)
        anthropic_error(r, 401, "authentication_error")
        # The bearer form works too, on every route.
        r = httpx.post(base + "/v1/messages", headers={"Authorization": "Bearer " + KEY},
                       json={"max_tokens": 3, "messages": [{"role": "user", "content": "x"}]}, timeout=60)
        assert r.status_code == 200
        r = httpx.get(base + "/v1/models", headers={"x-api-key": KEY}, timeout=10)
        assert r.status_code == 200
    finally:
        stop_server(proc)


def test_cut_streams_end_with_error_events(lmd_bin, default_model):
    """A drain that runs out cuts running streams: /v1/messages ends with
    Anthropic's error event, /v1/responses with error and response.failed,
    never with a finished message."""
    import signal
    import threading

    proc, base = start_server(lmd_bin, default_model, "--drain-timeout", "1")
    try:
        bodies = {
            "/v1/messages": {"max_tokens": 600, "stream": True, "ignore_eos": True,
                             "messages": [{"role": "user", "content": "Write a long essay."}]},
            "/v1/responses": {"max_output_tokens": 600, "stream": True, "ignore_eos": True,
                              "input": "Write a long essay."},
        }
        started = {p: threading.Event() for p in bodies}
        events = {}

        def run(path):
            with httpx.stream("POST", base + path, json=bodies[path], timeout=60) as r:
                out, name = [], None
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        out.append((name, json.loads(line[6:])))
                        if name in ("content_block_delta", "response.output_text.delta"):
                            started[path].set()
                events[path] = out

        threads = [threading.Thread(target=run, args=(p,)) for p in bodies]
        for t in threads:
            t.start()
        for p in bodies:
            assert started[p].wait(60)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=60)
        m = [n for n, _ in events["/v1/messages"]]
        assert m[-1] == "error" and "message_stop" not in m and "message_delta" not in m
        err = events["/v1/messages"][-1][1]
        assert err["type"] == "error" and err["error"]["type"] == "overloaded_error"
        r = [n for n, _ in events["/v1/responses"]]
        assert r[-2:] == ["error", "response.failed"] and "response.completed" not in r
        failed = events["/v1/responses"][-1][1]["response"]
        assert failed["status"] == "failed" and failed["error"]["code"] == "server_shutdown"
        assert proc.wait(timeout=30) == 0
    finally:
        stop_server(proc)


def test_model_template_path(lmd_bin, default_model):
    """With a Jinja chat template (--chat-template-file), both routes render
    through it exactly as chat completions do: same prompt, same greedy text."""
    import os
    tpl = os.path.join(os.path.dirname(__file__), "..", "data", "templates", "gemma-3-it.jinja")
    proc, base = start_server(lmd_bin, default_model, "--chat-template-file", tpl)
    try:
        oc = openai.OpenAI(base_url=base + "/v1", api_key="unused", timeout=120, max_retries=0)
        c = oc.chat.completions.create(model="default", temperature=0, max_tokens=8,
                                       messages=[{"role": "system", "content": "Be terse."},
                                                 {"role": "user", "content": "What is 2+2?"}])
        r = oc.responses.create(model="default", instructions="Be terse.", input="What is 2+2?", temperature=0,
                                max_output_tokens=8)
        m = anthropic.Anthropic(base_url=base, api_key="unused", timeout=120, max_retries=0).messages.create(
            model="default", system="Be terse.", max_tokens=8, extra_body={"temperature": 0},
            messages=[{"role": "user", "content": "What is 2+2?"}])
        assert r.output_text == m.content[0].text == c.choices[0].message.content
        assert r.usage.input_tokens == m.usage.input_tokens == c.usage.prompt_tokens
    finally:
        stop_server(proc)
