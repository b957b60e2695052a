#!/usr/bin/env python3
"""Write the tokenizer golden files: llama.cpp's token ids and decodings for
every corpus entry, for each test vocabulary.

The unit test (tests/unit/tokenizer_test.c) compares lmd against these
files; CI does not have llama-cpp-python, so they are committed. Regenerate
them after changing corpus.json or the vocabularies (make_vocabs.py):

  .venv/bin/pip install llama-cpp-python gguf==0.19.0
  .venv/bin/python tests/golden/tokenizer/make_golden.py

Output: tests/golden/tokenizer/<name>.golden.json, one per vocabulary:
  vocab: n_vocab, bos/eos/eot, add_bos/add_eos/add_space_prefix, the ids
         llama.cpp treats as end-of-generation, and FNV-1a hashes over every
         token's attribute and decoded piece (so all 262144 pieces are checked
         without storing them);
  cases: per corpus entry (and eight seeded random mixtures), the text (hex), ids for (add_special=False,
         parse_special=False) and (True, True), the streamed decoding of each
         (llama.cpp's pieces joined, invalid UTF-8 replaced by U+FFFD the way
         lmd's detokenizer does), and whether llama.cpp's detokenize gives
         valid UTF-8 text back exactly.
"""

import ctypes
import json
import os
import sys

import gguf
import llama_cpp

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))

VOCABS = [
    ("gemma3", "models/default.gguf"),
    ("spm_prefix", "tests/golden/tokenizer/spm_prefix.gguf"),
    ("bpe_llama3", "tests/golden/tokenizer/bpe_llama3.gguf"),
    ("bpe_qwen2", "tests/golden/tokenizer/bpe_qwen2.gguf"),
    ("bpe_gpt2", "tests/golden/tokenizer/bpe_gpt2.gguf"),
    ("bpe_default", "tests/golden/tokenizer/bpe_default.gguf"),
]


def fnv1a(h, data):
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


FNV_INIT = 0xCBF29CE484222325


def piece(vocab, tok, special, lstrip=0):
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, tok, buf, 256, lstrip, special)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, tok, buf, -n, lstrip, special)
    return buf.raw[:n]


def detokenize(vocab, ids):
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    cap = 64 + 16 * len(ids)
    while True:
        buf = ctypes.create_string_buffer(cap)
        n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, cap, False, False)
        if n >= 0:
            return buf.raw[:n]
        cap = -n + 16


def lenient_cpts(b):
    """Code points as llama.cpp's unicode_cpts_from_utf8 reads them."""
    out, i = [], 0
    while i < len(b):
        c = b[i]
        need = 1 if c < 0x80 else 0 if c < 0xC0 else 2 if c < 0xE0 else 3 if c < 0xF0 else 4 if c < 0xF8 else 0
        if need and i + need <= len(b) and all(0x80 <= x < 0xC0 for x in b[i + 1:i + need]):
            cp = c & (0x7F, 0x1F, 0x0F, 0x07)[need - 1]
            for x in b[i + 1:i + need]:
                cp = cp << 6 | (x & 0x3F)
            out.append(cp)
            i += need
        else:
            out.append(0xFFFD)
            i += 1
    return out


def random_texts(corpus_texts, n=8, size=1500, seed=1234):
    """Deterministic random mixtures: corpus fragments, assigned code points
    from many scripts, every kind of whitespace, special-token spellings.
    They shake out tie-breaking and Unicode-class differences the
    hand-written corpus might miss."""
    import random
    import unicodedata
    rnd = random.Random(seed)
    pool = [c for c in (chr(x) for x in range(0x80, 0x30000))
            if not 0xD800 <= ord(c) <= 0xDFFF and unicodedata.category(c) not in ("Cn", "Co", "Cs")]
    ws = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2028", "\u180e", "\u200b", "\u0085", " " * 7]
    bits = ["'s", "'LL", "'Re", "123", "4567", "<start_of_turn>", "<|im_end|>", "<think>", "</s>", "<|eot_id|>",
            "...", "!!", "->", "::", "{}", "\u0301", "\U0001F469\u200d\U0001F467"]
    texts = [t.decode("utf-8") for t in corpus_texts if t and len(t) < 200 and is_utf8(t)]
    out = []
    for _ in range(n):
        parts, total = [], 0
        while total < size:
            r = rnd.random()
            if r < 0.3:
                p = rnd.choice(texts)
            elif r < 0.55:
                p = "".join(rnd.choice(pool) for _ in range(rnd.randint(1, 6)))
            elif r < 0.75:
                p = rnd.choice(ws)
            elif r < 0.9:
                p = rnd.choice(bits)
            else:
                p = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
                            for _ in range(rnd.randint(1, 12)))
            parts.append(p)
            total += len(p)
        out.append("".join(parts).encode("utf-8"))
    return out


def is_utf8(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def meta(path):
    r = gguf.GGUFReader(path)
    f = r.fields
    model = f["tokenizer.ggml.model"].contents()
    prefix = f["tokenizer.ggml.add_space_prefix"].contents() if "tokenizer.ggml.add_space_prefix" in f else None
    return model, (model == "llama") if prefix is None else bool(prefix)


def main():
    with open(os.path.join(HERE, "corpus.json"), encoding="utf-8") as f:
        corpus = json.load(f)
    texts = [bytes.fromhex(e["hex"]) if isinstance(e, dict) else e.encode("utf-8") for e in corpus]
    texts += random_texts(texts)
    for name, rel in VOCABS:
        path = os.path.join(ROOT, rel)
        if not os.path.exists(path):
            sys.exit(f"{rel} is missing (make model / make_vocabs.py)")
        family, space_prefix = meta(path)
        m = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        v = llama_cpp.llama_model_get_vocab(m.model)
        n = llama_cpp.llama_vocab_n_tokens(v)
        h_attr, h_plain, h_special = FNV_INIT, FNV_INIT, FNV_INIT
        for t in range(n):
            h_attr = fnv1a(h_attr, int(llama_cpp.llama_token_get_attr(v, t)).to_bytes(4, "little"))
            for special in (False, True):
                p = piece(v, t, special)
                rec = len(p).to_bytes(4, "little") + p
                if special:
                    h_special = fnv1a(h_special, rec)
                else:
                    h_plain = fnv1a(h_plain, rec)
        vocab = {
            "n_vocab": n,
            "bos": llama_cpp.llama_vocab_bos(v),
            "eos": llama_cpp.llama_vocab_eos(v),
            "eot": llama_cpp.llama_vocab_eot(v),
            "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(v)),
            "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(v)),
            "add_space_prefix": space_prefix,
            "eog": [t for t in range(n) if llama_cpp.llama_vocab_is_eog(v, t)],
            "attr_fnv": f"{h_attr:016x}",
            "piece_fnv": f"{h_plain:016x}",
            "piece_special_fnv": f"{h_special:016x}",
        }
        cases = []
        for b in texts:
            if family == "gpt2" and any(cp > 0x10FFFF for cp in lenient_cpts(b)):
                continue  # llama.cpp throws out of llama_tokenize here; nothing to compare
            case = {"hex": b.hex()}
            for key, add, special in (("plain", False, False), ("special", True, True)):
                ids = m.tokenize(b, add_bos=add, special=special)
                joined = b"".join(piece(v, t, special, 1 if (i == 0 and space_prefix) else 0)
                                  for i, t in enumerate(ids))
                case[key] = ids
                case[key + "_text"] = joined.decode("utf-8", "replace").encode("utf-8").hex()
            # lmd's decoder replaces invalid UTF-8 that llama.cpp passes through.
            case["roundtrip"] = is_utf8(b) and detokenize(v, case["plain"]) == b
            cases.append(case)
        out = {
            "generator": "tests/golden/tokenizer/make_golden.py",
            "llama_cpp_python": llama_cpp.__version__,
            "model": rel,
            "vocab": vocab,
            "cases": cases,
        }
        dst = os.path.join(HERE, f"{name}.golden.json")
        with open(dst, "w", encoding="utf-8") as f:
            json.dump(out, f, separators=(",", ":"))
            f.write("\n")
        print(f"wrote {os.path.relpath(dst, ROOT)}: {len(cases)} cases, {n} tokens")


if __name__ == "__main__":
    main()
