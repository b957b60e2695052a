#!/usr/bin/env bash
# Runs every libFuzzer driver of tests/fuzz (built in BUILD_FUZZ by `make
# fuzz-build`) over a copy of its seed corpus, for RUNS executions each, or
# SECONDS each when RUNS is 0. A crash, a sanitizer report or a leak stops
# with the driver's exit status; the reproducer is left in BUILD_FUZZ/NAME-artifacts/.
# usage: scripts/fuzz.sh BUILD_FUZZ RUNS [SECONDS] [NAME ...]
set -euo pipefail
cd "$(dirname "$0")/.."
build=$1
runs=$2
seconds=${3:-60}
shift $(( $# >= 3 ? 3 : $# ))
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
    for f in tests/fuzz/*_fuzz.c; do names+=("$(basename "$f" _fuzz.c)"); done
fi
for n in "${names[@]}"; do
    bin="$build/${n}_fuzz"
    [ -x "$bin" ] || { echo "fuzz: $bin is not built (make fuzz-build)" >&2; exit 2; }
    corpus="$build/corpus-$n"
    mkdir -p "$corpus" "$build/$n-artifacts"
    cp -r tests/fuzz/corpus/"$n"/. "$corpus"/ 2>/dev/null || true
    case $n in gguf) max_len=65536 ;; *) max_len=8192 ;; esac
    if [ "$runs" -gt 0 ]; then limit=(-runs="$runs"); else limit=(-max_total_time="$seconds"); fi
    echo "fuzz: $n (${limit[*]})"
    # -print_final_stats gives the executions and the coverage reached.
    log="$build/$n.log"
    status=0
    "$bin" "${limit[@]}" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$build/$n-artifacts/" "$corpus" >"$log" 2>&1 || status=$?
    grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|Done|#[0-9]+ *DONE)" "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log" >&2
        echo "fuzz: $n failed (exit $status); reproducers in $build/$n-artifacts/" >&2
        exit "$status"
    fi
done
