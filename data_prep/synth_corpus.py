"""Build a captioned corpus of real instrument music offline: music21 scores and MMA grooves, rendered with FluidSynth.

Layout of ``OUT``::

    corpus.json          settings the corpus was built with (a resume must use the same ones)
    manifest.jsonl       one line per clip: path, caption (``description``) and metadata
    audio/<id>.flac      the clip, loudness-normalised
    audio/<id>.json      sidecar: caption as ``description`` + title, genre, key, bpm, ...  (written last)
    audio/<id>.mid       the exact MIDI that was rendered (melody and chords known exactly)

Every clip's choices come from ``numpy.random.default_rng([seed, index, attempt])``, so a clip id always means the
same music, whichever clips were built before it. A clip whose sidecar exists is skipped, which makes the build
resumable; a clip that fails (unparsable score, MMA error, silent render) is retried with the next attempt's
choices, and counted as failed after ``ATTEMPTS`` tries.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.render import INSTALL_HINT, Renderer, RenderUnavailable, find_soundfont
from mgen.atomic import remove_temporaries_of, write_atomic, write_bytes_atomic, write_json_atomic
from mgen.audio import check_channels, check_sample_rate, encode_flac, normalize_loudness, to_channels
from mgen.paths import check_output_dir

ATTEMPTS = 3
FADE_OUT_SECONDS = 0.25
CORPUS_VERSION = 1
SETTINGS_KEYS = ("version", "seed", "clip_seconds", "sample_rate", "channels", "mma_fraction", "loudness_db")


@dataclass(frozen=True)
class ClipJob:
    """What a worker needs to make one clip: its id and one planned choice per attempt."""

    clip_id: str
    index: int
    attempts: tuple[tuple[str, Any, tuple[int, ...]], ...]  # (kind, WorkRef | GrooveRef, rng seed)
    audio_dir: str
    clip_seconds: float
    sample_rate: int
    channels: int
    loudness_db: float


@dataclass
class CorpusSummary:
    """What a build did; ``failures`` lists (clip id, reasons)."""

    out_dir: str
    clips: int = 0
    built: int = 0
    skipped: int = 0
    failed: int = 0
    retried: int = 0
    seconds: float = 0.0
    wall_seconds: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, minutes=self.seconds / 60.0)


def clip_id(seed: int, index: int) -> str:
    return f"s{seed}-{index:06d}"


def _is_done(audio_dir: Path, cid: str) -> bool:
    return all((audio_dir / f"{cid}{ext}").is_file() for ext in (".json", ".flac", ".mid"))


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume into a folder built with other settings: clip ids would mean different music."""
    path = out / "corpus.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), settings[k]) for k in SETTINGS_KEYS if old.get(k) != settings[k]}
        if diff:
            raise ValueError(f"{out} holds a corpus built with other settings {diff} (old, new); "
                             "use another folder or the same settings")
    else:
        write_json_atomic(path, settings)


def _plan(indices: list[int], seed: int, mma_fraction: float) -> dict[int, tuple]:
    """Choose source and work per clip and attempt, in the parent, so workers never load the catalog."""
    from data_prep import mma_source, music21_source

    catalog = music21_source.load_catalog()
    grooves = mma_source.load_grooves() if mma_fraction > 0 else []
    names = sorted(catalog)
    plans: dict[int, tuple] = {}
    for index in indices:
        attempts = []
        for attempt in range(ATTEMPTS):
            rng = np.random.default_rng([seed, index, attempt])
            if grooves and rng.random() < mma_fraction:
                attempts.append(("mma", grooves[int(rng.integers(len(grooves)))], (seed, index, attempt, 1)))
            else:
                works = catalog[names[int(rng.integers(len(names)))]]
                attempts.append(("music21", works[int(rng.integers(len(works)))], (seed, index, attempt, 1)))
        plans[index] = tuple(attempts)
    return plans


# One renderer per process: loading the soundfont is the expensive part, so it happens once.
_RENDERER: Renderer | None = None


def _init_worker(sample_rate: int, soundfont: str | None, quiet: bool = True) -> None:
    global _RENDERER
    if quiet:  # music21 warns about quirks of old encodings on every parse; a pool worker has no one to tell
        warnings.simplefilter("ignore")
    if _RENDERER is None or (_RENDERER.sample_rate, str(_RENDERER.soundfont)) != (sample_rate, str(soundfont)):
        _RENDERER = Renderer(sample_rate, soundfont)


def _make_clip(job: ClipJob) -> dict[str, Any]:
    """Try each planned attempt until one renders; write flac, mid, then the sidecar json (the done marker)."""
    from data_prep import mma_source, music21_source

    collections = {c.name: c for c in music21_source.COLLECTIONS}
    errors = []
    for attempt, (kind, ref, rng_seed) in enumerate(job.attempts):
        rng = np.random.default_rng(list(rng_seed))
        try:
            if kind == "mma":
                mid, meta = mma_source.groove_clip(ref, rng, job.clip_seconds)
            else:
                mid, meta = music21_source.score_clip(ref, collections[ref.collection], rng, job.clip_seconds)
            audio = _RENDERER.render(mid, job.clip_seconds)
            audio = _finish(audio, job)
        except RenderUnavailable:
            raise
        except Exception as err:  # a bad score or groove: try the next planned choice
            errors.append(f"attempt {attempt} ({kind} {getattr(ref, 'source_path', getattr(ref, 'groove', ref))}): "
                          f"{type(err).__name__}: {str(err)[:200]}")
            continue
        audio_dir = Path(job.audio_dir)
        cid = job.clip_id
        write_atomic(audio_dir / f"{cid}.mid", lambda f: mid.save(file=f))
        write_bytes_atomic(audio_dir / f"{cid}.flac", encode_flac(audio, job.sample_rate))
        record = {
            "id": cid, **meta, "duration": job.clip_seconds, "sample_rate": job.sample_rate,
            "channels": job.channels, "audio": f"{cid}.flac", "midi": f"{cid}.mid", "attempt": attempt,
            "instrument": ", ".join(meta["instruments"]), "soundfont": _RENDERER.soundfont.name,
        }
        write_json_atomic(audio_dir / f"{cid}.json", record)
        return {"id": cid, "ok": True, "attempt": attempt, "errors": errors}
    return {"id": job.clip_id, "ok": False, "attempt": None, "errors": errors}


def _finish(audio: np.ndarray, job: ClipJob) -> np.ndarray:
    """Channels, a short fade-out (the MIDI is cut mid-phrase), loudness normalisation."""
    audio = to_channels(audio, job.channels)
    fade = min(int(FADE_OUT_SECONDS * job.sample_rate), audio.shape[0])
    if fade:
        audio[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)[:, None]
    return normalize_loudness(audio, job.loudness_db)


def write_manifest(out_dir: str | Path) -> int:
    """Rewrite ``manifest.jsonl`` from every sidecar present (sorted by id); returns the number of clips."""
    out = Path(out_dir)
    lines = []
    for sidecar in sorted((out / "audio").glob("*.json")):
        record = json.loads(sidecar.read_text())
        if not (out / "audio" / record["audio"]).is_file():
            continue
        record = {"path": f"audio/{record['audio']}", "caption": record["description"], **record}
        lines.append(json.dumps(record, sort_keys=True, ensure_ascii=False))
    write_bytes_atomic(out / "manifest.jsonl", ("\n".join(lines) + "\n" if lines else "").encode("utf-8"))
    return len(lines)


def build_synth_corpus(out_dir: str | Path, minutes: float = 2.0, n_clips: int | None = None,
                       clip_seconds: float = 10.0, sample_rate: int = 32000, seed: int = 0,
                       workers: int | None = None, channels: int = 1, mma_fraction: float = 0.25,
                       loudness_db: float = -20.0, soundfont: str | Path | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """Build (or finish building) ``n_clips`` clips, or enough for ``minutes`` of audio; returns a summary dict.

    ``workers`` defaults to the CPU count; 1 runs in this process (no pool start-up, easiest to debug).
    """
    start = time.perf_counter()
    sample_rate = check_sample_rate(sample_rate)
    channels = check_channels(channels)
    if not clip_seconds > 0:
        raise ValueError(f"clip_seconds must be > 0, got {clip_seconds}")
    if not 0.0 <= mma_fraction <= 1.0:
        raise ValueError(f"mma_fraction must be in [0, 1], got {mma_fraction}")
    total = int(n_clips) if n_clips is not None else math.ceil(minutes * 60.0 / clip_seconds)
    if total <= 0:
        raise ValueError("nothing to build: give minutes > 0 or n_clips > 0")

    out = check_output_dir(out_dir)
    audio_dir = check_output_dir(out / "audio")
    audio_dir.mkdir(parents=True, exist_ok=True)
    settings = {"version": CORPUS_VERSION, "seed": seed, "clip_seconds": float(clip_seconds),
                "sample_rate": sample_rate, "channels": channels, "mma_fraction": float(mma_fraction),
                "loudness_db": float(loudness_db)}
    _check_settings(out, settings)

    summary = CorpusSummary(out_dir=str(out), clips=total)
    todo = [i for i in range(total) if not _is_done(audio_dir, clip_id(seed, i))]
    summary.skipped = total - len(todo)
    if todo:
        Renderer._pick_backend("auto")  # fail fast, with the install hint, before planning
        soundfont = str(find_soundfont(soundfont))
        if mma_fraction > 0:
            from data_prep.mma_source import mma_available

            if not mma_available():
                raise RenderUnavailable(f"MMA (Musical MIDI Accompaniment) is not installed; {INSTALL_HINT} "
                                        "(or pass mma_fraction=0 for music21 scores only)")
        for index in todo:
            for ext in (".json", ".flac", ".mid"):
                remove_temporaries_of(audio_dir / f"{clip_id(seed, index)}{ext}")
        plans = _plan(todo, seed, mma_fraction)
        jobs = [ClipJob(clip_id(seed, i), i, plans[i], str(audio_dir), float(clip_seconds), sample_rate, channels,
                        float(loudness_db)) for i in todo]
        for result in _run(jobs, workers, sample_rate, soundfont, progress):
            if result["ok"]:
                summary.built += 1
                summary.retried += int(result["attempt"] > 0)
            else:
                summary.failed += 1
                summary.failures.append({"id": result["id"], "reasons": result["errors"]})
    count = write_manifest(out)
    summary.seconds = count * float(clip_seconds)
    summary.wall_seconds = time.perf_counter() - start
    return summary.as_dict()


def _run(jobs: list[ClipJob], workers: int | None, sample_rate: int, soundfont: str, progress: bool):
    """Yield clip results from this process (workers=1) or a spawn pool, with a progress bar."""
    from tqdm import tqdm

    workers = max(1, min(int(workers or os.cpu_count() or 1), len(jobs)))
    bar = tqdm(total=len(jobs), unit="clip", desc="synth corpus", disable=not progress)
    try:
        if workers == 1:
            _init_worker(sample_rate, soundfont, quiet=False)
            for job in jobs:
                with warnings.catch_warnings():  # silence music21 here without changing the caller's filters
                    warnings.simplefilter("ignore")
                    result = _make_clip(job)
                yield result
                bar.update()
        else:
            # spawn, not fork: the parent may hold threads (torch, tqdm) that fork would copy in a locked state.
            with mp.get_context("spawn").Pool(workers, _init_worker, (sample_rate, soundfont)) as pool:
                for result in pool.imap_unordered(_make_clip, jobs):
                    yield result
                    bar.update()
    finally:
        bar.close()
