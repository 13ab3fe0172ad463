"""Atomic file writes: a killed run must never leave a half-written file under its final name.

Data is written to a temporary name in the same folder (same filesystem, so ``os.replace`` is atomic), flushed,
then renamed. Temporary names carry ``.tmp-<pid>`` so concurrent job-array tasks never collide.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

TMP_MARK = ".tmp-"


def tmp_path_for(path: Path) -> Path:
    """The temporary sibling used while ``path`` is being written."""
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")


def write_atomic(path: str | Path, writer: Callable[[BinaryIO], None]) -> None:
    """Call ``writer(fileobj)`` on a temporary file, fsync it, then rename it to ``path``."""
    path = Path(path)
    tmp = tmp_path_for(path)
    try:
        with open(tmp, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """JSON with sorted keys, so identical content gives identical bytes (stable hashes, clean diffs)."""
    text = json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def remove_stale_tmp(path: Path) -> None:
    """Delete temporaries left for ``path`` by killed runs (any pid)."""
    for stale in path.parent.glob(f"{path.name}{TMP_MARK}*"):
        stale.unlink(missing_ok=True)
