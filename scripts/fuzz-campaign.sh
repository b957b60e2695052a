#!/usr/bin/env bash
# The long fuzzing campaign: every libFuzzer driver at once, WORKERS
# processes each (libFuzzer -jobs=WORKERS -workers=WORKERS, sharing one
# corpus), each for SECONDS; then a table of executions (summed over the
# workers) and findings per driver. Exits 1 on any finding, 2 on a driver
# that could not run.
#
# It needs no build tools, only bash, coreutils, grep and awk, so that the
# campaign can run on a machine that has none: `--pack` gathers what it
# needs into one folder to copy there.
#
# usage: scripts/fuzz-campaign.sh --pack BUILD_FUZZ DEST
#            copies BUILD_FUZZ/*_fuzz, the shared libraries they load (all
#            but glibc's) into DEST/lib, the seed corpora into DEST/corpus/NAME,
#            the tokenizer driver's vocabularies into DEST/data/tokenizer, and
#            this script into DEST.
#        scripts/fuzz-campaign.sh [-w WORKERS] [-t SECONDS] [-l NAME=LEN,...] [-o OUT] DIR [NAME ...]
#            runs DIR/NAME_fuzz (every driver in DIR when no NAME is given)
#            from DIR/corpus/NAME; logs, grown corpora and reproducers go to
#            OUT/NAME (default DIR/run-DATE). WORKERS is a count for every
#            driver, optionally followed by per-driver counts:
#            -w 1,jinja=4,tokenizer=3. -l caps a driver's input length
#            (-max_len; default 65536 bytes for gguf, 8192 for the others).
#            Defaults: 1 worker, 440 s.
set -euo pipefail

die() {
    echo "fuzz-campaign: $*" >&2
    exit 2
}

if [ "${1:-}" = --pack ]; then
    [ $# -eq 3 ] || die "usage: $0 --pack BUILD_FUZZ DEST"
    build=$2
    dest=$3
    src=$(cd "$(dirname "$0")/.." && pwd)
    mkdir -p "$dest/lib" "$dest/corpus" "$dest/data/tokenizer"
    n=0
    for bin in "$build"/*_fuzz; do
        [ -x "$bin" ] || continue
        name=$(basename "$bin" _fuzz)
        cp "$bin" "$dest/"
        mkdir -p "$dest/corpus/$name"
        cp -r "$src/tests/fuzz/corpus/$name/." "$dest/corpus/$name/" 2>/dev/null || true
        # glibc (libc, libm, the loader...) must be the target's own; every
        # other library resolved here travels with the binaries.
        ldd "$bin" | awk '$3 ~ /^\// { print $3 }' |
            { grep -Ev '/(libc|libm|libdl|libpthread|librt|libresolv|ld-linux[^/]*)\.so' || true; } |
            while read -r lib; do cp -L "$lib" "$dest/lib/"; done
        n=$((n + 1))
    done
    [ "$n" -gt 0 ] || die "no *_fuzz binaries in $build (make fuzz-build)"
    cp "$src"/tests/golden/tokenizer/*.gguf "$dest/data/tokenizer/"
    cp "$0" "$dest/fuzz-campaign.sh"
    echo "fuzz-campaign: packed $n drivers into $dest; there: ./fuzz-campaign.sh -w WORKERS -t SECONDS ."
    exit 0
fi

workers=1
seconds=440
lens=
out=
usage="usage: $0 [-w WORKERS] [-t SECONDS] [-l NAME=LEN,...] [-o OUT] DIR [NAME ...]"
while getopts "w:t:l:o:" opt; do
    case $opt in
    w) workers=$OPTARG ;;
    t) seconds=$OPTARG ;;
    l) lens=$OPTARG ;;
    o) out=$OPTARG ;;
    *) die "$usage" ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || die "$usage"
[[ $workers =~ ^[1-9][0-9]*(,[a-z_0-9]+=[1-9][0-9]*)*$ ]] || die "WORKERS is N or N,NAME=N,...: $workers"
[[ $seconds =~ ^[1-9][0-9]*$ ]] || die "SECONDS is a positive integer: $seconds"
[[ -z $lens || $lens =~ ^[a-z_0-9]+=[1-9][0-9]*(,[a-z_0-9]+=[1-9][0-9]*)*$ ]] || die "-l is NAME=LEN,...: $lens"

# Workers of driver $1: its own count from -w, else the common one.
workers_of() {
    local w=${workers%%,*} spec
    IFS=, read -ra spec <<<"${workers#*,}"
    [ "$workers" = "${workers%%,*}" ] && spec=()
    for s in "${spec[@]}"; do [ "${s%%=*}" = "$1" ] && w=${s#*=}; done
    echo "$w"
}

# Input length cap of driver $1: its -l entry, else the default.
max_len_of() {
    local len spec
    case $1 in gguf) len=65536 ;; *) len=8192 ;; esac
    IFS=, read -ra spec <<<"$lens"
    for s in "${spec[@]}"; do [ "${s%%=*}" = "$1" ] && len=${s#*=}; done
    echo "$len"
}
dir=$(cd "$1" && pwd)
shift
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
    for bin in "$dir"/*_fuzz; do [ -x "$bin" ] && names+=("$(basename "$bin" _fuzz)"); done
fi
[ ${#names[@]} -gt 0 ] || die "no *_fuzz binaries in $dir"
out=${out:-$dir/run-$(date -u +%Y%m%dT%H%M%SZ)}
# A previous run's logs and reproducers would be counted again.
[ -z "$(ls -A "$out" 2>/dev/null)" ] || die "$out is not empty"
mkdir -p "$out"
out=$(cd "$out" && pwd)

# The libraries packed beside the binaries come first; the tokenizer driver
# finds its vocabularies through LMD_FUZZ_DATA.
export LD_LIBRARY_PATH="$dir/lib:$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -d "$dir/data" ] && export LMD_FUZZ_DATA="$dir/data"

# Ctrl-C or a TERM stops every driver and its workers (one process group).
trap 'trap - INT TERM; kill 0' INT TERM
pids=()
for n in "${names[@]}"; do
    bin="$dir/${n}_fuzz"
    [ -x "$bin" ] || die "$bin: no such driver"
    w="$out/$n"
    mkdir -p "$w/corpus" "$w/artifacts"
    [ -d "$dir/corpus/$n" ] && cp -r "$dir/corpus/$n/." "$w/corpus/"
    max_len=$(max_len_of "$n")
    nw=$(workers_of "$n")
    # Each worker writes its own log, fuzz-JOB.log, in the current folder.
    (cd "$w" && exec "$bin" -jobs="$nw" -workers="$nw" -max_total_time="$seconds" \
        -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$w/artifacts/" "$w/corpus" >"$w/main.log" 2>&1) &
    pids+=($!)
done
echo "fuzz-campaign: ${#names[@]} drivers, workers $workers, ${seconds}s; logs in $out"
for p in "${pids[@]}"; do wait "$p" || true; done

# Executions of one worker: its final stats, or when it was stopped before
# printing them (a finding, a kill), the count on its last status line
# ("#N  NEW|REDUCE|pulse|DONE ... exec/s: R").
worker_execs() {
    awk '/^stat::number_of_executed_units:/ { final = $2 }
         /^#[0-9]+[ \t]/ { last = substr($1, 2) }
         END { print (final != "" ? final : (last != "" ? last : 0)) }' "$1"
}

status=0
printf '%-14s %8s %8s %16s %10s %9s\n' driver workers max_len executions exec/s findings
for n in "${names[@]}"; do
    w="$out/$n"
    total=0
    for log in "$w"/fuzz-*.log; do
        [ -f "$log" ] || continue
        total=$((total + $(worker_execs "$log")))
    done
    found=$(find "$w/artifacts" -maxdepth 1 -type f \
        \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
    printf '%-14s %8d %8d %16d %10d %9d\n' "$n" "$(workers_of "$n")" "$(max_len_of "$n")" "$total" \
        $((total / seconds)) "$found"
    if [ "$found" -gt 0 ]; then
        status=1
        find "$w/artifacts" -maxdepth 1 -type f \
            \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) -printf '    %p\n'
    elif [ "$total" -eq 0 ]; then
        echo "    no execution: see $w/main.log and $w/fuzz-*.log" >&2
        [ "$status" -ne 0 ] || status=2
    fi
done
exit "$status"
