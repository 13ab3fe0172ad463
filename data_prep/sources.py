"""Find the audio files to shard and their captions, from any of the input layouts we accept.

* a folder of audio files, captions in sidecars beside them: ``x.flac`` + ``x.json`` (``description``/``caption``
  or audiocraft MusicInfo fields: title, artist, key, bpm, genre, moods, keywords, instrument) or ``x.txt``;
* a CSV or JSONL manifest with a path column and a caption column (``path, caption, ...``);
* the MusicCaps CSV (``ytid, start_s, end_s, ..., caption, ...``, no path column) with a folder of the user's own
  downloads of its clips, named ``<ytid>.<ext>`` or ``[<ytid>]-[<start>-<end>].<ext>``: each row is one clip,
  keyed by its ytid and placed in the ``valid`` split (an evaluation set); rows without a file are reported;
* an audiocraft manifest (``data.jsonl[.gz]``: path, duration, sample_rate, optional info_path) whose captions
  live in per-file ``.json`` MusicInfo sidecars.

A file whose metadata cannot be read is reported (never silently captioned as empty) and left out.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".au", ".w64")
PATH_COLUMNS = ("path", "audio_path", "audio", "file", "filename", "filepath")
CAPTION_COLUMNS = ("caption", "description", "text")
MUSICCAPS_COLUMNS = ("ytid", "start_s", "end_s")
YTID = re.compile(r"[A-Za-z0-9_-]+")  # YouTube ids: also safe as WebDataset keys (no dots)
BRACKETED_CLIP = re.compile(r"\[(?P<ytid>[A-Za-z0-9_-]+)\]-\[[0-9.]+-[0-9.]+\]")  # [<ytid>]-[<start>-<end>]
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".jsonl.gz", ".json.gz")


@dataclass(frozen=True)
class InputItem:
    """One audio file to shard.

    ``source`` is the stable name used for sample keys and the train/valid split: the path relative to the input
    folder, or the path as written in a manifest (so moving a dataset does not reshuffle its split). A MusicCaps
    row also fixes ``clip`` (start_s, end_s in the original recording), its ``key`` (the ytid) and its ``split``.
    """

    path: str
    source: str
    caption: str | None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    clip: tuple[float, float] | None = None
    key: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class Problem:
    """An input that was left out, and why; written to ``report.jsonl``."""

    path: str
    reason: str
    stage: str
    start: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "reason": self.reason, "stage": self.stage, "start": self.start}


def discover(inputs: str | Path | list[str | Path],
             audio_dir: str | Path | None = None) -> tuple[list[InputItem], list[Problem]]:
    """All usable inputs, sorted by source name, plus problems found on the way. ``audio_dir`` holds the clips of
    a MusicCaps CSV (default: the CSV's folder).

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
            found, bad = _from_manifest(root, Path(audio_dir) if audio_dir else None)
        else:
            raise ValueError(f"input {root} is neither a folder nor a manifest ({', '.join(MANIFEST_SUFFIXES)})")
        items += found
        problems += bad
    if audio_dir and not any(item.clip for item in items) and not any(p.stage == "missing" for p in problems):
        raise ValueError(f"--audio-dir {audio_dir} is for a MusicCaps-style CSV ({', '.join(MUSICCAPS_COLUMNS)}, "
                         "caption), and no input is one")
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


def _from_manifest(manifest: Path, audio_dir: Path | None) -> tuple[list[InputItem], list[Problem]]:
    rows, columns = _read_rows(manifest)
    if not rows:
        raise ValueError(f"manifest {manifest} has no rows")
    path_col = next((c for c in PATH_COLUMNS if c in columns), None)
    caption_col = next((c for c in CAPTION_COLUMNS if c in columns), None)
    if path_col is None and all(c in columns for c in MUSICCAPS_COLUMNS):
        return _from_musiccaps(manifest, rows, caption_col, audio_dir or manifest.parent)
    if path_col is None:
        raise ValueError(f"manifest {manifest} has no audio path column (expected one of {', '.join(PATH_COLUMNS)}, "
                         f"or MusicCaps' {', '.join(MUSICCAPS_COLUMNS)} with --audio-dir; found "
                         f"{', '.join(columns) or 'none'})")
    base = manifest.parent
    items: list[InputItem] = []
    problems: list[Problem] = []
    for number, row, where in _readable_rows(manifest, rows, problems):
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


def _readable_rows(manifest: Path, rows: list[tuple[int, dict[str, Any] | None, str]],
                   problems: list[Problem]) -> Iterator[tuple[int, dict[str, Any], str]]:
    """(row number, row, "manifest:number") of every parsed row; each unparsable one becomes a problem."""
    for number, row, error in rows:
        where = f"{manifest}:{number}"
        if row is None:
            problems.append(Problem(where, error, "discover"))
        else:
            yield number, row, where


def _from_musiccaps(manifest: Path, rows: list[tuple[int, dict[str, Any] | None, str]], caption_col: str | None,
                    audio_dir: Path) -> tuple[list[InputItem], list[Problem]]:
    """One clip per row, its audio found in ``audio_dir`` by ytid; rows without a file are problems of stage
    'missing' (few users can download every clip: YouTube videos disappear)."""
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"audio folder {audio_dir} for the MusicCaps CSV {manifest} does not exist")
    files = clips_by_ytid(audio_dir)
    items: list[InputItem] = []
    problems: list[Problem] = []
    for number, row, where in _readable_rows(manifest, rows, problems):
        ytid = str(row.get("ytid") or "").strip()
        if not YTID.fullmatch(ytid):
            problems.append(Problem(where, f"ytid {ytid!r} is not a YouTube id", "discover"))
            continue
        try:
            start, end = float(row["start_s"]), float(row["end_s"])
        except (TypeError, ValueError):
            problems.append(Problem(where, f"start_s/end_s {row['start_s']!r}/{row['end_s']!r} are not numbers",
                                    "discover"))
            continue
        if not 0 <= start < end:
            problems.append(Problem(where, f"clip [{start:g}, {end:g}) s is empty or negative", "discover"))
            continue
        found = files.get(ytid, [])
        if not found:
            problems.append(Problem(str(audio_dir / f"{ytid}.*"), f"no audio file for ytid {ytid} (row {number})",
                                    "missing"))
            continue
        problems += [Problem(str(extra), f"another file for ytid {ytid}: {found[0].name} is used", "discover")
                     for extra in found[1:]]
        caption = str(row.get(caption_col) or "").strip() if caption_col else ""
        meta = {k: v for k, v in row.items() if v not in (None, "")}
        items.append(InputItem(str(found[0]), ytid, caption or None, meta, clip=(start, end), key=ytid,
                               split="valid"))
    return items, problems


def clips_by_ytid(audio_dir: Path) -> dict[str, list[Path]]:
    """Audio files under ``audio_dir`` by the ytid in their name (``<ytid>.<ext>`` or
    ``[<ytid>]-[<start>-<end>].<ext>``), each list sorted so the choice among duplicates is stable."""
    found: dict[str, list[Path]] = {}
    for path in sorted(p for p in audio_dir.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS):
        bracketed = BRACKETED_CLIP.fullmatch(path.stem)
        ytid = bracketed["ytid"] if bracketed else path.stem
        if YTID.fullmatch(ytid):
            found.setdefault(ytid, []).append(path.resolve())
    return found


def _resolve(raw: str, base: Path) -> Path | None:
    """Manifest paths are tried relative to the manifest's folder first, then as written."""
    for candidate in (base / raw, Path(raw)):
        if candidate.is_file():
            return candidate.resolve()
    return None


def _normalise_source(raw: str) -> str:
    return re.sub(r"^(\./)+", "", raw.replace("\\", "/"))
