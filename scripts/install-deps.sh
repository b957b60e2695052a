#!/usr/bin/env bash
# Installs everything lmd needs to build and test, by package name:
# Debian packages with apt-get, Python packages into the project venv (.venv).
# `prometheus` brings promtool (the obs_promtool lint) and the server that
# tests/integration/test_prometheus.py scrapes lmd with; `dnsmasq-base` and
# `etcd-server` are the DNS server and etcd that the discovery tests run.
# `ca-certificates` is the CA bundle that deploy/Containerfile copies into the
# image (test_static.py builds that root filesystem from this host's files).
# `make static` links lmd from the static archives that these -dev packages
# ship (libjansson-dev, libpcre2-dev, libssl-dev, libyaml-dev, libc-ares-dev, libnghttp2-dev,
# zlib1g-dev; libc6-dev from build-essential); libh2o-evloop-dev has only
# the shared library, so scripts/build-h2o-static.sh builds h2o's archive
# from Debian's source package with dpkg-source (dpkg-dev, also from
# build-essential). Idempotent and quick when all is present. `--peer` also installs the
# performance/reference peer (llama-cpp-python, built from source by pip),
# which only `make golden` and `make bench` need. `--bench` installs what the
# gateway benchmarks (bench/gateway/) run besides lmd: nginx (the plain
# reverse proxy they compare with), wrk (the load generator), curl, and the
# peer built with llama.cpp's own tools, among them `llama-server`, the
# upstream replicas. Neither option is needed to build or test.
set -euo pipefail
cd "$(dirname "$0")/.."

PEER=0
BENCH=0
for arg in "$@"; do
    case "$arg" in
        --peer) PEER=1 ;;
        --bench) BENCH=1 ;;
        *) echo "usage: scripts/install-deps.sh [--peer] [--bench]" >&2; exit 2 ;;
    esac
done

APT_PKGS=(build-essential cmake pkg-config git python3 python3-venv
          libjansson-dev libpcre2-dev libcmocka-dev libh2o-evloop-dev libssl-dev libnghttp2-dev zlib1g-dev libyaml-dev
          libsimde-dev clang clang-format openssl prometheus libc-ares-dev dnsmasq-base etcd-server
          ca-certificates)
[ "$BENCH" = 1 ] && APT_PKGS+=(nginx wrk curl util-linux)

missing=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: apt-get install ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "install-deps: creating .venv"
    "$PYTHON" -m venv .venv
fi

want_stamp() { # name, requirements file
    local stamp=".venv/.stamp-$1" sum
    sum=$(sha256sum "$2" | cut -d' ' -f1)
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ] && return 1
    echo "$sum" > "$stamp.new"
    return 0
}

if want_stamp test scripts/requirements-test.txt; then
    echo "install-deps: pip install -r scripts/requirements-test.txt"
    .venv/bin/pip install -q --disable-pip-version-check -r scripts/requirements-test.txt
    mv .venv/.stamp-test.new .venv/.stamp-test
fi

peer_install() { # extra pip arguments
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) .venv/bin/pip install -q --disable-pip-version-check "$@" \
        -r scripts/requirements-peer.txt
}

# --bench needs llama-server, which llama-cpp-python builds only when asked
# for llama.cpp's tools (shared/bench/PEERS.md). pip keeps the wheel it built
# without them, so that build bypasses pip's cache, and replaces a peer
# installed without the tools. A llama-server already there is kept unless
# this script installed it for an older scripts/requirements-peer.txt.
peer_stale() {
    [ -f .venv/.stamp-peer ] && [ "$(cat .venv/.stamp-peer)" != "$(sha256sum scripts/requirements-peer.txt | cut -d' ' -f1)" ]
}
SP=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ "$BENCH" = 1 ] && { ! [ -x "$SP/bin/llama-server" ] || peer_stale; }; then
    echo "install-deps: pip install llama-cpp-python with llama.cpp's tools (llama-server; takes minutes)"
    args=(--no-cache-dir --no-binary llama-cpp-python)
    .venv/bin/pip show -q llama-cpp-python >/dev/null 2>&1 && args+=(--force-reinstall --no-deps)
    CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_TOOLS_INSTALL=ON \
                -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
                -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" peer_install "${args[@]}"
    sha256sum scripts/requirements-peer.txt | cut -d' ' -f1 > .venv/.stamp-peer
    rm -f .venv/.stamp-peer.new
elif [ "$PEER" = 1 ] && want_stamp peer scripts/requirements-peer.txt; then
    echo "install-deps: pip install -r scripts/requirements-peer.txt (builds llama.cpp; takes minutes)"
    peer_install
    mv .venv/.stamp-peer.new .venv/.stamp-peer
fi
