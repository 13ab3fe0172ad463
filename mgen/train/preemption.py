"""Slurm pre-emption: how a run stops when told to, so that its requeued job resumes where it stopped.

`SlurmPreemption` makes the signal safe for sharded and replicated models: the ranks stop together at a step
boundary, save `RUN/checkpoints/hpc_ckpt_N.ckpt`, and `fit` requeues the job. Which checkpoint a start resumes
from is `mgen.train.checkpoints.resume_checkpoint`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch

from mgen.train.checkpoints import CHECKPOINT_DIR, HPC_PATTERN, RunCheckpoint


def next_hpc_path(run_dir: Path) -> Path:
    folder = run_dir / CHECKPOINT_DIR
    numbers = [int(m.group(1)) for p in folder.glob("hpc_ckpt_*.ckpt") if (m := HPC_PATTERN.fullmatch(p.name))]
    return folder / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt"


class SlurmPreempted(Exception):
    """Raised on every rank once the pre-emption checkpoint is written: ends `trainer.fit` at once."""


class SlurmPreemption(L.Callback):
    """Pre-emption under Slurm (`#SBATCH --signal=USR1@120`), safe for sharded and replicated models alike.

    Lightning's own handler (SLURMEnvironment with auto_requeue) saves the checkpoint inside the signal
    handler, wherever each rank happens to be. With FSDP (or DDP) the ranks are rarely at the same point:
    one is waiting in a gradient reduce-scatter when another starts gathering weights for the checkpoint, and
    the collectives pair up wrongly (hang or garbage). Here the handler only raises a flag; after each
    optimiser step the ranks agree on it (one all-reduce), all write hpc_ckpt_N.ckpt at the same point,
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
        path = Path(trainer.strategy.broadcast(str(next_hpc_path(self.run_dir))))  # rank 0 names it
        trainer.save_checkpoint(path)  # every rank, at the same point: the strategy's collectives line up
        for callback in trainer.checkpoint_callbacks:  # the retention counts pre-emption checkpoints too
            if isinstance(callback, RunCheckpoint):
                callback.prune(trainer)
        self.saved, self.step = path, trainer.global_step
        # Lightning logs this step's metrics right after this hook, which the exception skips; the resumed run
        # starts after this step, so without this its row would be missing from metrics.csv for good.
        trainer._logger_connector.on_batch_end()
        trainer._logger_connector.update_train_step_metrics()
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
