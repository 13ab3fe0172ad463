"""Resuming and Slurm pre-emption: which checkpoint a run continues from, and how it stops when told to.

A run continues from its most advanced readable checkpoint: `checkpoints/last.ckpt` or an `hpc_ckpt_N.ckpt`
written on a Slurm pre-emption signal. `SlurmPreemption` makes that signal safe for sharded and replicated
models: the ranks stop together at a step boundary, save, and `fit` requeues the job.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import warnings
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch

from mgen.errors import first_line

HPC_CHECKPOINTS = "hpc_ckpt_*.ckpt"  # pre-emption checkpoints in the run directory (Lightning's naming)


def _checkpoint_step(path: Path) -> int | None:
    """global_step of a Lightning checkpoint (memory-mapped: the weights are not read), None if unreadable."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception as err:  # noqa: BLE001 - a file cut short by a kill must not stop the resume
        warnings.warn(f"{path}: not a readable checkpoint ({first_line(err, 200)}); not resuming from it",
                      stacklevel=2)
        return None


def resume_path(run_dir: Path) -> tuple[str, int] | None:
    """(path, global step) of the checkpoint to resume from: the most advanced readable one of
    `checkpoints/last.ckpt` and `hpc_ckpt_*.ckpt` (ties: the newest file), None for a fresh run.

    Lightning itself looks for hpc checkpoints only when `trainer.fit` gets no `ckpt_path` under Slurm, and
    then ignores last.ckpt even when it is more recent; `fit` always passes the path chosen here."""
    best: tuple[tuple[int, float], Path] | None = None
    for path in [run_dir / "checkpoints" / "last.ckpt", *sorted(run_dir.glob(HPC_CHECKPOINTS))]:
        if not path.is_file():
            continue
        step = _checkpoint_step(path)
        if step is not None and (best is None or (step, path.stat().st_mtime) > best[0]):
            best = ((step, path.stat().st_mtime), path)
    return (str(best[1]), best[0][0]) if best else None


def next_hpc_path(run_dir: Path) -> Path:
    names = (re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name) for p in run_dir.glob(HPC_CHECKPOINTS))
    numbers = [int(m.group(1)) for m in names if m]
    return run_dir / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt"


class SlurmPreempted(Exception):
    """Raised on every rank once the pre-emption checkpoint is written: ends `trainer.fit` at once."""


class SlurmPreemption(L.Callback):
    """Pre-emption under Slurm (`#SBATCH --signal=USR1@120`), safe for sharded and replicated models alike.

    Lightning's own handler (SLURMEnvironment with auto_requeue) saves the checkpoint inside the signal
    handler, wherever each rank happens to be. With FSDP (or DDP) the ranks are rarely at the same point:
    one is waiting in a gradient reduce-scatter when another starts gathering weights for the checkpoint, and
    the collectives pair up wrongly (hang or garbage). Here the handler only raises a flag; after each
    optimiser step the ranks agree on it (one all-reduce), all write RUN/hpc_ckpt_N.ckpt at the same point,
    and training ends; `fit` then requeues the job (`scontrol requeue`) instead of exporting. The handler is
    installed when the callback is made, before the slow start-up, because SIGUSR1's default action kills."""

    def __init__(self, run_dir: Path, signum: int = signal.SIGUSR1):
        self.run_dir = run_dir
        self.signum = signum
        self.signalled = False
        self.saved: Path | None = None
        self.step: int | None = None
        self._checked_step: int | None = None
        self._previous = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signalled = True

    def uninstall(self) -> None:
        signal.signal(self.signum, self._previous)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._checked_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self._checked_step:
            return  # inside a gradient accumulation: only stop right after an optimiser step
        self._checked_step = trainer.global_step
        flag = torch.tensor(float(self.signalled), device=pl_module.device)
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce(flag, reduce_op="max")
        if flag.item() == 0:
            return
        path = next_hpc_path(self.run_dir)
        trainer.save_checkpoint(path)  # every rank, at the same point: the strategy's collectives line up
        self.saved, self.step = path, trainer.global_step
        raise SlurmPreempted(f"pre-empted at step {trainer.global_step}: saved {path}")


def requeue_job() -> bool:
    """`scontrol requeue` this job (or array task); False (with the reason printed) when Slurm refuses."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID", "")
    if not re.fullmatch(r"[0-9_]+", job):
        print(f"[mgen fit] no Slurm job id to requeue ({job!r}): run the same command again to resume")
        return False
    res = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        print(f"[mgen fit] scontrol requeue {job} failed ({res.returncode}: {res.stderr.strip()}); submit the job "
              f"again (sbatch --requeue) to resume")
        return False
    print(f"[mgen fit] requeued Slurm job {job}")
    return True
