"""The sending side of bench/serve: one streaming /v1/completions request
with its timings, the open loop (requests at their scheduled times, never
waiting on each other), the closed loop (N clients back to back), and the
samplers of the server's RSS and /metrics gauges.

The client must never queue requests itself: the connection pool has no
limit, so with HTTP/1.1 every request in flight has its own connection.
SSE lines are scanned as bytes; only the rare line that carries usage, a
finish reason or an error is parsed as JSON.
"""
import asyncio
import json
import time

import httpx

from serve_workload import prefix_ids, prompt_ids, prompt_text


class Req:
    """What one request needs to be sent; built from an Arrival."""

    __slots__ = ("arrival", "body", "headers")

    def __init__(self, arrival, opts, spec):
        a = arrival
        body = {"model": opts.model, "max_tokens": a.max_tokens, "stream": True, "temperature": opts.temperature}
        if opts.text_prompt:
            body["prompt"] = prompt_text(opts.seed, a.i, a.prompt_len)
        elif a.prefix is not None:
            body["prompt"] = (prefix_ids(opts.seed, a.prefix, a.prefix_len, opts.token_lo, opts.token_hi) +
                              prompt_ids(opts.seed, a.i, a.prompt_len - a.prefix_len, opts.token_lo, opts.token_hi))
        else:
            body["prompt"] = prompt_ids(opts.seed, a.i, a.prompt_len, opts.token_lo, opts.token_hi)
        if opts.usage:
            body["stream_options"] = {"include_usage": True}
        if opts.ignore_eos:
            body["ignore_eos"] = True
        headers = {"content-type": "application/json"}
        prio = spec.priority or spec.name
        if opts.priority:
            body["priority"] = prio
            headers[opts.priority_header] = prio
        key = opts.tenant_keys.get(a.tenant) if a.tenant else None
        if key:
            headers["authorization"] = "Bearer " + key
        self.arrival = a
        self.body = json.dumps(body, separators=(",", ":")).encode()
        self.headers = headers


def new_record(a):
    return {"i": a.i, "phase": a.phase, "cls": a.cls, "tenant": a.tenant, "prompt_len": a.prompt_len,
            "max_tokens": a.max_tokens, "t_sched": a.t, "t_send": None, "outcome": None, "status": None,
            "error": None, "retry_after": None, "ttft": None, "e2e": None, "tpot": None, "out_tokens": None,
            "usage_tokens": None, "chunks": 0, "finish_reason": None, "itl": [], "chunk_t": []}


def _value_at(line, key):
    """Index of the first byte of key's value in a JSON line, or -1. Servers
    write compact JSON (lmd, vLLM) or Python's default with a space after the
    colon (llama-cpp-python); both are found without parsing the line."""
    k = line.find(key)
    if k < 0:
        return -1
    k += len(key)
    while line[k:k + 1] == b" ":
        k += 1
    return k


def _finish_reason(line):
    k = _value_at(line, b'"finish_reason":')
    if k < 0 or line[k:k + 1] != b'"':
        return None
    return line[k + 1:line.find(b'"', k + 1)].decode()


async def send(client, url, req, rec, t0, opts):
    """Send one request and fill rec. Never raises except on cancellation of
    the caller; every ending is an outcome."""
    t_send = time.perf_counter()
    rec["t_send"] = t_send - t0
    first = None
    last = None
    times = rec["chunk_t"]
    try:
        async with asyncio.timeout_at(asyncio.get_running_loop().time() + opts.timeout) as deadline:
            async with client.stream("POST", url, content=req.body, headers=req.headers) as resp:
                rec["status"] = resp.status_code
                if resp.status_code != 200:
                    body = await resp.aread()
                    rec["retry_after"] = resp.headers.get("retry-after")
                    rec["outcome"] = "refused" if resp.status_code in opts.refusal_codes else "error"
                    rec["error"] = body[:300].decode("utf-8", "replace")
                    rec["e2e"] = time.perf_counter() - t_send
                    return
                buf = b""
                done = False
                async for data in resp.aiter_raw():
                    now = time.perf_counter()
                    buf += data
                    lines = buf.split(b"\n")
                    buf = lines.pop()
                    for line in lines:
                        if not line.startswith(b"data:"):
                            continue
                        if line[-1:] == b"\r":  # sse-starlette ends lines with CRLF
                            line = line[:-1]
                        if line.endswith(b"[DONE]"):
                            done = True
                            continue
                        k = _value_at(line, b'"text":')
                        if k >= 0 and line[k:k + 2] not in (b'""', b"nu"):
                            # A token chunk with text: the first moves the
                            # deadline from first-token to whole-request.
                            if first is None:
                                first = now
                                deadline.reschedule(asyncio.get_running_loop().time() + opts.request_timeout -
                                                    (now - t_send))
                            else:
                                rec["itl"].append(now - last)
                            last = now
                            times.append(now - t0)
                        fr = _finish_reason(line)
                        if fr:
                            rec["finish_reason"] = fr
                        k = _value_at(line, b'"usage":')
                        if k >= 0 and line[k:k + 1] == b"{":
                            u = json.loads(line[5:]).get("usage") or {}
                            rec["usage_tokens"] = u.get("completion_tokens")
                        if b'"error":' in line and b'"choices"' not in line:
                            rec["error"] = line[5:305].decode("utf-8", "replace").strip()
                end = time.perf_counter()
        rec["e2e"] = end - t_send
        rec["chunks"] = len(times)
        rec["out_tokens"] = rec["usage_tokens"] if rec["usage_tokens"] is not None else len(times)
        if first is not None:
            rec["ttft"] = first - t_send
            if rec["out_tokens"] > 1:
                rec["tpot"] = (rec["e2e"] - rec["ttft"]) / (rec["out_tokens"] - 1)
        if rec["error"]:
            rec["outcome"] = "error"
        elif not done and rec["finish_reason"] is None:
            rec["outcome"], rec["error"] = "error", "stream ended without [DONE]"
        else:
            rec["outcome"] = "ok"
    except TimeoutError:
        # Leaving the stream's context closed the connection: the server sees
        # the cancellation and frees the sequence.
        rec["e2e"] = time.perf_counter() - t_send
        rec["chunks"] = len(times)
        if first is None:
            rec["outcome"] = "timeout"
        else:
            rec["ttft"] = first - t_send
            rec["outcome"], rec["error"] = "error", "no end within --request-timeout"
    except httpx.HTTPError as e:
        rec["e2e"] = time.perf_counter() - t_send
        rec["outcome"], rec["error"] = "error", "%s: %s" % (type(e).__name__, e)


def make_client(opts):
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None, keepalive_expiry=30)
    timeout = httpx.Timeout(connect=opts.connect_timeout, read=None, write=opts.connect_timeout, pool=None)
    return httpx.AsyncClient(base_url=opts.base_url, http1=not opts.http2, http2=opts.http2, limits=limits,
                             timeout=timeout)


async def open_loop(client, arrivals, specs, opts, t0):
    """Every arrival is sent at t0 + its time, whatever is in flight. The
    lateness of each send (the generator's own delay) is kept in the record."""
    url = opts.endpoint
    loop_t0 = asyncio.get_running_loop().time() - (time.perf_counter() - t0)
    tasks, records = [], []
    for a in arrivals:
        req = Req(a, opts, specs[a.cls])  # built before the wait, so the send is on time
        rec = new_record(a)
        records.append(rec)
        delay = loop_t0 + a.t - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(client, url, req, rec, t0, opts)))
    await asyncio.gather(*tasks)
    return records


async def closed_loop(client, seq, specs, opts, n_clients, duration, t0):
    """n_clients each send the next request of the seeded sequence as soon as
    their previous one ended, until `duration` s; requests in flight at the
    end run to completion (their tokens after the window are not counted in
    the window's rate)."""
    url = opts.endpoint
    records = []

    async def client_loop():
        while time.perf_counter() - t0 < duration:
            a = next(seq)
            rec = new_record(a)
            rec["t_sched"] = time.perf_counter() - t0
            records.append(rec)
            await send(client, url, Req(a, opts, specs[a.cls]), rec, t0, opts)

    await asyncio.gather(*[client_loop() for _ in range(n_clients)])
    return records


async def sample_rss(pid, interval, out, stop, t0):
    """VmRSS of pid every interval s into out as (t, bytes), t in s after
    t0 (perf_counter), until stop is set."""
    while not stop.is_set():
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        out.append((round(time.perf_counter() - t0, 3), int(line.split()[1]) * 1024))
                        break
        except OSError:
            return
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass


async def sample_metrics(client, names, interval, out, stop, t0):
    """The named gauges of the server's Prometheus /metrics every interval s
    into out as {"t": s after t0, name: value}; stops quietly if the route
    is absent."""
    while not stop.is_set():
        try:
            r = await client.get("/metrics", timeout=5)
            if r.status_code != 200:
                return
            row = {"t": round(time.perf_counter() - t0, 3)}
            for line in r.text.splitlines():
                if not line or line[0] == "#":
                    continue
                # name{labels} value: labeled series are summed by name.
                name = line.split("{", 1)[0].split(" ", 1)[0]
                if name in names:
                    try:
                        row[name] = row.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
                    except ValueError:
                        pass
            out.append(row)
        except httpx.HTTPError:
            pass
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass
