#!/usr/bin/env bash
# S4 (shared prefixes) through lmd's gateway over N lmd replicas, one run per
# routing rule: ttft (predicted time to first token with prefix affinity),
# least (fewest in flight) and rr (round robin). Every run starts fresh
# replicas (empty prefix caches) and the same closed-loop request sequence
# (same seed); the replicas' KV caches are small enough that one replica
# cannot hold every shared prefix, which is when routing decides the hit
# rate. Prints, per rule: requests, TTFT P50/P90/P99, output tok/s, and the
# replicas' prefix-cache hit rate from their own counters.
#
#   bench/s4_routing.sh [--replicas 3] [--duration 60] [--rounds 1] [--clients 3]
#                       [--kv-blocks 240] [--rules ttft,least,rr] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

REPLICAS=3 DURATION=60 ROUNDS=1 CLIENTS=3 KV=240 RULES=ttft,least,rr OUT=bench/out/s4-routing
while [ $# -gt 0 ]; do
    case "$1" in
    --replicas) REPLICAS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --kv-blocks) KV=$2; shift 2 ;;
    --rules) RULES=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "usage: $0 [--replicas N] [--duration S] [--rounds N] [--clients N] [--kv-blocks N] [--rules a,b] [--out DIR]" >&2; exit 2 ;;
    esac
done
LMD=${LMD_BIN:-build/lmd}
MODEL=${LMD_MODEL:-models/default.gguf}
PY=.venv/bin/python
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 1 300); do curl -sf "$1/ready" >/dev/null && return 0; sleep 0.1; done; echo "not ready: $1" >&2; exit 1; }
counter() { curl -s "$1/metrics" | awk -v n="$2" '$1 ~ "^"n"({|$)" {s += $2} END {printf "%d", s}'; }

for round in $(seq 1 "$ROUNDS"); do
    for rule in ${RULES//,/ }; do
        PIDS=()
        urls=() bases=()
        for i in $(seq 1 "$REPLICAS"); do
            host=127.0.0.$((i + 1)) port=$(free_port)
            "$LMD" serve -m "$MODEL" --host "$host" --port "$port" -t 1 -c 1536 --kv-blocks "$KV" --max-running 4 \
                >"$OUT/replica-$rule-$round-$i.log" 2>&1 &
            PIDS+=($!)
            bases+=("http://$host:$port")
        done
        for b in "${bases[@]}"; do wait_ready "$b"; urls+=("$b"); done
        gport=$(free_port)
        "$LMD" serve --port "$gport" --upstream "s4=$(IFS=,; echo "${urls[*]}")" --route "$rule" \
            --upstream-inflight 2 --max-queue 256 >"$OUT/gateway-$rule-$round.log" 2>&1 &
        PIDS+=($!)
        wait_ready "http://127.0.0.1:$gport"
        q0=0 h0=0
        for b in "${bases[@]}"; do
            q0=$((q0 + $(counter "$b" lmd_prefix_cache_queries_total)))
            h0=$((h0 + $(counter "$b" lmd_prefix_cache_hits_total)))
        done
        $PY bench/serve --url "http://127.0.0.1:$gport" --workload S4 --closed "$CLIENTS" --duration "$DURATION" \
            --seed 1 --model s4 --out "$OUT/s4-$rule-$round.json" >"$OUT/s4-$rule-$round.txt" 2>&1
        q=0 h=0
        for b in "${bases[@]}"; do
            q=$((q + $(counter "$b" lmd_prefix_cache_queries_total)))
            h=$((h + $(counter "$b" lmd_prefix_cache_hits_total)))
        done
        $PY - "$OUT/s4-$rule-$round.json" "$rule" "$round" $((q - q0)) $((h - h0)) <<'EOF'
import json, sys
path, rule, rnd, q, h = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
d = json.load(open(path))
run = d["runs"][0]
recs = [r for r in run["records"] if r.get("outcome") == "ok" and r.get("ttft") is not None]
ttft = sorted(r["ttft"] for r in recs)
def pct(p):
    return ttft[min(len(ttft) - 1, int(p * len(ttft)))] if ttft else float("nan")
toks = sum(r.get("out_tokens") or 0 for r in recs)
wall = run.get("wall_s") or 0
print("%-6s round %s: %3d requests  TTFT P50 %6.2f s  P90 %6.2f s  P99 %6.2f s  output %5.1f tok/s  "
      "prefix hits %5.1f %% of %d prompt tokens" % (rule, rnd, len(ttft), pct(0.5), pct(0.9), pct(0.99),
                                                      toks / wall if wall else float("nan"), 100.0 * h / q if q else 0, q))
EOF
        cleanup
    done
done
