"""`lmd serve --tls-cert/--tls-key`: HTTPS with ALPN (h2 and http/1.1), the
openai client over it, and start-up errors for bad certificate files.
The certificate is made here with the `openssl` command line."""
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time

import httpx
import openai
import pytest

from test_server import PROMPT, free_port

CTX = 1024

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command line")


def make_pair(d, name):
    cert, key = str(d / (name + ".crt")), str(d / (name + ".key"))
    subprocess.check_call(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                           "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key,
                           "-out", cert], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("tls"), "server")


@pytest.fixture(scope="module")
def tls_server(lmd_bin, default_model, pair):
    cert, key = pair
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")  # not a pipe: an unread pipe blocks the server once full
    proc = subprocess.Popen([lmd_bin, "serve", "-m", default_model, "--port", str(port), "-t", "2", "-c", str(CTX),
                             "--tls-cert", cert, "--tls-key", key],
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    base = "https://127.0.0.1:%d" % port
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError("lmd serve exited early:\n" + log.read())
        try:
            if httpx.get(base + "/ready", verify=ssl.create_default_context(cafile=cert), timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield base, cert
    proc.terminate()
    proc.wait(timeout=20)


def test_http2_over_tls(tls_server):
    base, cert = tls_server
    with httpx.Client(http2=True, verify=ssl.create_default_context(cafile=cert), timeout=30) as c:
        r = c.get(base + "/health")
        assert r.http_version == "HTTP/2" and r.json() == {"status": "ok"}
        assert r.headers["x-request-id"]
        r = c.post(base + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 3, "temperature": 0})
        assert r.http_version == "HTTP/2" and r.json()["usage"]["completion_tokens"] == 3
        with c.stream("POST", base + "/v1/completions",
                      json={"prompt": PROMPT, "max_tokens": 3, "stream": True}) as s:
            assert s.read().decode().rstrip().endswith("data: [DONE]")


def test_http1_over_tls(tls_server):
    base, cert = tls_server
    with httpx.Client(http1=True, http2=False, verify=ssl.create_default_context(cafile=cert), timeout=30) as c:
        r = c.post(base + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 3, "temperature": 0})
        assert r.http_version == "HTTP/1.1" and r.json()["usage"]["completion_tokens"] == 3
    # ALPN is what picked the protocol: the server answers h2 or http/1.1.
    port = int(base.rsplit(":", 1)[1])
    for offer, want in ((["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")):
        ctx = ssl.create_default_context(cafile=cert)
        ctx.set_alpn_protocols(offer)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as t:
                assert t.selected_alpn_protocol() == want
    # Cleartext on the TLS port is not served.
    with pytest.raises(httpx.HTTPError):
        httpx.get("http://127.0.0.1:%d/health" % port, timeout=3)


def test_openai_over_tls(tls_server):
    base, cert = tls_server
    with httpx.Client(verify=ssl.create_default_context(cafile=cert), http2=True, timeout=60) as h:
        c = openai.OpenAI(base_url=base + "/v1", api_key="unused", http_client=h, max_retries=0)
        mid = c.models.list().data[0].id
        r = c.chat.completions.create(model=mid, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                      temperature=0)
        assert r.choices[0].message.content
        text = "".join(ch.choices[0].text for ch in c.completions.create(model=mid, prompt=PROMPT, max_tokens=4,
                                                                          temperature=0, stream=True) if ch.choices)
        assert text


def serve_fails(lmd_bin, default_model, *args):
    out = subprocess.run([lmd_bin, "serve", "-m", default_model, "--port", str(free_port()), "-t", "1", "-c", "64",
                          *args], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    return out.stderr.strip().splitlines()


def test_bad_tls_files(lmd_bin, default_model, pair, tmp_path):
    cert, key = pair
    other_cert, other_key = make_pair(tmp_path, "other")
    missing = str(tmp_path / "nope.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        (["--tls-cert", missing, "--tls-key", key], missing),
        (["--tls-cert", cert, "--tls-key", missing], missing),
        (["--tls-cert", str(garbage), "--tls-key", key], str(garbage)),
        (["--tls-cert", cert, "--tls-key", str(garbage)], str(garbage)),
        (["--tls-cert", cert, "--tls-key", other_key], other_key),
        (["--tls-cert", cert], "--tls-key"),
    ]
    for args, named in cases:
        lines = serve_fails(lmd_bin, default_model, *args)
        errors = [l for l in lines if named in l]
        assert errors, (args, lines)
        assert "listening" not in "\n".join(lines)
