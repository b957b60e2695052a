"""Statistics for bench/serve: percentiles, SLO checks, goodput, per-class
and per-phase summaries, queue drain after a phase, and the text table.

Pure functions over plain per-request records (dicts, as written to the
JSON result), so they can be re-run on a saved result and unit-tested
without a server. A record's fields: outcome (ok, refused, timeout, error),
status, cls, phase, t_sched/t_send (s after the run's start), ttft, e2e,
tpot (s), itl (list of s), out_tokens, chunk_t (token chunk arrival times,
s after the run's start).
"""

OUTCOMES = ("ok", "refused", "timeout", "error")


def percentile(values, q):
    """The q-th percentile (0..100) with linear interpolation between the
    closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def pcts(values, qs=(50, 90, 99)):
    return {"p%d" % q: percentile(values, q) for q in qs}


def meets_slo(rec, slo):
    """slo: {"ttft": s or None, "tpot": s or None}. Only completed requests
    can meet an SLO; a one-token answer has no TPOT and passes that bound."""
    if rec["outcome"] != "ok":
        return False
    if slo.get("ttft") is not None and (rec["ttft"] is None or rec["ttft"] > slo["ttft"]):
        return False
    if slo.get("tpot") is not None and rec["tpot"] is not None and rec["tpot"] > slo["tpot"]:
        return False
    return True


def goodput(records, slos, duration):
    """Requests per second that met their class's SLO over `duration` s.
    slos: {class: slo}; a class without an entry has no bounds."""
    if duration <= 0:
        return 0.0
    return sum(1 for r in records if meets_slo(r, slos.get(r["cls"], {}))) / duration


def tokens_in_window(records, a, b):
    """Output tokens produced in [a, b): each request's tokens spread evenly
    over its token chunks (a chunk may carry several tokens)."""
    n = 0.0
    for r in records:
        ct = r.get("chunk_t") or []
        if not ct or not r.get("out_tokens"):
            continue
        w = r["out_tokens"] / len(ct)
        n += w * sum(1 for t in ct if a <= t < b)
    return n


def summarize(records, slos, duration, window=None):
    """One group's summary. duration: the seconds that rates are over;
    window: (a, b) for the token rate, default (0, duration)."""
    ok = [r for r in records if r["outcome"] == "ok"]
    s = {"count": len(records)}
    for o in OUTCOMES:
        s[o] = sum(1 for r in records if r["outcome"] == o)
    for code in (400, 401, 429, 503):
        s["http_%d" % code] = sum(1 for r in records if r["status"] == code)
    s["ttft"] = pcts([r["ttft"] for r in ok if r["ttft"] is not None])
    s["tpot"] = pcts([r["tpot"] for r in ok if r["tpot"] is not None])
    s["itl"] = pcts([x for r in ok for x in (r.get("itl") or [])])
    s["e2e"] = pcts([r["e2e"] for r in ok])
    s["slo_met"] = sum(1 for r in records if meets_slo(r, slos.get(r["cls"], {})))
    s["goodput_rps"] = goodput(records, slos, duration)
    s["out_tokens"] = sum(r["out_tokens"] or 0 for r in ok)
    a, b = window if window else (0.0, duration)
    s["out_tok_s"] = tokens_in_window(records, a, b) / (b - a) if b > a else 0.0
    s["duration_s"] = duration
    return s


def drain_after(records, t_end):
    """After a phase that ends at t_end (typically a burst): how long until
    every request sent before t_end had left the server's waiting queue (got
    its first token, a refusal or a timeout), and until every one had ended.
    Seconds after t_end, 0 when already done by then; None if none."""
    before = [r for r in records if r["t_sched"] < t_end]
    if not before:
        return {"queue_s": None, "done_s": None}
    first = [r["t_send"] + (r["ttft"] if r["ttft"] is not None else r["e2e"] or 0.0) for r in before]
    done = [r["t_send"] + (r["e2e"] or 0.0) for r in before]
    return {"queue_s": max(0.0, max(first) - t_end), "done_s": max(0.0, max(done) - t_end)}


def summarize_run(records, slos, phases, classes, wall=None):
    """phases: [(label, start, duration)]. Summaries by phase x class (rates
    over the phase's window), by class and over all (rates over the whole
    run, wall s, drain included), plus drain times after each phase."""
    out = {"by_phase": {}, "by_class": {}, "drain": {}}
    total = wall if wall is not None else sum(d for _, _, d in phases)
    for label, start, dur in phases:
        recs = [r for r in records if r["phase"] == label]
        ph = {"all": summarize(recs, slos, dur, (start, start + dur))}
        for c in classes:
            ph[c] = summarize([r for r in recs if r["cls"] == c], slos, dur, (start, start + dur))
        out["by_phase"][label] = ph
        out["drain"][label] = drain_after(records, start + dur)
    for c in classes:
        out["by_class"][c] = summarize([r for r in records if r["cls"] == c], slos, total)
    out["all"] = summarize(records, slos, total)
    return out


# ---- the table ---------------------------------------------------------------


def _f(x, scale=1.0, digits=2):
    return "-" if x is None else "%.*f" % (digits, x * scale)


def _trio(p, scale, digits):
    return "/".join(_f(p[k], scale, digits) for k in ("p50", "p90", "p99"))


HEAD = ("%-8s %-11s %5s %5s %4s %4s %4s %4s %4s  %-17s %-17s %-17s %-18s %7s %5s %7s" %
        ("phase", "class", "n", "ok", "401", "429", "503", "err", "t/o", "TTFT s p50/90/99", "TPOT ms p50/90/99",
         "ITL ms p50/90/99", "E2E s p50/90/99", "good/s", "slo%", "tok/s"))


def table_row(phase, cls, s):
    slo_pct = "-" if not s["count"] else "%.0f" % (100.0 * s["slo_met"] / s["count"])
    other_err = s["error"]
    return ("%-8s %-11s %5d %5d %4d %4d %4d %4d %4d  %-17s %-17s %-17s %-18s %7.2f %5s %7.1f" %
            (phase[:8], cls[:11], s["count"], s["ok"], s["http_401"], s["http_429"], s["http_503"], other_err,
             s["timeout"], _trio(s["ttft"], 1, 2), _trio(s["tpot"], 1e3, 1), _trio(s["itl"], 1e3, 1),
             _trio(s["e2e"], 1, 2), s["goodput_rps"], slo_pct, s["out_tok_s"]))


def format_table(summary, classes):
    lines = [HEAD]
    for label, ph in summary["by_phase"].items():
        for c in classes:
            if ph[c]["count"]:
                lines.append(table_row(label, c, ph[c]))
        if len(summary["by_phase"]) > 1 or len(classes) > 1:
            lines.append(table_row(label, "all", ph["all"]))
    if len(summary["by_phase"]) > 1:
        for c in classes:
            lines.append(table_row("total", c, summary["by_class"][c]))
        lines.append(table_row("total", "all", summary["all"]))
    if len(summary["by_phase"]) > 1:
        lines.append("good/s and tok/s: per phase over the phase, totals over the whole run (%.1f s, drain "
                     "included)" % summary["all"]["duration_s"])
    drains = ["%s %s/%s s" % (k, _f(v["queue_s"], 1, 1), _f(v["done_s"], 1, 1)) for k, v in summary["drain"].items()]
    if len(drains) > 1:
        lines.append("drain after phase end (all sent before it: first token / done): " + ", ".join(drains[:-1]))
    return "\n".join(lines)


# ---- two results side by side ---------------------------------------------------

COMPARE = (("TTFT p50 s", "ttft", "p50", 1), ("TTFT p99 s", "ttft", "p99", 1), ("TPOT p50 ms", "tpot", "p50", 1e3),
           ("TPOT p99 ms", "tpot", "p99", 1e3), ("E2E p99 s", "e2e", "p99", 1), ("good/s", "goodput_rps", None, 1),
           ("tok/s", "out_tok_s", None, 1), ("timeouts", "timeout", None, 1), ("refused", "refused", None, 1))


def format_compare(a, b, name_a="A", name_b="B"):
    """Two --out results of the same schedule, group by group: A, B, B/A."""
    lines = []
    da, db = a["config"].get("schedule_digest"), b["config"].get("schedule_digest")
    if da != db:
        lines.append("warning: the schedules differ (%s vs %s): not the same arrivals" % (da, db))
    for ra, rb in zip(a["runs"], b["runs"]):
        title = "closed loop, %s clients" % ra["clients"] if ra["mode"] == "closed" else "open loop"
        lines.append("== %s" % title)
        lines.append("%-8s %-11s %-12s %12s %12s %8s" % ("phase", "class", "metric", name_a[:12], name_b[:12], "B/A"))
        groups = [(p, c, ra["summary"]["by_phase"][p][c], rb["summary"]["by_phase"].get(p, {}).get(c))
                  for p in ra["summary"]["by_phase"] for c in ra["summary"]["by_phase"][p]]
        for p, c, sa, sb in groups:
            if sb is None or not sa["count"]:
                continue
            for label, key, q, scale in COMPARE:
                va, vb = (s[key][q] if q else s[key] for s in (sa, sb))
                ratio = "-" if va in (None, 0) or vb is None else "%.2f" % (vb / va)
                lines.append("%-8s %-11s %-12s %12s %12s %8s" % (p[:8], c[:11], label, _f(va, scale), _f(vb, scale),
                                                                ratio))
    return "\n".join(lines)
