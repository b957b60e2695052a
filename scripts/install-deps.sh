#!/usr/bin/env bash
# Installs everything lmd needs to build and test, by package name:
# Debian packages with apt-get, Python packages into the project venv (.venv).
# `prometheus` brings promtool (the obs_promtool lint) and the server that
# tests/integration/test_prometheus.py scrapes lmd with; `dnsmasq-base` and
# `etcd-server` are the DNS server and etcd that the discovery tests run.
# Idempotent and quick when all is present. `--peer` also installs the
# performance/reference peer (llama-cpp-python, built from source by pip),
# which only `make golden` and `make bench` need.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(build-essential cmake pkg-config git python3 python3-venv
          libjansson-dev libpcre2-dev libcmocka-dev libh2o-evloop-dev libssl-dev libnghttp2-dev zlib1g-dev libyaml-dev
          libsimde-dev clang clang-format openssl prometheus libc-ares-dev dnsmasq-base etcd-server)

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

if [ "${1:-}" = "--peer" ] && want_stamp peer scripts/requirements-peer.txt; then
    echo "install-deps: pip install -r scripts/requirements-peer.txt (builds llama.cpp; takes minutes)"
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) .venv/bin/pip install -q --disable-pip-version-check \
        -r scripts/requirements-peer.txt
    mv .venv/.stamp-peer.new .venv/.stamp-peer
fi
