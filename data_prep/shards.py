"""Write audio + caption inputs into WebDataset tar shards with an index that training reads (``shards.json``).

The run is planned up front and deterministically: inputs are sorted, their headers probed, split into
train/valid by a hash of the source path (all segments of one file land in the same split), cut into segments,
and packed into numbered shards (``train-000000.tar``, ``valid-000000.tar``). Each shard is then written
independently by the shard engine (`data_prep.engine`): to a temporary name renamed into place when complete,
followed by a done marker (``done/<shard>.json``) that records its sha256, its sample keys and the hash of its part
of the plan. Re-running skips shards whose marker matches, so a killed run resumes where it stopped and a finished
run is a no-op. A Slurm
job array splits the shard plan round-robin across tasks; each task writes ``shards.task-XXXX.json`` and
``merge_indexes`` joins them into ``shards.json`` (the same file a single run writes).

Inputs that cannot be used are skipped and listed with file and reason in ``report.jsonl``; only a run in which
no input gave a usable sample is an error (after writing the report), never an empty index.

A MusicCaps row names a 10 s clip ``[start_s, end_s)`` of a YouTube recording, and users' downloads hold either
the whole recording or the clip alone. The file's duration decides (``clip_bounds``): a file no longer than the
clip + 0.5 s is the clip and is taken whole (up to the clip's length); a longer file that reaches ``end_s``
(within 0.5 s) is the recording and the clip is cut from ``start_s``; anything else is reported and skipped.
MusicCaps clips are never cut into segments, keep their ytid as sample key and go to ``valid`` unless a
``valid_fraction`` is given (then the usual hash split applies to them too).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass, replace
from functools import partial
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

from data_prep.engine import ShardContent, ShardJob, commit_shard, index_body, make_shards, pending, write_report
from data_prep.sources import InputItem, Problem, discover
from mgen.atomic import write_json_atomic
from mgen.audio import (AudioError, check_channels, check_sample_rate, encode_flac, normalize_loudness, probe,
                        read_segment, resample, to_channels)
from mgen.data.shard_index import INDEX_NAME, INDEX_VERSION, KIND_AUDIO, REPORT_NAME, SPLITS
from mgen.paths import check_output_dir

PEAK_DB = -1.0
PROBE_POOL_MIN = 256
DEFAULT_VALID_FRACTION = 0.05
CLIP_TOLERANCE_S = 0.5  # downloaders' clips run a little long (container padding, cut on a frame boundary)


class MissingCaptionError(ValueError):
    """Raised when ``require_caption`` is set and some inputs have no caption."""


@dataclass(frozen=True)
class ShardConfig:
    """What audio shards hold: every field goes into the index's ``config`` and each shard's digest, so a changed
    option rewrites exactly the shards it changes. Checked on construction, so a typo fails before hours of work.

    ``segment_seconds`` cuts files into pieces (None: whole files), dropping tails shorter than
    ``min_segment_seconds`` (default: half a segment). ``shard_max_mb`` is planned against the 16-bit PCM size, an
    upper bound for the FLAC actually written. ``valid_fraction`` (default 0.05) of the source files go to
    ``valid`` by a hash of their name; MusicCaps rows all go to ``valid`` unless it is given. ``loudness_db`` is an
    RMS dBFS target per sample (None keeps levels).
    """

    sample_rate: int = 32000
    channels: int = 1
    segment_seconds: float | None = None
    min_segment_seconds: float | None = None
    shard_max_mb: float = 500.0
    shard_max_samples: int = 10_000
    valid_fraction: float | None = None
    loudness_db: float | None = -20.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sample_rate", check_sample_rate(self.sample_rate))
        object.__setattr__(self, "channels", check_channels(self.channels))
        if self.segment_seconds is not None and not self.segment_seconds > 0:
            raise ValueError(f"segment_seconds must be > 0 (or None for whole files), got {self.segment_seconds}")
        if not 0.0 <= self.split_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")
        if not self.shard_max_mb > 0 or int(self.shard_max_samples) < 1:
            raise ValueError(f"shard limits must be positive (shard_max_mb={self.shard_max_mb}, "
                             f"shard_max_samples={self.shard_max_samples})")

    @property
    def min_seconds(self) -> float:
        """The shortest sample kept: ``min_segment_seconds``, by default half a segment (0 for whole files)."""
        if self.min_segment_seconds is not None:
            return float(self.min_segment_seconds)
        return self.segment_seconds / 2 if self.segment_seconds else 0.0

    @property
    def split_fraction(self) -> float:
        return DEFAULT_VALID_FRACTION if self.valid_fraction is None else float(self.valid_fraction)

    def index_config(self) -> dict[str, Any]:
        """The index's ``config``: the fields as resolved, and the fixed choices that also shape the bytes."""
        return {"version": INDEX_VERSION, "format": "flac-pcm16", "sample_rate": self.sample_rate,
                "channels": self.channels,
                "segment_seconds": None if self.segment_seconds is None else float(self.segment_seconds),
                "min_segment_seconds": self.min_seconds, "loudness_db": self.loudness_db,
                "loudness": "rms-dbfs" if self.loudness_db is not None else None, "peak_db": PEAK_DB,
                "valid_fraction": self.split_fraction, "shard_max_mb": float(self.shard_max_mb),
                "shard_max_samples": int(self.shard_max_samples)}


@dataclass(frozen=True)
class SampleSpec:
    """One planned sample: a segment ``[start, start + duration)`` seconds of a source file."""

    key: str
    path: str
    source: str
    start: float
    duration: float
    caption: str
    meta: dict[str, Any]


@dataclass(frozen=True)
class AudioShard(ShardJob):
    """One planned audio shard: the samples it holds."""

    samples: tuple[SampleSpec, ...] = ()


def shard_digest(name: str, samples: list[SampleSpec], index_config: dict[str, Any]) -> str:
    """Hash of everything that determines a shard's bytes: a changed option or input rewrites it."""
    blob = json.dumps({"config": index_config, "name": name, "samples": [asdict(s) for s in samples]},
                      sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------------- planning

def split_of(source: str, valid_fraction: float) -> str:
    """'valid' for a stable pseudo-random ``valid_fraction`` of source files, decided by a hash of the path."""
    h = int.from_bytes(hashlib.sha256(source.encode("utf-8")).digest()[:8], "big") / 2.0**64
    return "valid" if h < valid_fraction else "train"


def sample_key(source: str, segment: int) -> str:
    """A WebDataset key: readable, unique (hash of the source), and free of dots (they separate extensions)."""
    stem = source.rsplit(".", 1)[0] if "." in source.rsplit("/", 1)[-1] else source
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[-80:] or "audio"
    digest = hashlib.sha1(source.encode("utf-8")).hexdigest()[:8]
    return f"{slug}-{digest}-{segment:04d}"


def segment_bounds(duration: float, segment_seconds: float | None, min_segment_seconds: float
                   ) -> list[tuple[float, float]]:
    """(start, length) pieces of a file; a tail shorter than ``min_segment_seconds`` is dropped."""
    if not segment_seconds:
        return [(0.0, duration)] if duration >= min_segment_seconds else []
    pieces = []
    start = 0.0
    while start < duration - 1e-9:
        length = min(segment_seconds, duration - start)
        if length >= min_segment_seconds - 1e-9:
            pieces.append((round(start, 6), round(length, 6)))
        start += segment_seconds
    return pieces


def clip_bounds(clip: tuple[float, float], duration: float) -> tuple[float, float]:
    """(start, length) in a file of the clip ``[start_s, end_s)`` of a recording: the file is the clip itself
    or the whole recording, as its duration says (see the module docstring); ValueError when it is neither."""
    start, end = clip
    length = end - start
    if duration <= length + CLIP_TOLERANCE_S:
        return 0.0, round(min(duration, length), 6)
    if duration >= end - CLIP_TOLERANCE_S:
        return round(start, 6), round(min(length, duration - start), 6)
    raise ValueError(f"{duration:.2f} s long: neither the {length:g} s clip nor a recording that reaches the "
                     f"clip's end at {end:g} s")


def item_bounds(item: InputItem, duration: float, config: ShardConfig) -> list[tuple[float, float]]:
    """(start, length) of the samples one input gives: its clip, or the file cut into segments."""
    if item.clip is None:
        return segment_bounds(duration, config.segment_seconds, config.min_seconds)
    start, length = clip_bounds(item.clip, duration)
    return [(start, length)] if length >= config.min_seconds - 1e-9 else []


def _probe_item(item: InputItem) -> tuple[InputItem, float | None, int | None, str | None]:
    try:
        info = probe(item.path)
    except AudioError as err:
        return item, None, None, str(err)
    return item, info.frames / info.samplerate, int(info.samplerate), None


def plan_shards(items: list[InputItem], durations: dict[str, float], config: ShardConfig) -> list[AudioShard]:
    """Pack segments into shards per split, in sorted order, honouring the per-shard sample and size limits."""
    est_bytes_per_second = config.sample_rate * config.channels * 2  # 16-bit PCM: an upper bound for FLAC
    max_bytes = config.shard_max_mb * 1e6
    index_config = config.index_config()
    shards: list[AudioShard] = []
    for split in SPLITS:
        groups: list[list[SampleSpec]] = [[]]
        size = 0.0
        for item in items:
            if item.source not in durations or (item.split or split_of(item.source, config.split_fraction)) != split:
                continue
            for index, (start, length) in enumerate(item_bounds(item, durations[item.source], config)):
                est = length * est_bytes_per_second + 2048
                if groups[-1] and (len(groups[-1]) >= config.shard_max_samples or size + est > max_bytes):
                    groups.append([])
                    size = 0.0
                key = item.key or sample_key(item.source, index)
                groups[-1].append(SampleSpec(key, item.path, item.source, start, length, item.caption or "", item.meta))
                size += est
        for count, group in enumerate(g for g in groups if g):
            name = f"{split}-{count:06d}.tar"
            shards.append(AudioShard(name, split, shard_digest(name, group, index_config), tuple(group)))
    return shards


# ----------------------------------------------------------------------------------------------------------- writing

def _load_sample(spec: SampleSpec, config: ShardConfig) -> tuple[bytes, float]:
    """Decode, convert and encode one segment; returns FLAC bytes and the duration actually written."""
    info = probe(spec.path)
    rate_in = int(info.samplerate)
    first = int(round(spec.start * rate_in))
    count = min(int(round(spec.duration * rate_in)), info.frames - first)
    audio, rate_in = read_segment(spec.path, first, count)
    audio = resample(to_channels(audio, config.channels), rate_in, config.sample_rate)
    if config.loudness_db is not None:
        audio = normalize_loudness(audio, config.loudness_db, PEAK_DB)
    return encode_flac(audio, config.sample_rate), audio.shape[0] / config.sample_rate


def _write_shard(out: Path, config: ShardConfig, shard: AudioShard) -> dict[str, Any]:
    """Encode one shard's samples (an input that fails is skipped and reported) and commit it; returns its entry."""
    content = ShardContent()
    for spec in shard.samples:
        try:
            flac, written = _load_sample(spec, config)
        except AudioError as err:
            content.skipped.append(Problem(spec.path, str(err), "decode", spec.start).as_dict())
            continue
        except Exception as err:  # anything else about one file must not stop the run either
            content.skipped.append(Problem(spec.path, f"{type(err).__name__}: {str(err)[:200]}", "decode",
                                           spec.start).as_dict())
            continue
        meta = {
            "caption": spec.caption, "description": spec.caption, "source": spec.source, "path": spec.path,
            "start": spec.start, "duration": round(written, 6), "sample_rate": config.sample_rate,
            "channels": config.channels, "split": shard.split, "meta": spec.meta,
        }
        content.add(spec.key, {"flac": flac}, meta, written)
    return commit_shard(out, shard, content)


# ------------------------------------------------------------------------------------------------------- entry point

def task_from_env(task_index: int | None, num_tasks: int | None) -> tuple[int, int]:
    """Task slice from arguments, else from Slurm's job-array variables, else the whole plan (0 of 1)."""
    if num_tasks is None and os.environ.get("SLURM_ARRAY_TASK_COUNT"):
        num_tasks = int(os.environ["SLURM_ARRAY_TASK_COUNT"])
    if task_index is None and os.environ.get("SLURM_ARRAY_TASK_ID"):
        task_index = int(os.environ["SLURM_ARRAY_TASK_ID"]) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
    num_tasks = 1 if num_tasks is None else int(num_tasks)
    task_index = 0 if task_index is None else int(task_index)
    if num_tasks < 1 or not 0 <= task_index < num_tasks:
        raise ValueError(f"task index {task_index} is outside 0..{num_tasks - 1} (num_tasks={num_tasks})")
    return task_index, num_tasks


def write_shards(inputs: str | Path | list[str | Path], out_dir: str | Path, config: ShardConfig | None = None, *,
                 audio_dir: str | Path | None = None, require_caption: bool = False, workers: int | None = None,
                 task_index: int | None = None, num_tasks: int | None = None, verify: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """Shard ``inputs`` into ``out_dir`` as ``config`` says (default: `ShardConfig()`); returns a summary (the index
    itself is in ``out_dir/shards.json``).

    MusicCaps rows take their clips from ``audio_dir``. ``workers`` processes (default: the CPU count) probe and
    encode. With a job array (``task_index``/``num_tasks``, defaulting from SLURM_ARRAY_TASK_ID/
    SLURM_ARRAY_TASK_COUNT) this writes only the task's shards and a partial index; call ``merge_indexes`` once all
    tasks are done. A single run (one task) merges by itself. ``verify`` re-hashes finished shards before skipping.
    """
    start_time = time.perf_counter()
    config = config or ShardConfig()
    task_index, num_tasks = task_from_env(task_index, num_tasks)
    out = check_output_dir(out_dir)
    items, problems = discover(inputs, audio_dir)
    if config.valid_fraction is not None:  # an explicit fraction splits every input by its hash
        items = [replace(item, split=None) for item in items]
    workers = max(1, int(workers or os.cpu_count() or 1))
    # A spawn pool costs about a second to start: only worth it for many headers or several shards.
    pool = mp.get_context("spawn").Pool(workers) if workers > 1 and len(items) >= PROBE_POOL_MIN else None
    try:
        durations = _probe_all(items, pool, config, problems)
        missing = _check_captions([item for item in items if item.source in durations], require_caption)
        plan = plan_shards(items, durations, config)
        plan_id = hashlib.sha256("".join(shard.digest for shard in plan).encode()).hexdigest()
        mine = plan[task_index::num_tasks]
        entries, todo = pending(out, mine, verify)
        resumed = len(entries)
        if pool is None and workers > 1 and len(todo) > 1:
            pool = mp.get_context("spawn").Pool(min(workers, len(todo)))
        make_shards(out, todo, partial(_write_shard, out, config), entries, progress, "shards", pool)
    finally:
        if pool:
            pool.close()
            pool.join()

    partial_index = {
        "version": INDEX_VERSION, "plan_id": plan_id, "task_index": task_index, "num_tasks": num_tasks,
        "num_shards_planned": len(plan), "config": config.index_config(), "inputs": len(items),
        "missing_captions": len(missing),
        "problems": [p.as_dict() for p in sorted(problems, key=lambda p: (p.path, p.stage))],
        "shards": [{k: v for k, v in entries[shard.name].items() if k != "keys"} for shard in mine]}
    partial_path = out / f"shards.task-{task_index:04d}.json"
    write_json_atomic(partial_path, partial_index)
    shards = partial_index["shards"]
    summary = {
        "out_dir": str(out), "task_index": task_index, "num_tasks": num_tasks, "inputs": len(items),
        "shards_planned": len(plan), "shards_this_task": len(mine), "shards_written": len(todo),
        "shards_resumed": resumed, "samples": sum(e["samples"] for e in shards),
        "seconds": sum(e["seconds"] for e in shards), "skipped_samples": sum(len(e["skipped"]) for e in shards),
        "problems": len(problems), "missing_audio": sum(p.stage == "missing" for p in problems),
        "missing_captions": len(missing), "partial_index": str(partial_path),
    }
    if num_tasks == 1:
        merge_indexes(out, partials=[partial_path])
        summary["index"] = str(out / INDEX_NAME)
        summary["report"] = str(out / REPORT_NAME)
    summary["wall_seconds"] = time.perf_counter() - start_time
    return summary


def _probe_all(items: list[InputItem], pool: Pool | None, config: ShardConfig, problems: list[Problem]
               ) -> dict[str, float]:
    """Duration of every readable input by source name; unreadable or too-short inputs go to ``problems``."""
    probed = pool.imap(_probe_item, items, chunksize=16) if pool else map(_probe_item, items)
    durations: dict[str, float] = {}
    for item, duration, _, error in probed:
        if error:
            problems.append(Problem(item.path, error, "probe"))
            continue
        try:
            usable = item_bounds(item, duration, config)
        except ValueError as err:
            problems.append(Problem(item.path, str(err), "probe"))
            continue
        if not usable:
            problems.append(Problem(item.path, f"shorter than min_segment_seconds ({duration:.2f} s)", "probe"))
        else:
            durations[item.source] = duration
    return durations


def _check_captions(usable: list[InputItem], require_caption: bool) -> list[InputItem]:
    """Inputs without caption: an error with ``require_caption``, else a warning. Only readable inputs count, so a
    corrupt file is reported as corrupt, not blamed for its caption."""
    missing = [item for item in usable if not item.caption]
    if missing and require_caption:
        examples = ", ".join(item.path for item in missing[:5])
        raise MissingCaptionError(
            f"{len(missing)} of {len(usable)} inputs have no caption (e.g. {examples}); add a .json sidecar with "
            "'description', a .txt sidecar or a caption column, or drop --require-caption")
    if missing:
        warnings.warn(f"{len(missing)} of {len(usable)} inputs have no caption; they are sharded with an empty one",
                      stacklevel=3)
    return missing


# -------------------------------------------------------------------------------------------------------- the index

def merge_indexes(out_dir: str | Path, partials: list[Path] | None = None) -> dict[str, Any]:
    """Join the per-task partial indexes into ``shards.json`` and ``report.jsonl``; returns the index.

    Raises ValueError if tasks are missing, the partials come from different plans (stale files from an earlier
    run with other options or inputs), or no input gave a usable sample (then only ``report.jsonl`` is written).
    """
    out = Path(out_dir)
    paths = sorted(partials) if partials is not None else sorted(out.glob("shards.task-*.json"))
    if not paths:
        raise FileNotFoundError(f"no partial indexes (shards.task-XXXX.json) in {out}")
    parts = [json.loads(Path(p).read_text()) for p in paths]
    plan_ids = {p["plan_id"] for p in parts}
    counts = {p["num_tasks"] for p in parts}
    if len(plan_ids) != 1 or len(counts) != 1:
        raise ValueError(f"partial indexes in {out} come from different runs (plans {sorted(plan_ids)}, task counts "
                         f"{sorted(counts)}); delete the stale shards.task-*.json files and re-run those tasks")
    num_tasks = counts.pop()
    have = {p["task_index"] for p in parts}
    if have != set(range(num_tasks)):
        missing = sorted(set(range(num_tasks)) - have)
        raise ValueError(f"cannot merge {out}: tasks {missing} of {num_tasks} have not written their partial index")

    first = parts[0]
    shards = sorted((e for p in parts for e in p["shards"]), key=lambda e: (SPLITS.index(e["split"]), e["name"]))
    if len(shards) != first["num_shards_planned"]:
        raise ValueError(f"cannot merge {out}: {len(shards)} of {first['num_shards_planned']} planned shards recorded")
    index = {"version": INDEX_VERSION, "kind": KIND_AUDIO, "plan_id": first["plan_id"], "config": first["config"],
             **index_body(shards, ("samples", "seconds"))}
    index["totals"].update(inputs=first["inputs"], missing_captions=first["missing_captions"],
                           skipped_inputs=len(first["problems"]),
                           missing_audio=sum(p["stage"] == "missing" for p in first["problems"]),
                           skipped_samples=sum(len(e["skipped"]) for e in shards))
    write_report(out, first["problems"] + [s for e in shards for s in e["skipped"]])
    if not index["shards"]:  # an empty index would only move the failure to training
        raise ValueError(f"nothing usable found: none of the {first['inputs']} inputs gave a sample "
                         f"({len(first['problems'])} inputs and {index['totals']['skipped_samples']} segments "
                         f"skipped, e.g. silent, NaN or unreadable audio); the reasons are in {out / REPORT_NAME}")
    write_json_atomic(out / INDEX_NAME, index)
    return index


