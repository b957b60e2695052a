#!/usr/bin/env python3
"""Structured output under load: json_schema requests over a set of schemas
at temperature 1.0 against `lmd serve`, with the official `openai` client.

Reports how many outputs parse as JSON and validate against their schema
(Python `jsonschema`), how many ended by length (max_tokens cut the JSON),
and what the grammar costs per token, read from lmd's own counters
(lmd_grammar_seconds_total / lmd_grammar_tokens_total) against the mean
engine step (lmd_engine_step_seconds) over the same run. Requests go one at a
time, so a step is one sequence's decode (or a prompt's prefill).

    .venv/bin/python bench/structured.py --requests 200          # starts lmd serve
    .venv/bin/python bench/structured.py --url http://127.0.0.1:8080 --requests 40
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time

import httpx
import jsonschema
import openai

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

S = lambda **kw: {"type": "string", **kw}  # noqa: E731
I = lambda **kw: {"type": "integer", **kw}  # noqa: E731
N = lambda **kw: {"type": "number", **kw}  # noqa: E731


def obj(props, required=None):
    return {"type": "object", "properties": props,
            "required": list(props) if required is None else required, "additionalProperties": False}


# Twenty schemas: nested objects, arrays, enums, required and optional
# fields, integers and numbers with bounds, anyOf, $ref.
SCHEMAS = [
    ("person", obj({"name": S(maxLength=24), "age": I(minimum=0, maximum=120)})),
    ("colour", obj({"colour": {"enum": ["red", "green", "blue", "black", "white"]}})),
    ("flag", obj({"ok": {"type": "boolean"}, "note": {"type": "null"}})),
    ("point", obj({"x": I(minimum=-1000, maximum=1000), "y": I(minimum=-1000, maximum=1000)})),
    ("score", obj({"score": N(minimum=0, maximum=1), "label": S(maxLength=16)})),
    ("tags", obj({"tags": {"type": "array", "items": S(maxLength=12), "minItems": 1, "maxItems": 4}})),
    ("matrix", obj({"rows": {"type": "array", "maxItems": 3,
                             "items": {"type": "array", "items": I(minimum=0, maximum=9), "maxItems": 3}}})),
    ("address", obj({"street": S(maxLength=30), "city": S(maxLength=20), "zip": S(minLength=5, maxLength=5)})),
    ("customer", obj({"id": I(minimum=1, maximum=999999), "address": obj({"city": S(maxLength=20),
                                                                          "country": {"enum": ["FR", "DE", "US"]}})})),
    ("order", obj({"order_id": I(minimum=1000, maximum=9999),
                   "items": {"type": "array", "maxItems": 3,
                             "items": obj({"sku": S(maxLength=8), "qty": I(minimum=1, maximum=50)})},
                   "paid": {"type": "boolean"}})),
    ("optional", obj({"title": S(maxLength=20), "year": I(minimum=1900, maximum=2030),
                      "rating": N(minimum=0, maximum=10)}, required=["title"])),
    ("status", obj({"status": {"const": "done"}, "code": I(minimum=200, maximum=599)})),
    ("temperature", obj({"celsius": I(minimum=-40, maximum=50), "unit": {"enum": ["C"]}})),
    ("either", obj({"value": {"anyOf": [I(minimum=0, maximum=100), S(maxLength=10), {"type": "null"}]}})),
    ("nullable", obj({"nickname": {"type": ["string", "null"], "maxLength": 12}})),
    ("event", obj({"name": S(maxLength=20), "day": I(minimum=1, maximum=31),
                   "month": {"enum": ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                                      "dec"]}})),
    ("deep", obj({"a": obj({"b": obj({"c": obj({"d": I(minimum=0, maximum=9)})})})})),
    ("ref", {"$defs": {"pt": obj({"x": I(minimum=0, maximum=99), "y": I(minimum=0, maximum=99)})},
             "type": "object", "properties": {"from": {"$ref": "#/$defs/pt"}, "to": {"$ref": "#/$defs/pt"}},
             "required": ["from", "to"], "additionalProperties": False}),
    ("inventory", obj({"warehouse": S(maxLength=10),
                       "counts": {"type": "array", "minItems": 2, "maxItems": 5, "items": I(minimum=0, maximum=500)},
                       "open": {"type": "boolean"}})),
    ("answer", obj({"answer": {"enum": ["yes", "no", "maybe"]}, "confidence": N(minimum=0, maximum=100)})),
]

PROMPTS = ["Here is the record in JSON:\n", "Output:\n", "The data, as JSON: ", "Example {0}:\n"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(base):
    text = httpx.get(base + "/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        m = re.match(r'^(lmd_grammar_\w+|lmd_engine_step_seconds_(?:sum|count))(\{[^}]*\})? ([0-9.e+-]+)$', line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running lmd serve (default: start one on the default model)")
    ap.add_argument("--lmd", default=os.path.join(ROOT, "build", "lmd"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "default.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    proc = None
    base = args.url
    if not base:
        port = free_port()
        proc = subprocess.Popen([args.lmd, "serve", "-m", args.model, "--port", str(port), "-t", str(args.threads)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = "http://127.0.0.1:%d" % port
        for _ in range(600):
            try:
                if httpx.get(base + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", timeout=600, max_retries=0)
        before = metrics(base)
        ok = parsed = length = 0
        tokens = 0
        failures = []
        t0 = time.monotonic()
        for i in range(args.requests):
            name, schema = SCHEMAS[i % len(SCHEMAS)]
            prompt = PROMPTS[i % len(PROMPTS)].format(i)
            r = client.completions.create(
                model="default", prompt=prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                seed=args.seed + i,
                extra_body={"response_format": {"type": "json_schema",
                                                "json_schema": {"name": name, "schema": schema, "strict": True}}})
            text = r.choices[0].text
            tokens += r.usage.completion_tokens
            if r.choices[0].finish_reason == "length":
                length += 1
            try:
                doc = json.loads(text)
                parsed += 1
                jsonschema.validate(doc, schema)
                ok += 1
            except (ValueError, jsonschema.ValidationError) as e:
                failures.append((name, r.choices[0].finish_reason, text[:200], str(e)[:200]))
        wall = time.monotonic() - t0
        after = metrics(base)
    finally:
        if proc:
            proc.terminate()
            proc.wait()
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    gtok = d.get("lmd_grammar_tokens_total", 0.0)
    gs = d.get("lmd_grammar_seconds_total", 0.0)
    masks = d.get("lmd_grammar_masks_total", 0.0)
    steps = d.get("lmd_engine_step_seconds_count", 0.0)
    step_s = d.get("lmd_engine_step_seconds_sum", 0.0) / steps if steps else 0.0
    per_tok_us = gs / gtok * 1e6 if gtok else 0.0
    print("requests %d over %d schemas, temperature %.1f, max_tokens %d, %d threads" %
          (args.requests, len(SCHEMAS), args.temperature, args.max_tokens, args.threads))
    print("parsed %d/%d (%.1f %%), valid %d/%d (%.1f %%), cut by length %d" %
          (parsed, args.requests, 100.0 * parsed / args.requests, ok, args.requests, 100.0 * ok / args.requests,
           length))
    print("tokens %d in %.1f s; grammar tokens %d, full masks %d (%.1f %%)" %
          (tokens, wall, gtok, masks, 100.0 * masks / gtok if gtok else 0.0))
    print("grammar cost %.1f us/token; mean engine step %.2f ms; grammar / step = %.2f %%" %
          (per_tok_us, step_s * 1e3, 100.0 * per_tok_us / 1e3 / (step_s * 1e3) if step_s else 0.0))
    for f in failures[:10]:
        print("FAIL", f)
    return 0 if ok == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
