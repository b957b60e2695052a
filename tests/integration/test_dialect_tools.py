"""Tools on /v1/responses and /v1/messages through a real `lmd serve`,
driven by the official `openai` and `anthropic` clients.

As in test_tools.py, the default model has no chat template, so a
synthetic GGUF carries Qwen 2.5's real tool-capable template (Hermes
<tool_call>); its weights are random, so a call comes out only when it is
forced (tool_choice required / any, or a named tool), and the grammar then
makes every answer a valid call. Both dialects run as the chat request
they mean: the calls must be the ones chat completions gives for the same
seed, and a conversation carrying a call and its result must reach the
template as the equivalent chat conversation (same prompt token count).
"""
import json
import os

import anthropic
import httpx
import jsonschema
import openai
import pytest

from test_chat_template import TEMPLATES
from test_multimodel import Serve
from test_tools import ADD, ASK, SCHEMAS, TOOLS, WEATHER, synth

# The same tools in each dialect's spelling.
R_TOOLS = [{"type": "function", "name": t["function"]["name"], "description": t["function"]["description"],
            "parameters": t["function"]["parameters"]} for t in TOOLS]
M_TOOLS = [{"name": t["function"]["name"], "description": t["function"]["description"],
            "input_schema": t["function"]["parameters"]} for t in TOOLS]


@pytest.fixture(scope="module")
def srv(lmd_bin, tmp_path_factory):
    d = tmp_path_factory.mktemp("dtools")
    path = synth(d / "qwen.gguf", os.path.join(TEMPLATES, "qwen2.5-instruct.jinja"))
    s = Serve(lmd_bin, d, "-m", "qwen=" + path, "-t", "1", "-c", "4096")
    s.oai = openai.OpenAI(base_url=s.base + "/v1", api_key="unused", timeout=120, max_retries=0)
    s.ant = anthropic.Anthropic(base_url=s.base, api_key="unused", timeout=120, max_retries=0)
    yield s
    assert s.stop() == 0, s.log()


def chat_calls(srv, choice, seed, **kw):
    r = srv.oai.chat.completions.create(model="qwen", messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=400,
                                        seed=seed, **kw)
    return [(t.function.name, json.loads(t.function.arguments)) for t in r.choices[0].message.tool_calls]


def check(name, args, want=None):
    assert name in SCHEMAS and (want is None or name == want), name
    jsonschema.validate(args, SCHEMAS[name])


# ---- Responses ---------------------------------------------------------------


@pytest.mark.parametrize("choice,chat_choice,want", [
    ("required", "required", None),
    ({"type": "function", "name": "add"}, {"type": "function", "function": {"name": "add"}}, "add"),
])
def test_responses_forced_call(srv, choice, chat_choice, want):
    for seed in (1, 2):
        r = srv.oai.responses.create(model="qwen", input=ASK, tools=R_TOOLS, tool_choice=choice,
                                     max_output_tokens=400, extra_body={"seed": seed})
        assert r.status == "completed" and r.output, r
        assert all(o.type == "function_call" for o in r.output), r.output
        for o in r.output:
            assert o.id.startswith("fc_") and o.call_id.startswith("call_") and o.status == "completed"
            check(o.name, json.loads(o.arguments), want)
        got = [(o.name, json.loads(o.arguments)) for o in r.output]
        assert got == chat_calls(srv, chat_choice, seed)
        assert r.tool_choice == (choice if isinstance(choice, str) else r.tool_choice)
        assert [t.name for t in r.tools] == ["get_weather", "add"]
        # Streamed: the same calls as output_item / function_call_arguments events.
        events = list(srv.oai.responses.create(model="qwen", input=ASK, tools=R_TOOLS, tool_choice=choice,
                                               max_output_tokens=400, stream=True, extra_body={"seed": seed}))
        assert [e.sequence_number for e in events] == list(range(len(events)))
        types = [e.type for e in events]
        assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
        assert "response.output_text.delta" not in types
        per_call = ["response.output_item.added", "response.function_call_arguments.delta",
                    "response.function_call_arguments.done", "response.output_item.done"]
        assert types[2:-1] == per_call * len(got)
        done = [e for e in events if e.type == "response.function_call_arguments.done"]
        assert [(e.output_index, json.loads(e.arguments)) for e in done] == [(i, g[1]) for i, g in enumerate(got)]
        added = [e.item for e in events if e.type == "response.output_item.added"]
        assert all(i.type == "function_call" and i.arguments == "" and i.status == "in_progress" for i in added)
        final = events[-1].response
        assert [(o.name, json.loads(o.arguments)) for o in final.output] == got


def test_responses_stream_helper(srv):
    """responses.stream() accumulates the call from the events."""
    with srv.oai.responses.stream(model="qwen", input="What is 2 plus 3?", tools=R_TOOLS,
                                  tool_choice={"type": "function", "name": "add"}, max_output_tokens=400,
                                  extra_body={"seed": 4}) as s:
        deltas = [ev.delta for ev in s if ev.type == "response.function_call_arguments.delta"]
        final = s.get_final_response()
    (call,) = final.output
    assert call.type == "function_call" and call.name == "add" and call.arguments == "".join(deltas)
    jsonschema.validate(json.loads(call.arguments), ADD)


def test_responses_round_trip(srv):
    first = srv.oai.responses.create(model="qwen", input=ASK, tools=R_TOOLS,
                                     tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=400,
                                     extra_body={"seed": 3})
    call = first.output[0]
    result = '{"temperature": 21}'
    items = ASK + [{"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
                   {"type": "function_call_output", "call_id": call.call_id, "output": result}]
    r = srv.oai.responses.create(model="qwen", input=items, tools=R_TOOLS, max_output_tokens=4, temperature=0)
    assert r.status in ("completed", "incomplete") and r.output
    # The same conversation as chat messages: the same prompt, the same answer.
    msgs = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": result}]
    c = srv.oai.chat.completions.create(model="qwen", messages=msgs, tools=TOOLS, max_tokens=4, temperature=0)
    assert r.usage.input_tokens == c.usage.prompt_tokens
    assert r.output_text == (c.choices[0].message.content or "")


def test_responses_none_and_auto(srv):
    plain = srv.oai.responses.create(model="qwen", input=ASK, max_output_tokens=4, temperature=0)
    none = srv.oai.responses.create(model="qwen", input=ASK, tools=R_TOOLS, tool_choice="none", max_output_tokens=4,
                                    temperature=0)
    assert none.usage.input_tokens == plain.usage.input_tokens and none.output_text == plain.output_text
    auto = srv.oai.responses.create(model="qwen", input=ASK, tools=R_TOOLS, max_output_tokens=16, temperature=0)
    assert auto.usage.input_tokens > plain.usage.input_tokens
    chat = srv.oai.chat.completions.create(model="qwen", messages=ASK, tools=TOOLS, max_tokens=16, temperature=0)
    assert auto.output[0].type == "message" and auto.output_text == chat.choices[0].message.content


def test_responses_parallel_false(srv):
    for seed in range(1, 4):
        r = srv.oai.responses.create(model="qwen", input=ASK, tools=R_TOOLS, tool_choice="required",
                                     parallel_tool_calls=False, max_output_tokens=400, extra_body={"seed": seed})
        assert len(r.output) == 1 and r.parallel_tool_calls is False


@pytest.mark.parametrize("extra,param,needle", [
    ({"tools": [{"type": "web_search_preview"}]}, "tools", "'web_search_preview', which is not supported"),
    ({"tools": [{"type": "mcp", "server_label": "x"}]}, "tools", "MCP"),
    ({"tools": [{"type": "function"}]}, "tools", "tools[0].name"),
    ({"tools": [{"type": "function", "name": "f", "paramz": {}}]}, "tools", "tools[0].paramz"),
    ({"tools": {"type": "function"}}, "tools", "must be a list"),
    ({"tools": R_TOOLS, "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice", "not in 'tools'"),
    ({"tools": R_TOOLS, "tool_choice": {"type": "file_search"}}, "tool_choice", "not supported"),
    ({"tools": R_TOOLS, "tool_choice": {"type": "function"}}, "tool_choice", "tool_choice.name"),
    ({"tools": R_TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls", "parallel_tool_calls"),
    ({"input": [{"type": "function_call", "name": "add", "arguments": "{}"}]}, "input", "input[0].call_id"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "add", "arguments": {}}]}, "input",
     "input[0].arguments"),
    ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input", "input[0].output"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input", "item_reference"),
])
def test_responses_bad_tools_400(srv, extra, param, needle):
    body = {"model": "qwen", "input": ASK, "max_output_tokens": 4, **extra}
    r = httpx.post(srv.base + "/v1/responses", json=body, timeout=60)
    assert r.status_code == 400, r.text
    e = r.json()["error"]
    assert e["param"] == param and needle in e["message"], e


# ---- Messages ----------------------------------------------------------------


@pytest.mark.parametrize("choice,chat_choice,want", [
    ({"type": "any"}, "required", None),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}},
     "get_weather"),
])
def test_messages_forced_call(srv, choice, chat_choice, want):
    for seed in (1, 2):
        m = srv.ant.messages.create(model="qwen", messages=ASK, tools=M_TOOLS, tool_choice=choice, max_tokens=400,
                                    extra_body={"seed": seed})
        assert m.stop_reason == "tool_use" and m.content, m
        assert all(b.type == "tool_use" for b in m.content), m.content
        for b in m.content:
            assert b.id.startswith("toolu_") and isinstance(b.input, dict)
            check(b.name, b.input, want)
        got = [(b.name, b.input) for b in m.content]
        assert got == chat_calls(srv, chat_choice, seed)
        # Streamed: content_block_start with the tool_use, input_json_delta, stop.
        with srv.ant.messages.stream(model="qwen", messages=ASK, tools=M_TOOLS, tool_choice=choice, max_tokens=400,
                                     extra_body={"seed": seed}) as s:
            events = list(s)
            final = s.get_final_message()
        assert final.stop_reason == "tool_use"
        assert [(b.name, b.input) for b in final.content] == got
        starts = [e for e in events if e.type == "content_block_start"]
        assert [e.index for e in starts] == list(range(len(got)))
        assert all(e.content_block.type == "tool_use" and e.content_block.input == {} for e in starts)
        deltas = [e for e in events if e.type == "content_block_delta"]
        assert all(e.delta.type == "input_json_delta" for e in deltas)


def test_messages_raw_stream_shape(srv):
    body = {"model": "qwen", "messages": ASK, "tools": M_TOOLS, "tool_choice": {"type": "tool", "name": "add"},
            "max_tokens": 400, "stream": True, "seed": 1}
    with httpx.stream("POST", srv.base + "/v1/messages", json=body, timeout=120) as r:
        assert r.status_code == 200
        events = [(line[7:]) for line in r.iter_lines() if line.startswith("event: ")]
    assert events == ["message_start", "ping", "content_block_start", "content_block_delta", "content_block_stop",
                      "message_delta", "message_stop"]


def test_messages_round_trip(srv):
    first = srv.ant.messages.create(model="qwen", messages=ASK, tools=M_TOOLS,
                                    tool_choice={"type": "tool", "name": "get_weather"}, max_tokens=400,
                                    extra_body={"seed": 3})
    use = first.content[0]
    msgs = ASK + [{"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name,
                                                     "input": use.input}]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                "content": [{"type": "text", "text": '{"temperature": 21}'}]}]}]
    m = srv.ant.messages.create(model="qwen", messages=msgs, tools=M_TOOLS, max_tokens=4,
                                extra_body={"temperature": 0})
    assert m.stop_reason in ("end_turn", "max_tokens", "tool_use") and m.content
    chat = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": use.id, "type": "function", "function": {"name": use.name, "arguments": json.dumps(use.input)}}]},
        {"role": "tool", "tool_call_id": use.id, "content": '{"temperature": 21}'}]
    c = srv.oai.chat.completions.create(model="qwen", messages=chat, tools=TOOLS, max_tokens=4, temperature=0)
    assert m.usage.input_tokens == c.usage.prompt_tokens
    assert m.content[0].type == "text" and m.content[0].text == (c.choices[0].message.content or "")
    # is_error reaches the template as text saying so: a longer prompt.
    msgs[2]["content"][0]["is_error"] = True
    err = srv.ant.messages.create(model="qwen", messages=msgs, tools=M_TOOLS, max_tokens=1)
    assert err.usage.input_tokens > m.usage.input_tokens


def test_messages_disable_parallel(srv):
    for seed in range(1, 4):
        m = srv.ant.messages.create(model="qwen", messages=ASK, tools=M_TOOLS,
                                    tool_choice={"type": "any", "disable_parallel_tool_use": True}, max_tokens=400,
                                    extra_body={"seed": seed})
        assert len(m.content) == 1 and m.content[0].type == "tool_use"


def test_messages_none_hides_tools(srv):
    plain = srv.ant.messages.create(model="qwen", messages=ASK, max_tokens=2)
    none = srv.ant.messages.create(model="qwen", messages=ASK, tools=M_TOOLS, tool_choice={"type": "none"},
                                   max_tokens=2)
    assert none.usage.input_tokens == plain.usage.input_tokens
    auto = srv.ant.messages.create(model="qwen", messages=ASK, tools=M_TOOLS, max_tokens=2)
    assert auto.usage.input_tokens > plain.usage.input_tokens


@pytest.mark.parametrize("extra,needle", [
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "'web_search_20250305', which is not"),
    ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "server tools"),
    ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
    ({"tools": [{"input_schema": WEATHER}]}, "tools[0].name"),
    ({"tools": [{"name": "f", "input_schema": WEATHER, "foo": 1}]}, "tools[0].foo"),
    ({"tools": M_TOOLS, "tool_choice": {"type": "tool"}}, "needs a string 'name'"),
    ({"tools": M_TOOLS, "tool_choice": {"type": "tool", "name": "nope"}}, "not in 'tools'"),
    ({"tools": M_TOOLS, "tool_choice": {"type": "sometimes"}}, "unknown tool_choice type"),
    ({"tools": M_TOOLS, "tool_choice": "auto"}, "must be an object"),
    ({"tools": M_TOOLS, "tool_choice": {"type": "any", "disable_parallel_tool_use": 1}}, "true or false"),
    ({"messages": ASK + [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "add"}]},
                         {"role": "user", "content": "x"}]}, "messages[1].content[0] (tool_use)"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "add", "input": {}}]}]},
     "belongs in an assistant message"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]}, "tool_use_id"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "is_error": "y"}]}]},
     "is_error"),
])
def test_messages_bad_tools_400(srv, extra, needle):
    body = {"model": "qwen", "messages": ASK, "max_tokens": 4, **extra}
    r = httpx.post(srv.base + "/v1/messages", json=body, timeout=60)
    assert r.status_code == 400, r.text
    b = r.json()
    assert b["type"] == "error" and b["error"]["type"] == "invalid_request_error"
    assert needle in b["error"]["message"], b


STOPS = ["f", "h", "k", "p"]


def test_agents_sdk_over_responses(srv):
    """OpenAI's Agents SDK on its default model class, which speaks the
    Responses API: the forced first turn calls the tool, the SDK sends the
    function_call and its output back as input items, and the second turn
    (tool_choice reset to auto) answers. The SDK takes an answer cut by
    max_output_tokens as a failure, and the random model never ends on its
    own, so the free turn is ended by stop strings: letters that the
    forced call's text (`<tool_call>`, `name`, `arguments`, `add`, digits)
    cannot contain."""
    import asyncio

    import agents

    agents.set_tracing_disabled(True)
    ran = []

    @agents.function_tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        ran.append((a, b))
        return a + b

    client = openai.AsyncOpenAI(base_url=srv.base + "/v1", api_key="unused", timeout=120, max_retries=0)
    agent = agents.Agent(name="adder", instructions="Use the add tool.", tools=[add],
                         model=agents.OpenAIResponsesModel(model="qwen", openai_client=client),
                         model_settings=agents.ModelSettings(tool_choice="add", max_tokens=300,
                                                             extra_body={"seed": 5, "stop": STOPS}))

    async def run():
        try:
            return await agents.Runner.run(agent, "What is 2 + 3?", max_turns=3)
        finally:
            await client.close()

    result = asyncio.run(run())
    assert len(ran) == 1, ran
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"], kinds
    assert result.new_items[1].output == sum(ran[0])
    assert isinstance(result.final_output, str)


def test_auto_free_text_streams_as_text(srv):
    """With tools offered and the model free, its text is the answer in
    both dialects, streamed the same as unstreamed (held back only where it
    could begin a call)."""
    body = dict(model="qwen", input=ASK, tools=R_TOOLS, max_output_tokens=24, temperature=0)
    whole = srv.oai.responses.create(**body)
    events = list(srv.oai.responses.create(**body, stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert whole.output_text and text == whole.output_text
    assert [o.type for o in events[-1].response.output] == ["message"]
    m = srv.ant.messages.create(model="qwen", messages=ASK, tools=M_TOOLS, max_tokens=24,
                                extra_body={"temperature": 0})
    with srv.ant.messages.stream(model="qwen", messages=ASK, tools=M_TOOLS, max_tokens=24,
                                 extra_body={"temperature": 0}) as s:
        streamed = "".join(s.text_stream)
        final = s.get_final_message()
    assert m.content[0].text and streamed == m.content[0].text and final.stop_reason == "max_tokens"
    assert [b.type for b in final.content] == ["text"]
