#!/usr/bin/env python3
"""Records llama.cpp's reference outputs for the engine golden tests.

For each case (a model and a prompt) it stores, from llama.cpp through
llama-cpp-python on the same GGUF: the prompt token ids, 64 greedily
generated token ids, the gap between the top-2 logits at every generated
position (so a test can tell a real divergence from a near-tie), and the
logits after the prompt at a fixed set of token ids (the 64 largest plus 64
spread over the vocabulary). Tests compare lmd against these files; CI does
not need llama.cpp.

usage: make_golden.py [--only default|synth] [--arch A ...]   (or `make golden`)
"""
import argparse
import ctypes
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import llama_cpp

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(HERE, "engine")
N_GEN = 64

DEFAULT_PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Translate to German: The weather is nice today.\nGerman:",
    "東京は日本の首都です。東京の人口は",
    "List three primary colors:\n1.",
    "<start_of_turn>user\nWhat is 17 times 23?<end_of_turn>\n<start_of_turn>model\n",
    "In 1969, Neil Armstrong became the first person to",
    "The quick brown fox jumps over the lazy dog. " * 6 + "Summary:",
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def greedy(llm, prompt_ids):
    ctx = llm._ctx.ctx
    n_vocab = llm.n_vocab()
    llm.reset()
    llm.eval(prompt_ids)

    def logits():
        p = llama_cpp.llama_get_logits_ith(ctx, -1)
        return np.ctypeslib.as_array(p, shape=(n_vocab,)).copy()

    first = logits()
    toks, gaps = [], []
    cur = first
    for i in range(N_GEN):
        order = np.argsort(-cur, kind="stable")
        toks.append(int(order[0]))
        gaps.append(float(cur[order[0]] - cur[order[1]]))
        if i + 1 < N_GEN:
            llm.eval([int(order[0])])
            cur = logits()
    top = [int(i) for i in np.argsort(-first, kind="stable")[:64]]
    spread = [int(i) for i in np.linspace(0, n_vocab - 1, 64).astype(int)]
    ids = sorted(set(top + spread))
    return toks, gaps, {"ids": ids, "values": [float(first[i]) for i in ids]}


def record(name, model, cases, threads):
    llm = llama_cpp.Llama(model_path=model, n_ctx=1024, n_batch=512, n_threads=threads, logits_all=False,
                          flash_attn=False, verbose=False)
    out = {"model_sha256": sha256(model), "n_gen": N_GEN, "llama_cpp_python": llama_cpp.__version__, "cases": []}
    for c in cases:
        ids = c.get("prompt_ids")
        if ids is None:
            ids = llm.tokenize(c["prompt"].encode(), add_bos=True, special=True)
        toks, gaps, lg = greedy(llm, ids)
        out["cases"].append(dict(c, prompt_ids=ids, tokens=toks, gaps=gaps, logits=lg))
        print(name, len(ids), "prompt tokens ->", toks[:12], "... min gap %.4f" % min(gaps), file=sys.stderr)
    path = os.path.join(OUT, name + ".json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", path, file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["default", "synth"])
    ap.add_argument("--arch", action="append", help="synthetic architectures (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if a.only in (None, "default"):
        model = os.path.join(ROOT, "models", "default.gguf")
        record("default", model, [{"prompt": p} for p in DEFAULT_PROMPTS], a.threads)
    if a.only in (None, "synth"):
        for arch in a.arch or ["llama", "qwen2", "qwen3", "gemma3"]:
            path = os.path.join(ROOT, "build", "synth-%s.gguf" % arch)
            subprocess.check_call([sys.executable, os.path.join(HERE, "make_synth.py"), path, "--arch", arch])
            rng = np.random.default_rng(99)
            cases = []
            for n in (1, 5, 17, 64, 200, 37, 9, 120):
                ids = [1] + [int(x) for x in rng.integers(3, 2048, n - 1)]
                cases.append({"prompt_ids": ids})
            record("synth_" + arch, path, cases, a.threads)


if __name__ == "__main__":
    main()
