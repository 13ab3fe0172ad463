"""The one shard-writing engine behind `mgen prep shards` (audio) and `mgen prep tokenize` (tokens).

Both make a folder of the format `mgen.data.shard_index` describes, the same way: each shard is a job with a digest
of everything its bytes depend on; a job whose done marker holds that digest (and whose file is still there, of the
recorded size, and of the recorded hash with ``verify``) is skipped, so a killed run resumes and a finished one is a
no-op; every other job first loses the temporaries a killed run left, then its producer fills a `ShardContent`,
which `commit_shard` writes under a temporary name, renames into place and seals with its done marker. The two
commands differ only in how one shard's samples are produced and in their index metadata.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any, TypeVar

from mgen.atomic import remove_temporaries_of, write_atomic, write_bytes_atomic, write_json_atomic
from mgen.checksum import file_sha256
from mgen.data.shard_index import DONE_DIR, REPORT_NAME, SPLITS, marker_path, read_marker, write_members


@dataclass(frozen=True)
class ShardJob:
    """One output shard: its file name, split, and the hash of its inputs that its done marker records."""

    name: str
    split: str
    digest: str


Job = TypeVar("Job", bound=ShardJob)


@dataclass
class ShardContent:
    """One shard's samples as its producer made them: tar members in order, the sample keys, what was skipped (one
    report row each), and the sums its index entry carries (``frames`` only for token shards)."""

    members: list[tuple[str, bytes]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    frames: int | None = None

    def add(self, key: str, data: dict[str, bytes], meta: dict[str, Any], seconds: float, frames: int | None = None
            ) -> None:
        """One sample: its ``<key>.<ext>`` members, then ``<key>.json`` with its metadata."""
        self.members += [(f"{key}.{ext}", blob) for ext, blob in data.items()]
        self.members.append((f"{key}.json", json.dumps(meta, sort_keys=True, ensure_ascii=False, default=str).encode()))
        self.keys.append(key)
        self.seconds += seconds
        if frames is not None:
            self.frames = (self.frames or 0) + frames


def commit_shard(out: Path, job: ShardJob, content: ShardContent) -> dict[str, Any]:
    """Write the shard (temporary name -> rename; no file when it has no sample), then its done marker; returns the
    marker's entry. The marker lists the keys, so a reader of a damaged copy can name every sample it lost."""
    final = out / job.name
    entry: dict[str, Any] = {"name": job.name, "split": job.split, "samples": len(content.keys),
                             "seconds": round(content.seconds, 6), "plan_hash": job.digest,
                             "skipped": content.skipped, "keys": content.keys}
    if content.frames is not None:
        entry["frames"] = content.frames
    if content.keys:
        write_atomic(final, lambda f: write_members(f, content.members))
        entry["bytes"], entry["sha256"] = final.stat().st_size, file_sha256(final)
    else:
        final.unlink(missing_ok=True)
        entry["bytes"], entry["sha256"] = 0, None
    write_json_atomic(marker_path(out, job.name), entry)
    return entry


def finished(out: Path, job: ShardJob, verify: bool) -> dict[str, Any] | None:
    """The done marker's entry when the shard is complete and was made from the same inputs, else None."""
    entry = read_marker(out, job.name)
    if entry is None or entry.get("plan_hash") != job.digest:
        return None
    if entry.get("samples", 0) == 0:
        return entry
    final = out / job.name
    if not final.is_file() or final.stat().st_size != entry.get("bytes"):
        return None
    if verify and file_sha256(final) != entry.get("sha256"):
        return None
    return entry


def pending(out: Path, jobs: Iterable[Job], verify: bool) -> tuple[dict[str, dict[str, Any]], list[Job]]:
    """The entries of the finished jobs by shard name, and the jobs still to do (their done/ folder made)."""
    (out / DONE_DIR).mkdir(parents=True, exist_ok=True)
    entries: dict[str, dict[str, Any]] = {}
    todo: list[Job] = []
    for job in jobs:
        done = finished(out, job, verify)
        if done is not None:
            entries[job.name] = done
        else:
            todo.append(job)
    return entries, todo


def make_shards(out: Path, todo: Sequence[Job], make: Callable[[Job], dict[str, Any]],
                entries: dict[str, dict[str, Any]], progress: bool, desc: str, pool: Pool | None = None) -> None:
    """Run ``make`` on every job (in ``pool`` when given, in any order), adding the entries it returns, with a
    progress bar. Each job alone makes its outputs, so the temporaries of its shard and marker that a killed run
    left (any process, any host) are deleted first."""
    from tqdm import tqdm

    for job in todo:
        remove_temporaries_of(out / job.name)
        remove_temporaries_of(marker_path(out, job.name))
    bar = tqdm(total=len(todo), unit="shard", desc=desc, disable=not progress or not todo)
    minutes = 0.0
    try:
        for entry in pool.imap_unordered(make, todo) if pool else map(make, todo):
            entries[entry["name"]] = entry
            minutes += entry["seconds"] / 60.0
            bar.set_postfix(audio_min=f"{minutes:.1f}", skipped=sum(len(e["skipped"]) for e in entries.values()))
            bar.update()
    finally:
        bar.close()


def index_body(entries: Iterable[dict[str, Any]], sums: tuple[str, ...]) -> dict[str, Any]:
    """The ``shards``, ``splits`` and ``totals`` of an index: one entry per shard that holds samples, and the
    ``sums`` (``samples``, ``seconds``, ...) per split and over all."""
    listed = [{k: e[k] for k in ("name", "split", *sums, "bytes", "sha256")} for e in entries if e["samples"] > 0]

    def total(chosen: list[dict[str, Any]]) -> dict[str, Any]:
        return {"shards": len(chosen), **{k: sum(e[k] for e in chosen) for k in sums},
                "seconds": round(sum(e["seconds"] for e in chosen), 6)}

    splits = {split: total([e for e in listed if e["split"] == split]) for split in SPLITS}
    return {"shards": listed, "splits": splits, "totals": {**total(listed), "bytes": sum(e["bytes"] for e in listed)}}


def write_report(out: Path, rows: list[dict[str, Any]]) -> None:
    """``report.jsonl``: one JSON line per input or sample that was skipped, with the reason."""
    lines = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)
    write_bytes_atomic(out / REPORT_NAME, lines.encode("utf-8"))
