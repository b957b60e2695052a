"""A real Prometheus server scrapes a real `lmd serve`: after a few
completions, the values Prometheus stored (read back through its HTTP query
API) must equal what lmd's /metrics says. This proves the exposition is
accepted by Prometheus's own parser end to end, not only by promtool.

Skipped only when the `prometheus` binary is missing (Debian package
`prometheus`, installed by scripts/install-deps.sh). Every wait is bounded."""
import os
import shutil
import subprocess
import time

import httpx
import openai
import pytest

from test_server import free_port, metric, start_server, stop_server

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None,
                                reason="the prometheus binary is not installed (apt-get install prometheus, "
                                       "or scripts/install-deps.sh)")

SCRAPE_S = 1


@pytest.fixture(scope="module")
def lmd(lmd_bin, default_model):
    proc, base = start_server(lmd_bin, default_model)
    yield base
    stop_server(proc)


@pytest.fixture(scope="module")
def prometheus(lmd, tmp_path_factory):
    d = tmp_path_factory.mktemp("prometheus")
    target = lmd.split("://", 1)[1]
    cfg = d / "prometheus.yml"
    cfg.write_text("global:\n"
                   "  scrape_interval: %ds\n"
                   "  scrape_timeout: %ds\n"
                   "scrape_configs:\n"
                   "  - job_name: lmd\n"
                   "    metrics_path: /metrics\n"
                   "    static_configs:\n"
                   "      - targets: ['%s']\n" % (SCRAPE_S, SCRAPE_S, target))
    port = free_port()
    log = open(d / "prometheus.log", "w+")
    proc = subprocess.Popen([PROMETHEUS, "--config.file=%s" % cfg, "--storage.tsdb.path=%s" % (d / "data"),
                             "--web.listen-address=127.0.0.1:%d" % port, "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=d)
    base = "http://127.0.0.1:%d" % port

    def output():
        log.flush()
        log.seek(0)
        return log.read()

    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail("prometheus exited early:\n" + output())
        try:
            if httpx.get(base + "/-/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("prometheus did not become ready in 60 s:\n" + output())
        time.sleep(0.2)
    yield base
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def prom_query(base, expr):
    """The value of a one-element instant vector, or None while it is empty."""
    r = httpx.get(base + "/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    result = body["data"]["result"]
    if not result:
        return None
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def wait_for(prom, expr, want, timeout=30):
    """Poll until Prometheus's latest sample equals `want`; a few scrape
    intervals is enough, the bound only keeps a failure from hanging."""
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = prom_query(prom, expr)
        if got == want:
            return got
        time.sleep(SCRAPE_S / 2)
    return got


def test_prometheus_scrapes_lmd(lmd, prometheus):
    # The target is up and its scrapes parse: lastError is what Prometheus
    # reports when it rejects an exposition.
    assert wait_for(prometheus, 'up{job="lmd"}', 1.0) == 1.0
    targets = httpx.get(prometheus + "/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
    assert len(targets) == 1 and targets[0]["health"] == "up", targets
    assert targets[0]["lastError"] == ""

    model = httpx.get(lmd + "/v1/models", timeout=5).json()["data"][0]["id"]
    client = openai.OpenAI(base_url=lmd + "/v1", api_key="unused", timeout=60, max_retries=0)
    for prompt in ("The capital of France is", "One, two, three,", "Hello"):
        r = client.completions.create(model=model, prompt=prompt, max_tokens=4, temperature=0)
        assert 1 <= r.usage.completion_tokens <= 4

    # Nothing else runs against this server, so these counters are final.
    prompt_tokens = metric(lmd, "lmd_prompt_tokens_total")
    requests = metric(lmd, "lmd_requests_total")
    assert prompt_tokens > 0 and requests == 3
    assert wait_for(prometheus, 'sum(lmd_prompt_tokens_total{job="lmd"})', prompt_tokens) == prompt_tokens
    assert wait_for(prometheus, 'sum(lmd_requests_total{job="lmd"})', requests) == requests
    # A gauge too: idle now, on both sides.
    assert metric(lmd, "lmd_requests_running") == 0
    assert wait_for(prometheus, 'sum(lmd_requests_running{job="lmd"})', 0.0) == 0.0
    # Prometheus stored the counter's history, not just its last value: the
    # scrape that reported `up` before any completion saw 0. Raw samples
    # (a range vector, not a subquery) make this exact.
    assert prom_query(prometheus, 'sum(min_over_time(lmd_prompt_tokens_total{job="lmd"}[10m]))') == 0.0
    assert prom_query(prometheus, 'sum(max_over_time(lmd_prompt_tokens_total{job="lmd"}[10m]))') == prompt_tokens
    assert prom_query(prometheus, 'min(count_over_time(lmd_prompt_tokens_total{job="lmd"}[10m]))') >= 2
