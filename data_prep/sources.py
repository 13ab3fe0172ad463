"""Find the audio files to shard and their captions, from any of the input layouts we accept.

* a folder of audio files, captions in sidecars beside them: ``x.flac`` + ``x.json`` (``description``/``caption``
  or audiocraft MusicInfo fields: title, artist, key, bpm, genre, moods, keywords, instrument) or ``x.txt``;
* a CSV or JSONL manifest with a path column and a caption column (MusicCaps style: ``path, caption, ...``);
* an audiocraft manifest (``data.jsonl[.gz]``: path, duration, sample_rate, optional info_path) whose captions
  live in per-file ``.json`` MusicInfo sidecars.

A file whose metadata cannot be read is reported (never silently captioned as empty) and left out.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".au", ".w64")
PATH_COLUMNS = ("path", "audio_path", "audio", "file", "filename", "filepath")
CAPTION_COLUMNS = ("caption", "description", "text")
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".jsonl.gz", ".json.gz")


@dataclass(frozen=True)
class InputItem:
    """One audio file to shard.

    ``source`` is the stable name used for sample keys and the train/valid split: the path relative to the input
    folder, or the path as written in a manifest (so moving a dataset does not reshuffle its split).
    """

    path: str
    source: str
    caption: str | None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Problem:
    """An input that was left out, and why; written to ``report.jsonl``."""

    path: str
    reason: str
    stage: str
    start: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "reason": self.reason, "stage": self.stage, "start": self.start}


def discover(inputs: str | Path | list[str | Path]) -> tuple[list[InputItem], list[Problem]]:
    """All usable inputs, sorted by source name, plus problems found on the way.

    Raises FileNotFoundError for a missing input and ValueError when nothing usable is found at all.
    """
    paths = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else list(inputs))]
    if not paths:
        raise ValueError("no inputs given")
    items: list[InputItem] = []
    problems: list[Problem] = []
    for root in paths:
        if not root.exists():
            raise FileNotFoundError(f"input {root} does not exist")
        prefix = f"{root.name}/" if len(paths) > 1 else ""
        if root.is_dir():
            found, bad = _from_folder(root, prefix)
        elif root.name.lower().endswith(MANIFEST_SUFFIXES):
            found, bad = _from_manifest(root)
        else:
            raise ValueError(f"input {root} is neither a folder nor a manifest ({', '.join(MANIFEST_SUFFIXES)})")
        items += found
        problems += bad
    unique: dict[str, InputItem] = {}
    for item in items:
        if item.source in unique:
            problems.append(Problem(item.path, f"duplicate source name {item.source!r}", "discover"))
        else:
            unique[item.source] = item
    if not unique:
        where = ", ".join(str(p) for p in paths)
        raise ValueError(f"no audio found in {where} (looked for {', '.join(AUDIO_EXTENSIONS)}"
                         + (f"; {len(problems)} inputs were unusable, e.g. {problems[0].path}: {problems[0].reason}"
                            if problems else "") + ")")
    return [unique[k] for k in sorted(unique)], sorted(problems, key=lambda p: p.path)


def _from_folder(root: Path, prefix: str) -> tuple[list[InputItem], list[Problem]]:
    items, problems = [], []
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    for path in files:
        try:
            caption, meta = read_sidecar(path)
        except ValueError as err:
            problems.append(Problem(str(path), str(err), "discover"))
            continue
        items.append(InputItem(str(path.resolve()), prefix + path.relative_to(root).as_posix(), caption, meta))
    return items, problems


def read_sidecar(audio: Path, info_path: Path | None = None) -> tuple[str | None, dict[str, Any]]:
    """Caption and metadata from ``info_path`` or ``<stem>.json`` / ``<stem>.txt`` beside the audio.

    Raises ValueError (the reason for the report) when a sidecar exists but cannot be read.
    """
    candidates = [info_path] if info_path else [audio.with_suffix(".json"), audio.with_suffix(".txt")]
    for side in candidates:
        if side is None or not side.is_file():
            continue
        try:
            text = side.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"unreadable metadata {side.name}: {err}") from err
        if side.suffix == ".txt":
            return (text.strip() or None), {}
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"unreadable metadata {side.name}: invalid JSON ({err.msg} at line {err.lineno})") from err
        if not isinstance(data, dict):
            raise ValueError(f"unreadable metadata {side.name}: expected a JSON object, got {type(data).__name__}")
        return caption_from_info(data), data
    return None, {}


def caption_from_info(info: dict[str, Any]) -> str | None:
    """The ``description`` (or caption/text) if present, else a caption composed from MusicInfo tags."""
    for key in CAPTION_COLUMNS:
        value = info.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    parts: list[str] = []
    for key in ("genre", "moods", "instrument", "keywords"):
        value = info.get(key)
        if isinstance(value, list):
            parts += [str(v).strip() for v in value if str(v).strip()]
        elif isinstance(value, str) and value.strip():
            parts += [v.strip() for v in value.split(",") if v.strip()]
    if info.get("key"):
        parts.append(f"in {info['key']}")
    if isinstance(info.get("bpm"), (int, float)) and info["bpm"] > 0:
        parts.append(f"{round(float(info['bpm']))} bpm")
    return ", ".join(parts) or None


def _read_rows(manifest: Path) -> tuple[list[tuple[int, dict[str, Any] | None, str]], list[str]]:
    """(row number, row or None, error) plus the column names seen."""
    rows: list[tuple[int, dict[str, Any] | None, str]] = []
    name = manifest.name.lower()
    opener = gzip.open if name.endswith(".gz") else open
    with opener(manifest, "rt", encoding="utf-8", newline="") as f:
        if name.endswith(".csv"):
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            for i, row in enumerate(reader, start=2):
                rows.append((i, {(k or "").strip(): v for k, v in row.items()}, ""))
            return rows, columns
        columns_seen: set[str] = set()
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                rows.append((i, None, f"invalid JSON ({err.msg})"))
                continue
            if not isinstance(row, dict):
                rows.append((i, None, "row is not a JSON object"))
                continue
            columns_seen.update(row)
            rows.append((i, row, ""))
        return rows, sorted(columns_seen)


def _from_manifest(manifest: Path) -> tuple[list[InputItem], list[Problem]]:
    rows, columns = _read_rows(manifest)
    if not rows:
        raise ValueError(f"manifest {manifest} has no rows")
    path_col = next((c for c in PATH_COLUMNS if c in columns), None)
    if path_col is None:
        raise ValueError(f"manifest {manifest} has no audio path column (expected one of {', '.join(PATH_COLUMNS)}; "
                         f"found {', '.join(columns) or 'none'}; MusicCaps' CSV has none: add a 'path' column "
                         "pointing at your downloaded clips)")
    caption_col = next((c for c in CAPTION_COLUMNS if c in columns), None)
    base = manifest.parent
    items, problems = [], []
    for number, row, error in rows:
        where = f"{manifest}:{number}"
        if row is None:
            problems.append(Problem(where, error, "discover"))
            continue
        raw = str(row.get(path_col) or "").strip()
        if not raw:
            problems.append(Problem(where, f"empty {path_col!r}", "discover"))
            continue
        audio = _resolve(raw, base)
        if audio is None:
            problems.append(Problem(raw, f"file not found (manifest row {number})", "discover"))
            continue
        meta = {k: v for k, v in row.items() if k not in (path_col,) and v not in (None, "")}
        caption = str(row[caption_col]).strip() if caption_col and str(row.get(caption_col) or "").strip() else None
        info = row.get("info_path")
        try:
            side_caption, side_meta = read_sidecar(audio, _resolve(str(info), base) if info else None)
        except ValueError as err:
            problems.append(Problem(str(audio), str(err), "discover"))
            continue
        items.append(InputItem(str(audio), _normalise_source(raw), caption or side_caption, {**side_meta, **meta}))
    return items, problems


def _resolve(raw: str, base: Path) -> Path | None:
    """Manifest paths are tried relative to the manifest's folder first, then as written."""
    for candidate in (base / raw, Path(raw)):
        if candidate.is_file():
            return candidate.resolve()
    return None


def _normalise_source(raw: str) -> str:
    return re.sub(r"^(\./)+", "", raw.replace("\\", "/"))
