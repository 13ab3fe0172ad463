"""The one commit step for files and directories: readers see the old version or the complete new one, never half.

A file (or directory) is written beside its target under a temporary name unique to the writer
(`.NAME.tmp-HOST-PID-RANDOM`: two processes never share one, even on different nodes of a shared filesystem),
flushed to disk (fsync of every file written), renamed onto the target (atomic on one filesystem, which a
sibling always is), and the parent directory is fsynced so that the rename itself survives a crash. Permissions
follow the umask (never the 0700/0600 of `mkdtemp`/`mkstemp`), so a cluster group can read what a run wrote.

Temporaries of a killed writer stay behind until the next write of the same target (those of dead processes on this
host) or `remove_stale_temporaries` at the next start: all of them when the caller owns the directory (it holds
the run lock), else those of dead processes on this host; a writer on another node may still be running.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

TMP_MARK = ".tmp-"
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>.+)-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:40] or "host"


def temporary_name(target: str | Path) -> Path:
    """A fresh temporary sibling of `target`, unique to this process and call."""
    target = Path(target)
    return target.with_name(f".{target.name}{TMP_MARK}{_host()}-{os.getpid()}-{secrets.token_hex(4)}")


def fsync_path(path: str | Path) -> None:
    """Flush a file's data, or a directory's entries (a rename, a new file), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """fsync every file and directory under `path` (what writers such as safetensors or transformers left unsynced)."""
    for root, _, files in os.walk(path):
        for name in files:
            fsync_path(Path(root) / name)
        fsync_path(root)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def commit(tmp: Path, target: Path) -> None:
    """Rename the fully written `tmp` (file or directory, already fsynced) onto `target` and make it durable.

    A directory target that exists is first renamed out of the way (under a temporary name, so that a kill
    between the two renames leaves only debris that the next start removes) and deleted afterwards."""
    old = None
    if tmp.is_dir() and target.is_dir() and not target.is_symlink():
        old = temporary_name(target)
        os.replace(target, old)
    os.replace(tmp, target)
    fsync_path(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _new_temporary(target: Path) -> Path:
    """A temporary for `target`, after removing those of `target` left by dead writers of this host."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{glob.escape(target.name)}{TMP_MARK}*"):
        if writer_is_gone(stale):
            _remove(stale)
    return temporary_name(target)


@contextlib.contextmanager
def atomic_write(target: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file to fill; on success it replaces `target` (fsynced), on error it is removed."""
    target = Path(target)
    tmp = _new_temporary(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        commit(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target` for a writer that takes a file name; on success the file written
    there is fsynced and replaces `target`, on error it is removed."""
    target = Path(target)
    tmp = _new_temporary(target)
    try:
        yield tmp
        _fsync_tree(tmp) if tmp.is_dir() else fsync_path(tmp)
        commit(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling directory of `target` to fill; on success it replaces `target` (every file
    fsynced), on error it is removed."""
    target = Path(target)
    tmp = _new_temporary(target)
    tmp.mkdir(mode=0o777)
    try:
        yield tmp
        _fsync_tree(tmp)
        commit(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_atomic(path: str | Path, writer: Callable[[BinaryIO], Any]) -> None:
    """Call `writer(fileobj)` on a temporary file, then commit it to `path`."""
    with atomic_write(path) as file:
        writer(file)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """JSON with sorted keys, so identical content gives identical bytes (stable hashes, clean diffs)."""
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_temporary(path: Path) -> bool:
    return _TEMPORARY.match(path.name) is not None


def writer_is_gone(path: Path) -> bool:
    """True when the temporary `path` was left by a process of this host that no longer runs."""
    match = _TEMPORARY.match(path.name)
    if match is None:
        return False
    return match["host"] == _host() and int(match["pid"]) != os.getpid() and not pid_alive(int(match["pid"]))


def remove_stale_temporaries(directory: str | Path, *, owned: bool = False) -> list[Path]:
    """Delete the temporaries (files or directories) in `directory` whose writer is gone and return them.

    `owned`: the caller is the only writer of the directory (it holds the run lock), so every temporary there was
    left by a killed process, wherever it ran. Otherwise only those of dead processes on this host are removed:
    a writer on another node cannot be checked and may still be running."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if is_temporary(p) and (owned or writer_is_gone(p))]
    for path in stale:
        _remove(path)
    return stale


def remove_temporaries_of(target: str | Path) -> None:
    """Delete every temporary of `target` (any writer, any host): for a caller that alone owns `target`, e.g. a job
    array task that (re)makes one output. Also removes the `TARGET.tmp-PID` names of earlier mgen versions."""
    target = Path(target)
    for path in target.parent.glob(f".{glob.escape(target.name)}{TMP_MARK}*"):
        if is_temporary(path):
            _remove(path)
    for path in target.parent.glob(f"{glob.escape(target.name)}{TMP_MARK}*"):
        _remove(path)
