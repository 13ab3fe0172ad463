"""SHA-256 of files, read in 1 MiB blocks: shard integrity (index against file), the identity of weights in
evaluation reports, and the cache key of an evaluated model."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

BLOCK = 1 << 20


def _update(digest: "hashlib._Hash", path: str | Path) -> None:
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    _update(digest, path)
    return digest.hexdigest()


def files_sha256(paths: Iterable[str | Path]) -> str:
    """One digest of the files' bytes, concatenated in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        _update(digest, path)
    return digest.hexdigest()
