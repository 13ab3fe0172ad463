#!/usr/bin/env bash
# Build the separate LAION-CLAP environment (.venv-clap by default) and stamp it when complete.
#
# Why a second venv: laion-clap 1.1.7 pins numpy<2 and imports torchvision (and PIL without declaring it), and no
# torchvision release imports with the CPU torch 2.13 wheel of the main .venv. torch 2.14.1 + torchvision 0.29.1
# is the pair that works here (CUDA builds that also run on CPU; the venv is ~6 GB). mgen goes in editable with
# --no-deps, plus only what mgen.conditioning, mgen.metrics and their tests need (laion-clap already brings transformers,
# soundfile, soxr via librosa). Re-running is cheap: the stamp makes it a no-op; delete the stamp to reinstall.
#
# Usage: bash scripts/make_clap_venv.sh [--force]  (PYTHON=python3.11 CLAP_VENV=path to override)
#        HF_HUB_OFFLINE=1 .venv-clap/bin/python -m pytest tests/conditioning/test_conditioning_clap.py -q
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${CLAP_VENV:-.venv-clap}
STAMP="$VENV/.mgen-clap-installed"
# laion_clap asks the hub for three tokenizers when imported: offline that fails fast, online-less it retries.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if [ "${1:-}" = "--force" ]; then
    rm -f "$STAMP"  # reinstall into the existing venv (pip keeps what is already satisfied)
fi
if [ -f "$STAMP" ]; then
    echo "$VENV is ready ($STAMP exists; delete it to reinstall)"
    exit 0
fi

# pip prints one warning per package for index folders this machine does not have: keep the output readable.
quiet_pip() {
    "$VENV/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

start=$(date +%s)
test -d "$VENV" || "$PYTHON" -m venv "$VENV"
quiet_pip install -q --upgrade pip
quiet_pip install -q "torch==2.14.1" "torchvision==0.29.1" "laion-clap==1.1.7" pillow "numpy<2" \
    "torchmetrics>=1.4" sentencepiece pytest pytest-timeout hypothesis
quiet_pip install -q --no-deps -e .
"$VENV/bin/python" - <<'PY'
import laion_clap, numpy, torch, torchvision, transformers
print(f"laion_clap imports: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"numpy {numpy.__version__}, transformers {transformers.__version__}")
PY
touch "$STAMP"
echo "built $VENV in $(( $(date +%s) - start )) s ($(du -sh "$VENV" | cut -f1))"
