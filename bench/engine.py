#!/usr/bin/env python3
"""Workloads E1/E2 (shared/bench/WORKLOADS.md): lmd's native engine and
llama.cpp (llama-cpp-python) on the same GGUF, the same thread count, in one
run. Prints pp (prefill tokens/s), tg (decode tokens/s) and batched decode
aggregate tokens/s for both, with the ratio lmd/llama.cpp; min/median/max
over repeats. Token ids are synthetic (the same for both engines).

--threads takes a list (1,2,4,8,16): one table row per thread count, both
engines at each. --model tinyllama[-q4_k_m|-q8_0|-q4_0] is WORKLOADS.md's
"tiny-llama-1.1b-shape" model: written as F16 by tests/golden/make_synth.py
and quantized with llama.cpp's llama_model_quantize, once, into build/
(about 2.2 GB for the F16 file, which is deleted after quantizing).
--no-peer measures lmd alone (on a machine without llama-cpp-python).
--peer-bin DIR measures the peer with llama.cpp's own tools from DIR
(llama-bench for pp and tg, llama-batched-bench for batched decode,
llama-quantize for the synthetic model) instead of the Python bindings:
the form in which llama.cpp is usually benchmarked, and the one to use on a
machine where the bindings are not installed. llama-bench runs pp with
flash attention off and on and the faster counts; batched decode is
llama-batched-bench's decode rate with prompts of the same mean length as
lmd bench's ragged ones.

usage: bench/engine.py [--model M|tinyllama-q4_k_m] [--threads 1,2,4,8,16] [--pp 512] [--tg 128]
                       [--batch 1,4,16] [--reps 3] [--no-peer | --peer-bin DIR] [--json OUT]
"""
import argparse
import ctypes
import functools
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SYNTH_FTYPES = {"q4_k_m": 15, "q8_0": 7, "q4_0": 2}  # llama_ftype values


def synth_model(name, peer_bin=None):
    """build/bench-<name>.gguf for name tinyllama[-TYPE], made on first use."""
    kind = name.split("-", 1)[1] if "-" in name else "q4_k_m"
    if kind not in SYNTH_FTYPES:
        sys.exit("unknown synthetic model type %r (have %s)" % (kind, ", ".join(SYNTH_FTYPES)))
    out = os.path.join(ROOT, "build", "bench-tinyllama-%s.gguf" % kind)
    if os.path.exists(out):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    f16 = os.path.join(ROOT, "build", "bench-tinyllama-f16.gguf")
    if not os.path.exists(f16):
        print("writing %s" % f16, file=sys.stderr)
        subprocess.run([sys.executable, os.path.join(ROOT, "tests", "golden", "make_synth.py"), f16 + ".tmp",
                        "--shape", "tinyllama"], check=True, stdout=subprocess.DEVNULL)
        os.rename(f16 + ".tmp", f16)
    print("quantizing to %s" % out, file=sys.stderr)
    if peer_bin:
        subprocess.run([os.path.join(peer_bin, "llama-quantize"), f16, out + ".tmp", kind.upper(),
                        str(os.cpu_count() or 1)], check=True, stdout=subprocess.DEVNULL)
        os.rename(out + ".tmp", out)
        os.unlink(f16)
        return out
    import llama_cpp

    qp = llama_cpp.llama_model_quantize_default_params()
    qp.ftype = SYNTH_FTYPES[kind]
    qp.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(f16.encode(), (out + ".tmp").encode(), ctypes.byref(qp)) != 0:
        sys.exit("llama_model_quantize failed")
    os.rename(out + ".tmp", out)
    os.unlink(f16)
    return out


def lmd_bench(a):
    lmd = os.environ.get("LMD_BIN", os.path.join(ROOT, "build", "lmd"))
    cmd = [lmd, "bench", "-m", a.model, "-t", str(a.threads), "-p", str(a.pp), "-g", str(a.tg), "-r", str(a.reps),
           "--json"]
    if a.batch:
        cmd += ["-b", a.batch]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def tokens(n, n_vocab, seed=42):
    # Same generator as lmd bench (an LCG over ids >= 256).
    t, s = [], seed
    for _ in range(n):
        s = (s * 1664525 + 1013904223) & 0xFFFFFFFF
        t.append(256 + (s >> 8) % (n_vocab - 256))
    return t


def llama_bench(a):
    """The same workloads through llama.cpp's own batch API (llama_decode),
    so Python adds nothing per token but the batch fill."""
    import llama_cpp

    bs = [int(x) for x in a.batch.split(",")] if a.batch else []
    n_seq = max(bs + [1])
    n_ctx = max(a.pp + 64, a.tg + 64, n_seq * (8 + 4 * n_seq + 40))
    # Keep llama.cpp's load log off the report.
    global _quiet
    _quiet = llama_cpp.llama_log_callback(lambda level, text, user: None)
    llama_cpp.llama_log_set(_quiet, ctypes.c_void_p(0))
    mp = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(a.model.encode(), mp)
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = n_ctx
    cp.n_batch = 512
    cp.n_ubatch = 512
    cp.n_seq_max = n_seq
    cp.kv_unified = True
    cp.n_threads = a.threads
    cp.n_threads_batch = a.threads
    cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = llama_cpp.llama_init_from_model(model, cp)
    mem = llama_cpp.llama_get_memory(ctx)
    toks = tokens(n_ctx + n_seq, llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model)))
    batch = llama_cpp.llama_batch_init(512, 0, n_seq)

    def decode(entries):
        # entries: (token, pos, seq, want_logits)
        for off in range(0, len(entries), 512):
            part = entries[off:off + 512]
            batch.n_tokens = len(part)
            for j, (t, p, sq, lg) in enumerate(part):
                batch.token[j] = t
                batch.pos[j] = p
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = sq
                batch.logits[j] = lg
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError("llama_decode failed: %d" % rc)

    res = {}
    if a.pp:
        llama_cpp.llama_memory_clear(mem, True)
        decode([(toks[j], j, 0, j == 31) for j in range(32)])
        v = []
        for _ in range(a.reps):
            llama_cpp.llama_memory_clear(mem, True)
            t0 = time.perf_counter()
            decode([(toks[j], j, 0, j == a.pp - 1) for j in range(a.pp)])
            v.append(a.pp / (time.perf_counter() - t0))
        res["pp"] = v
    if a.tg:
        v = []
        for _ in range(a.reps):
            llama_cpp.llama_memory_clear(mem, True)
            decode([(toks[j], j, 0, j == 7) for j in range(8)])
            t0 = time.perf_counter()
            for i in range(a.tg):
                decode([(toks[8 + i], 8 + i, 0, True)])
            v.append(a.tg / (time.perf_counter() - t0))
        res["tg"] = v
    res["batched"] = {}
    for B in bs:
        v = []
        steps = 32
        for _ in range(a.reps):
            llama_cpp.llama_memory_clear(mem, True)
            # Ragged prompts: sequence i has 8 + 4*i tokens, as lmd bench does.
            for i in range(B):
                n = 8 + 4 * i
                decode([(toks[i + j], j, i, j == n - 1) for j in range(n)])
            t0 = time.perf_counter()
            for k in range(steps):
                decode([(toks[i + k], 8 + 4 * i + k, i, True) for i in range(B)])
            v.append(B * steps / (time.perf_counter() - t0))
        res["batched"][B] = v
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    return res


def llama_tools_bench(a):
    """The same workloads through llama.cpp's benchmark tools (--peer-bin)."""
    res = {"batched": {}}
    run = functools.partial(subprocess.run, capture_output=True, text=True, check=True)
    base = [os.path.join(a.peer_bin, "llama-bench"), "-m", a.model, "-t", str(a.threads), "-r", str(a.reps),
            "-o", "json"]
    if a.pp:
        best = None
        for r in json.loads(run(base + ["-p", str(a.pp), "-n", "0", "-fa", "0,1"]).stdout):
            v = r.get("samples_ts") or [r["avg_ts"]]
            if best is None or statistics.median(v) > statistics.median(best):
                best = v
        res["pp"] = best
    if a.tg:
        r = json.loads(run(base + ["-p", "0", "-n", str(a.tg)]).stdout)[0]
        res["tg"] = r.get("samples_ts") or [r["avg_ts"]]
    for B in [int(x) for x in a.batch.split(",")] if a.batch else []:
        # lmd bench's ragged prompts (8 + 4 i tokens) have mean 6 + 2 B; 32 steps.
        npp, ntg = 6 + 2 * B, 32
        v = []
        for _ in range(a.reps):
            out = run([os.path.join(a.peer_bin, "llama-batched-bench"), "-m", a.model, "-t", str(a.threads),
                       "-c", str(B * (npp + ntg) + 64), "-b", "2048", "-ub", "512", "-npp", str(npp), "-ntg",
                       str(ntg), "-npl", str(B), "--output-format", "jsonl"]).stdout
            rows = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
            v.append(rows[-1]["speed_tg"])
        res["batched"][B] = v
    return res


def fmt(v):
    return "%8.2f (min %.2f, max %.2f)" % (statistics.median(v), min(v), max(v))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "default.gguf"))
    ap.add_argument("--threads", default=str(os.cpu_count()), help="a thread count or a list: 1,2,4,8,16")
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--batch", default="1,4,16")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-peer", action="store_true", help="measure lmd alone")
    ap.add_argument("--peer-bin", metavar="DIR", help="llama.cpp's tools (llama-bench, ...) in DIR as the peer")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    if os.path.basename(a.model).startswith("tinyllama") and not os.path.exists(a.model):
        a.model = synth_model(os.path.basename(a.model), a.peer_bin)
    out = []
    for t in [int(x) for x in a.threads.split(",")]:
        a.threads = t
        out += run_one(a)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


def run_one(a):
    lmd = lmd_bench(a)
    peer = None if a.no_peer else llama_tools_bench(a) if a.peer_bin else llama_bench(a)
    print("model %s, %d threads, lmd isa %s" % (os.path.basename(a.model), a.threads, lmd["isa"]))
    print("%-10s %-34s %-34s %s" % ("workload", "lmd tok/s", "llama.cpp tok/s", "ratio"))
    rows = []
    if a.pp:
        l = [lmd["pp"]["tps_min"], lmd["pp"]["tps_med"], lmd["pp"]["tps_max"]]
        rows.append(("pp%d" % a.pp, l, peer["pp"] if peer else None))
    if a.tg:
        l = [lmd["tg"]["tps_min"], lmd["tg"]["tps_med"], lmd["tg"]["tps_max"]]
        rows.append(("tg%d" % a.tg, l, peer["tg"] if peer else None))
    for b in lmd.get("batched", []):
        l = [b["tps_min"], b["tps_med"], b["tps_max"]]
        rows.append(("B=%d" % b["b"], l, peer["batched"][b["b"]] if peer else None))
    out = []
    for name, l, p in rows:
        if p is None:
            print("%-10s %-34s %-34s %s" % (name, fmt(l), "-", "-"))
            out.append({"threads": a.threads, "workload": name, "lmd": l})
            continue
        r = statistics.median(l) / statistics.median(p)
        print("%-10s %-34s %-34s %.2fx" % (name, fmt(l), fmt(p), r))
        out.append({"threads": a.threads, "workload": name, "lmd": l, "llama_cpp": p, "ratio": r})
    sys.stdout.flush()
    return out


if __name__ == "__main__":
    main()
