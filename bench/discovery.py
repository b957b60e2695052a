#!/usr/bin/env python3
"""Routing-table update latency with etcd discovery: a gateway watching
an etcd prefix (`--upstream NAME=lmd+etcd://...`), a key put (or deleted)
under it, and the time until the gateway's /metrics lists (or stops
listing) that upstream. Keys point at a closed loopback port: only the
pool's membership is measured, not health checks or traffic. Needs etcd
(Debian's etcd-server), as the discovery tests do.

usage: bench/discovery.py [--lmd build/lmd] [--changes 20]
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from test_discovery import Etcd, backends  # noqa: E402
from test_multimodel import Serve  # noqa: E402


def until(pred):
    t0 = time.perf_counter()
    while not pred():
        if time.perf_counter() - t0 > 30:
            raise RuntimeError("the gateway never saw the change")
        time.sleep(0.002)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmd", default=os.environ.get("LMD_BIN", os.path.join(ROOT, "build", "lmd")))
    ap.add_argument("--changes", type=int, default=20)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        etcd = Etcd(d)
        prefix = "/lmd/bench/pool"
        etcd.put(prefix + "/seed", '{"url": "http://127.0.0.9:1"}')
        g = Serve(a.lmd, d, "--upstream", "pool=lmd+etcd://127.0.0.1:%d%s" % (etcd.port, prefix))
        try:
            until(lambda: backends(g) == ["lmd+http://127.0.0.9:1"])
            add, rem = [], []
            for i in range(a.changes):
                url = "http://127.0.0.%d:1" % (10 + i)
                t0 = time.perf_counter()
                etcd.put("%s/r%d" % (prefix, i), '{"url": "%s"}' % url)
                put_s = time.perf_counter() - t0
                add.append(put_s + until(lambda: "lmd+" + url in backends(g)))
                t0 = time.perf_counter()
                etcd.delete("%s/r%d" % (prefix, i))
                del_s = time.perf_counter() - t0
                rem.append(del_s + until(lambda: "lmd+" + url not in backends(g)))
        finally:
            g.stop()
            etcd.stop()
    for name, v in (("added", add), ("removed", rem)):
        v = sorted(x * 1000 for x in v)
        print("%-8s n=%d  median %.1f ms  p90 %.1f ms  max %.1f ms" %
              (name, len(v), statistics.median(v), v[int(0.9 * (len(v) - 1))], v[-1]))


if __name__ == "__main__":
    main()
