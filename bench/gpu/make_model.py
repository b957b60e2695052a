#!/usr/bin/env python3
"""Writes the GPU benchmark's model (WORKLOADS.md E3): a Llama-3-8B-shaped
GGUF (4096 hidden, 32 layers, 32 heads / 8 KV heads, head 128, FFN 14336,
vocabulary 128256, RoPE base 500000) with random weights, as F16 or in
Q4_K_M's mix of types (Q4_K, with Q6_K for the output, half of the
attn_v and ffn_down layers, as llama.cpp's Q4_K_M picks them).

Speed, not realism: a decode step reads every byte of the weights, so
what a benchmark measures depends on the types and sizes, not on the
values. Quantized blocks are random bytes with their fp16 scales set to
small finite values; float weights are N(0, 0.02^2). A few hundred MB of
randomness are drawn and tiled, so a 16 GB file takes seconds, not
minutes. The vocabulary is SentencePiece-style so that llama.cpp loads
the same file.

usage: make_model.py OUT.gguf --type f16|q4_k_m [--shape llama3-8b|tinyllama]
"""
import argparse
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

SHAPES = {
    "llama3-8b": dict(n_embd=4096, n_layer=32, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=128256, n_ctx=8192,
                      rope_base=500000.0),
    "tinyllama": dict(n_embd=2048, n_layer=22, n_head=32, n_head_kv=4, n_ff=5632, n_vocab=32000, n_ctx=2048,
                      rope_base=10000.0),
}
BLOCK = {Q.Q4_K: (256, 144), Q.Q6_K: (256, 210), Q.F16: (1, 2)}

rng = np.random.default_rng(7)
POOL = rng.integers(0, 256, size=64 << 20, dtype=np.uint8)
FPOOL = (rng.standard_normal(16 << 20) * 0.02).astype(np.float16)


def tiled(pool, count):
    reps = -(-count // pool.size)
    return np.tile(pool, reps)[:count]


def tensor(rows, cols, qtype):
    """rows x cols of qtype: float16 values, or raw blocks as uint8 [rows][row_bytes]."""
    if qtype == Q.F16:
        return tiled(FPOOL, rows * cols).reshape(rows, cols)
    be, bb = BLOCK[qtype]
    nb = rows * (cols // be)
    raw = tiled(POOL, nb * bb).reshape(nb, bb).copy()
    d = np.array([0.0005], dtype=np.float16).view(np.uint8)
    if qtype == Q.Q4_K:  # d, dmin first
        raw[:, 0:2] = d
        raw[:, 2:4] = np.array([0.0002], dtype=np.float16).view(np.uint8)
    else:  # Q6_K: d last
        raw[:, 208:210] = d
    return raw.reshape(rows, (cols // be) * bb)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--type", choices=["f16", "q4_k_m"], required=True)
    ap.add_argument("--shape", choices=list(SHAPES), default="llama3-8b")
    a = ap.parse_args()
    s = SHAPES[a.shape]
    E, L, H, HKV, FF, V = s["n_embd"], s["n_layer"], s["n_head"], s["n_head_kv"], s["n_ff"], s["n_vocab"]
    hd = E // H
    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name("lmd bench %s %s" % (a.shape, a.type))
    w.add_context_length(s["n_ctx"])
    w.add_embedding_length(E)
    w.add_block_count(L)
    w.add_feed_forward_length(FF)
    w.add_head_count(H)
    w.add_head_count_kv(HKV)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(s["rope_base"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(1 if a.type == "f16" else 15)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    toks = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % i for i in range(256)]
    toks += ["t%d" % i for i in range(V - len(toks))]
    w.add_token_list(toks)
    w.add_token_scores([0.0] * V)
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (V - 259))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    q4 = a.type == "q4_k_m"

    def more_bits(i):  # llama.cpp's use_more_bits for Q4_K_M
        return i < L // 8 or i >= 7 * L // 8 or (i - L // 8) % 3 == 2

    def add(name, rows, cols, qtype):
        w.add_tensor(name, tensor(rows, cols, qtype), raw_dtype=None if qtype == Q.F16 else qtype)

    ones = np.ones(E, dtype=np.float32)
    add("token_embd.weight", V, E, Q.Q4_K if q4 else Q.F16)
    w.add_tensor("output_norm.weight", ones)
    add("output.weight", V, E, Q.Q6_K if q4 else Q.F16)
    for i in range(L):
        p = "blk.%d." % i
        base = Q.Q4_K if q4 else Q.F16
        hi = Q.Q6_K if q4 and more_bits(i) else base
        w.add_tensor(p + "attn_norm.weight", ones)
        w.add_tensor(p + "ffn_norm.weight", ones)
        add(p + "attn_q.weight", H * hd, E, base)
        add(p + "attn_k.weight", HKV * hd, E, base)
        add(p + "attn_v.weight", HKV * hd, E, hi)
        add(p + "attn_output.weight", E, H * hd, base)
        add(p + "ffn_gate.weight", FF, E, base)
        add(p + "ffn_up.weight", FF, E, base)
        add(p + "ffn_down.weight", E, FF, hi)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
