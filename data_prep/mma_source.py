"""Genre-labelled accompaniment clips from MMA (Musical MIDI Accompaniment) grooves.

MMA turns a chord chart plus a named groove (bluegrass, bossa nova, swing...) into multi-instrument MIDI with
drums in well under a second. We pick the groove variant, key, tempo and chord progression per clip, then read the
instruments that actually play back from the MIDI for the caption.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mido
import numpy as np

from data_prep.captions import DRUMS, GM_NAMES, groove_caption, key_text, mood_word, tonic_name
from data_prep.midi_util import channel_programs, events_to_midi, midi_to_events

MMA_LIB_DIRS = ("/usr/share/mma/lib/stdlib", "/usr/local/share/mma/lib/stdlib")

# MMA style file -> (genre words for the caption, quarter-note bpm range).
STYLES: dict[str, tuple[str, tuple[int, int]]] = {
    "bluegrass": ("bluegrass", (100, 140)), "bossanova": ("bossa nova", (110, 140)),
    "swing": ("swing", (110, 170)), "bigband": ("big band swing", (120, 180)), "blues": ("blues", (70, 110)),
    "slowblues": ("slow blues", (55, 75)), "waltz": ("waltz", (90, 150)), "jazzwaltz": ("jazz waltz", (110, 170)),
    "tango": ("tango", (110, 130)), "rhumba": ("rumba", (100, 130)), "salsa": ("salsa", (150, 190)),
    "samba": ("samba", (90, 110)), "ska": ("ska", (130, 170)), "polka": ("polka", (100, 130)),
    "march": ("march", (100, 120)), "countryswing": ("country swing", (110, 150)),
    "westernswing": ("western swing", (110, 150)), "50srock": ("1950s rock and roll", (140, 180)),
    "softrock": ("soft rock", (80, 110)), "folkrock": ("folk rock", (100, 130)), "ragtime": ("ragtime", (80, 110)),
    "dixie": ("dixieland jazz", (160, 200)), "zydeco": ("zydeco", (110, 140)), "popballad": ("pop ballad", (60, 80)),
    "calypso": ("calypso", (100, 130)), "merengue": ("merengue", (120, 160)), "mambo": ("mambo", (170, 200)),
    "chacha": ("cha-cha", (110, 130)), "beguine": ("beguine", (100, 130)), "bolero": ("bolero", (90, 110)),
    "jive": ("jive", (140, 180)), "boggiewoggie": ("boogie-woogie", (140, 180)), "spiritual": ("gospel", (70, 100)),
    "hymn": ("hymn", (70, 90)), "lullaby": ("lullaby", (60, 80)), "countrywaltz": ("country waltz", (90, 130)),
    "rb": ("rhythm and blues", (90, 120)), "jazzrock": ("jazz rock", (100, 130)), "twist": ("twist", (140, 170)),
    "foxtrot": ("foxtrot", (110, 140)), "charleston": ("charleston", (180, 220)),
}
_BLUES_STYLES = {"blues", "slowblues", "boggiewoggie", "jive", "rb", "50srock"}
_SKIP_VARIANTS = re.compile(r"intro|end|fill|break", re.IGNORECASE)

# Chord progressions as (semitones above the tonic, quality) per bar; quality '' major, 'm' minor, '7' dominant.
_MAJOR_PROGRESSIONS = (
    ((0, ""), (5, ""), (7, "7"), (0, "")),
    ((0, ""), (9, "m"), (2, "m"), (7, "7")),
    ((0, ""), (7, ""), (9, "m"), (5, "")),
    ((0, ""), (0, ""), (5, ""), (5, ""), (0, ""), (0, ""), (7, "7"), (7, "7")),
)
_MINOR_PROGRESSIONS = (
    ((0, "m"), (5, "m"), (7, "7"), (0, "m")),
    ((0, "m"), (8, ""), (3, ""), (10, "")),
    ((0, "m"), (10, ""), (8, ""), (7, "7")),
)
_BLUES = ((0, "7"),) * 4 + ((5, "7"),) * 2 + ((0, "7"),) * 2 + ((7, "7"), (5, "7"), (0, "7"), (7, "7"))
_FLAT_KEYS_MAJOR = {1, 3, 5, 8, 10}
_FLAT_KEYS_MINOR = {0, 2, 3, 5, 7, 10}


@dataclass(frozen=True)
class GrooveRef:
    """One MMA groove variant and the style it belongs to."""

    style: str
    groove: str
    genre: str
    beats: int
    bpm: tuple[int, int]


def mma_available() -> bool:
    return shutil.which("mma") is not None and _lib_dir() is not None


def _lib_dir() -> Path | None:
    return next((Path(d) for d in MMA_LIB_DIRS if Path(d).is_dir()), None)


def load_grooves() -> list[GrooveRef]:
    """Main groove variants of the curated styles that this MMA installation has (sorted, for seeding)."""
    lib = _lib_dir()
    if lib is None:
        return []
    grooves = []
    for style, (genre, bpm) in sorted(STYLES.items()):
        path = lib / f"{style}.mma"
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        time_match = re.search(r"^\s*Time\s+(\d+)", text, re.MULTILINE | re.IGNORECASE)
        beats = int(time_match.group(1)) if time_match else 4
        if beats not in (2, 3, 4):
            continue
        names = re.findall(r"^\s*DefGroove\s+(\S+)", text, re.MULTILINE | re.IGNORECASE)
        for name in sorted(set(names)):
            if not _SKIP_VARIANTS.search(name):
                grooves.append(GrooveRef(style, name, genre, beats, bpm))
    return grooves


def _chord_name(tonic: int, interval: int, quality: str, flats: bool) -> str:
    root = (tonic + interval) % 12
    sharp = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
    flat = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")
    return (flat if flats else sharp)[root] + quality


def groove_clip(ref: GrooveRef, rng: np.random.Generator, seconds: float):
    """Render a chord chart with MMA and cut ``seconds`` of it: returns (mido.MidiFile, metadata dict)."""
    mode = "minor" if rng.random() < 0.3 else "major"
    tonic = int(rng.integers(12))
    bpm = int(rng.integers(ref.bpm[0], ref.bpm[1] + 1))
    mood_variant = int(rng.integers(0, 3))
    if ref.style in _BLUES_STYLES and mode == "major":
        progression = _BLUES
    else:
        options = _MINOR_PROGRESSIONS if mode == "minor" else _MAJOR_PROGRESSIONS
        progression = options[int(rng.integers(len(options)))]
    flats = tonic in (_FLAT_KEYS_MINOR if mode == "minor" else _FLAT_KEYS_MAJOR)
    bars = int(np.ceil(seconds * bpm / 60.0 / ref.beats)) + 1
    chords = [_chord_name(tonic, *progression[i % len(progression)], flats) for i in range(bars)]

    song = "\n".join([f"Tempo {bpm}", f"Groove {ref.groove}", *chords, ""])
    with tempfile.TemporaryDirectory(prefix="mgen-mma-") as tmp:
        src, out = Path(tmp) / "song.mma", Path(tmp) / "song.mid"
        src.write_text(song)
        proc = subprocess.run(["mma", "-f", str(out), str(src)], capture_output=True, text=True, timeout=120, cwd=tmp)
        if proc.returncode != 0 or not out.is_file():
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise RuntimeError(f"mma failed for groove {ref.groove}: {detail[-1] if detail else proc.returncode}")
        source_mid = mido.MidiFile(str(out))
    events = midi_to_events(source_mid, seconds)
    programs = channel_programs(events)
    if not programs:
        raise RuntimeError(f"groove {ref.groove} produced no notes")
    instruments = [DRUMS if p < 0 else GM_NAMES[p] for p in programs.values()]
    key_str = key_text(tonic, mode)
    ts_str = f"{ref.beats}/4"
    mid = events_to_midi(events, bpm, (ref.beats, 4), f"{ref.groove} in {key_str}")
    meta = {
        "description": groove_caption(bpm=bpm, mode=mode, genre=ref.genre, instruments=instruments, key=key_str,
                                      time_signature=ts_str, mood_variant=mood_variant),
        "title": f"{ref.groove} in {tonic_name(tonic, mode)} {mode}",
        "genre": ref.genre,
        "key": key_str,
        "bpm": bpm,
        "time_signature": ts_str,
        "moods": [mood_word(mode, bpm, mood_variant)],
        "instruments": sorted(set(instruments)),
        "gm_programs": sorted(set(programs.values())),
        "chords": chords,
        "source": f"mma:{ref.style}/{ref.groove}",
    }
    return mid, meta
