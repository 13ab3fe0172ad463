#!/usr/bin/env bash
# Installs the Debian packages the real-music corpus builder needs (data_prep/synth_corpus.py):
#   fluidsynth           the synthesizer (libfluidsynth for pyfluidsynth, and the CLI fallback)
#   fluid-soundfont-gm   FluidR3_GM.sf2, a General MIDI soundfont (145 MB, MIT). It loads in 0.5 s and renders
#                        twice as fast as TimGM6mb; set MGEN_SOUNDFONT_PKG=timgm6mb-soundfont for a 6 MB one.
#   mma                  Musical MIDI Accompaniment: genre-labelled accompaniment grooves
# Only what is missing is installed (non-interactive, --no-install-recommends), so re-running is cheap.
set -euo pipefail

SOUNDFONT_PKG="${MGEN_SOUNDFONT_PKG:-fluid-soundfont-gm}"
PACKAGES=(fluidsynth "$SOUNDFONT_PKG" mma)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install_system_deps: all present (${PACKAGES[*]})"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    cat >&2 <<MSG
install_system_deps: missing Debian packages: ${missing[*]}
The real-music corpus builder (mgen prep synth-corpus) renders MIDI with FluidSynth and a General MIDI
soundfont, and makes accompaniment grooves with MMA. Installing them needs root. Run:
    sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}
or run this script as root.
MSG
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_system_deps: apt-get not found; install ${missing[*]} with your system's package manager" >&2
    exit 1
fi

echo "install_system_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install_system_deps: done"
