#!/usr/bin/env bash
# The GPU half of the test suite, for a machine with an NVIDIA GPU (CI has
# none: it builds the CUDA code and skips these). Runs, against a build with
# the CUDA engine:
#   1. cuda_test: every weight type's kernels against the CPU reference, the
#      engine against the native engine on the default model, batched =
#      alone (also on each synthetic model given), bad batches refused;
#      sampling on the device against sample/sample.c, and the engine that
#      samples against its logits (LMD_CUDA_TEST=PATTERN picks tests);
#   2. the golden comparison (tests/golden/compare.py) on the CUDA engine:
#      greedy tokens and logits against llama.cpp's, default and synthetic
#      models;
#   3. compute-sanitizer memcheck and racecheck over cuda_test, where the
#      tool is installed;
#   4. gemv_bench (the decode GEMVs alone on the 8B model's shapes), then
#      `lmd bench --device cuda` on each model given, and batched decode
#      again with LMD_CUDA_SAMPLE=0 (logits to the host, as before sampling
#      moved to the device) for comparison.
#
# usage: scripts/gpu-test.sh [--build DIR] [--model FILE] [--synth DIR] [--bench FILE]... [--quick]
#   --build  the build folder holding lmd and cuda_test (default build)
#   --model  the default model (default models/default.gguf; skipped if absent)
#   --synth  folder with synth-ARCH.gguf (tests/golden/make_synth.py); the
#            files missing there are written first (they need no download,
#            so a GPU machine without the default model still runs the
#            golden comparison of the CUDA engine on every architecture)
#   --bench  a model to benchmark (repeatable; default: the default model)
#   --quick  skip the sanitizers and the benchmarks
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=build MODEL=models/default.gguf SYNTH= QUICK=0
BENCH=()
while [ $# -gt 0 ]; do
    case "$1" in
    --build) BUILD=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --synth) SYNTH=$2; shift 2 ;;
    --bench) BENCH+=("$2"); shift 2 ;;
    --quick) QUICK=1; shift ;;
    *) echo "gpu-test: unknown argument $1" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
fail=0
ARCHS="gemma3 llama qwen2 qwen3" # the synthetic models' architectures
step() { echo; echo "== $*"; }

if [ -n "$SYNTH" ]; then
    mkdir -p "$SYNTH"
    for a in $ARCHS; do
        if [ ! -f "$SYNTH/synth-$a.gguf" ]; then
            step "writing $SYNTH/synth-$a.gguf"
            $PY tests/golden/make_synth.py "$SYNTH/synth-$a.gguf" --arch "$a" || fail=1
        fi
    done
fi

step "lmd --version"
"$BUILD/lmd" --version || fail=1

step "cuda_test"
LMD_MODEL=$MODEL "$BUILD/cuda_test" || fail=1
if [ -n "$SYNTH" ]; then
    # Batched decode steps equal to each sequence's alone, on every
    # architecture (the test folds its token ids into the model's vocabulary).
    for a in $ARCHS; do
        [ -f "$SYNTH/synth-$a.gguf" ] || continue
        step "cuda_test: batched = alone on synth-$a"
        LMD_CUDA_TEST='test_engine_batch*' LMD_MODEL="$SYNTH/synth-$a.gguf" "$BUILD/cuda_test" || fail=1
    done
fi

step "golden comparison on the CUDA engine"
goldens=()
[ -f "$MODEL" ] && goldens+=(default default.default)
if [ -n "$SYNTH" ]; then
    for a in $ARCHS; do
        [ -f "$SYNTH/synth-$a.gguf" ] && goldens+=("synth_$a" "synth_$a.default")
    done
fi
if [ ${#goldens[@]} -gt 0 ]; then
    $PY tests/golden/compare.py --lmd "$BUILD/lmd" --model "$MODEL" ${SYNTH:+--synth "$SYNTH"} --isa avx2 \
        --device cuda --golden "${goldens[@]}" || fail=1
fi

step "golden tests on the CUDA engine (their bounds)"
[ -f "$MODEL" ] && LMD_TEST_DEVICE=cuda LMD_BIN="$BUILD/lmd" LMD_MODEL="$MODEL" $PY -m pytest -q -p no:cacheprovider \
    tests/integration/test_engine_golden.py || fail=1

if [ "$QUICK" = 0 ]; then
    if command -v compute-sanitizer >/dev/null; then
        for tool in memcheck racecheck; do
            step "compute-sanitizer --tool $tool cuda_test"
            LMD_MODEL=$MODEL compute-sanitizer --tool "$tool" --error-exitcode 99 "$BUILD/cuda_test" >/tmp/gpu-test-$tool.log 2>&1
            rc=$?
            tail -n 15 /tmp/gpu-test-$tool.log
            [ $rc = 0 ] || { echo "compute-sanitizer $tool: exit $rc"; fail=1; }
        done
    else
        echo "compute-sanitizer not found: sanitizer runs skipped"
    fi
    if [ -x "$BUILD/gemv_bench" ]; then
        step "gemv_bench: the decode matrix-vector products alone (8B shapes)"
        "$BUILD/gemv_bench" q4_k,q6_k,f16 1 200 || fail=1
    fi
    [ ${#BENCH[@]} -eq 0 ] && [ -f "$MODEL" ] && BENCH=("$MODEL")
    for m in "${BENCH[@]}"; do
        step "lmd bench --device cuda $m"
        "$BUILD/lmd" bench -m "$m" --device cuda -p 512 -g 128 -b 1,16,64 -r 3 || fail=1
        step "lmd bench --device cuda $m, LMD_CUDA_SAMPLE=0 (logits path)"
        LMD_CUDA_SAMPLE=0 "$BUILD/lmd" bench -m "$m" --device cuda -p 512 -g 128 -b 1,16,64 -r 3 || fail=1
    done
fi
echo
[ $fail = 0 ] && echo "gpu-test: all passed" || echo "gpu-test: FAILED"
exit $fail
