"""DNS discovery: `lmd serve --upstream NAME=KIND+dns://HOST:PORT` follows
the addresses a name resolves to, as a Kubernetes headless Service gives
them. A real DNS server (dnsmasq, from Debian) answers on a loopback port
from a hosts file the test rewrites (and signals dnsmasq to reread); real
`lmd serve` upstreams listen on 127.0.0.2 and 127.0.0.3 on one port.

etcd: replicas register themselves under a key prefix with a lease
(--register) and a gateway watching the prefix follows them; against a real
etcd (Debian's etcd-server) on loopback ports.

Checked: the pool starts with what the name resolves to; an address added
to the name becomes an upstream that takes traffic; a removed one leaves
the pool (its requests in flight finish) and gets no more; a name that no
longer resolves empties the pool (503, said plainly) and traffic returns
with the name; a DNS server that stops answering keeps the last list."""
import os
import shutil
import signal
import socket
import subprocess
import time

import httpx
import openai
import pytest

from test_gateway import UpServe, upstreams_served
from test_multimodel import Serve
from test_observability import wait_until

NAME = "pool.lmd.test"
PROMPT = "The capital of France is"


def port_free_on(hosts, udp=False):
    """A TCP port free on every host (and for UDP too, with udp)."""
    kinds = [socket.SOCK_STREAM] + ([socket.SOCK_DGRAM] if udp else [])
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ok = True
        for h in hosts:
            for kind in kinds:
                with socket.socket(socket.AF_INET, kind) as t:
                    try:
                        t.bind((h, port))
                    except OSError:
                        ok = False
        if ok:
            return port
    raise RuntimeError("no port free on " + ", ".join(hosts))


class Dnsmasq:
    def __init__(self, d):
        if not shutil.which("dnsmasq"):
            pytest.fail("dnsmasq is not installed (scripts/install-deps.sh installs dnsmasq-base)")
        self.hosts = d / "hosts"
        self.set([])
        self.log = d / "dnsmasq.log"
        # dnsmasq listens on UDP and TCP: the port must be free for both,
        # and another process may still take it before dnsmasq binds (it
        # then exits with 2, "network problem"), so that is tried again on
        # another port; any other exit fails at once.
        for _ in range(5):
            self.port = port_free_on(["127.0.0.1"], udp=True)
            self.proc = subprocess.Popen(["dnsmasq", "-k", "--port=%d" % self.port, "--listen-address=127.0.0.1",
                                          "--bind-interfaces", "--no-resolv", "--no-hosts",
                                          "--addn-hosts=%s" % self.hosts, "--conf-file=/dev/null", "--user=root",
                                          "--pid-file=", "--local-ttl=0", "--local=/lmd.test/",
                                          "--log-facility=%s" % self.log], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.STDOUT)
            time.sleep(0.3)
            if self.proc.poll() != 2:
                break
        assert self.proc.poll() is None, self.log.read_text() if self.log.exists() else "dnsmasq exited"

    def set(self, addrs):
        self.hosts.write_text("".join("%s %s\n" % (a, NAME) for a in addrs))
        if getattr(self, "proc", None):
            self.proc.send_signal(signal.SIGHUP)  # reread the hosts file

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def stop(self):
        self.resume()
        self.proc.terminate()
        self.proc.wait(timeout=10)


def backends(g):
    return sorted(lab["backend"] for lab, _ in g.metrics().series("lmd_upstream_healthy"))


def test_dns_discovery(lmd_bin, default_model, tmp_path):
    dns = Dnsmasq(tmp_path)
    port = port_free_on(["127.0.0.2", "127.0.0.3"])
    a = b = g = None
    try:
        a = _up(lmd_bin, default_model, tmp_path, "127.0.0.2", port)
        b = _up(lmd_bin, default_model, tmp_path, "127.0.0.3", port)
        url_a, url_b = "lmd+http://127.0.0.2:%d" % port, "lmd+http://127.0.0.3:%d" % port
        dns.set(["127.0.0.2"])
        g = Serve(lmd_bin, tmp_path, "--upstream", "gemma=lmd+dns://%s:%d" % (NAME, port), "--dns-servers",
                  "127.0.0.1:%d" % dns.port, "--dns-interval", "200", "--route", "least")
        c = openai.OpenAI(base_url=g.base + "/v1", api_key="none", max_retries=0, timeout=60)
        assert backends(g) == [url_a]
        assert c.completions.create(model="gemma", prompt=PROMPT, max_tokens=2).usage.completion_tokens == 2

        # A second address: a second upstream, which takes traffic.
        dns.set(["127.0.0.2", "127.0.0.3"])
        assert wait_until(lambda: backends(g) == [url_a, url_b], timeout=20), backends(g)
        before = upstreams_served(b.metrics())
        for _ in range(4):
            c.completions.create(model="gemma", prompt=PROMPT, max_tokens=2)
        assert upstreams_served(b.metrics()) > before

        # The first address goes: its upstream leaves the pool.
        dns.set(["127.0.0.3"])
        assert wait_until(lambda: backends(g) == [url_b], timeout=20), backends(g)
        before = [upstreams_served(u.metrics()) for u in (a, b)]
        for _ in range(3):
            c.completions.create(model="gemma", prompt=PROMPT, max_tokens=2)
        after = [upstreams_served(u.metrics()) for u in (a, b)]
        assert after[0] == before[0] and after[1] == before[1] + 3

        # A DNS server that stops answering keeps the last list.
        dns.pause()
        time.sleep(1.5)
        assert backends(g) == [url_b]
        assert c.completions.create(model="gemma", prompt=PROMPT, max_tokens=2).usage.completion_tokens == 2
        dns.resume()

        # The name goes: the pool is empty, and says so.
        dns.set([])
        assert wait_until(lambda: backends(g) == [], timeout=20), backends(g)
        r = httpx.post(g.base + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}, timeout=30)
        assert r.status_code == 503, r.text
        assert "discovery finds none" in r.json()["error"]["message"]
        dns.set(["127.0.0.2"])
        assert wait_until(lambda: backends(g) == [url_a], timeout=20), backends(g)
        assert c.completions.create(model="gemma", prompt=PROMPT, max_tokens=2).usage.completion_tokens == 2
        assert "discovery: lmd+dns://%s:%d now gives 1 upstream" % (NAME, port) in g.log()
    finally:
        if g:
            assert g.stop() == 0, g.log()
        for u in (a, b):
            if u:
                u.stop()
        dns.stop()


def _up(lmd_bin, default_model, d, host, port):
    """An lmd upstream on host:port (UpServe picks its own port)."""
    u = UpServe.__new__(UpServe)
    u.port = port
    u.base = u.url = "http://%s:%d" % (host, port)
    u.log_path = d / ("up-%s.log" % host)
    with open(u.log_path, "wb") as log:
        u.proc = subprocess.Popen([os.environ.get("LMD_UPSTREAM_BIN", lmd_bin), "serve", "-m", default_model, "--host",
                                   host, "--port", str(port), "-t", "1", "-c", "256"], stdout=log,
                                  stderr=subprocess.STDOUT)
    from test_gateway import wait_ready
    wait_ready(u.base, u.proc, u.log)
    return u


@pytest.mark.parametrize("arg,msg", [
    ("gemma=dns://pool", "a name and a port"),
    ("gemma=dns://pool:0", "port must be a number"),
    ("gemma=lmd+dns://pool:80,http://127.0.0.2:1", "upstream is the whole list"),
    ("gemma=etcd://127.0.0.1:2379", "a host, a port and a key prefix"),
    ("gemma=etcd://127.0.0.1:x/p", "port must be a number"),
])
def test_bad_dns_upstreams(lmd_bin, arg, msg):
    p = subprocess.run([lmd_bin, "serve", "--port", "0", "--upstream", arg], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode != 0, p.stderr
    assert msg in p.stderr, p.stderr


class Etcd:
    """A real etcd (Debian's etcd-server) on loopback ports, its data in d."""

    def __init__(self, d):
        if not shutil.which("etcd"):
            pytest.fail("etcd is not installed (scripts/install-deps.sh installs etcd-server)")
        self.port, peer = port_free_on(["127.0.0.1"]), port_free_on(["127.0.0.1"])
        self.base = "http://127.0.0.1:%d" % self.port
        self.log = d / "etcd.log"
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen(["etcd", "--data-dir", str(d / "etcd"), "--listen-client-urls", self.base,
                                          "--advertise-client-urls", self.base, "--listen-peer-urls",
                                          "http://127.0.0.1:%d" % peer, "--initial-advertise-peer-urls",
                                          "http://127.0.0.1:%d" % peer, "--initial-cluster",
                                          "default=http://127.0.0.1:%d" % peer], stdout=f, stderr=subprocess.STDOUT)
        assert wait_until(lambda: self._ok(), timeout=30), self.log.read_text()

    def _ok(self):
        try:
            return httpx.get(self.base + "/health", timeout=1).json().get("health") == "true"
        except (httpx.HTTPError, ValueError):
            return False

    def put(self, key, value):
        httpx.post(self.base + "/v3/kv/put", json={"key": _b64(key), "value": _b64(value)}, timeout=10)

    def delete(self, key):
        httpx.post(self.base + "/v3/kv/deleterange", json={"key": _b64(key)}, timeout=10)

    def keys(self, prefix):
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        r = httpx.post(self.base + "/v3/kv/range", json={"key": _b64(prefix), "range_end": _b64(end)}, timeout=10)
        import base64
        return sorted(base64.b64decode(kv["key"]).decode() for kv in r.json().get("kvs", []))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _b64(s):
    import base64
    return base64.b64encode(s.encode()).decode()


def test_etcd_discovery_and_registration(lmd_bin, default_model, tmp_path):
    """Replicas register themselves (--register) with a lease; a gateway
    watching the prefix routes to them as they come, deregister (drain) or
    are removed, within about a second; a value put by hand counts too."""
    etcd = Etcd(tmp_path)
    prefix = "/lmd/upstreams/gemma"
    reg = ["--register", "etcd://127.0.0.1:%d%s" % (etcd.port, prefix)]
    a = b = g = None
    try:
        a = UpServe(lmd_bin, tmp_path, "127.0.0.2", "-m", default_model, "-t", "1", "-c", "256", *reg)
        assert wait_until(lambda: etcd.keys(prefix) == ["%s/127.0.0.2:%d" % (prefix, a.port)], timeout=10), \
            etcd.keys(prefix)
        g = Serve(lmd_bin, tmp_path, "--upstream", "gemma=lmd+etcd://127.0.0.1:%d%s" % (etcd.port, prefix),
                  "--route", "least")
        c = openai.OpenAI(base_url=g.base + "/v1", api_key="none", max_retries=0, timeout=60)
        url_a = "lmd+" + a.url
        assert backends(g) == [url_a]
        assert c.completions.create(model="gemma", prompt=PROMPT, max_tokens=2).usage.completion_tokens == 2

        # A second replica registers: traffic reaches it.
        b = UpServe(lmd_bin, tmp_path, "127.0.0.3", "-m", default_model, "-t", "1", "-c", "256", *reg)
        url_b = "lmd+" + b.url
        t0 = time.monotonic()
        assert wait_until(lambda: backends(g) == sorted([url_a, url_b]), timeout=10), backends(g)
        moved = time.monotonic() - t0
        before = upstreams_served(b.metrics())
        for _ in range(4):
            c.completions.create(model="gemma", prompt=PROMPT, max_tokens=2)
        assert upstreams_served(b.metrics()) > before

        # The first drains (SIGTERM): it deregisters, and gets no more.
        a.stop()
        assert wait_until(lambda: backends(g) == [url_b], timeout=10), backends(g)
        assert etcd.keys(prefix) == ["%s/127.0.0.3:%d" % (prefix, b.port)]
        for _ in range(2):
            assert c.completions.create(model="gemma", prompt=PROMPT, max_tokens=2).usage.completion_tokens == 2

        # A key put by hand (JSON with a url) is an upstream too; deleting it removes it.
        etcd.put(prefix + "/manual", '{"url": "http://127.0.0.9:1"}')
        assert wait_until(lambda: "lmd+http://127.0.0.9:1" in backends(g), timeout=10), backends(g)
        etcd.delete(prefix + "/manual")
        assert wait_until(lambda: backends(g) == [url_b], timeout=10), backends(g)
        print("etcd: a registered replica joined the gateway's pool in %.2f s" % moved)
        assert "discovery: registered" in b.log()

        # A gateway keeps no state it needs: a new one, started with the
        # same arguments after this one stops, finds the pool in etcd and
        # serves from it.
        assert g.stop() == 0, g.log()
        g = Serve(lmd_bin, tmp_path, "--upstream", "gemma=lmd+etcd://127.0.0.1:%d%s" % (etcd.port, prefix),
                  "--route", "least")
        assert wait_until(lambda: backends(g) == [url_b], timeout=10), backends(g)
        c = openai.OpenAI(base_url=g.base + "/v1", api_key="none", max_retries=0, timeout=60)
        assert c.completions.create(model="gemma", prompt=PROMPT, max_tokens=2).usage.completion_tokens == 2
    finally:
        if g:
            assert g.stop() == 0, g.log()
        for u in (a, b):
            if u and u.proc.poll() is None:
                u.stop()
        etcd.stop()
