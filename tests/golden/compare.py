#!/usr/bin/env python3
"""Measures lmd against the engine golden references on each kernel path.

For every case of the chosen golden files and every kernel path (LMD_CPU),
it runs `lmd run` greedily as the golden tests do and prints: how many of
the 64 tokens match before the first divergence, llama.cpp's top-2 gap at a
divergence (a near-tie is a legitimate one), and the largest absolute
difference of the logits after the prompt at the recorded token ids. The
golden tests' bounds per path come from this table (docs/testing.md).

usage: compare.py --lmd build/lmd --model models/default.gguf [--golden default default.default]
                  [--isa avx512,avx2,scalar] [--synth DIR] [--threads 2] [--device cuda]
The synthetic models' goldens need --synth DIR holding synth-ARCH.gguf
(tests/golden/make_synth.py writes them).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def run_case(lmd, model, case, isa, threads, ctx=1024, device="cpu"):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "logits.bin")
        cmd = [lmd, "run", "-m", model, "--prompt-ids", ",".join(map(str, case["prompt_ids"])), "-n",
               str(len(case["tokens"])), "--temp", "0", "--ignore-eos", "--print-ids", "--dump-logits", path,
               "-t", str(threads), "-c", str(ctx), "-d", device]
        env = dict(os.environ, LMD_CPU=isa)
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        return [int(x) for x in out.stdout.split()], np.fromfile(path, dtype=np.float32)


def compare(case, tokens, logits):
    """(matching tokens, gap at the first divergence or None, max |logit diff|, bit-exact logits)."""
    n = 0
    gap = None
    for got, want in zip(tokens, case["tokens"]):
        if got != want:
            gap = case["gaps"][n]
            break
        n += 1
    ids = case["logits"]["ids"]
    want = np.array(case["logits"]["values"], dtype=np.float32)
    diff = float(np.abs(logits[ids] - want).max())
    return n, gap, diff, bool(np.array_equal(logits[ids], want))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmd", required=True)
    ap.add_argument("--model", help="the default model (for the default* goldens)")
    ap.add_argument("--synth", help="folder with synth-ARCH.gguf (for the synth_* goldens)")
    ap.add_argument("--golden", nargs="+", default=["default", "default.default"])
    ap.add_argument("--isa", default="avx2,scalar")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda to measure the CUDA engine (the isa is then moot)")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    rows = []
    print("%-22s %-4s %-7s %8s %9s %10s %6s" % ("golden", "case", "isa", "tokens", "gap", "max|dl|", "exact"))
    for name in a.golden:
        with open(os.path.join(HERE, "engine", name + ".json")) as f:
            g = json.load(f)
        if name.startswith("synth_"):
            arch = name[len("synth_"):].split(".")[0]
            model = os.path.join(a.synth, "synth-%s.gguf" % arch)
        else:
            model = a.model
        for isa in a.isa.split(","):
            for i, case in enumerate(g["cases"]):
                tokens, logits = run_case(a.lmd, model, case, isa, a.threads, device=a.device)
                n, gap, diff, exact = compare(case, tokens, logits)
                rows.append({"golden": name, "case": i, "isa": isa, "tokens": n, "gap": gap, "diff": diff,
                             "exact": exact})
                print("%-22s %-4d %-7s %5d/%-2d %9s %10.4f %6s" % (name, i, isa, n, len(case["tokens"]),
                                                                  "-" if gap is None else "%.4f" % gap, diff,
                                                                  "yes" if exact else "no"), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
