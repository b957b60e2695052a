#!/usr/bin/env python3
"""Writes a small random-weight Llama-architecture GGUF, deterministically.

The same seed gives the same bytes, so tests can regenerate the file and
compare against reference outputs recorded from llama.cpp on it (the
reference records the file's SHA-256). Tensor types are mixed on purpose
(F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) to exercise several kernels
in one forward pass. The vocabulary is SentencePiece-style: <unk>, <s>,
</s>, 256 byte tokens, then ordinary pieces.

Other architectures lmd supports can be written in the same tiny shape
(--arch qwen2 adds Q/K/V biases, qwen3 per-head Q/K norms, gemma3 the
Gemma 3 layer with post-norms and sliding-window layers), so each
architecture's forward pass is compared with llama.cpp's.

usage: make_synth.py OUT.gguf [--shape tiny|tinyllama] [--arch llama|qwen2|qwen3|gemma3]
"""
import argparse
import hashlib
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf import quants

SHAPES = {
    # A few MB: for tests.
    "tiny": dict(n_embd=256, n_layer=3, n_head=4, n_head_kv=2, n_ff=768, n_vocab=2048, n_ctx=1024, std=0.06),
    # WORKLOADS.md E1 "tiny-llama-1.1b-shape": for benchmarks, never committed.
    "tinyllama": dict(n_embd=2048, n_layer=22, n_head=32, n_head_kv=4, n_ff=5632, n_vocab=32000, n_ctx=2048,
                      std=0.02),
}

# Per-layer type cycle for the tiny model; the bench shape is F16 (quantize it after).
TINY_TYPES = [
    dict(q=Q.Q8_0, k=Q.Q4_0, v=Q.Q5_1, o=Q.F16, gate=Q.Q4_1, up=Q.Q5_0, down=Q.Q8_0),
    dict(q=Q.Q4_0, k=Q.BF16, v=Q.Q8_0, o=Q.Q5_0, gate=Q.F16, up=Q.Q4_1, down=Q.Q5_1),
    dict(q=Q.F32, k=Q.Q8_0, v=Q.F16, o=Q.Q4_1, gate=Q.Q5_1, up=Q.Q8_0, down=Q.Q4_0),
]


def vocab(n_vocab):
    tokens, scores, types = [b"<unk>", b"<s>", b"</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for b in range(256):
        tokens.append(("<0x%02X>" % b).encode())
        scores.append(0.0)
        types.append(6)
    letters = "abcdefghijklmnopqrstuvwxyz"
    rng = np.random.default_rng(7)
    seen = set()
    # Single letters and "▁"-prefixed words, scored so longer pieces win.
    pieces = [c for c in letters] + ["\u2581" + c for c in letters] + ["\u2581"]
    while len(pieces) < n_vocab - len(tokens):
        n = int(rng.integers(2, 7))
        w = "".join(letters[int(i)] for i in rng.integers(0, 26, n))
        if rng.random() < 0.6:
            w = "\u2581" + w
        if w not in seen:
            seen.add(w)
            pieces.append(w)
    for i, p in enumerate(pieces[: n_vocab - len(tokens)]):
        tokens.append(p.encode())
        scores.append(-float(i) / 100.0)
        types.append(1)
    return tokens, scores, types


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--arch", default="llama", choices=["llama", "qwen2", "qwen3", "gemma3"])
    ap.add_argument("--chat-template", metavar="FILE", help="store FILE's text as tokenizer.chat_template")
    ap.add_argument("--ctx", type=int, help="context length to record (default: the shape's)")
    a = ap.parse_args()
    s = SHAPES[a.shape]
    rng = np.random.default_rng(a.seed)
    E, L, H, HKV, FF, V = s["n_embd"], s["n_layer"], s["n_head"], s["n_head_kv"], s["n_ff"], s["n_vocab"]
    hd = E // H

    arch = a.arch
    w = gguf.GGUFWriter(a.out, arch)
    w.add_name("lmd synthetic %s %s" % (arch, a.shape))
    w.add_context_length(a.ctx or s["n_ctx"])
    w.add_embedding_length(E)
    w.add_block_count(L)
    w.add_feed_forward_length(FF)
    w.add_head_count(H)
    w.add_head_count_kv(HKV)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(10000.0 if arch != "gemma3" else 1000000.0)
    if arch == "gemma3":
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_sliding_window(16)  # small, so the tests cross it
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(1)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    toks, scores, types = vocab(V)
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if a.chat_template:
        with open(a.chat_template, encoding="utf-8") as f:
            w.add_chat_template(f.read())

    def put(name, shape, qtype, std=s["std"], ones=False, shift=0.0):
        if ones:
            data = np.ones(shape, dtype=np.float32)
        else:
            data = rng.standard_normal(shape, dtype=np.float32) * np.float32(std) + np.float32(shift)
        if qtype == Q.F32:
            w.add_tensor(name, data)
        elif qtype == Q.F16:
            w.add_tensor(name, data.astype(np.float16))
        else:
            w.add_tensor(name, quants.quantize(data, qtype), raw_dtype=qtype)

    tiny = a.shape == "tiny"
    # gemma3 scales embeddings by sqrt(E) and ties the output to them: keep both near unit scale.
    emb_std = (1.0 / np.sqrt(E) if arch == "gemma3" else 1.0) if tiny else s["std"]
    put("token_embd.weight", (V, E), Q.Q8_0 if tiny else Q.F16, std=emb_std)
    put("output_norm.weight", (E,), Q.F32, ones=True)
    if arch != "gemma3":  # gemma3 ties its output to the embeddings
        put("output.weight", (V, E), Q.Q8_0 if tiny else Q.F16)
    for il in range(L):
        t = TINY_TYPES[il % len(TINY_TYPES)] if tiny else dict(q=Q.F16, k=Q.F16, v=Q.F16, o=Q.F16, gate=Q.F16,
                                                              up=Q.F16, down=Q.F16)
        p = "blk.%d." % il
        put(p + "attn_norm.weight", (E,), Q.F32, ones=True)
        put(p + "attn_q.weight", (H * hd, E), t["q"])
        put(p + "attn_k.weight", (HKV * hd, E), t["k"])
        put(p + "attn_v.weight", (HKV * hd, E), t["v"])
        put(p + "attn_output.weight", (E, H * hd), t["o"])
        put(p + "ffn_norm.weight", (E,), Q.F32, ones=True)
        put(p + "ffn_gate.weight", (FF, E), t["gate"])
        put(p + "ffn_up.weight", (FF, E), t["up"])
        put(p + "ffn_down.weight", (E, FF), t["down"])
        if arch == "qwen2":
            put(p + "attn_q.bias", (H * hd,), Q.F32, std=0.5)
            put(p + "attn_k.bias", (HKV * hd,), Q.F32, std=0.5)
            put(p + "attn_v.bias", (HKV * hd,), Q.F32, std=0.5)
        if arch in ("qwen3", "gemma3"):
            put(p + "attn_q_norm.weight", (hd,), Q.F32, std=0.2, shift=1.0)
            put(p + "attn_k_norm.weight", (hd,), Q.F32, std=0.2, shift=1.0)
        if arch == "gemma3":
            put(p + "post_attention_norm.weight", (E,), Q.F32, std=0.2, shift=1.0)
            put(p + "post_ffw_norm.weight", (E,), Q.F32, std=0.2, shift=1.0)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    h = hashlib.sha256(open(a.out, "rb").read()).hexdigest()
    print(h)


if __name__ == "__main__":
    sys.exit(main())
