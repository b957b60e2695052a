"""The processes of the gateway benchmarks (bench/gateway/s2, bench/gateway/g1):
llama-server replicas, lmd native servers, an nginx round-robin reverse proxy
(the floor every gateway figure is compared with), an nginx stub that answers
OpenAI requests from constants (a backend with no compute, to find what a
proxy itself can pass), and lmd in gateway mode (`lmd serve --upstream`).

Every process is started by this module, on loopback, with its own temp
directory, and stopped by its pid at exit (never by name). Nothing here is
a test; it only sets the stage for measurements.
"""
import atexit
import os
import shutil
import signal
import subprocess
import sysconfig
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_procs = []


def _cleanup():
    for p in reversed(_procs):
        stop(p)


atexit.register(_cleanup)
signal.signal(signal.SIGTERM, lambda *_: (_cleanup(), os._exit(143)))


class Proc:
    def __init__(self, name, popen, url, tmp, log):
        self.name, self.popen, self.url, self.tmp, self.log = name, popen, url, tmp, log

    @property
    def pid(self):
        return self.popen.pid


def _spawn(name, argv, url, env=None, cpus=None, tmp=None, ready_path="/health", ready_timeout=300):
    tmp = tmp or tempfile.mkdtemp(prefix="lmd-gwbench-%s-" % name)
    log = os.path.join(tmp, "log")
    if cpus:
        argv = ["taskset", "-c", cpus] + argv
    with open(log, "wb") as lf:
        popen = subprocess.Popen(argv, stdout=lf, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                 start_new_session=True)
    p = Proc(name, popen, url, tmp, log)
    _procs.append(p)
    if ready_path is not None:
        wait_ready(p, ready_path, ready_timeout)
    return p


def wait_ready(p, path, timeout):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if p.popen.poll() is not None:
            raise SystemExit("%s exited with %s; its log (%s):\n%s" % (p.name, p.popen.returncode, p.log,
                                                                       tail(p.log)))
        try:
            with urllib.request.urlopen(p.url + path, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit("%s not ready at %s%s after %d s; its log:\n%s" % (p.name, p.url, path, timeout, tail(p.log)))


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def stop(p, timeout=30):
    """SIGTERM to the process (its own session: the pid we started, and for
    taskset the same pid after exec), then SIGKILL if it lingers."""
    if p in _procs:
        _procs.remove(p)
    if p.popen.poll() is None:
        p.popen.send_signal(signal.SIGTERM)
        try:
            p.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait()
    shutil.rmtree(p.tmp, ignore_errors=True)


# ---- llama.cpp's llama-server ---------------------------------------------------


def llama_server_paths():
    sp = sysconfig.get_paths()["purelib"]
    exe = os.path.join(sp, "bin", "llama-server")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(x for x in (os.path.join(sp, "lib"), os.path.join(sp, "llama_cpp", "lib"),
                                                  env.get("LD_LIBRARY_PATH")) if x)
    return exe, env


def llama_server(host, port, model, threads=1, parallel=4, ctx=8192, extra=(), cpus=None):
    """One llama-server replica. --alias default so that every path (direct,
    nginx, gateway) serves the same model name; --swa-full so that Gemma 3's
    sliding-window layers keep the whole prompt and a repeated prompt is
    served from the cache (without it llama-server re-computes every prompt
    of an SWA model)."""
    exe, env = llama_server_paths()
    if not os.access(exe, os.X_OK):
        raise SystemExit("no llama-server at %s: run scripts/install-deps.sh --bench (bench/README.md)" % exe)
    argv = [exe, "-m", model, "--host", host, "--port", str(port), "-t", str(threads), "-np", str(parallel),
            "-c", str(ctx), "--metrics", "--no-webui", "--alias", "default", "--swa-full", *extra]
    return _spawn("llama-server-%s" % host, argv, "http://%s:%d" % (host, port), env=env, cpus=cpus)


# ---- lmd ------------------------------------------------------------------------


def lmd_gateway_missing(lmd):
    """Why `lmd` cannot be the gateway path, or None when it can."""
    if not os.access(lmd, os.X_OK):
        return "no lmd binary at %s (make build, or --lmd PATH)" % lmd
    try:
        out = subprocess.run([lmd, "serve", "--help"], capture_output=True, text=True, timeout=10)
    except OSError as e:
        return "%s does not run: %s" % (lmd, e)
    if "--upstream" not in out.stdout + out.stderr:
        return "%s serve has no --upstream (a build without gateway mode)" % lmd
    return None


def lmd_native(lmd, host, port, model, threads=1, extra=(), cpus=None):
    argv = [lmd, "serve", "-m", "default=" + model, "--host", host, "--port", str(port), "-t", str(threads),
            "--log-level", "warn", *extra]
    return _spawn("lmd-%s" % host, argv, "http://%s:%d" % (host, port), cpus=cpus, ready_path="/ready")


def lmd_gateway(lmd, host, port, upstreams, inflight=None, route=None, extra=(), cpus=None):
    """lmd in gateway mode: model `default` served by forwarding to the
    upstream URLs (e.g. llamacpp+http://127.0.0.2:8081)."""
    argv = [lmd, "serve", "--host", host, "--port", str(port), "--upstream", "default=" + ",".join(upstreams),
            "--log-level", "warn"]
    if inflight is not None:
        argv += ["--upstream-inflight", str(inflight)]
    if route:
        argv += ["--route", route]
    argv += list(extra)
    return _spawn("lmd-gateway", argv, "http://%s:%d" % (host, port), cpus=cpus, ready_path="/ready")


# ---- nginx ----------------------------------------------------------------------

_NGINX_HEAD = """\
daemon off;
master_process on;
worker_processes {workers};
{user}
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {conns}; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_timeout 600s;
    keepalive_requests 1000000;
    client_max_body_size 16m;
    client_body_buffer_size 1m;
"""

# A plain round-robin reverse proxy as it is deployed in front of LLM
# servers: keep-alive to the upstreams, no response buffering so that SSE
# passes chunk by chunk, the request body streamed as it arrives.
_NGINX_PROXY = """\
    upstream backends {{
{servers}
        keepalive 128;
        keepalive_requests 1000000;
        keepalive_timeout 600s;
    }}
    server {{
        listen {host}:{port} backlog=16384;
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_cache off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""

# An OpenAI server with no model: every POST gets one constant streamed
# completion (one token, its usage, [DONE]), so that a proxy in front of it
# is the only work on the path. Always SSE: lmd's gateway asks its upstreams
# for a stream whatever the client asked, and nginx cannot read a body
# before answering with `return`; wrk counts statuses and bytes, not
# content, so the direct and nginx paths measure the same exchange.
_NGINX_STUB = """\
    server {{
        listen {host}:{port} backlog=16384;
        default_type application/json;
        location = /health {{ return 200 '{{"status":"ok"}}'; }}
        location = /ready {{ return 200 '{{"status":"ok"}}'; }}
        location = /metrics {{ default_type text/plain; return 200 "# stub\\n"; }}
        location = /v1/models {{ return 200 '{{"object":"list","data":[{{"id":"default","object":"model","owned_by":"stub"}}]}}'; }}
        location / {{
            default_type text/event-stream;
            return 200 'data: {{"id":"cmpl-stub","object":"text_completion","created":0,"model":"default","choices":[{{"index":0,"text":"x","logprobs":null,"finish_reason":"length"}}]}}\\n\\ndata: {{"id":"cmpl-stub","object":"text_completion","created":0,"model":"default","choices":[],"usage":{{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}}}\\n\\ndata: [DONE]\\n\\n';
        }}
    }}
}}
"""


def _nginx_conf(tmp, workers, nofile):
    user = ""
    if os.geteuid() == 0:
        # Root starts the master only; workers run as nobody, which must
        # reach the temp directories.
        user = "user nobody nogroup;"
        os.chmod(tmp, 0o755)
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(tmp, d), exist_ok=True)
        if os.geteuid() == 0:
            os.chmod(os.path.join(tmp, d), 0o777)
    return _NGINX_HEAD.format(workers=workers, user=user, tmp=tmp, nofile=nofile, conns=max(1024, nofile - 64))


def _nginx_start(name, conf, tmp, url, cpus, ready_path):
    path = os.path.join(tmp, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(exe, os.X_OK):
        raise SystemExit("no nginx: run scripts/install-deps.sh --bench (bench/README.md)")
    return _spawn(name, [exe, "-p", tmp, "-c", path, "-e", os.path.join(tmp, "error.log")], url, cpus=cpus,
                  tmp=tmp, ready_path=ready_path)


def nginx_proxy(host, port, upstreams, workers=1, cpus=None, nofile=20000, ready_path="/health"):
    """nginx round-robin over upstreams ["127.0.0.2:8081", ...]."""
    tmp = tempfile.mkdtemp(prefix="lmd-gwbench-nginx-")
    servers = "\n".join("        server %s max_fails=0;" % u for u in upstreams)
    conf = _nginx_conf(tmp, workers, nofile) + _NGINX_PROXY.format(servers=servers, host=host, port=port)
    return _nginx_start("nginx", conf, tmp, "http://%s:%d" % (host, port), cpus, ready_path)


def nginx_stub(host, port, workers=1, cpus=None):
    tmp = tempfile.mkdtemp(prefix="lmd-gwbench-stub-")
    conf = _nginx_conf(tmp, workers, 20000) + _NGINX_STUB.format(host=host, port=port)
    return _nginx_start("stub", conf, tmp, "http://%s:%d" % (host, port), cpus, "/health")


def nginx_worker_pid(p):
    """The worker that holds nginx's connections (worker_processes 1)."""
    try:
        with open("/proc/%d/task/%d/children" % (p.pid, p.pid)) as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        kids = []
    return kids[0] if kids else p.pid


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None
