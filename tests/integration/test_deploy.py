"""deploy/k8s: the Kubernetes manifests validate offline against the
Kubernetes API schemas (the PyPI package kubernetes-validate, strict: no
unknown fields), and what they configure is what lmd accepts: the
gateway's ConfigMap (lmd.yaml) and the tenants Secret, taken out of the
manifests, start a real `lmd serve` with the gateway's container arguments
(its DNS name does not resolve here, so its pool is empty and says so).
The InferencePool is a custom resource without a bundled schema: its
required fields are checked here."""
import os
import subprocess
import sys

import httpx
import pytest
import yaml

from test_multimodel import Serve

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K8S = os.path.join(ROOT, "deploy", "k8s")


def docs():
    out = []
    for f in sorted(os.listdir(K8S)):
        if f.endswith(".yaml"):
            with open(os.path.join(K8S, f)) as fh:
                out += [(f, d) for d in yaml.safe_load_all(fh) if d]
    return out


def test_manifests_validate():
    files = [os.path.join(K8S, f) for f in sorted(os.listdir(K8S)) if f.endswith(".yaml")]
    exe = os.path.join(os.path.dirname(sys.executable), "kubernetes-validate")
    p = subprocess.run([exe, "--strict", *files], capture_output=True, text=True, timeout=120)
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
    bad = [ln for ln in lines if not ln.startswith("INFO") and "kind InferencePool" not in ln]
    assert p.returncode == 0 and not bad, "\n".join(lines)
    kinds = {d["kind"] for _, d in docs()}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "InferencePool"} <= kinds


def test_inference_pool_fields():
    pool = [d for _, d in docs() if d["kind"] == "InferencePool"][0]
    spec = pool["spec"]
    assert spec["targetPorts"][0]["number"] == 8080
    engine = [d for _, d in docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "lmd-engine"][0]
    assert spec["selector"]["matchLabels"] == engine["spec"]["selector"]["matchLabels"]
    assert "--metrics-compat" in engine["spec"]["template"]["spec"]["containers"][0]["args"]


def test_gateway_config_is_what_lmd_accepts(lmd_bin, tmp_path):
    cm = [d for _, d in docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "lmd-gateway"][0]
    secret = [d for _, d in docs() if d["kind"] == "Secret" and d["metadata"]["name"] == "lmd-tenants"][0]
    (tmp_path / "tenants.yaml").write_text(secret["stringData"]["tenants.yaml"])
    cfg = cm["data"]["lmd.yaml"].replace("/etc/lmd/tenants/tenants.yaml", str(tmp_path / "tenants.yaml"))
    (tmp_path / "lmd.yaml").write_text(cfg)
    gw = [d for _, d in docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "lmd-gateway"][0]
    args = gw["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "serve"
    args = [str(tmp_path / "lmd.yaml") if a == "/etc/lmd/config/lmd.yaml" else a for a in args[1:]]
    args = [a for a in args if a not in ("--log-format", "json")]
    # The flag --port takes precedence over the file's listen.port; the
    # host stays loopback here.
    g = Serve(lmd_bin, tmp_path, *args, "--host", "127.0.0.1", "--dns-servers", "127.0.0.1:9")
    try:
        r = httpx.post(g.base + "/v1/completions", headers={"Authorization": "Bearer replace-with-a-real-key"},
                       json={"model": "gemma", "prompt": "x", "max_tokens": 1}, timeout=30)
        assert r.status_code == 503, r.text
        assert "discovery finds none" in r.json()["error"]["message"]
    finally:
        assert g.stop() == 0, g.log()


def test_watch_config_reloads_upstreams(lmd_bin, tmp_path):
    """--watch-config: a changed file is read again without a signal."""
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("models:\n  - name: m\n    engine: remote\n    upstreams: [\"http://127.0.0.9:1\"]\n")
    g = Serve(lmd_bin, tmp_path, "--config", str(cfg), "--watch-config")
    try:
        assert g.metrics().series("lmd_upstream_inflight", backend="http://127.0.0.9:1")
        cfg.write_text("models:\n  - name: m\n    engine: remote\n    upstreams: [\"http://127.0.0.9:2\"]\n")
        from test_observability import wait_until
        assert wait_until(lambda: g.metrics().series("lmd_upstream_inflight", backend="http://127.0.0.9:2") and
                          not g.metrics().series("lmd_upstream_inflight", backend="http://127.0.0.9:1"), timeout=20)
        assert "changed" in g.log()
    finally:
        assert g.stop() == 0, g.log()
