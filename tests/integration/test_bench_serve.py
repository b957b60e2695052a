"""bench/serve, the serving load generator: its statistics and schedule
helpers as plain unit tests (no server), then a few seconds of real load
against `lmd serve` with the default model, checking the JSON it writes.
bench/serve sends ignore_eos, which lmd honours: every request runs to its
max_tokens."""
import json
import os
import random
import subprocess
import sys

import httpx
import pytest

from test_server import start_server, stop_server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVE = os.path.join(ROOT, "bench", "serve")
sys.path.insert(0, os.path.join(ROOT, "bench"))

import serve_stats as st  # noqa: E402
import serve_workload as wl  # noqa: E402


# ---- statistics, no server ---------------------------------------------------


def test_percentile_matches_numpy_linear():
    np = pytest.importorskip("numpy")
    rng = random.Random(3)
    for n in (1, 2, 3, 10, 101):
        v = [rng.expovariate(1.0) for _ in range(n)]
        for q in (0, 1, 50, 90, 99, 100):
            assert st.percentile(v, q) == pytest.approx(float(np.percentile(v, q)), rel=1e-12)


def test_percentile_edges():
    assert st.percentile([], 50) is None
    assert st.percentile([7.0], 99) == 7.0
    assert st.percentile([1, 2, 3, 4], 50) == 2.5
    assert st.percentile([4, 1, 3, 2], 0) == 1 and st.percentile([4, 1, 3, 2], 100) == 4
    assert st.pcts([]) == {"p50": None, "p90": None, "p99": None}


def rec(cls="urgent", outcome="ok", ttft=0.5, tpot=0.05, e2e=2.0, status=200, phase="p", t=0.0, tokens=10,
        chunk_t=None):
    return {"cls": cls, "outcome": outcome, "ttft": ttft, "tpot": tpot, "e2e": e2e, "status": status,
            "phase": phase, "t_sched": t, "t_send": t, "out_tokens": tokens, "itl": [tpot] * 3 if tpot else [],
            "chunk_t": chunk_t or []}


SLOS = {"urgent": {"ttft": 1.0, "tpot": 0.1}, "best_effort": {"ttft": 15.0, "tpot": None}}


def test_meets_slo():
    u = SLOS["urgent"]
    assert st.meets_slo(rec(), u)
    assert st.meets_slo(rec(ttft=1.0, tpot=0.1), u)  # bounds are inclusive
    assert not st.meets_slo(rec(ttft=1.01), u)
    assert not st.meets_slo(rec(tpot=0.11), u)
    assert st.meets_slo(rec(tpot=None), u)  # a one-token answer has no TPOT
    assert not st.meets_slo(rec(outcome="timeout", ttft=None), u)
    assert not st.meets_slo(rec(outcome="refused", status=429, ttft=None), u)
    assert st.meets_slo(rec(cls="best_effort", ttft=14.0, tpot=5.0), SLOS["best_effort"])
    assert st.meets_slo(rec(ttft=100.0), {})  # no SLO: every completed request counts


def test_goodput():
    recs = [rec(), rec(ttft=2.0), rec(tpot=0.2), rec(cls="best_effort", ttft=10.0, tpot=1.0),
            rec(cls="best_effort", ttft=16.0), rec(outcome="error", ttft=None)]
    assert st.goodput(recs, SLOS, 4.0) == pytest.approx(2 / 4.0)
    assert st.goodput(recs, SLOS, 0) == 0.0


def test_summarize_accounts_for_every_request():
    recs = [rec(), rec(outcome="refused", status=429, ttft=None, tpot=None), rec(outcome="timeout", ttft=None,
            tpot=None), rec(outcome="error", status=500, ttft=None, tpot=None), rec(ttft=0.1, tpot=0.02)]
    s = st.summarize(recs, SLOS, 10.0)
    assert s["count"] == 5 and (s["ok"], s["refused"], s["timeout"], s["error"]) == (2, 1, 1, 1)
    assert s["http_429"] == 1 and s["slo_met"] == 2
    assert s["ttft"]["p50"] == pytest.approx(0.3)
    assert s["ttft"]["p50"] <= s["ttft"]["p90"] <= s["ttft"]["p99"]
    assert s["out_tokens"] == 20


def test_tokens_in_window_spreads_tokens_over_chunks():
    r = rec(tokens=10, chunk_t=[0.5, 1.5, 2.5, 3.5, 4.5])  # two tokens a chunk
    assert st.tokens_in_window([r], 0, 2) == pytest.approx(4)
    assert st.tokens_in_window([r], 2, 10) == pytest.approx(6)
    assert st.summarize([r], {}, 5.0, (0, 5))["out_tok_s"] == pytest.approx(2.0)


def test_drain_after_burst():
    recs = [rec(t=1.0, ttft=0.5, e2e=2.0), rec(t=9.0, ttft=4.0, e2e=6.0), rec(t=12.0, ttft=30.0, e2e=31.0),
            rec(t=9.5, outcome="timeout", ttft=None, e2e=3.0)]
    d = st.drain_after(recs, 10.0)
    assert d["queue_s"] == pytest.approx(3.0)  # 9 + 4 - 10 and 9.5 + 3 - 10; the one sent at 12 is after
    assert d["done_s"] == pytest.approx(5.0)
    assert st.drain_after(recs, 0.5) == {"queue_s": None, "done_s": None}


# ---- workloads and the schedule, no server -------------------------------------


def test_s1_mix_and_rate_from_capacity():
    cl = wl.s1_classes()
    assert wl.mean_out_tokens(cl) == pytest.approx(0.2 * 80 + 0.8 * 192)
    assert wl.rate_from_capacity(0.8, 169.6, cl) == pytest.approx(0.8)
    s = wl.Sampler(cl, 5)
    draws = [s.draw(i, None, "x") for i in range(20000)]
    urgent = [a for a in draws if a.cls == "urgent"]
    gold = sum(1 for a in draws if a.tenant == "gold")
    bronze = sum(1 for a in draws if a.tenant == "bronze")
    assert len(urgent) / len(draws) == pytest.approx(0.2, abs=0.01)
    assert all(a.tenant == "gold" and 32 <= a.prompt_len <= 256 and 32 <= a.max_tokens <= 128 for a in urgent)
    assert bronze / gold == pytest.approx(3.0, rel=0.06)


def test_open_schedule_is_seeded_and_poisson():
    phases = [wl.Phase(5.0, 200.0, "a"), wl.Phase(20.0, 50.0, "b")]
    cl = wl.s1_classes()
    x, y = wl.open_schedule(phases, cl, 11), wl.open_schedule(phases, cl, 11)
    assert x == y and wl.schedule_digest(x) == wl.schedule_digest(y)
    assert wl.schedule_digest(wl.open_schedule(phases, cl, 12)) != wl.schedule_digest(x)
    # Other lengths, same arrival times and classes.
    cl2 = wl.s1_classes()
    cl2[1].prompt = (8, 9)
    z = wl.open_schedule(phases, cl2, 11)
    assert [(a.t, a.cls, a.tenant) for a in z] == [(a.t, a.cls, a.tenant) for a in x]
    na = sum(1 for a in x if a.phase == "a")
    nb = sum(1 for a in x if a.phase == "b")
    assert abs(na - 1000) < 4 * 1000 ** 0.5 and abs(nb - 1000) < 4 * 1000 ** 0.5
    assert all(0 <= a.t < 200 for a in x if a.phase == "a") and all(200 <= a.t < 250 for a in x if a.phase == "b")
    assert [a.i for a in x] == list(range(len(x)))


def test_prompt_ids_exact_and_in_range():
    ids = wl.prompt_ids(1, 7, 300, 1000, 2000)
    assert len(ids) == 300 and all(1000 <= t < 2000 for t in ids)
    assert ids == wl.prompt_ids(1, 7, 300, 1000, 2000) and ids != wl.prompt_ids(1, 8, 300, 1000, 2000)


def test_s4_shared_prefixes():
    s = wl.Sampler(wl.s4_classes(), 3)
    draws = [s.draw(i, None, "x") for i in range(20000)]
    assert all(a.prefix_len == 1024 and 1024 + 32 <= a.prompt_len <= 1024 + 128 and 32 <= a.max_tokens <= 64
               for a in draws)
    n = [sum(1 for a in draws if a.prefix == k) for k in range(8)]
    w = [1 / (k + 1) ** 1.1 for k in range(8)]
    for k in range(8):
        assert n[k] / len(draws) == pytest.approx(w[k] / sum(w), abs=0.015)
    # A prefix is the same ids in every request; the user turns differ.
    assert wl.prefix_ids(3, 2, 1024, 1000, 2000) == wl.prefix_ids(3, 2, 1024, 1000, 2000)
    assert wl.prefix_ids(3, 2, 1024, 1000, 2000) != wl.prefix_ids(3, 1, 1024, 1000, 2000)


# ---- against a real lmd serve ------------------------------------------------------


def serve_cmd(*args):
    return [sys.executable, SERVE, *args]


ARGS = ["--workload", "S1", "--rate", "2.5", "--duration", "4", "--prompt-len", "8-32", "--out-len", "4-12",
        "--seed", "7", "--tenant", "gold=sk-gold", "--tenant", "bronze=sk-bronze", "--timeout", "30"]


@pytest.fixture(scope="module")
def server(lmd_bin, default_model):
    proc, base = start_server(lmd_bin, default_model, "--debug-endpoints")
    yield proc, base
    stop_server(proc)


@pytest.fixture(scope="module")
def result(server, tmp_path_factory):
    proc, base = server
    out = tmp_path_factory.mktemp("bench") / "s1.json"
    p = subprocess.run(serve_cmd("--url", base, *ARGS, "--server-pid", str(proc.pid), "--scrape-metrics",
                                 "--out", str(out)), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "TTFT" in p.stdout and "urgent" in p.stdout
    return json.loads(out.read_text())


def test_trace_of_the_run(server, result):
    """The scheduler trace captured during the S1 run is Chrome trace-event
    JSON: engine steps with their batch sizes, and one request slice per
    request sent (the probe included)."""
    _, base = server
    r = httpx.get(base + "/debug/trace", params={"seconds": 120}, timeout=30)
    assert r.status_code == 200
    events = r.json()["traceEvents"]
    steps = [e for e in events if e["ph"] == "X" and e["name"] == "step"]
    assert steps
    for e in steps:
        assert e["dur"] >= 0 and 1 <= e["args"]["seqs"] <= e["args"]["tokens"]
    begins = [e for e in events if e["ph"] == "b" and e["name"] == "request"]
    assert len(begins) >= len(result["runs"][0]["records"])
    assert sum(e["args"]["seqs"] for e in steps) >= sum(r["out_tokens"] for r in result["runs"][0]["records"])


def test_every_request_accounted_once(result):
    run = result["runs"][0]
    recs = run["records"]
    assert len(recs) == result["config"]["n_scheduled"] > 0
    assert sorted(r["i"] for r in recs) == list(range(len(recs)))
    for r in recs:
        assert r["outcome"] in st.OUTCOMES
    s = run["summary"]["all"]
    assert s["ok"] + s["refused"] + s["timeout"] + s["error"] == s["count"] == len(recs)
    # A few requests a second of a few tokens: nothing should be refused or lost.
    assert s["ok"] == len(recs), [r["error"] for r in recs if r["outcome"] != "ok"]
    by_class = run["summary"]["by_class"]
    assert sum(c["count"] for c in by_class.values()) == len(recs)


def test_token_counts_follow_max_tokens(result):
    ok = [r for r in result["runs"][0]["records"] if r["outcome"] == "ok"]
    for r in ok:
        assert r["usage_tokens"] == r["out_tokens"] == r["max_tokens"]
        assert r["finish_reason"] == "length"
        assert 0 < r["ttft"] <= r["e2e"]
        assert len(r["itl"]) == max(0, r["chunks"] - 1)
    assert ok


def test_percentiles_ordered(result):
    summ = result["runs"][0]["summary"]
    groups = [summ["all"], *summ["by_class"].values()]
    for ph in summ["by_phase"].values():
        groups += ph.values()
    checked = 0
    for g in groups:
        for m in ("ttft", "tpot", "itl", "e2e"):
            p = g[m]
            if p["p50"] is not None:
                assert p["p50"] <= p["p90"] <= p["p99"]
                checked += 1
    assert checked >= 4


def test_server_samples(result):
    run = result["runs"][0]
    assert run["rss_peak"] and run["rss_peak"] > 50 * 2**20
    assert any("lmd_kv_blocks_capacity" in m for m in run["metrics"])


def test_arrivals_reproducible(result, tmp_path):
    """The same seed gives the same schedule with or without a server, and
    the live run sent exactly that schedule; another seed gives another."""
    dry = []
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        f = tmp_path / (name + ".json")
        args = list(ARGS)
        args[args.index("--seed") + 1] = seed
        subprocess.run(serve_cmd(*args, "--dry-run", "--out", str(f)), check=True, capture_output=True, timeout=60)
        dry.append(json.loads(f.read_text()))
    assert dry[0]["schedule"] == dry[1]["schedule"]
    assert dry[0]["config"]["schedule_digest"] == dry[1]["config"]["schedule_digest"] == \
        result["config"]["schedule_digest"]
    assert dry[2]["config"]["schedule_digest"] != dry[0]["config"]["schedule_digest"]
    sent = sorted(result["runs"][0]["records"], key=lambda r: r["i"])
    assert [(r["t_sched"], r["cls"], r["tenant"], r["prompt_len"], r["max_tokens"]) for r in sent] == \
        [(a["t"], a["cls"], a["tenant"], a["prompt_len"], a["max_tokens"]) for a in dry[0]["schedule"]]


def test_closed_loop_and_timeouts(server, tmp_path):
    """Closed loop at 2 clients over HTTP/2; then a first-token timeout far
    below any real TTFT, so every request is cancelled and counted as a
    timeout."""
    _, base = server
    f = tmp_path / "closed.json"
    p = subprocess.run(serve_cmd("--url", base, "--http2", "--closed", "2", "--duration", "2", "--prompt-len", "8",
                                 "--out-len", "4", "--out", str(f)), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    d = json.loads(f.read_text())
    s = d["runs"][0]["summary"]["all"]
    assert s["count"] >= 2 and s["ok"] == s["count"] and d["capacity_tok_s"] > 0
    p = subprocess.run(serve_cmd("--url", base, "--rate", "4", "--duration", "1", "--prompt-len", "512",
                                 "--out-len", "8", "--timeout", "0.001", "--no-probe", "--out", str(f)),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    recs = json.loads(f.read_text())["runs"][0]["records"]
    assert recs and all(r["outcome"] == "timeout" and r["ttft"] is None for r in recs)


def test_sse_scan_compact_and_spaced_json():
    import serve_client as sc
    for line in (b'data: {"choices":[{"text":"Hi","finish_reason":"length"}],"usage":{"completion_tokens":3}}',
                 b'data: {"choices": [{"text": "Hi", "finish_reason": "length"}], "usage": {"completion_tokens": 3}}'):
        k = sc._value_at(line, b'"text":')
        assert line[k:k + 4] == b'"Hi"'
        assert sc._finish_reason(line) == "length"
        assert line[sc._value_at(line, b'"usage":'):][:1] == b"{"
    assert sc._finish_reason(b'data: {"choices":[{"text":"","finish_reason":null}]}') is None
    assert sc._value_at(b'data: {"choices":[]}', b'"usage":') == -1


def test_compare_two_results():
    def result(ttft, digest):
        recs = [rec(ttft=ttft, phase="steady"), rec(cls="best_effort", ttft=ttft * 2, phase="steady")]
        summ = st.summarize_run(recs, SLOS, [("steady", 0.0, 10.0)], ["urgent", "best_effort"])
        return {"config": {"schedule_digest": digest}, "runs": [{"mode": "open", "clients": None, "summary": summ}]}

    text = st.format_compare(result(0.5, "x"), result(1.0, "x"), "fcfs", "sla")
    assert "warning" not in text
    row = [l for l in text.splitlines() if l.startswith("steady   urgent      TTFT p50")][0]
    assert row.split()[-3:] == ["0.50", "1.00", "2.00"]
    assert "warning" in st.format_compare(result(0.5, "x"), result(0.5, "y"))
