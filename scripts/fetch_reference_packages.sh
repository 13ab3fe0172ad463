#!/usr/bin/env bash
# Reference implementations that mgen's metric tests compare against (same random weights, same inputs).
# They are downloaded once (pip download --no-deps), unpacked, and loaded by file path in tests with small stubs;
# their code is never vendored into mgen nor installed into .venv (several pin numpy<2, transformers<5, timm...).
#
#   MGEN_REFERENCE_DIR   where to put them (default: .cache/reference in the repository)
#   PYTHON               interpreter whose pip downloads (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${MGEN_REFERENCE_DIR:-.cache/reference}"
PYTHON="${PYTHON:-.venv/bin/python}"
PACKAGES=(
    torchvggish==0.2        # VGGish network + Google's mel frontend (mel_features.py), torch port
    hear21passt==0.0.26     # PaSST network + its mel frontend
    torchaudio==2.11.1      # only compliance/kaldi.py (PaSST's mel banks); cannot be imported with our torch
    kadtk==1.1.0            # kernel audio distance (kad.py)
    fadtk==1.1.0            # FAD-inf / per-song FAD reference and real float64 reference statistics (fma_pop.npz)
)
STAMP="$DEST/.complete-$(printf '%s\n' "${PACKAGES[@]}" | sha256sum | cut -c1-12)"
if [ -f "$STAMP" ]; then
    exit 0
fi
mkdir -p "$DEST/dist"
"$PYTHON" -m pip download --no-deps -q -d "$DEST/dist" "${PACKAGES[@]}" 2>&1 | grep -v "is ignored: it is neither" || true
for spec in "${PACKAGES[@]}"; do
    name="${spec%%==*}"
    rm -rf "$DEST/$name.tmp" && mkdir -p "$DEST/$name.tmp"
    archive=$(ls "$DEST/dist/" | grep -i "^${name}-" | head -n1)
    [ -n "$archive" ] || { echo "fetch_reference_packages: $spec was not downloaded" >&2; exit 1; }
    case "$archive" in
        *.whl) "$PYTHON" -m zipfile -e "$DEST/dist/$archive" "$DEST/$name.tmp" ;;
        *.tar.gz) tar -xzf "$DEST/dist/$archive" -C "$DEST/$name.tmp" --strip-components=1 ;;
    esac
    rm -rf "$DEST/$name" && mv "$DEST/$name.tmp" "$DEST/$name"
done
touch "$STAMP"
echo "reference packages in $DEST: ${PACKAGES[*]}"
