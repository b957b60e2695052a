#!/usr/bin/env bash
# S1 at several fractions of C and S2, each against a fresh `lmd serve
# --sched fcfs` and a fresh `lmd serve --sched sla` on identical arrivals
# (same seed), then bench/serve --compare for each pair.
#
#   C=110 bench/sla_compare.sh                 # quick runs (half durations)
#   C=110 FRACS="0.8 1.3" S2=0 bench/sla_compare.sh
#   C=110 FRACS= QUICK= bench/sla_compare.sh      # S2 alone, full length
#   C=110 QUICK= bench/sla_compare.sh          # the full-length runs
#
# C is the server's maximum sustainable output rate (tokens/s), found with
# `bench/serve --workload S1 --closed 4,8,16`. Results: $OUT/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${C:?set C, the measured capacity in output tokens/s}"
LMD=${LMD:-build/lmd}
MODEL=${MODEL:-models/default.gguf}
OUT=${OUT:-bench/out}
PORT=${PORT:-18181}
FRACS=${FRACS-0.5 0.8 1.0 1.3}
S2=${S2:-1}
QUICK=${QUICK---quick}
SEED=${SEED:-1}
EXTRA=${EXTRA:-}
PY=.venv/bin/python
mkdir -p "$OUT"

serve() { # policy
    "$LMD" serve -m "$MODEL" --port "$PORT" --sched "$1" --tenants bench/tenants-s1.yaml $EXTRA \
        --log-level warn &
    PID=$!
    for _ in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "sla_compare: lmd serve did not become ready" >&2
    exit 1
}

stop() {
    kill -TERM "$PID" && wait "$PID" || true
}

run() { # name policy args...
    local name=$1 policy=$2
    shift 2
    serve "$policy"
    $PY bench/serve --url "http://127.0.0.1:$PORT" --seed "$SEED" --capacity "$C" $QUICK \
        --tenant gold=sk-gold --tenant bronze=sk-bronze --server-pid "$PID" --scrape-metrics \
        --out "$OUT/$name-$policy.json" "$@"
    stop
}

for f in $FRACS; do
    for p in fcfs sla; do run "s1-$f" "$p" --workload S1 --rate-frac "$f"; done
    $PY bench/serve --compare "$OUT/s1-$f-fcfs.json" "$OUT/s1-$f-sla.json"
done
if [ "$S2" = 1 ]; then
    for p in fcfs sla; do run s2 "$p" --workload S2; done
    $PY bench/serve --compare "$OUT/s2-fcfs.json" "$OUT/s2-sla.json"
fi
