"""The shard-folder format and its reader: how training, tokenizing and evaluation find a folder's shards, splits
and sizes. `data_prep` writes the format (through the names and writers here); this module reads it, so `mgen`
needs nothing from `data_prep` to train or evaluate.

A shard folder holds numbered WebDataset tars per split (``train-000000.tar``, ``valid-000000.tar``), the index
``shards.json`` (``kind`` "audio" or "tokens", the ``config`` that made the shards, one entry per non-empty shard
with its sample count, seconds, bytes and sha256, and per-split and total sums), ``report.jsonl`` (what was
skipped and why) and one done marker per shard (``done/<shard>.json``: its index entry plus the hash of its inputs
and its sample keys), which lets a re-run skip finished shards and a reader of a damaged shard name what it lost.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any, BinaryIO

INDEX_NAME = "shards.json"
REPORT_NAME = "report.jsonl"
DONE_DIR = "done"
INDEX_VERSION = 1
SPLITS = ("train", "valid")
KIND_AUDIO = "audio"
KIND_TOKENS = "tokens"


def is_shard_folder(folder: str | Path) -> bool:
    return (Path(folder) / INDEX_NAME).is_file()


def load_index(folder: str | Path) -> dict[str, Any]:
    """The index of a shard folder (audio or token shards); a missing, unreadable or foreign file is an error
    naming it."""
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a shard folder (make one with `mgen prep shards`, and "
                                f"`--merge` after a job array)")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(index, dict) or not isinstance(index.get("shards"), list):
        raise ValueError(f"{path}: not an mgen shard index")
    return index


def index_kind(index: dict[str, Any]) -> str:
    """``"audio"`` (audio indexes written before kinds existed have none) or ``"tokens"``."""
    return index.get("kind") or KIND_AUDIO


def shard_urls(folder: str | Path, split: str) -> list[str]:
    """Paths of the shards of one split, in index order."""
    return [str(Path(folder) / e["name"]) for e in load_index(folder)["shards"] if e["split"] == split]


# ------------------------------------------------------------------------------------------------- done markers

def marker_path(folder: str | Path, shard: str) -> Path:
    return Path(folder) / DONE_DIR / f"{shard}.json"


def read_marker(folder: str | Path, shard: str) -> dict[str, Any] | None:
    """A shard's done marker, or None when it is missing or unreadable (the shard then counts as not done)."""
    try:
        marker = json.loads(marker_path(folder, shard).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def shard_keys(folder: str | Path, entry: dict[str, Any]) -> list[str] | None:
    """The sample keys the done marker of an index entry lists, when the marker belongs to that very shard (same
    sha256); None for shards written before markers listed keys, or without their ``done/`` folder."""
    marker = read_marker(folder, entry["name"])
    keys = marker.get("keys") if marker is not None else None
    if not isinstance(keys, list) or marker.get("sha256") != entry.get("sha256") or len(keys) != entry.get("samples"):
        return None
    return keys


# ------------------------------------------------------------------------------------------------- tar members

def write_members(fileobj: BinaryIO, members: list[tuple[str, bytes]]) -> None:
    """A GNU tar of ``(name, bytes)`` members with fixed owner, mode and mtime: the same content always gives the
    same shard bytes, so a resumed run's shards equal an uninterrupted run's."""
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
