"""The checkpoints of a run: how they are written, how many are kept, and which one a start resumes from.

Everything lives in `RUN/checkpoints/`: `last.ckpt`, the periodic ones (`epoch=E-step=S.ckpt` for the LM,
`codec-updates=U.ckpt` for the codec) and the pre-emption ones (`hpc_ckpt_N.ckpt`, see `mgen.train.preemption`).

- Writing: `AtomicCheckpointIO` commits every checkpoint with `mgen.atomic` (a temporary file beside the target,
  fsync, rename). Lightning's own writer goes through `$TMPDIR` and `shutil.move`, a plain copy when `$TMPDIR`
  is on another filesystem (node-local scratch, runs on NFS/Lustre): a kill then leaves a truncated checkpoint
  under its final name. Under every strategy (one device, DDP, FSDP with single-file checkpoints) only global
  rank 0 writes, through the strategy's `checkpoint_io`.
- Keeping (`trainer.checkpoints` in LM and codec recipes): `keep_last` periodic/pre-emption checkpoints, the
  most advanced ones, plus every periodic one whose step (LM) or update count (codec) is a multiple of
  `keep_every` (0: none), plus `last.ckpt`. Older ones are deleted by rank 0, right after a new checkpoint is
  committed, never the one a start would resume from.
- Resuming: `resume_checkpoint` picks the most advanced readable checkpoint of any kind. Readable means the whole
  file is intact (every zip record's CRC), not only its header; an unreadable one is renamed
  `NAME.corrupt-TIME` (never deleted) so that no later start trips over it.
"""

from __future__ import annotations

import os
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from mgen.atomic import atomic_write

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
HPC_PATTERN = re.compile(r"hpc_ckpt_(\d+)\.ckpt")
KEEP_LAST_DEFAULT = 3
KEEP_EVERY_DEFAULT = 0


# ------------------------------------------------------------------------------------------------ writing
class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO, but every save is committed beside its target (see the module docstring),
    streamed to the file (no second copy of the checkpoint in memory), and a resume loads the checkpoint global
    rank 0 chose."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_write(path) as file:
            torch.save(checkpoint, file)

    def load_checkpoint(self, path: Any, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        # Every rank chose the same file from what it read on disk (`resume_checkpoint`); should rank 0 alone have
        # found the chosen file corrupt, its choice wins (the load is collective: all ranks are here).
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            chosen = [str(path)]
            dist.broadcast_object_list(chosen, src=0)
            path = chosen[0]
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: Any) -> None:
        Path(path).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ reading
def checkpoint_step(path: Path) -> int | None:
    """global_step of a Lightning checkpoint, reading only its small pickle (tensors stay memory-mapped); None when
    the file is not a readable checkpoint (e.g. cut short: its zip directory, at the end, is missing)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception:  # any unreadable file is simply not a candidate
        return None


def is_intact(path: Path) -> bool:
    """Every record of the checkpoint's zip archive reads back with its CRC (streamed: no tensor stays in memory).
    This catches damage that a memory-mapped load does not notice."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def move_aside(path: Path) -> Path:
    """Rename an unreadable checkpoint to `NAME.corrupt-TIME-PID[-N]` (kept for inspection, never a resume
    candidate). Never over an earlier one: two damaged `last.ckpt` found in the same second by one process
    (e.g. `fit` called twice in a notebook) keep both."""
    stem = f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    aside, n = path.with_name(stem), 0
    while aside.exists():
        n += 1
        aside = path.with_name(f"{stem}-{n}")
    os.replace(path, aside)
    print(f"[mgen fit] {path} is not a readable checkpoint: moved aside to {aside.name}")
    return aside


def checkpoint_files(run_dir: Path) -> list[Path]:
    """Every checkpoint of a run: last, periodic and pre-emption ones."""
    folder = run_dir / CHECKPOINT_DIR
    return sorted(folder.glob("*.ckpt")) if folder.is_dir() else []


def resume_checkpoint(run_dir: Path, primary: bool = True) -> tuple[str, int] | None:
    """(path, global step) of the checkpoint to resume from: the most advanced readable one of any kind (ties:
    the newest file), None for a fresh run.

    `primary` (global rank 0, or a single process) also checks each candidate's integrity, from the most advanced
    down, and moves unreadable ones aside. The other ranks read the same files without changing anything and reach
    the same choice: the only files that change meanwhile are ones every rank rejects.

    Lightning alone looks for hpc checkpoints only without a `ckpt_path` under Slurm, and then ignores
    last.ckpt; `fit` always passes the path chosen here."""
    ranked: list[tuple[int, float, str, Path]] = []
    for path in checkpoint_files(run_dir):
        step = checkpoint_step(path)
        if step is not None:
            ranked.append((step, path.stat().st_mtime, path.name, path))
        elif primary:
            move_aside(path)
    for step, _, _, path in sorted(ranked, reverse=True):
        if not primary or is_intact(path):
            return str(path), step
        move_aside(path)
    if ranked and primary:  # the other ranks, reading headers only, would resume from a file rank 0 rejected
        raise ValueError(f"{run_dir / CHECKPOINT_DIR}: every checkpoint is damaged (moved aside as *.corrupt-*); "
                         f"restore one, or start again to train from step 0")
    return None


# ------------------------------------------------------------------------------------------------ keeping
@dataclass(frozen=True)
class Retention:
    """Which checkpoints a run keeps (recipe `trainer.checkpoints`): see the module docstring."""

    keep_last: int = KEEP_LAST_DEFAULT
    keep_every: int = KEEP_EVERY_DEFAULT

    def __post_init__(self) -> None:
        for name, low in (("keep_last", 1), ("keep_every", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"trainer.checkpoints.{name} must be an integer >= {low}, got {value!r}")

    def to_delete(self, steps: dict[Path, int]) -> list[Path]:
        """Of the checkpoints `steps` (path -> global step; last.ckpt excluded), those to delete."""
        ranked = sorted(steps, key=lambda p: (steps[p], p.stat().st_mtime, p.name), reverse=True)
        keep = set(ranked[: self.keep_last])
        if self.keep_every:
            keep |= {p for p in ranked if (n := periodic_count(p)) is not None and n % self.keep_every == 0}
        return [p for p in ranked if p not in keep]


def periodic_count(path: Path) -> int | None:
    """The step / update count in a periodic checkpoint's name (`...step=150.ckpt`, `codec-updates=40.ckpt`); None
    for last.ckpt and pre-emption checkpoints."""
    if path.name == LAST or HPC_PATTERN.fullmatch(path.name):
        return None
    match = re.search(r"=(\d+)(?:\.ckpt)$", path.name)
    return int(match.group(1)) if match else None


class RunCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` for a run directory: periodic checkpoints + last.ckpt, never `-v1` duplicates, the
    retention of the recipe applied after each commit, and a last.ckpt at the end of training that holds the
    final state (so that starting a finished run again resumes at its end)."""

    def __init__(self, dirpath: str | Path | None, retention: Retention, **kwargs: Any) -> None:
        super().__init__(dirpath=None if dirpath is None else str(dirpath), save_last=True, save_top_k=-1,
                         enable_version_counter=False, **kwargs)  # save_top_k -1: Lightning deletes nothing
        self.retention = retention
        self._steps: dict[tuple[str, int, int], int | None] = {}

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)  # ends with a barrier: the file is committed
        self.prune(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _cached_step(self, path: Path) -> int | None:
        stat = path.stat()
        key = (path.name, stat.st_mtime_ns, stat.st_size)
        if key not in self._steps:
            self._steps[key] = checkpoint_step(path)
        return self._steps[key]

    def prune(self, trainer: L.Trainer) -> list[Path]:
        """Delete what the retention does not keep (global rank 0; the newest checkpoints are always kept)."""
        if not trainer.is_global_zero or self.dirpath is None:
            return []
        steps = {}
        for path in Path(self.dirpath).glob("*.ckpt"):
            if path.name != LAST and (step := self._cached_step(path)) is not None:
                steps[path] = step
        doomed = self.retention.to_delete(steps)
        for path in doomed:
            path.unlink(missing_ok=True)
        return doomed


def check_interval(name: str, value: Any) -> int:
    """A checkpoint interval of a recipe: an integer >= 1 (0 would silently write no periodic checkpoint)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"trainer.{name} must be an integer >= 1 (checkpoints are how a run resumes; raise it to "
                         f"write fewer), got {value!r}")
    return value
