#!/usr/bin/env python3
"""One markdown table row per (run, phase, class) from bench/serve JSON files,
for docs/PERFORMANCE.md: requests, timeouts, TTFT P50/P99 and TPOT P50 over
the requests that got a first token, TTFT P99 counting each timeout as the
timeout (so a run that times out cannot look fast), goodput.

    .venv/bin/python bench/sla_table.py bench/out/s2-fcfs.json bench/out/s2-sla.json --class urgent
"""
import argparse
import json
import math
import os


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, math.ceil(q / 100 * len(xs)) - 1))
    return xs[k]


def fmt(x, scale=1.0, nd=2):
    return "-" if x is None else ("%.*f" % (nd, x * scale))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--class", dest="cls", action="append", help="only these classes (repeat)")
    ap.add_argument("--phase", action="append", help="only these phases (repeat)")
    a = ap.parse_args()
    print("| run | phase | class | n | ok | timeouts | TTFT P50 s | TTFT P99 s | TTFT P99 s, timeouts counted | "
          "TPOT P50 ms | SLO met | goodput req/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for f in a.files:
        d = json.load(open(f))
        timeout = d["config"]["args"].get("timeout", 30.0)
        run = d["runs"][0]
        recs = run["records"]
        phases = {p["label"]: p["duration"] for p in run["phases"]}
        for ph in phases:
            if a.phase and ph not in a.phase:
                continue
            for cls in sorted({r["cls"] for r in recs}, key=lambda c: (c != "urgent", c)):
                if a.cls and cls not in a.cls:
                    continue
                rs = [r for r in recs if r["phase"] == ph and r["cls"] == cls]
                if not rs:
                    continue
                ok = [r for r in rs if r["outcome"] == "ok"]
                to = [r for r in rs if r["outcome"] == "timeout"]
                ttft = [r["ttft"] for r in rs if r["ttft"] is not None]
                ttft_to = ttft + [timeout] * len(to)
                tpot = [r["tpot"] for r in ok if r["tpot"] is not None]
                by = run["summary"]["by_phase"].get(ph, {}).get(cls, {}) if isinstance(run["summary"].get("by_phase"), dict) else {}
                met = by.get("slo_met")
                good = by.get("goodput_rps")
                print("| %s | %s | %s | %d | %d | %d | %s | %s | %s%s | %s | %s | %s |" % (
                    os.path.basename(f).replace(".json", ""), ph, cls, len(rs), len(ok), len(to), fmt(pct(ttft, 50)),
                    fmt(pct(ttft, 99)), "≥ " if to and pct(ttft_to, 99) >= timeout else "", fmt(pct(ttft_to, 99)),
                    fmt(pct(tpot, 50), 1000, 0), "-" if met is None else met, fmt(good, 1, 3)))


if __name__ == "__main__":
    main()
