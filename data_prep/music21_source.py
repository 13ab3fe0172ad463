"""Real scores from the music21 corpus (shipped inside the music21 wheel) turned into arranged MIDI clips.

The catalog comes from music21's metadata bundle, so works are listed without parsing them. For each clip we
parse one work, pick tempo, transposition and instruments with the clip's own random generator, and keep exact
metadata for the caption. Long classical movements are left out: they take 5-19 s to parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from data_prep.captions import GM_NAMES, join_names, key_text, mood_word, score_caption
from data_prep.midi_util import Note, events_to_midi, notes_to_events


@dataclass(frozen=True)
class Collection:
    """A corpus collection with the words and tempo range we use for it (quarter-note bpm)."""

    name: str
    style: str
    bpm: tuple[int, int]
    composer: str | None = None


COLLECTIONS: tuple[Collection, ...] = (
    Collection("essenFolksong", "European folk song", (70, 140)),
    Collection("oneills1850", "Irish traditional tune", (100, 160)),
    Collection("ryansMammoth", "traditional fiddle tune", (100, 160)),
    Collection("airdsAirs", "Scottish air", (60, 110)),
    Collection("miscFolk", "folk tune", (80, 140)),
    Collection("bach", "Baroque chorale", (60, 96), "J. S. Bach"),
    Collection("palestrina", "Renaissance sacred choral piece", (90, 140), "Palestrina"),
    Collection("monteverdi", "Renaissance madrigal", (80, 130), "Monteverdi"),
    Collection("trecento", "medieval Italian piece", (90, 140)),
    Collection("josquin", "Renaissance piece", (100, 150), "Josquin des Prez"),
)

# Essen locale words -> the people the song belongs to.
_ESSEN_LOCALES = (
    ("China", "Chinese"), ("Asien", "Chinese"), ("Hunan", "Chinese"), ("Yunnan", "Chinese"),
    ("Deutschland", "German"), ("Luxemburg", "Luxembourgish"), ("Lothringen", "Lorraine"), ("Irland", "Irish"),
    ("Suedosteuropa", "Southeast European"), ("Osteuropa", "Eastern European"), ("Nordeuropa", "Nordic"),
    ("Amerika", "American"), ("Schweiz", "Swiss"), ("Oesterreich", "Austrian"), ("Niederlande", "Dutch"),
)
_DANCES = ("hornpipe", "strathspey", "schottische", "quickstep", "mazurka", "polka", "waltz", "reel", "jig",
           "clog", "march", "fling")

# Solo instruments for one-voice tunes: (GM program, lowest, highest MIDI note it plays well).
SOLO_INSTRUMENTS: tuple[tuple[int, int, int], ...] = (
    (21, 53, 89), (40, 55, 100), (73, 60, 96), (110, 55, 100), (78, 72, 96), (74, 60, 96), (71, 50, 91),
    (68, 58, 91), (24, 40, 83), (0, 36, 96), (22, 60, 96), (105, 48, 84), (46, 36, 96), (56, 55, 82),
    (65, 49, 81), (12, 45, 96), (11, 53, 89), (75, 60, 96), (6, 36, 89), (79, 60, 84), (64, 56, 88),
    (25, 40, 83), (19, 36, 96),
)

# Ensembles for polyphonic scores, instruments listed from the top voice down.
ENSEMBLES: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("string quartet", (40, 40, 41, 42)),
    ("brass quartet", (56, 56, 60, 57)),
    ("woodwind quartet", (73, 68, 71, 70)),
    ("saxophone quartet", (64, 65, 66, 67)),
    ("choir", (52,)),
    ("organ", (19,)),
    ("piano", (0,)),
    ("recorder consort", (74,)),
    ("harpsichord", (6,)),
    ("string orchestra", (48,)),
)


@dataclass(frozen=True)
class WorkRef:
    """One work in the music21 corpus, as listed by its metadata bundle."""

    collection: str
    source_path: str
    number: int | None
    title: str
    locale: str = ""


def load_catalog(collections: tuple[Collection, ...] = COLLECTIONS) -> dict[str, list[WorkRef]]:
    """Works per collection, sorted by path and number so that a seed always picks the same works."""
    from music21 import corpus

    wanted = {c.name for c in collections}
    out: dict[str, list[WorkRef]] = {name: [] for name in wanted}
    for entry in corpus.corpora.CoreCorpus().metadataBundle._metadataEntries.values():
        path = str(entry.sourcePath)
        top = path.split("/")[0]
        # .rntxt files are harmonic analyses (Roman numerals), not scores to play.
        if top not in wanted or "/test" in path or path.endswith(".rntxt") or entry.metadata is None:
            continue
        md = entry.metadata
        number = int(entry.number) if entry.number and str(entry.number).isdigit() else None
        title = str(md.title or "").strip() or _title_from_path(path)
        out[top].append(WorkRef(top, path, number, title, str(md.localeOfComposition or "")))
    for works in out.values():
        works.sort(key=lambda w: (w.source_path, w.number or 0))
    return {k: v for k, v in out.items() if v}


def _title_from_path(path: str) -> str:
    stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    match = re.fullmatch(r"bwv(\d+)\.?(\d*)", stem)
    if match:
        return f"Chorale BWV {match.group(1)}" + (f".{match.group(2)}" if match.group(2) else "")
    return stem.replace("_", " ")


def style_for(work: WorkRef, collection: Collection) -> str:
    """Style words from the collection, refined by Essen locale or the dance named in a title."""
    if work.collection == "essenFolksong":
        people = next((adj for word, adj in _ESSEN_LOCALES if word in work.locale), "European")
        kind = "folk ballad" if "/ballad" in work.source_path else "folk song"
        return f"{people} {kind}"
    if work.collection == "ryansMammoth":
        lowered = work.title.lower()
        dance = next((d for d in _DANCES if re.search(rf"\b{d}", lowered)), None)
        return f"traditional fiddle {dance}" if dance else collection.style
    return collection.style


def _parse(work: WorkRef):
    from music21 import corpus

    score = corpus.parse(work.source_path, number=work.number) if work.number else corpus.parse(work.source_path)
    try:
        expanded = score.expandRepeats()
        if expanded.highestTime > 0:
            return expanded
    except Exception:  # broken repeat marks: play the notes as written
        pass
    return score


def _voices(score) -> list[list[tuple[float, float, list[int]]]]:
    """Per part: (offset, duration, midi pitches) in quarter lengths; chord symbols and grace notes dropped."""
    from music21 import harmony

    parts = list(score.parts) or [score]
    voices = []
    for part in parts:
        notes = []
        for el in part.stripTies().flatten().notes:
            if isinstance(el, harmony.ChordSymbol) or el.quarterLength <= 0:
                continue
            pitches = [int(p.midi) for p in el.pitches]
            if pitches:
                notes.append((float(el.offset), float(el.quarterLength), pitches))
        if notes:
            voices.append(notes)
    return voices


def _bar_starts(score, voices: list, bar_ql: float, latest: float) -> list[float]:
    """Bar lines up to ``latest`` where music starts within a beat (no clip opens on a long rest)."""
    measures = list(score.parts[0].getElementsByClass("Measure")) if score.parts else []
    starts = sorted({float(m.offset) for m in measures}) or [i * bar_ql for i in range(int(latest // bar_ql) + 1)]
    starts = [s for s in starts if s <= latest] or [0.0]
    onsets = sorted({off for v in voices for off, _, _ in v})
    busy = [s for s in starts if any(s <= o < s + 1.0 for o in onsets)]
    return busy or starts


def _fit_octave(pitches: list[int], low: int, high: int) -> int:
    """Octave shift that puts most notes inside an instrument's range (smallest shift on ties)."""
    best = min(range(-36, 37, 12), key=lambda s: (sum(not low <= p + s <= high for p in pitches), abs(s)))
    return best


def score_clip(work: WorkRef, collection: Collection, rng: np.random.Generator, seconds: float):
    """Parse a work and arrange ``seconds`` of it: returns (mido.MidiFile, metadata dict)."""
    score = _parse(work)
    voices = _voices(score)
    if not voices:
        raise ValueError("score has no notes")
    ts_obj = score.recurse().getElementsByClass("TimeSignature").first()
    ts = (int(ts_obj.numerator), int(ts_obj.denominator)) if ts_obj is not None else (4, 4)
    bar_ql = ts[0] * 4.0 / ts[1]
    key = score.analyze("key")
    mode = "minor" if key.mode == "minor" else "major"

    bpm = int(rng.integers(collection.bpm[0], collection.bpm[1] + 1))
    shift = int(rng.integers(-5, 7)) if rng.random() < 0.5 else 0
    tonic = (key.tonic.pitchClass + shift) % 12
    mood_variant = int(rng.integers(0, 3))

    # Voices from the top down, so the ensemble's first instrument plays the highest line.
    voices.sort(key=lambda v: -float(np.mean([p for _, _, ps in v for p in ps])))
    if len(voices) == 1:
        program, low, high = SOLO_INSTRUMENTS[int(rng.integers(len(SOLO_INSTRUMENTS)))]
        programs = [program]
        pitches = [p + shift for _, _, ps in voices[0] for p in ps]
        octave = _fit_octave(pitches, low, high)
        shifts = [shift + octave]
        ensemble = f"solo {GM_NAMES[program]}"
    else:
        name, instruments = ENSEMBLES[int(rng.integers(len(ENSEMBLES)))]
        n = len(voices)
        idx = [round(i * (len(instruments) - 1) / max(n - 1, 1)) for i in range(n)]
        programs = [instruments[i] for i in idx]
        shifts = [shift] * n
        complete = len(instruments) == 1 or n == len(instruments)
        ensemble = name if complete else join_names([GM_NAMES[p] for p in programs])

    # Where to start: a bar line that leaves a full clip, else the beginning (short tunes are looped).
    spq = 60.0 / bpm
    clip_ql = seconds / spq
    piece_ql = max(off + dur for v in voices for off, dur, _ in v)
    start_ql = 0.0
    if piece_ql > clip_ql + bar_ql:
        starts = _bar_starts(score, voices, bar_ql, piece_ql - clip_ql)
        start_ql = starts[int(rng.integers(len(starts)))]
    loop_ql = float(np.ceil(piece_ql / bar_ql) * bar_ql)

    notes: list[Note] = []
    channels = [c for c in range(16) if c != 9][: len(voices)]
    for voice, channel, semis in zip(voices, channels, shifts):
        repeat = 0
        while repeat * loop_ql < start_ql + clip_ql:
            base = repeat * loop_ql - start_ql
            for off, dur, pitches in voice:
                t0 = (base + off) * spq
                if t0 < 0 or t0 >= seconds:
                    continue
                t1 = min(t0 + dur * spq * 0.97, seconds)  # a slight detach re-articulates repeated notes
                accent = 10 if abs(off % bar_ql) < 1e-6 else 0
                vel = int(np.clip(72 + accent + rng.integers(-8, 9), 30, 120))
                for p in pitches:
                    notes.append(Note(t0, t1, int(np.clip(p + semis, 0, 127)), vel, channel))
            repeat += 1
    if not notes:
        raise ValueError("no notes fall inside the clip")
    pans = {c: int(np.clip(64 + (i - (len(channels) - 1) / 2) * 24, 16, 112)) for i, c in enumerate(channels)}
    mid = events_to_midi(notes_to_events(notes, dict(zip(channels, programs)), pans), bpm, ts, work.title)

    style = style_for(work, collection)
    key_str = key_text(tonic, mode)
    ts_str = f"{ts[0]}/{ts[1]}"
    meta = {
        "description": score_caption(bpm=bpm, mode=mode, style=style, ensemble=ensemble, key=key_str,
                                     time_signature=ts_str, composer=collection.composer, mood_variant=mood_variant),
        "title": work.title,
        "genre": style,
        "key": key_str,
        "bpm": bpm,
        "time_signature": ts_str,
        "moods": [mood_word(mode, bpm, mood_variant)],
        "instruments": sorted({GM_NAMES[p] for p in programs}),
        "gm_programs": programs,
        "ensemble": ensemble,
        "composer": collection.composer,
        "source": f"music21:{work.source_path}" + (f"#{work.number}" if work.number else ""),
        "transpose_semitones": shift,
        "start_quarter": start_ql,
    }
    return mid, meta
