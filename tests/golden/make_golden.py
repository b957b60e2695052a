#!/usr/bin/env python3
"""Records llama.cpp's reference outputs for the engine golden tests.

Two reference configurations of llama.cpp are recorded for each model:
NAME.json with weight repacking off and prefill one token per micro-batch,
which keeps llama.cpp on its vec_dot kernels (its batched paths — tiled
K-quant matmul, tinyBLAS — round differently) — the arithmetic lmd's kernels
reproduce bit for bit, so lmd must match it exactly but for near-ties — and
NAME.default.json with llama.cpp as it runs by default (repacked Q4_0/Q4_K,
tinyBLAS prefill), whose different rounding lmd is compared with under a
stated tolerance.

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


class Llama:
    """llama.cpp through its C API, so both reference configurations can be
    set: `exact` turns weight repacking off and feeds one token per
    micro-batch, which keeps llama.cpp on its vec_dot kernels (the arithmetic
    lmd reproduces bit for bit: its batched matmul equals vec_dot per row); otherwise llama.cpp runs as it does by
    default (Q4_0/Q4_K repacked at load, tinyBLAS for batched prefill)."""

    def __init__(self, path, threads, exact):
        quiet = llama_cpp.llama_log_callback(lambda level, text, user: None)
        llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))
        self._quiet = quiet
        mp = llama_cpp.llama_model_default_params()
        mp.use_extra_bufts = not exact
        self.model = llama_cpp.llama_model_load_from_file(path.encode(), mp)
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = 1024
        cp.n_batch = 512
        cp.n_ubatch = 1 if exact else 512
        cp.n_threads = threads
        cp.n_threads_batch = threads
        cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = llama_cpp.llama_init_from_model(self.model, cp)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))

    def tokenize(self, text):
        vocab = llama_cpp.llama_model_get_vocab(self.model)
        buf = (llama_cpp.llama_token * (len(text) + 16))()
        n = llama_cpp.llama_tokenize(vocab, text, len(text), buf, len(buf), True, True)
        return list(buf[:n])

    def reset(self):
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)

    def eval(self, ids, pos):
        arr = (llama_cpp.llama_token * len(ids))(*ids)
        batch = llama_cpp.llama_batch_get_one(arr, len(ids))
        rc = llama_cpp.llama_decode(self.ctx, batch)
        assert rc == 0, rc
        p = llama_cpp.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(p, shape=(self.n_vocab,)).copy()


def greedy(llm, prompt_ids):
    llm.reset()
    first = llm.eval(prompt_ids, 0)
    toks, gaps = [], []
    cur = first
    for i in range(N_GEN):
        order = np.argsort(-cur, kind="stable")
        toks.append(int(order[0]))
        gaps.append(float(cur[order[0]] - cur[order[1]]))
        if i + 1 < N_GEN:
            cur = llm.eval([int(order[0])], len(prompt_ids) + i)
    top = [int(i) for i in np.argsort(-first, kind="stable")[:64]]
    spread = [int(i) for i in np.linspace(0, llm.n_vocab - 1, 64).astype(int)]
    ids = sorted(set(top + spread))
    return toks, gaps, {"ids": ids, "values": [float(first[i]) for i in ids]}


def kernel_path():
    """The x86 SIMD path llama.cpp was built for, as its system info says.
    lmd's avx2 and avx512 kernels reproduce llama.cpp's AVX2 vec_dot
    arithmetic; llama.cpp built for AVX-512 sums F16/F32 dot products in
    another order, so a golden recorded there would need bounds of its own
    (tests/integration/test_engine_golden.py checks this field). To record
    on an AVX-512 machine, build the peer with CMAKE_ARGS="-DGGML_NATIVE=OFF
    -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"."""
    info = llama_cpp.llama_print_system_info().decode()
    if "AVX512 = 1" in info:
        return "avx512"
    if "AVX2 = 1" in info:
        return "avx2"
    return "other"


def record(name, model, cases, threads):
    path_name = kernel_path()
    if path_name != "avx2":
        print("warning: llama.cpp runs its %s path here; the golden tests' bounds are for AVX2 references"
              % path_name, file=sys.stderr)
    for exact in (True, False):
        llm = Llama(model, threads, exact)
        out = {"model_sha256": sha256(model), "n_gen": N_GEN, "llama_cpp_python": llama_cpp.__version__,
               "reference": "exact" if exact else "default", "kernel_path": path_name, "cases": []}
        for c in cases:
            ids = c.get("prompt_ids")
            if ids is None:
                ids = llm.tokenize(c["prompt"].encode())
            toks, gaps, lg = greedy(llm, ids)
            out["cases"].append(dict(c, prompt_ids=ids, tokens=toks, gaps=gaps, logits=lg))
            print(name, out["reference"], len(ids), "prompt tokens ->", toks[:8], "... min gap %.4f" % min(gaps),
                  file=sys.stderr)
        path = os.path.join(OUT, name + ("" if exact else ".default") + ".json")
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
