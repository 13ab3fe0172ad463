#!/usr/bin/env bash
# The GPU checks of mgen in one command, for a machine with an NVIDIA GPU (CI has none, so these run by hand).
#
# Usage: bash scripts/gpu_check.sh [OUT_DIR]
#   OUT_DIR defaults to $OUT when set, else outputs/gpu_check/<UTC timestamp>.
#
# Steps (each one runs even when an earlier one failed; the exit code is non-zero if any failed):
#   1. versions: nvidia-smi, Python, torch + its CUDA, transformers, lightning, xformers  -> OUT_DIR/env.txt
#   2. the CUDA tests: tests/integration/test_gpu.py and the cuda tests of tests/lm/test_patterns.py (< 1 min) -> OUT_DIR/tests.log
#   3. the benchmarks on cuda, each against transformers (same weights, alternating calls, medians):
#      `mgen bench lm-train`, `generate`, `codec` --device cuda --vs transformers --repeats $REPEATS.
#      Each prints one JSON line, appended to OUT_DIR/bench.jsonl; their stderr goes to OUT_DIR/bench.log.
#      The benches have no precision flag: they time fp32 (PyTorch's defaults: TF32 off for matmuls, on for cuDNN
#      convolutions). bf16 is covered by the tests (bf16 autocast forward, bf16-mixed training through `fit`).
#
# mgen is imported from this checkout (PYTHONPATH), so no install is needed beyond its dependencies.
# Environment: PYTHON (default .venv/bin/python if present, else python3), REPEATS (default 10),
#   STEP_TIMEOUT seconds per step (default 300), SKIP_TESTS=1, SKIP_BENCH=1.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT_DIR=${1:-${OUT:-outputs/gpu_check/$(date -u +%Y%m%dT%H%M%SZ)}}
mkdir -p "$OUT_DIR"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
REPEATS=${REPEATS:-10}
STEP_TIMEOUT=${STEP_TIMEOUT:-300}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# everything is built from random-init weights: never ask a model hub
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
failed=()

step() {  # step NAME STDOUT_FILE STDERR_FILE COMMAND...: time-limited, output shown and appended, failure kept
    local name=$1 stdout=$2 stderr=$3; shift 3
    echo "=== $name: $*" | tee -a "$stderr" >&2
    local start=$SECONDS
    # process substitution, not a pipe: the function stays in this shell, so `failed` keeps what it adds
    timeout "$STEP_TIMEOUT" "$@" > >(tee -a "$stdout") 2> >(tee -a "$stderr" >&2)
    local rc=$?
    sleep 1  # let the tee processes flush before the next step writes
    echo "=== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$stderr" >&2
    [ $rc -eq 0 ] || failed+=("$name (exit $rc)")
}

{
    date -u +"date: %Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || echo "nvidia-smi: not available"
    "$PYTHON" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version())
print("cuda available:", torch.cuda.is_available(), "| devices:", torch.cuda.device_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device 0:", p.name, f"| {p.total_memory / 2**30:.1f} GiB | {p.multi_processor_count} SMs | sm_{p.major}{p.minor}")
    print("tf32 matmul:", torch.backends.cuda.matmul.allow_tf32, "| tf32 cudnn:", torch.backends.cudnn.allow_tf32)
for name in ("transformers", "lightning", "xformers"):
    try:
        print(name, __import__(name).__version__)
    except Exception as exc:
        print(name, "not importable:", type(exc).__name__)
EOF
} 2>&1 | tee "$OUT_DIR/env.txt"
# without a visible GPU every test below skips and the benches fail: say so rather than "passed"
"$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || failed+=("no CUDA device visible to torch")

if [ "${SKIP_TESTS:-0}" != 1 ]; then
    step tests "$OUT_DIR/tests.log" "$OUT_DIR/tests.log" \
        "$PYTHON" -m pytest -q --durations=10 tests/integration/test_gpu.py tests/lm/test_patterns.py -k "cuda or gpu"
fi

if [ "${SKIP_BENCH:-0}" != 1 ]; then
    for bench in lm-train generate codec; do
        step "bench $bench" "$OUT_DIR/bench.jsonl" "$OUT_DIR/bench.log" \
            "$PYTHON" -m mgen.cli bench "$bench" --device cuda --vs transformers --repeats "$REPEATS"
    done
fi

echo "results in $OUT_DIR"
if [ ${#failed[@]} -gt 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "all GPU checks passed"
