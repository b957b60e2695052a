"""Tool calls through a real `lmd serve` and the official openai client.

The default model has no chat template, so synthetic GGUFs are built with
real tool-capable templates (Qwen 2.5 and 3: Hermes <tool_call>; Llama
3.2: bare JSON; Mistral Small 3.1: [TOOL_CALLS]). Their weights are
random, so a call only comes out when it is forced: with tool_choice
"required" or a named function the grammar must still make every answer
a valid call (a known name, arguments that validate against the
function's schema), parsed into tool_calls, streamed and not. What the
template was given is checked from the outside: the prompt's token count
must equal that of the text jinja2 renders for the same conversation.
"""
import json
import os

import subprocess
import sys

import httpx
import jsonschema
import openai
import pytest

from test_chat_template import ROOT, TEMPLATES, expected_prompt, template
from test_multimodel import Serve

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
ADD = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                        "b": {"type": "integer", "minimum": 0, "maximum": 99}},
       "required": ["a", "b"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "description": "Add two numbers", "parameters": ADD}}]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
FAMILIES = {"qwen2.5": "qwen2.5-instruct.jinja", "qwen3": "qwen3.jinja", "llama3": "llama-3.2-instruct.jinja",
            "mistral": "mistral-small-3.1-instruct.jinja"}


def synth(path, tmpl_file):
    """A tiny random-weight model with a real template and room for the
    tools' prompt (the synthetic vocabulary spells text in short pieces)."""
    subprocess.check_call([sys.executable, os.path.join(ROOT, "tests", "golden", "make_synth.py"), str(path),
                           "--ctx", "4096", "--chat-template", tmpl_file], stdout=subprocess.DEVNULL)
    return str(path)


@pytest.fixture(scope="module")
def servers(lmd_bin, tmp_path_factory):
    d = tmp_path_factory.mktemp("tools")
    args = []
    for name, f in FAMILIES.items():
        path = synth(d / (name + ".gguf"), os.path.join(TEMPLATES, f))
        args += ["-m", name + "=" + path]
    nt = synth(d / "gemma.gguf", os.path.join(TEMPLATES, "gemma-3-it.jinja"))
    s = Serve(lmd_bin, d, *args, "-m", "notools=" + nt, "-t", "1", "-c", "4096")
    s.client = openai.OpenAI(base_url=s.base + "/v1", api_key="unused", timeout=120, max_retries=0)
    yield s
    assert s.stop() == 0, s.log()


def check_call(name, args, want=None):
    assert name in SCHEMAS, name
    if want:
        assert name == want
    jsonschema.validate(json.loads(args), SCHEMAS[name])


CHOICES = [("required", None), ({"type": "function", "function": {"name": "add"}}, "add"),
           ({"type": "function", "function": {"name": "get_weather"}}, "get_weather")]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("choice,want", CHOICES, ids=["required", "add", "get_weather"])
def test_forced_call(servers, family, choice, want):
    for seed in (1, 2):
        r = servers.client.chat.completions.create(model=family, messages=ASK, tools=TOOLS, tool_choice=choice,
                                                   max_tokens=400, seed=seed)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls", c
        assert c.message.tool_calls and c.message.content is None, c.message
        for tc in c.message.tool_calls:
            assert tc.type == "function" and tc.id.startswith("call_")
            check_call(tc.function.name, tc.function.arguments, want)
        if want:
            assert len(c.message.tool_calls) == 1
        # Streamed: the same call, as tool_calls deltas, and no markup as content.
        calls, finish = {}, None
        for chunk in servers.client.chat.completions.create(model=family, messages=ASK, tools=TOOLS,
                                                            tool_choice=choice, max_tokens=400, seed=seed,
                                                            stream=True):
            d = chunk.choices[0].delta
            assert not d.content, d
            for tc in d.tool_calls or []:
                if tc.index not in calls:
                    assert tc.id and tc.function.name and tc.type == "function", tc
                    calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": ""}
                calls[tc.index]["arguments"] += tc.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        assert finish == "tool_calls"
        got = [(v["name"], json.loads(v["arguments"])) for _, v in sorted(calls.items())]
        assert got == [(t.function.name, json.loads(t.function.arguments)) for t in c.message.tool_calls]


def test_parallel_false_gives_one_call(servers):
    for seed in range(1, 5):
        r = servers.client.chat.completions.create(model="qwen2.5", messages=ASK, tools=TOOLS, tool_choice="required",
                                                   parallel_tool_calls=False, max_tokens=400, seed=seed)
        assert len(r.choices[0].message.tool_calls) == 1


def tool_conversation(call):
    """The asked question, the assistant's call and the tool's answer."""
    return ASK + [{"role": "assistant", "content": None,
                   "tool_calls": [{"id": call.id, "type": "function",
                                   "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
                  {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'}]


@pytest.mark.parametrize("family", ["qwen2.5", "qwen3", "llama3"])
def test_tool_result_round_trip(servers, family):
    first = servers.client.chat.completions.create(model=family, messages=ASK, tools=TOOLS,
                                                   tool_choice={"type": "function",
                                                                "function": {"name": "get_weather"}},
                                                   max_tokens=400, seed=3)
    call = first.choices[0].message.tool_calls[0]
    msgs = tool_conversation(call)
    r = servers.client.chat.completions.create(model=family, messages=msgs, tools=TOOLS, max_tokens=4,
                                               temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # The template got the call (its arguments as an object, as vLLM gives
    # them) and the result: the prompt is jinja2's rendering token for token.
    rendered = [dict(m) for m in msgs]
    rendered[1] = dict(rendered[1], tool_calls=[{"id": call.id, "type": "function", "function": {
        "name": call.function.name, "arguments": json.loads(call.function.arguments)}}])
    prompt = expected_prompt(template(FAMILIES[family]), rendered, tools=TOOLS)
    comp = servers.client.completions.create(model=family, prompt=prompt, max_tokens=1)
    assert r.usage.prompt_tokens == comp.usage.prompt_tokens


def test_none_hides_the_tools(servers):
    r = servers.client.chat.completions.create(model="qwen2.5", messages=ASK, tools=TOOLS, tool_choice="none",
                                               max_tokens=4, temperature=0)
    assert r.choices[0].message.tool_calls is None
    plain = servers.client.chat.completions.create(model="qwen2.5", messages=ASK, max_tokens=4, temperature=0)
    assert r.usage.prompt_tokens == plain.usage.prompt_tokens
    # auto (the default with tools) shows them: a longer prompt.
    auto = servers.client.chat.completions.create(model="qwen2.5", messages=ASK, tools=TOOLS, max_tokens=4,
                                                  temperature=0)
    assert auto.usage.prompt_tokens > plain.usage.prompt_tokens


def test_auto_free_text_stays_content(servers):
    """The random model writes no call when free to: its text is content."""
    for stream in (False, True):
        body = {"model": "qwen2.5", "messages": ASK, "tools": TOOLS, "max_tokens": 16, "temperature": 0,
                "stream": stream}
        if not stream:
            c = servers.client.chat.completions.create(**body).choices[0]
            assert c.message.content and c.message.tool_calls is None and c.finish_reason == "length"
        else:
            text = "".join(ch.choices[0].delta.content or "" for ch in servers.client.chat.completions.create(**body))
            assert text == c.message.content


@pytest.mark.parametrize("body,param,needle", [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     "not in 'tools'"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "must be"),
    ({"tools": [{"type": "function"}]}, "tools", "function must be an object"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools", "letters"),
    ({"tools": {"name": "f"}}, "tools", "must be a list"),
    ({"tool_choice": "required"}, "tool_choice", "non-empty 'tools'"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "tools", "constrained output"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string", "pattern": "a+"}}}],
      "tool_choice": "required"}, "tools", "pattern"),
    ({"messages": [{"role": "assistant", "tool_calls": "x"}], "tools": TOOLS}, "messages", "tool_calls"),
])
def test_bad_input_400(servers, body, param, needle):
    req = {"model": "qwen2.5", "messages": ASK, **body}
    r = httpx.post(servers.base + "/v1/chat/completions", json=req, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and needle in err["message"], err


def test_models_that_cannot_take_tools(servers, default_model):
    # A template without tools (Gemma 3's): a 400 that says so; "none" is served.
    r = httpx.post(servers.base + "/v1/chat/completions", timeout=60,
                   json={"model": "notools", "messages": ASK, "tools": TOOLS})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
    assert "does not render tools" in r.json()["error"]["message"]
    r = httpx.post(servers.base + "/v1/chat/completions", timeout=60,
                   json={"model": "notools", "messages": ASK, "tools": TOOLS, "tool_choice": "none", "max_tokens": 2})
    assert r.status_code == 200, r.text


def test_builtin_family_refuses_tools(lmd_bin, default_model, tmp_path):
    s = Serve(lmd_bin, tmp_path, "-m", default_model, "-c", "256")
    try:
        r = httpx.post(s.base + "/v1/chat/completions", timeout=60,
                       json={"messages": ASK, "tools": TOOLS, "tool_choice": "required"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tools", r.text
        assert "built-in gemma template" in r.json()["error"]["message"]
    finally:
        assert s.stop() == 0


def test_agent_framework_round_trip(servers):
    """OpenAI's Agents SDK, as an application would use it: the first turn
    must call the tool (forced), the SDK runs it and sends the result
    back, the second turn answers freely."""
    import asyncio

    import agents

    agents.set_tracing_disabled(True)
    ran = []

    @agents.function_tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        ran.append((a, b))
        return a + b

    client = openai.AsyncOpenAI(base_url=servers.base + "/v1", api_key="unused", timeout=120, max_retries=0)
    agent = agents.Agent(name="adder", instructions="Use the add tool.", tools=[add],
                         model=agents.OpenAIChatCompletionsModel(model="qwen2.5", openai_client=client),
                         model_settings=agents.ModelSettings(tool_choice="add", max_tokens=300, seed=5))

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


def test_gateway_relays_upstream_tool_calls(lmd_bin, tmp_path):
    """A gateway model forwards tools upstream (here: an lmd serving a
    Qwen-template model) and relays the upstream's tool_calls, streamed
    and not; free text stays content."""
    up = Serve(lmd_bin, tmp_path, "-m", "qwen2.5=" + synth(tmp_path / "q.gguf",
                                                            os.path.join(TEMPLATES, FAMILIES["qwen2.5"])),
               "-t", "1", "-c", "4096")
    g = None
    try:
        g = Serve(lmd_bin, tmp_path, "--upstream", "qwen=" + up.base)
        c = openai.OpenAI(base_url=g.base + "/v1", api_key="unused", timeout=120, max_retries=0)
        choice = {"type": "function", "function": {"name": "add"}}
        upc = openai.OpenAI(base_url=up.base + "/v1", api_key="unused", timeout=120, max_retries=0)
        direct = upc.chat.completions.create(model="qwen2.5", messages=ASK, tools=TOOLS, tool_choice=choice,
                                             max_tokens=400, seed=4)
        want = [(t.function.name, json.loads(t.function.arguments)) for t in direct.choices[0].message.tool_calls]
        r = c.chat.completions.create(model="qwen", messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=400,
                                      seed=4)
        assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
        assert [(t.function.name, json.loads(t.function.arguments)) for t in r.choices[0].message.tool_calls] == want
        calls, finish = {}, None
        for chunk in c.chat.completions.create(model="qwen", messages=ASK, tools=TOOLS, tool_choice=choice,
                                               max_tokens=400, seed=4, stream=True):
            if not chunk.choices:
                continue
            d = chunk.choices[0].delta
            assert not d.content, d
            for tc in d.tool_calls or []:
                calls.setdefault(tc.index, {"name": tc.function.name, "arguments": ""})
                calls[tc.index]["arguments"] += tc.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        assert finish == "tool_calls"
        assert [(v["name"], json.loads(v["arguments"])) for _, v in sorted(calls.items())] == want
        free = c.chat.completions.create(model="qwen", messages=ASK, tools=TOOLS, max_tokens=8, temperature=0)
        assert free.choices[0].message.content and free.choices[0].message.tool_calls is None
    finally:
        assert g is None or g.stop() == 0, g.log()
        assert up.stop() == 0, up.log()
