"""A fleet on one machine: three engine replicas (`lmd serve` on the
default model, one thread each, on 127.0.0.2-4) that register themselves
in a real etcd (--register), and two gateways (127.0.0.6 and 127.0.0.7)
that follow the etcd prefix. Four client threads with the official
`openai` client keep a closed loop of short streamed requests (chat and
completions) going through both gateways; then one engine replica is
killed (SIGKILL: no drain, no deregistration, its lease left to expire),
and later one gateway.

Checked:
- no request is lost beyond those in flight at the moment of a kill: every
  request that started after a kill succeeds (a client that finds a
  gateway refusing connections goes to the other one, as a Service or a
  load balancer in front of the gateways would; a refused connection was
  never accepted, so it is not a lost request);
- the requests in flight at a kill end cleanly: a completed answer (a
  completion is continued on another replica), an error event in the
  stream, or a failed connection; never a hang, and never a stream that
  ends without its finish reason and its full usage as if it were whole;
- traffic moves to the remaining replicas (their own /metrics count it),
  the dead replica's etcd key goes when its lease expires, and the
  surviving gateway carries the whole load after the gateway kill.

The time from each kill to the first success of a request sent after it
(the reroute time) is printed, not asserted: it depends on the machine.
The file runs in about half a minute on two cores."""
import subprocess
import threading
import time

import httpx
import openai

from test_discovery import Etcd
from test_gateway import UpServe, upstreams_served, wait_ready
from test_multimodel import Serve, free_port
from test_observability import wait_until

PROMPT = "The capital of France is"
PREFIX = "/lmd/upstreams/gemma"
MAX_TOKENS = 6

# The HTTP library under the openai client: httpx, or its renamed fork in
# recent releases; its errors reach the caller unwrapped from a stream.
try:
    import httpx2
    _HTTP = (httpx, httpx2)
except ImportError:
    _HTTP = (httpx,)
CONNECT_ERRORS = tuple(m.ConnectError for m in _HTTP)
TIMEOUT_ERRORS = tuple(m.TimeoutException for m in _HTTP)
HTTP_ERRORS = tuple(m.HTTPError for m in _HTTP)
REPLICAS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
GATEWAYS = ["127.0.0.6", "127.0.0.7"]


class Gateway(Serve):
    """A gateway `lmd serve` on a given loopback address (always the build
    under test, where UpServe may run LMD_UPSTREAM_BIN)."""

    def __init__(self, lmd_bin, d, host, *args):
        self.port = free_port()
        self.base = "http://%s:%d" % (host, self.port)
        self.log_path = d / ("gw-%s-%d.log" % (host, self.port))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([lmd_bin, "serve", "--host", host, "--port", str(self.port), *args],
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_ready(self.base, self.proc, self.log)

    def kill(self):
        self.proc.kill()
        self.proc.wait()


class Outcome:
    """One request as the client saw it."""

    def __init__(self, gw, kind, start):
        self.gw, self.kind, self.start = gw, kind, start
        self.end = None
        self.result = None  # ok, error-event, conn-failed, hang, truncated
        self.detail = ""


class Load:
    """A closed loop of streamed requests from `n` threads, thread i
    starting on gateway i % 2. A thread whose gateway refuses the
    connection marks it dead and sends the same request to the other."""

    def __init__(self, gws, n=4):
        self.gws = gws
        self.dead = set()  # gateway indices found refusing connections
        self.done = []  # [Outcome], appended as requests end
        self.refused = 0
        self.mu = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, i):
        clients = [openai.OpenAI(base_url=g.base + "/v1", api_key="none", max_retries=0, timeout=30)
                   for g in self.gws]
        kind = "chat" if (i // 2) % 2 == 0 else "completion"  # both kinds on both gateways
        at = i % len(self.gws)
        while not self.stopping.is_set():
            with self.mu:
                if at in self.dead:
                    at = next(k for k in range(len(self.gws)) if k not in self.dead)
            o = Outcome(at, kind, time.monotonic())
            refused = self._one(clients[at], o)
            if refused:
                with self.mu:
                    self.dead.add(at)
                    self.refused += 1
                continue
            o.end = time.monotonic()
            with self.mu:
                self.done.append(o)

    def _one(self, c, o):
        """Runs one request into `o`; True when the connection was refused."""
        finish, usage = None, None
        try:
            if o.kind == "chat":
                stream = c.chat.completions.create(model="gemma", messages=[{"role": "user", "content": PROMPT}],
                                                   max_tokens=MAX_TOKENS, stream=True,
                                                   stream_options={"include_usage": True},
                                                   extra_body={"ignore_eos": True})
            else:
                stream = c.completions.create(model="gemma", prompt=PROMPT, max_tokens=MAX_TOKENS, stream=True,
                                              stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            for ch in stream:
                if ch.choices and ch.choices[0].finish_reason:
                    finish = ch.choices[0].finish_reason
                if ch.usage:
                    usage = ch.usage
        except openai.APITimeoutError as e:
            o.result, o.detail = "hang", repr(e)
            return False
        except openai.APIConnectionError as e:
            if isinstance(e.__cause__, CONNECT_ERRORS):
                return True
            o.result, o.detail = "conn-failed", repr(e.__cause__ or e)
            return False
        except CONNECT_ERRORS:
            return True
        except openai.APIError as e:  # an error event in the stream, or an error status
            o.result, o.detail = "error-event", str(e)
            return False
        except TIMEOUT_ERRORS as e:
            o.result, o.detail = "hang", repr(e)
            return False
        except HTTP_ERRORS as e:  # the connection broke mid-stream
            o.result, o.detail = "conn-failed", repr(e)
            return False
        if finish == "length" and usage is not None and usage.completion_tokens == MAX_TOKENS:
            o.result = "ok"
        else:
            o.result, o.detail = "truncated", "finish %r, usage %r" % (finish, usage)
        return False

    def snapshot(self):
        with self.mu:
            return list(self.done)

    def ok_started_after(self, t):
        return [o for o in self.snapshot() if o.result == "ok" and o.start >= t]

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads), "a client thread hangs"


def served(r):
    return upstreams_served(r.metrics(), status="200") if r.proc.poll() is None else None


def backends(g):
    return sorted(lab["backend"] for lab, v in g.metrics().series("lmd_upstream_healthy"))


def test_kill_a_replica_and_a_gateway_under_load(lmd_bin, default_model, tmp_path):
    etcd = Etcd(tmp_path)
    reg = ["--register", "etcd://127.0.0.1:%d%s" % (etcd.port, PREFIX)]
    reps, gws, load = [], [], None
    try:
        for h in REPLICAS:
            reps.append(UpServe(lmd_bin, tmp_path, h, "-m", default_model, "-t", "1", "-c", "256",
                                "--max-running", "4", *reg))
        urls = sorted("lmd+" + r.url for r in reps)
        assert wait_until(lambda: len(etcd.keys(PREFIX)) == 3, timeout=10), etcd.keys(PREFIX)
        for h in GATEWAYS:
            gws.append(Gateway(lmd_bin, tmp_path, h, "--upstream", "gemma=lmd+etcd://127.0.0.1:%d%s" %
                               (etcd.port, PREFIX), "--route", "least"))
        for g in gws:
            assert wait_until(lambda: backends(g) == urls, timeout=10), backends(g)

        load = Load(gws)
        # Steady state: every replica has served requests.
        assert wait_until(lambda: all(served(r) > 0 for r in reps) and len(load.ok_started_after(0)) >= 4,
                          timeout=60), [served(r) for r in reps]

        # An engine replica dies while it runs a request.
        victim, rest = reps[0], reps[1:]
        assert wait_until(lambda: victim.metrics().sum("lmd_requests_running") >= 1, timeout=30, step=0.01)
        before = [served(r) for r in rest]
        t_kill = time.monotonic()
        victim.kill()
        t_dead = time.monotonic()  # requests sent from here on cannot have reached it
        assert wait_until(lambda: len(load.ok_started_after(t_dead)) >= 6, timeout=60), load.snapshot()[-4:]
        reroute = min(o.end for o in load.ok_started_after(t_dead)) - t_kill
        after = [served(r) for r in rest]
        assert all(a > b for a, b in zip(after, before)), (before, after)
        # How the gateways saw it (read before the lease expires: then they forget it).
        vurl = "lmd+" + victim.url
        on_victim = {k: sum(g.metrics().sum("lmd_upstream_" + k + "_total", backend=vurl) for g in gws)
                     for k in ("retries", "ejections")}
        on_victim["errors"] = sum(g.metrics().sum("lmd_upstream_requests_total", backend=vurl, outcome="error")
                                  for g in gws)
        # The dead replica's lease expires (10 s): its key goes, and the gateways forget it.
        assert wait_until(lambda: len(etcd.keys(PREFIX)) == 2, timeout=30), etcd.keys(PREFIX)
        t_gone = time.monotonic() - t_kill
        for g in gws:
            assert wait_until(lambda: backends(g) == sorted("lmd+" + r.url for r in rest), timeout=10), backends(g)

        # A gateway dies while it forwards a request.
        gvictim, gsurvivor = gws[0], gws[1]
        assert wait_until(lambda: gvictim.metrics().sum("lmd_upstream_inflight") >= 1, timeout=30, step=0.01)
        before = [served(r) for r in rest]
        t_gkill = time.monotonic()
        gvictim.kill()
        t_gdead = time.monotonic()
        assert wait_until(lambda: len(load.ok_started_after(t_gdead)) >= 6, timeout=60), load.snapshot()[-4:]
        greroute = min(o.end for o in load.ok_started_after(t_gdead)) - t_gkill
        load.stop()
        # The survivor stops cleanly (under the sanitizers: no report, no leak).
        assert gsurvivor.stop() == 0, gsurvivor.log()[-6000:]
        assert "Sanitizer" not in gsurvivor.log() and "runtime error" not in gsurvivor.log()
        after = [served(r) for r in rest]
        assert all(a > b for a, b in zip(after, before)), (before, after)

        done = load.snapshot()
        bad = [o for o in done if o.result != "ok"]

        def in_flight(o, t0, t1, gw=None):
            """Whether `o` was in flight at a kill (between just before the
            signal and the reaping of the process)."""
            return o.start < t1 and o.end >= t0 and (gw is None or o.gw == gw)

        # Nothing but the requests in flight at a kill failed, and those
        # failed cleanly (no hang, no short answer given as whole).
        lost = [o for o in bad if not (in_flight(o, t_kill, t_dead) or in_flight(o, t_gkill, t_gdead, gw=0))]
        assert not lost, [(o.gw, o.kind, o.result, o.detail) for o in lost]
        unclean = [o for o in bad if o.result not in ("error-event", "conn-failed")]
        assert not unclean, [(o.gw, o.kind, o.result, o.detail) for o in unclean]
        # After the gateway kill, only the survivor answers.
        assert all(o.gw == 1 for o in done if o.start >= t_gdead)
        at_kill = [o for o in done if in_flight(o, t_kill, t_dead)]
        at_gkill = [o for o in done if in_flight(o, t_gkill, t_gdead, gw=0)]
        print("\nfleet: %d requests, %d ok, %d refused connections retried on the other gateway" %
              (len(done), len(done) - len(bad), load.refused))
        print("fleet: engine kill: %d in flight, %d failed (%s); first success of a request sent after it %.3f s; "
              "lease gone after %.1f s; the gateways counted on it %r" %
              (len(at_kill), sum(o.result != "ok" for o in at_kill),
               ", ".join(sorted(o.kind + ":" + o.result for o in at_kill)), reroute, t_gone, on_victim))
        print("fleet: gateway kill: %d in flight on it, %d failed (%s); first success of a request sent after it "
              "%.3f s" % (len(at_gkill), sum(o.result != "ok" for o in at_gkill),
                          ", ".join(sorted(o.kind + ":" + o.result for o in at_gkill)), greroute))
        print("fleet: served by the replicas: %s" % [served(r) for r in reps])
    finally:
        if load:
            load.stop()
        for g in gws:
            if g.proc.poll() is None:
                g.stop()
        for r in reps:
            if r.proc.poll() is None:
                r.stop()
        etcd.stop()
