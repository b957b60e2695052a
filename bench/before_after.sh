#!/usr/bin/env bash
# The same S1 and S2 arrivals (same seed) against two lmd binaries, one
# after the other on a fresh server each, then bench/serve --compare for
# each pair: "did this change make serving worse?".
#
#   BEFORE=../old/build/lmd AFTER=build/lmd C=72 bench/before_after.sh
#
# SMALL (default on) divides every length by 4, as in docs/PERFORMANCE.md,
# so each quick run has enough urgent requests for percentiles. Results:
# $OUT/{s1,s2}-{before,after}.json.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BEFORE:?set BEFORE, the lmd binary to compare against}"
AFTER=${AFTER:-build/lmd}
: "${C:?set C, the measured capacity in output tokens/s}"
MODEL=${MODEL:-models/default.gguf}
OUT=${OUT:-bench/out}
PORT=${PORT:-18182}
SEED=${SEED:-1}
FRAC=${FRAC:-1.0}
QUICK=${QUICK---quick}
SMALL=${SMALL-"--prompt-len urgent=8-64 --prompt-len best_effort=64-256 --out-len urgent=8-32 --out-len best_effort=32-64"}
PY=.venv/bin/python
mkdir -p "$OUT"

run() { # binary label workload args...
    local bin=$1 label=$2 wl=$3
    shift 3
    "$bin" serve -m "$MODEL" --port "$PORT" --tenants bench/tenants-s1.yaml --log-level warn &
    local pid=$!
    for _ in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break
        sleep 0.1
    done
    # shellcheck disable=SC2086
    $PY bench/serve --url "http://127.0.0.1:$PORT" --seed "$SEED" --capacity "$C" $QUICK $SMALL \
        --tenant gold=sk-gold --tenant bronze=sk-bronze --server-pid "$pid" --scrape-metrics \
        --workload "$wl" --out "$OUT/$wl-$label.json" "$@"
    kill -TERM "$pid" && wait "$pid" || true
}

for wl in S1 S2; do
    extra=()
    [ "$wl" = S1 ] && extra=(--rate-frac "$FRAC")
    run "$BEFORE" before "$wl" "${extra[@]}"
    run "$AFTER" after "$wl" "${extra[@]}"
    $PY bench/serve --compare "$OUT/$wl-before.json" "$OUT/$wl-after.json"
done
