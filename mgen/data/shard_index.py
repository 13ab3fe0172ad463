"""The shard index (`shards.json`): how training, tokenizing and evaluation find a shard folder's shards, splits
and sizes. `data_prep` writes it; this module reads it, so `mgen` needs nothing from `data_prep` to train or
evaluate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

INDEX_NAME = "shards.json"


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


def shard_urls(folder: str | Path, split: str) -> list[str]:
    """Paths of the shards of one split, in index order."""
    return [str(Path(folder) / e["name"]) for e in load_index(folder)["shards"] if e["split"] == split]
