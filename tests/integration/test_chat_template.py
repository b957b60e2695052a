"""Chat requests rendered with the model's own Jinja chat template, through
a real `lmd serve` and the official openai client.

The default model carries no template, so a synthetic GGUF is built with a
real template in tokenizer.chat_template (Gemma 3's), and
--chat-template-file puts others (Qwen3's, Gemma 3's) in front of a model.
What the server prompted with is checked from the outside: a greedy chat
answer must equal the greedy completion of the text jinja2 renders for the
same conversation, with the same prompt token count.
"""
import json
import os
import subprocess
import sys

import openai
import pytest

from test_jinja import NOW, py_render  # noqa: F401  (jinja2 set up as Hugging Face renders templates)
from test_multimodel import Serve

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATES = os.path.join(ROOT, "tests", "data", "templates")
N = 8


def template(name):
    with open(os.path.join(TEMPLATES, name), encoding="utf-8") as f:
        return f.read()


def synth(path, tmpl_file=None):
    cmd = [sys.executable, os.path.join(ROOT, "tests", "golden", "make_synth.py"), str(path), "--arch", "llama"]
    if tmpl_file:
        cmd += ["--chat-template", tmpl_file]
    subprocess.check_call(cmd, stdout=subprocess.DEVNULL)
    return str(path)


def expected_prompt(source, messages, bos="<s>", eos="</s>", **extra):
    text, exc = py_render(source, {"messages": messages, "bos_token": bos, "eos_token": eos,
                                   "add_generation_prompt": extra.pop("add_generation_prompt", True), **extra})
    assert exc is None, exc
    # The tokenizer adds BOS itself; lmd drops the one the template wrote.
    return text[len(bos):] if text.startswith(bos) else text


def same_as_completion(client, model, messages, prompt, **kw):
    chat = client.chat.completions.create(model=model, messages=messages, max_tokens=N, temperature=0, **kw)
    comp = client.completions.create(model=model, prompt=prompt, max_tokens=N, temperature=0)
    assert chat.usage.prompt_tokens == comp.usage.prompt_tokens, (chat.usage, comp.usage, prompt)
    assert chat.choices[0].message.content == comp.choices[0].text


@pytest.fixture(scope="module")
def gemma_synth(lmd_bin, tmp_path_factory):
    d = tmp_path_factory.mktemp("chat-gguf")
    path = synth(d / "synth-gemma-tmpl.gguf", os.path.join(TEMPLATES, "gemma-3-it.jinja"))
    s = Serve(lmd_bin, d, "-m", "synth=" + path, "-t", "1", "-c", "256")
    s.path = path
    s.client = openai.OpenAI(base_url=s.base + "/v1", api_key="unused", timeout=60, max_retries=0)
    yield s
    assert s.stop() == 0, s.log()


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "  hello there  "},
    {"role": "assistant", "content": "hi"},
    {"role": "user", "content": [{"type": "text", "text": "what is "}, {"type": "text", "text": "new"}]},
]


def test_gguf_template_renders_the_chat(gemma_synth):
    assert "chat template jinja from gguf" in gemma_synth.log()
    # Content parts reach the template joined into text, as the parser joins them.
    joined = CONVERSATION[:3] + [{"role": "user", "content": "what is new"}]
    same_as_completion(gemma_synth.client, "synth", CONVERSATION, expected_prompt(template("gemma-3-it.jinja"), joined))


def test_lmd_run_chat_uses_the_same_template(gemma_synth, lmd_bin):
    # Gemma's template trims the content where the built-in gemma family would not.
    msgs = [{"role": "user", "content": "  hello there  "}]
    r = gemma_synth.client.chat.completions.create(model="synth", messages=msgs, max_tokens=N, temperature=0,
                                                   extra_body={"ignore_eos": True})
    out = subprocess.run([lmd_bin, "run", "-m", gemma_synth.path, "--chat", "-p", "  hello there  ", "-n", str(N),
                          "--temp", "0", "-t", "1", "-c", "256", "--ignore-eos"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout[:-1] == r.choices[0].message.content


def test_lmd_template_renders_a_gguf_template(gemma_synth, lmd_bin, tmp_path):
    v = tmp_path / "v.json"
    v.write_text(json.dumps({"messages": CONVERSATION[:3], "add_generation_prompt": True}))
    out = subprocess.run([lmd_bin, "template", "-m", gemma_synth.path, str(v)], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    want, exc = py_render(template("gemma-3-it.jinja"), {"messages": CONVERSATION[:3], "add_generation_prompt": True,
                                                          "bos_token": "<s>", "eos_token": "</s>"})
    assert exc is None and out.stdout.decode() == want
    # A GGUF without a template says so.
    v.write_text("{}")
    out = subprocess.run([lmd_bin, "template", "-m", synth(tmp_path / "plain.gguf"), str(v)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and "has no tokenizer.chat_template" in out.stderr


def test_add_generation_prompt_false(gemma_synth):
    msgs = CONVERSATION[:3]
    prompt = expected_prompt(template("gemma-3-it.jinja"), msgs, add_generation_prompt=False)
    assert prompt.endswith("hi<end_of_turn>\n")
    same_as_completion(gemma_synth.client, "synth", msgs, prompt, extra_body={"add_generation_prompt": False})


def test_raise_exception_is_a_400_naming_the_message(gemma_synth):
    with pytest.raises(openai.BadRequestError) as e:
        gemma_synth.client.chat.completions.create(
            model="synth", max_tokens=2,
            messages=[{"role": "user", "content": "one"}, {"role": "user", "content": "two"}])
    assert e.value.status_code == 400
    err = e.value.body
    assert err["message"] == "Conversation roles must alternate user/assistant/user/assistant/...", err
    assert err["param"] == "messages" and err["code"] == "chat_template_error", err


def test_bad_template_inputs_are_400(gemma_synth):
    for body, param in [({"add_generation_prompt": "yes"}, "add_generation_prompt"),
                        ({"chat_template_kwargs": [1]}, "chat_template_kwargs")]:
        with pytest.raises(openai.BadRequestError) as e:
            gemma_synth.client.chat.completions.create(model="synth", max_tokens=2, extra_body=body,
                                                       messages=[{"role": "user", "content": "x"}])
        assert e.value.body["param"] == param, e.value.body


@pytest.fixture(scope="module")
def qwen_file(lmd_bin, tmp_path_factory):
    # The file overrides the template the GGUF carries.
    d = tmp_path_factory.mktemp("chat-file")
    path = synth(d / "synth-gemma-tmpl.gguf", os.path.join(TEMPLATES, "gemma-3-it.jinja"))
    f = os.path.join(TEMPLATES, "qwen3.jinja")
    s = Serve(lmd_bin, d, "-m", "synth=" + path, "-t", "1", "-c", "512", "--chat-template-file", f)
    s.client = openai.OpenAI(base_url=s.base + "/v1", api_key="unused", timeout=60, max_retries=0)
    yield s
    assert s.stop() == 0, s.log()


def test_chat_template_file_and_kwargs(qwen_file):
    assert "chat template jinja from " + os.path.join(TEMPLATES, "qwen3.jinja") in qwen_file.log()
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "think less"}]
    src = template("qwen3.jinja")
    same_as_completion(qwen_file.client, "synth", msgs, expected_prompt(src, msgs))
    prompt = expected_prompt(src, msgs, enable_thinking=False)
    assert prompt.endswith("<think>\n\n</think>\n\n")
    same_as_completion(qwen_file.client, "synth", msgs, prompt,
                       extra_body={"chat_template_kwargs": {"enable_thinking": False}})


def test_tool_call_history_reaches_the_template(qwen_file):
    # OpenAI clients send tool-call arguments as JSON text; templates get
    # them as objects (vLLM's convention), here written back by tojson.
    msgs = [
        {"role": "user", "content": "weather in paris"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"days\": 2}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    as_objects = [msgs[0], {**msgs[1], "tool_calls": [{**msgs[1]["tool_calls"][0], "function": {
        "name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]}, msgs[2]]
    prompt = expected_prompt(template("qwen3.jinja"), as_objects)
    assert '{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}' in prompt
    same_as_completion(qwen_file.client, "synth", msgs, prompt)


def test_gemma_template_file_on_the_default_model(lmd_bin, default_model, tmp_path):
    """Gemma 3's real template on the default model prompts exactly as the
    built-in gemma renderer it would otherwise use."""
    msgs = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a fruit."}]
    answers = []
    for extra in ([], ["--chat-template-file", os.path.join(TEMPLATES, "gemma-3-it.jinja")]):
        s = Serve(lmd_bin, tmp_path, "-m", "g=" + default_model, "-t", "1", "-c", "256", *extra)
        try:
            c = openai.OpenAI(base_url=s.base + "/v1", api_key="unused", timeout=60, max_retries=0)
            r = c.chat.completions.create(model="g", messages=msgs, max_tokens=N, temperature=0)
            answers.append((r.usage.prompt_tokens, r.choices[0].message.content))
            if not extra:
                # Without a template of its own the model refuses what only a template could honour.
                with pytest.raises(openai.BadRequestError) as e:
                    c.chat.completions.create(model="g", messages=msgs, max_tokens=2,
                                              extra_body={"add_generation_prompt": False})
                assert e.value.body["param"] == "add_generation_prompt"
        finally:
            assert s.stop() == 0, s.log()
    assert answers[0] == answers[1]


def test_malformed_template_file_stops_the_start(lmd_bin, default_model, tmp_path):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}\n{{ m.content }\n{% endfor %}")
    out = subprocess.run([lmd_bin, "serve", "-m", default_model, "--port", "0", "--chat-template-file", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert str(bad) + ":2:" in out.stderr, out.stderr


def test_unusable_gguf_template_falls_back(lmd_bin, tmp_path):
    f = tmp_path / "odd.jinja"
    f.write_text("<start_of_turn>{% include 'other.jinja' %}")
    path = synth(tmp_path / "synth-odd.gguf", str(f))
    s = Serve(lmd_bin, tmp_path, "-m", "odd=" + path, "-t", "1", "-c", "128")
    try:
        assert "the GGUF's chat template cannot be used (line 1" in s.log()
        assert "chat template gemma" in s.log()
        c = openai.OpenAI(base_url=s.base + "/v1", api_key="unused", timeout=60, max_retries=0)
        r = c.chat.completions.create(model="odd", messages=[{"role": "user", "content": "x"}], max_tokens=2)
        assert r.choices[0].finish_reason in ("length", "stop")
    finally:
        assert s.stop() == 0, s.log()
