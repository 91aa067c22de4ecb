#!/usr/bin/env bash
# The GPU check: everything ownllm claims about CUDA, run in one go on a machine with an NVIDIA
# GPU and PyTorch already installed, no network needed, in about 5-6 minutes on an H100/H200.
#
#   scripts/gpu_check.sh --prepare      # on any machine (CPU is fine): the small run directory it trains on
#   scripts/gpu_check.sh [OUT]          # on the GPU machine: tests, then benchmarks; figures in OUT/figures.txt
#
# Steps (each with its own time limit; one failing does not stop the others, the exit status says
# whether all passed): the GPU tests (pytest -m gpu: precision, bf16 vs fp32 loss curves, resume,
# micro_batch=auto, torch.compile, FSDP2 with one process, CUDA-graph decoding), ownllm eval's tests
# (on CUDA), then
# bench/gpu_train.py (gpu-small: tokens/s, MFU against the bf16 matrix rate measured there,
# compile vs eager, peak memory, a profiled step), bench/decode.py (the engine with and without
# CUDA graphs against HF generate() at batch 1, 8, 64; time to first token), bench/serve.py
# (1, 4, 16, 64 streaming clients). The training data is RUN (default runs/gpu-check:
# tokenizer + token shards of the bundled corpus, ~4 MB), made by --prepare; nothing is downloaded.
# Python packages the GPU machine lacks can be put as wheels in WHEELS (default .whl/) and are
# installed into a temporary folder first. STEPS="tests eval train decode serve" (the default) chooses steps.
set -uo pipefail
cd "$(dirname "$0")/.."

RUN=${RUN:-runs/gpu-check}
PY=${PYTHON:-python3}

if [ "${1:-}" = "--prepare" ]; then
    set -e
    OWNLLM=${OWNLLM:-.venv/bin/ownllm}
    "$OWNLLM" data --run "$RUN"
    "$OWNLLM" tokenizer --run "$RUN" --vocab-size 8192
    "$OWNLLM" tokenize --run "$RUN"
    echo "prepared $RUN: take $RUN/tokenizer and $RUN/tokens to the GPU machine"
    exit 0
fi

OUT=${1:-bench/out/gpu-check}
mkdir -p "$OUT"
FIGURES="$OUT/figures.txt"
: > "$FIGURES"
export PYTHONUNBUFFERED=1 OWNLLM_PROGRESS=0
WHEELS=${WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    site=$(mktemp -d)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$WHEELS"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

STEPS=${STEPS:-tests eval train decode serve}
failed=()
# step NAME SECONDS COMMAND...: run it with a time limit, its output to OUT/NAME.log and the screen.
step() {
    local name=$1 limit=$2
    shift 2
    case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
    local start=$SECONDS
    echo "=== $name: $*" | tee -a "$FIGURES"
    timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local status=${PIPESTATUS[0]}
    echo "=== $name: exit $status after $((SECONDS - start)) s" | tee -a "$FIGURES"
    [ "$status" -eq 0 ] || failed+=("$name")
}

{
    echo "ownllm GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader 2>&1
    "$PY" -c 'import sys, torch; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}")'
    echo "git $(git rev-parse --short HEAD 2>/dev/null || echo '(no git)')"
} 2>&1 | tee -a "$FIGURES"
if [ ! -f "$RUN/tokens/meta.json" ]; then
    echo "error: no prepared run at $RUN (tokenizer + tokens); make it with: scripts/gpu_check.sh --prepare" | tee -a "$FIGURES"
    exit 2
fi

step tests 180 "$PY" -m pytest -q -p no:cacheprovider -m gpu -rA -o addopts="" tests/test_train_gpu.py tests/test_graphed_decode.py
grep -shE "bf16 vs fp32|passed|failed|error" "$OUT/tests.log" | tail -5 >> "$FIGURES"

# ownllm eval's tests: its command test pretrains and evaluates on the default device, here CUDA
step eval 120 "$PY" -m pytest -q -p no:cacheprovider -rA -o addopts="" tests/test_eval.py
grep -shE "passed|failed|error" "$OUT/eval.log" | tail -2 >> "$FIGURES"

step train 260 "$PY" bench/gpu_train.py --run "$RUN" --out "$OUT" --compiled-seconds "${COMPILED_SECONDS:-80}" \
    --eager-seconds "${EAGER_SECONDS:-25}" --previous-rotary-seconds "${PREVIOUS_ROTARY_SECONDS:-0}"
grep -shE "TFLOP|steps in|speed-up|over the previous|FAILED" "$OUT/train.log" >> "$FIGURES"

step decode 100 "$PY" bench/decode.py --device cuda --preset gpu-small --batches 1,8,64 --rounds 3 --new-tokens 128
[ -f "$OUT/decode.log" ] && sed -n '/^model:/,$p' "$OUT/decode.log" >> "$FIGURES"

step serve 75 "$PY" bench/serve.py --device cuda --preset gpu-small --clients 1,4,16,64 --rounds 2 --requests 2 \
    --max-tokens 64
[ -f "$OUT/serve.log" ] && sed -n '/^model:/,$p' "$OUT/serve.log" >> "$FIGURES"

echo "failed steps: ${failed[*]:-none}" | tee -a "$FIGURES"
[ ${#failed[@]} -eq 0 ]
