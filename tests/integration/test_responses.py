"""OpenAI's Responses API (/v1/responses) end to end: `lmd serve` on the
default model, driven by the official `openai` client's
responses.create / responses.stream and by raw HTTP for the event stream
and the refusals. A Responses request runs as the chat request it means,
so greedy output must equal chat completions' word for word."""
import json

import httpx
import jsonschema
import openai
import pytest

from test_server import error_of, metric, start_server, stop_server
from test_observability import wait_until


@pytest.fixture(scope="module")
def server(lmd_bin, default_model):
    proc, base = start_server(lmd_bin, default_model)
    yield base
    stop_server(proc)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", timeout=120, max_retries=0)


def sse(r):
    """(event, data) pairs of an SSE response."""
    out, event = [], None
    for line in r.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            out.append((event, json.loads(line[6:])))
            event = None
    return out


def test_create_matches_chat(client):
    """Same conversation, greedy: the same text and prompt size as chat completions."""
    r = client.responses.create(input=[{"role": "user", "content": "Name three colours."}],
                                instructions="Answer briefly.", temperature=0, max_output_tokens=12,
                                metadata={"trace": "t-1"})
    c = client.chat.completions.create(model="default", messages=[{"role": "system", "content": "Answer briefly."},
                                                                  {"role": "user", "content": "Name three colours."}],
                                       temperature=0, max_tokens=12)
    assert r.id.startswith("resp_") and r.object == "response"
    assert r.output_text == c.choices[0].message.content
    assert r.usage.input_tokens == c.usage.prompt_tokens
    assert r.usage.output_tokens == c.usage.completion_tokens
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.metadata == {"trace": "t-1"} and r.instructions == "Answer briefly."
    item = r.output[0]
    assert item.type == "message" and item.role == "assistant" and item.content[0].type == "output_text"
    expect = "incomplete" if c.choices[0].finish_reason == "length" else "completed"
    assert r.status == expect


def test_input_parts_and_string_agree(client):
    a = client.responses.create(input="Hello there", temperature=0, max_output_tokens=6)
    b = client.responses.create(input=[{"type": "message", "role": "user",
                                        "content": [{"type": "input_text", "text": "Hello "},
                                                    {"type": "input_text", "text": "there"}]}],
                                temperature=0, max_output_tokens=6)
    assert a.output_text == b.output_text and a.usage.input_tokens == b.usage.input_tokens


def test_max_output_tokens_is_incomplete(client):
    r = client.responses.create(input="Count to ten.", max_output_tokens=5, extra_body={"ignore_eos": True})
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 5 and r.output[0].status == "incomplete"


def test_stream_events_in_order(server):
    body = {"input": "Tell me a story.", "max_output_tokens": 12, "stream": True, "temperature": 0,
            "ignore_eos": True}
    with httpx.stream("POST", server + "/v1/responses", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse(r)
    names = [e for e, _ in events]
    for e, d in events:
        assert d["type"] == e
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    deltas = [d["delta"] for e, d in events if e == "response.output_text.delta"]
    assert names[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert names[4:4 + len(deltas)] == ["response.output_text.delta"] * len(deltas) and deltas
    assert names[4 + len(deltas):] == ["response.output_text.done", "response.content_part.done",
                                       "response.output_item.done", "response.incomplete"]
    text = "".join(deltas)
    assert events[4 + len(deltas)][1]["text"] == text
    final = events[-1][1]["response"]
    assert final["status"] == "incomplete" and final["output"][0]["content"][0]["text"] == text
    assert final["usage"]["output_tokens"] == 12
    # The same request unstreamed gives the same text.
    body["stream"] = False
    whole = httpx.post(server + "/v1/responses", json=body, timeout=60).json()
    assert whole["output"][0]["content"][0]["text"] == text


SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0,
                                                                           "maximum": 9}},
          "required": ["ok", "n"], "additionalProperties": False}


def test_stream_helper_with_json_schema(client):
    """responses.stream(): text deltas, then a final response whose text
    obeys text.format (the grammar ends the output, so it completes)."""
    fmt = {"format": {"type": "json_schema", "name": "flag", "schema": SCHEMA, "strict": True}}
    deltas = []
    with client.responses.stream(model="default", input="Give me a flag.", text=fmt, temperature=1.0,
                                 max_output_tokens=200, extra_body={"seed": 3}) as s:
        for ev in s:
            if ev.type == "response.output_text.delta":
                deltas.append(ev.delta)
        final = s.get_final_response()
    assert final.status == "completed" and final.output_text == "".join(deltas)
    jsonschema.validate(json.loads(final.output_text), SCHEMA)
    assert final.text.format.type == "json_schema"


def test_create_stream_true(client):
    stream = client.responses.create(input="Hi", max_output_tokens=4, stream=True, extra_body={"ignore_eos": True})
    types = [ev.type for ev in stream]
    assert types[0] == "response.created" and types[-1] == "response.incomplete"
    assert types.count("response.output_text.delta") >= 1


def test_json_object_format(client):
    r = client.responses.create(input="A JSON object please.", text={"format": {"type": "json_object"}},
                                max_output_tokens=100, extra_body={"seed": 5})
    if r.status == "completed":
        assert isinstance(json.loads(r.output_text), dict)
    else:
        # Cut by max_output_tokens mid-object: reported as incomplete.
        assert r.incomplete_details.reason == "max_output_tokens" and r.output_text.startswith("{")


def test_unprefixed_route(server):
    r = httpx.post(server + "/responses", json={"input": "Hi", "max_output_tokens": 2}, timeout=60)
    assert r.status_code == 200 and r.json()["object"] == "response"


@pytest.mark.parametrize("extra,param,msg", [
    ({"input": None}, "input", "required"),
    ({"input": 5}, "input", "string or a non-empty list"),
    ({"input": []}, "input", "non-empty list"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input", "call_id"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input", "reasoning"),
    ({"tools": [{"type": "web_search_preview"}]}, "tools", "web_search_preview"),
    ({"max_tool_calls": 3}, "max_tool_calls", "above 1"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input", "input_image"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input", "role"),
    ({"previous_response_id": "resp_123"}, "previous_response_id", "does not store"),
    ({"conversation": "conv_1"}, "conversation", "does not store"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools", "tool"),
    ({"tool_choice": "required"}, "tool_choice", "tool_choice"),
    ({"background": True}, "background", "background"),
    ({"include": ["message.output_text.logprobs"]}, "include", "include"),
    ({"reasoning": {"effort": "high"}}, "reasoning", "reasoning"),
    ({"truncation": "auto"}, "truncation", "truncation"),
    ({"max_output_tokens": 0}, "max_output_tokens", "max_output_tokens"),
    ({"stream": "yes"}, "stream", "true or false"),
    ({"temperature": 3}, "temperature", "temperature"),
    ({"metadata": {"k": 1}}, "metadata", "metadata"),
    ({"store": "no"}, "store", "store"),
    ({"text": {"format": {"type": "xml"}}}, "text", "xml"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text", "schema"),
    ({"instructions": 7}, "instructions", "string"),
])
def test_bad_input_is_400(server, extra, param, msg):
    body = {"input": "hello", "max_output_tokens": 4}
    body.update(extra)
    if body["input"] is None:
        del body["input"]
    e = error_of(httpx.post(server + "/v1/responses", json=body, timeout=30), 400)
    assert e["param"] == param and msg in e["message"], e


def test_not_json_and_unknown_model(server):
    e = error_of(httpx.post(server + "/v1/responses", content=b"{nope", timeout=30), 400)
    assert "not valid JSON" in e["message"]
    e = error_of(httpx.post(server + "/v1/responses", json={"model": "nope", "input": "x"}, timeout=30), 404)
    assert e["code"] == "model_not_found"


def test_store_is_accepted_and_answered_false(client):
    r = client.responses.create(input="Hi", max_output_tokens=2, store=True)
    assert r.store is False


def test_disconnect_cancels(server):
    # Earlier tests' streams may still be winding down: measure idle once
    # nothing runs, or their blocks coming back would hide this one's.
    assert wait_until(lambda: metric(server, "lmd_requests_running") == 0 and
                      metric(server, "lmd_requests_waiting") == 0)
    idle = metric(server, "lmd_kv_blocks_free")
    with httpx.stream("POST", server + "/v1/responses", timeout=60,
                      json={"input": "Write a long essay.", "max_output_tokens": 600, "stream": True,
                            "ignore_eos": True}) as r:
        # Hold the iterator: a dropped one closes the response (and so the
        # connection) at the break, before the blocks could be seen held.
        lines = r.iter_lines()
        got = 0
        for line in lines:
            if line.startswith("event: response.output_text.delta"):
                got += 1
                if got == 3:
                    break
        assert wait_until(lambda: metric(server, "lmd_kv_blocks_free") < idle)
    assert wait_until(lambda: metric(server, "lmd_kv_blocks_free") == idle)
    assert wait_until(lambda: metric(server, "lmd_requests_running") == 0)
