"""Structured output end to end: `lmd serve` on the default model (a base
model that knows nothing of JSON mode) with the official `openai` client.
json_schema outputs at temperature 1.0 must parse and validate against
their schema (Python `jsonschema`), json_object outputs must be objects, a
GBNF `grammar` must hold, and what lmd cannot enforce is a 400 naming the
field and the keyword."""
import json
import os

import httpx
import jsonschema
import openai
import pytest

from test_server import error_of, start_server, stop_server


@pytest.fixture(scope="module")
def server(lmd_bin, default_model):
    proc, base = start_server(lmd_bin, default_model)
    yield base
    stop_server(proc)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", timeout=120, max_retries=0)


def obj(props, required=None):
    return {"type": "object", "properties": props,
            "required": list(props) if required is None else required, "additionalProperties": False}


SCHEMAS = [
    obj({"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 18, "maximum": 99}}),
    obj({"colour": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"},
         "score": {"type": "number", "minimum": 0, "maximum": 1}}),
    obj({"point": obj({"x": {"type": "integer", "minimum": -50, "maximum": 50},
                       "y": {"type": "integer", "minimum": -50, "maximum": 50}}),
         "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 3}}),
    {"$defs": {"leaf": obj({"v": {"type": "integer", "minimum": 0, "maximum": 9}})},
     "type": "object", "properties": {"left": {"$ref": "#/$defs/leaf"},
                                      "right": {"anyOf": [{"$ref": "#/$defs/leaf"}, {"type": "null"}]},
                                      "note": {"type": "string", "maxLength": 8}},
     "required": ["left", "right"], "additionalProperties": False},
]


def rf(schema, name="out"):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


@pytest.mark.parametrize("i", range(len(SCHEMAS)))
def test_json_schema_completions_validate(client, i):
    schema = SCHEMAS[i]
    for seed in (1, 2):
        r = client.completions.create(model="default", prompt="Record %d as JSON:\n" % i, max_tokens=120,
                                      temperature=1.0, seed=seed, extra_body={"response_format": rf(schema)})
        c = r.choices[0]
        assert c.finish_reason == "stop", c
        jsonschema.validate(json.loads(c.text), schema)


def test_json_schema_chat_streamed(client):
    schema = SCHEMAS[0]
    stream = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "A person, please."}], max_tokens=80,
        temperature=1.0, seed=3, stream=True, response_format=rf(schema, "person"))
    text, finish = "", None
    for ch in stream:
        if ch.choices:
            text += ch.choices[0].delta.content or ""
            finish = ch.choices[0].finish_reason or finish
    assert finish == "stop"
    jsonschema.validate(json.loads(text), schema)


def test_json_object(client):
    r = client.completions.create(model="default", prompt="{", max_tokens=60, temperature=1.0, seed=5, n=2,
                                  extra_body={"response_format": {"type": "json_object"}})
    for c in r.choices:
        if c.finish_reason == "stop":
            assert isinstance(json.loads(c.text), dict)
        else:
            # Cut by max_tokens mid-object: reported as length, as usual.
            assert c.finish_reason == "length" and c.text.startswith("{")


def test_length_cut_reports_length(client):
    schema = obj({"story": {"type": "string", "minLength": 200}})
    r = client.completions.create(model="default", prompt="JSON:", max_tokens=5, temperature=1.0,
                                  extra_body={"response_format": rf(schema)})
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].text.startswith('{')


def test_grammar(client):
    g = 'root ::= answer "." \nanswer ::= "yes" | "no" | "maybe " [0-9]{1,2} "%"\n'
    for seed in range(4):
        r = client.completions.create(model="default", prompt="Is it raining?", max_tokens=12, temperature=1.0,
                                      seed=seed, extra_body={"grammar": g})
        t = r.choices[0].text
        assert r.choices[0].finish_reason == "stop"
        assert t in ("yes.", "no.") or (t.startswith("maybe ") and t.endswith("%.") and t[6:-2].isdigit()), t


def test_text_format_is_plain(client):
    r = client.completions.create(model="default", prompt="Hello", max_tokens=4, temperature=0,
                                  extra_body={"response_format": {"type": "text"}})
    assert r.choices[0].finish_reason in ("stop", "length")


def deep_schema(n):
    s = {"type": "string"}
    for _ in range(n):
        s = {"type": "array", "items": s}
    return s


BAD = [
    ({"response_format": {"type": "xml"}}, "response_format", "unknown response_format type 'xml'"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "needs a 'json_schema' object"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}},
     "response_format", "'response_format.json_schema.name' is required"),
    ({"response_format": rf({"type": "string", "pattern": "^a+$"})}, "response_format",
     "response_format.json_schema.schema: the keyword 'pattern' is not supported"),
    ({"response_format": rf(obj({"a": {"type": "string", "format": "email"}}))}, "response_format",
     "response_format.json_schema.schema.properties.a: the keyword 'format' is not supported"),
    ({"response_format": rf({"type": "integer", "minimum": 5, "maximum": 2})}, "response_format",
     "no integer lies within minimum/maximum"),
    ({"response_format": rf({"type": "object", "properties": {}, "required": ["x"]})}, "response_format",
     "required property 'x' has no schema"),
    ({"response_format": rf({"type": "strin"})}, "response_format", "unknown type 'strin'"),
    ({"response_format": rf({"$ref": "#/$defs/nope"})}, "response_format", "'$ref' '#/$defs/nope' points at nothing"),
    ({"response_format": rf({"oneOf": [{"type": "string"}]})}, "response_format", "'oneOf' is not supported"),
    ({"grammar": "root ::= \"a\"\nroot ::= \"b\""}, "grammar", "rule 'root' is defined twice"),
    ({"grammar": "root ::= x"}, "grammar", "rule 'x' is used but never defined"),
    ({"grammar": "root ::= root \"a\""}, "grammar", "left-recursive"),
    ({"grammar": 7}, "grammar", "'grammar' must be a non-empty string"),
    # The grammar parser recurses once a group: deeper nesting would reach the end of the stack.
    ({"grammar": "root ::= " + "(" * 100000 + "\"a\"" + ")" * 100000}, "grammar", "groups nested deeper than 64"),
    # So does the schema compiler, once a level.
    ({"response_format": rf(deep_schema(400))}, "response_format", "nested deeper than"),
    ({"grammar": "root ::= \"a\"", "response_format": {"type": "json_object"}}, "grammar", "cannot be used together"),
    ({"response_format": {"type": "json_object"}, "ignore_eos": True}, "ignore_eos", "cannot be used with"),
]


@pytest.mark.parametrize("extra,param,msg", BAD)
def test_bad_input_is_400(server, extra, param, msg):
    body = {"model": "default", "prompt": "x", "max_tokens": 4, **extra}
    r = httpx.post(server + "/v1/completions", json=body, timeout=30)
    err = error_of(r, 400)
    assert err["param"] == param, err
    assert msg in err["message"], err


def test_server_still_serves(client):
    r = client.completions.create(model="default", prompt="Hi", max_tokens=2, temperature=0)
    assert r.choices[0].text is not None
