"""Render MIDI to audio with FluidSynth and a General MIDI soundfont.

pyfluidsynth is preferred: the soundfont is loaded once per process (0.3-0.5 s) and reused for every clip, and we
drive the synth event by event from the MIDI file, so what is rendered is exactly what the kept ``.mid`` says.
The ``fluidsynth`` command line is the fallback when the Python binding is missing (one process per clip).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

INSTALL_HINT = (
    "install them with `sudo bash data_prep/install_system_deps.sh` (Debian/Ubuntu: apt-get install fluidsynth "
    "fluid-soundfont-gm mma) and `pip install pyfluidsynth`, or point MGEN_SOUNDFONT at a General MIDI .sf2 file"
)

# Searched in order. FluidR3 loads fast and renders twice as fast as TimGM6mb; .sf3 files decompress on every
# load (4-8 s) so they come last.
SOUNDFONT_CANDIDATES = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/sounds/sf3/default-GM.sf3",
    "/usr/share/sounds/sf3/MuseScore_General.sf3",
)

# Synth gain: FluidSynth's default (0.2) renders at -25..-45 dBFS, wasting int16 resolution before we normalise.
SYNTH_GAIN = 0.5


class RenderUnavailable(RuntimeError):
    """FluidSynth or a soundfont is missing: a setup problem, not a bad score."""


def find_soundfont(explicit: str | Path | None = None) -> Path:
    """The soundfont to use: the argument, then $MGEN_SOUNDFONT, then the Debian package locations."""
    for candidate in (explicit, os.environ.get("MGEN_SOUNDFONT")):
        if candidate:
            path = Path(candidate)
            if not path.is_file():
                raise RenderUnavailable(f"soundfont {path} does not exist")
            return path
    for candidate in SOUNDFONT_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    raise RenderUnavailable(f"no General MIDI soundfont found (looked in {', '.join(SOUNDFONT_CANDIDATES)}); "
                            f"{INSTALL_HINT}")


class Renderer:
    """Turns a ``mido.MidiFile`` into float32 audio ``[frames, 2]``; holds one loaded soundfont."""

    def __init__(self, sample_rate: int, soundfont: str | Path | None = None, backend: str = "auto") -> None:
        self.sample_rate = int(sample_rate)
        self.soundfont = find_soundfont(soundfont)
        self.backend = self._pick_backend(backend)
        self._synth = None
        if self.backend == "pyfluidsynth":
            import fluidsynth

            self._synth = fluidsynth.Synth(gain=SYNTH_GAIN, samplerate=float(self.sample_rate))
            if self._synth.sfload(str(self.soundfont)) < 0:
                raise RenderUnavailable(f"FluidSynth could not load soundfont {self.soundfont}")

    @staticmethod
    def _pick_backend(backend: str) -> str:
        if backend in ("auto", "pyfluidsynth"):
            try:
                import fluidsynth  # noqa: F401  (imports libfluidsynth through ctypes)

                return "pyfluidsynth"
            except (ImportError, OSError) as err:
                if backend == "pyfluidsynth":
                    raise RenderUnavailable(f"pyfluidsynth is not usable ({err}); {INSTALL_HINT}") from err
        if shutil.which("fluidsynth"):
            return "cli"
        raise RenderUnavailable("FluidSynth is not installed (neither pyfluidsynth nor the fluidsynth command); "
                                f"{INSTALL_HINT}")

    def render(self, midi, seconds: float) -> np.ndarray:
        """Exactly ``seconds`` of stereo audio for ``midi`` (a mido.MidiFile), silence-padded if it ends early."""
        frames = int(round(seconds * self.sample_rate))
        audio = self._render_events(midi, frames) if self.backend == "pyfluidsynth" else self._render_cli(midi, frames)
        if audio.shape[0] < frames:
            audio = np.concatenate([audio, np.zeros((frames - audio.shape[0], 2), np.float32)])
        return audio[:frames]

    def _render_events(self, midi, frames: int) -> np.ndarray:
        synth = self._synth
        synth.system_reset()
        synth.get_samples(self.sample_rate)  # flush the previous clip's reverb tail, then discard it
        chunks: list[np.ndarray] = []
        done = 0
        now = 0.0
        for msg in midi:  # mido yields messages with delta times in seconds (tempo map applied)
            now += msg.time
            target = min(int(round(now * self.sample_rate)), frames)
            if target > done:
                chunks.append(synth.get_samples(target - done))
                done = target
            if done >= frames:
                break
            self._send(synth, msg)
        if done < frames:
            chunks.append(synth.get_samples(frames - done))
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return (pcm.reshape(-1, 2).astype(np.float32) / 32768.0)[:frames]

    @staticmethod
    def _send(synth, msg) -> None:
        kind = msg.type
        if kind == "note_on":
            if msg.velocity > 0:
                synth.noteon(msg.channel, msg.note, msg.velocity)
            else:
                synth.noteoff(msg.channel, msg.note)
        elif kind == "note_off":
            synth.noteoff(msg.channel, msg.note)
        elif kind == "program_change":
            synth.program_change(msg.channel, msg.program)
        elif kind == "control_change":
            synth.cc(msg.channel, msg.control, msg.value)
        elif kind == "pitchwheel":
            synth.pitch_bend(msg.channel, msg.pitch)

    def _render_cli(self, midi, frames: int) -> np.ndarray:
        import soundfile as sf

        with tempfile.TemporaryDirectory(prefix="mgen-render-") as tmp:
            mid_path, wav_path = Path(tmp) / "in.mid", Path(tmp) / "out.wav"
            midi.save(str(mid_path))
            cmd = ["fluidsynth", "-ni", "-q", "-g", str(SYNTH_GAIN), "-r", str(self.sample_rate),
                   "-F", str(wav_path), str(self.soundfont), str(mid_path)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0 or not wav_path.exists():
                raise RuntimeError(f"fluidsynth failed ({proc.returncode}): {proc.stderr.strip()[:300]}")
            audio, _ = sf.read(str(wav_path), dtype="float32", always_2d=True)
        if audio.shape[1] == 1:
            audio = np.repeat(audio, 2, axis=1)
        return audio[:frames, :2]
