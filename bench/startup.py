#!/usr/bin/env python3
"""exec -> /ready: how long `lmd serve` takes from exec until /ready answers
200, over several starts (the server polled every 2 ms, then stopped).

usage: bench/startup.py [--lmd build/lmd] [--model models/default.gguf] [--runs 5] [-- extra serve args]
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def one(lmd, model, extra):
    port = free_port()
    t0 = time.perf_counter()
    p = subprocess.Popen([lmd, "serve", "-m", model, "--host", "127.0.0.1", "--port", str(port)] + extra,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if p.poll() is not None:
                sys.exit("lmd serve exited with %d before it was ready" % p.returncode)
            try:
                urllib.request.urlopen("http://127.0.0.1:%d/ready" % port, timeout=1).read()
                return time.perf_counter() - t0
            except OSError:
                time.sleep(0.002)
    finally:
        p.terminate()
        p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmd", default=os.environ.get("LMD_BIN", os.path.join(ROOT, "build", "lmd")))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "default.gguf"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("extra", nargs="*", help="more `lmd serve` arguments (after --)")
    a = ap.parse_args()
    ms = [1000 * one(a.lmd, a.model, a.extra) for _ in range(a.runs)]
    print("exec -> /ready, ms: %s (median %.0f)" % (" ".join("%.0f" % x for x in ms), statistics.median(ms)))


if __name__ == "__main__":
    main()
