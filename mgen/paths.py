"""Output paths: checked before a command starts work (a file where a folder is wanted, or the reverse, is a
one-line error naming the path, not a NotADirectoryError / IsADirectoryError traceback after minutes of work).
Writing them is `mgen.atomic`'s job."""

from __future__ import annotations

from pathlib import Path


def _blocking_file(path: Path) -> Path | None:
    """The nearest existing part of `path` (itself included) when it is not a folder."""
    for part in (path, *path.parents):
        if part.exists():
            return None if part.is_dir() else part
    return None


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """`path` as a folder to create or fill: refused when it, or the nearest part of it that exists, is a file."""
    path = Path(path)
    blocking = _blocking_file(path)
    if blocking == path:
        raise ValueError(f"{what} {path} is a file; give a folder")
    if blocking is not None:
        raise ValueError(f"{what} {path} cannot be created: {blocking} is a file, not a folder")
    return path


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """`path` as a file to write: refused when it is a folder or its folder cannot be made."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file name")
    blocking = _blocking_file(path.parent)
    if blocking is not None:
        raise ValueError(f"{what} {path} cannot be written: {blocking} is a file, not a folder")
    return path
