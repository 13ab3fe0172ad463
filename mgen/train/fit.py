"""`mgen fit`: one entry that turns a recipe into a Lightning run, on a laptop or under Slurm.

A run directory holds everything a run makes: `recipe.yaml` (the resolved recipe), `checkpoints/`
(`last.ckpt`, periodic ones and `hpc_ckpt_N.ckpt` written on a Slurm pre-emption signal), `logs/` (CSV, media,
and W&B when asked), `export/` (the final model in the documented format) and `.lock` while a job runs.
Re-running the same command resumes from the most advanced readable checkpoint of the run
(`mgen.train.checkpoints`); under Slurm the ranks stop together at a step boundary, save, and the job requeues
itself (`SlurmPreemption`).

Many processes start on one run directory (the ranks of a job, started together by Slurm or torchrun, or by
Lightning inside `trainer.fit`), so only global rank 0 writes there, and only once it holds the run lock
(`mgen.train.run_lock`): a second job on the same directory refuses before writing anything. The Trainer is made
first because its constructor writes nothing and knows each process's rank.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.plugins.environments import SLURMEnvironment

from mgen.atomic import remove_stale_temporaries, write_text_atomic
from mgen.train import codec_recipe, lm_recipe
from mgen.train.checkpoints import CHECKPOINT_DIR, AtomicCheckpointIO, resume_checkpoint
from mgen.train.exact_resume import ExactResume
from mgen.train.loggers import ResumableCSVLogger, finish_loggers, make_loggers
from mgen.train.preemption import SlurmPreempted, SlurmPreemption, requeue_job
from mgen.train.recipe import Recipe, load_recipe
from mgen.train.run_lock import RunLock

# recipe `task:` -> module with build(recipe, run_dir) -> (module, datamodule, callbacks),
# trainer_options(recipe, datamodule, world_size) -> Trainer kwargs, and export(module, trainer, run_dir)
TASK_BUILDERS = {"codec": codec_recipe, "lm": lm_recipe}


def _device_count(devices: int | str, accelerator: str) -> int:
    if isinstance(devices, int):
        return devices
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 1


def fit(recipe: dict[str, Any] | str | Path, run_dir: str | Path, data: str | None = None,
        overrides: list[str] | None = None, devices: int | str = "auto", num_nodes: int = 1,
        accelerator: str = "auto", wandb: bool = False, resume: bool = True) -> dict[str, Any]:
    """Train what the recipe describes; returns a summary (paths, metrics; `preempted` under Slurm when the
    run stopped on the pre-emption signal and was requeued instead of exported)."""
    # signal handlers can only be set from the main thread; elsewhere Slurm's signal keeps its default action
    main_thread = threading.current_thread() is threading.main_thread()
    preemption = SlurmPreemption(Path(run_dir)) if SLURMEnvironment.detect() and main_thread else None
    try:
        return _fit(recipe, run_dir, data, overrides, devices, num_nodes, accelerator, wandb, resume, preemption)
    finally:
        if preemption is not None:
            preemption.uninstall()


def _fit(recipe: dict[str, Any] | str | Path, run_dir: str | Path, data: str | None,
         overrides: list[str] | None, devices: int | str, num_nodes: int, accelerator: str, wandb: bool,
         resume: bool, preemption: SlurmPreemption | None) -> dict[str, Any]:
    typed, raw = load_recipe(recipe, overrides, data)  # every check of the recipe, before anything is built
    if not typed.data.shards:
        raise ValueError("no training data: pass --data SHARDS_DIR or set data.shards in the recipe")
    run_dir = Path(run_dir)
    L.seed_everything(typed.seed, workers=True)
    set_tf32(typed.trainer.tf32)
    builder = TASK_BUILDERS[typed.task]
    module, datamodule, callbacks = builder.build(typed, run_dir)
    callbacks = [ExactResume(), *callbacks]  # first: it must see each batch before a callback saves a checkpoint
    trainer = make_trainer(typed, builder, datamodule, callbacks, run_dir, devices, num_nodes, accelerator, wandb,
                           preemption, raw)
    lock = RunLock(run_dir).acquire() if trainer.is_global_zero else None
    try:
        return _train(trainer, builder, module, datamodule, raw, run_dir, resume, preemption)
    finally:
        if lock is not None:
            lock.release()


def set_tf32(enabled: bool) -> None:
    """`trainer.tf32`: fp32 matmuls and convolutions in TF32 on Ampere+ GPUs (Lightning's advice; ~10-bit mantissa
    inputs, fp32 accumulation). CPUs are left alone: their fp32 kernels have no TF32 and other settings could change
    CPU results."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def make_trainer(recipe: Recipe, builder: Any, datamodule: L.LightningDataModule, callbacks: list[L.Callback],
                 run_dir: Path, devices: int | str = "auto", num_nodes: int = 1, accelerator: str = "auto",
                 wandb: bool = False, preemption: SlurmPreemption | None = None,
                 raw: dict[str, Any] | None = None) -> L.Trainer:
    """The Trainer of a run: the recipe's options and strategy, the run's loggers (`raw`, the recipe as written, is
    W&B's config), and `AtomicCheckpointIO` as the strategy's checkpoint writer (every strategy: one device, DDP,
    FSDP). Writes nothing."""
    trainer_cfg = recipe.trainer
    options: dict[str, Any] = {
        "max_epochs": -1, "max_steps": -1, "check_val_every_n_epoch": None,
        "precision": trainer_cfg.precision, "limit_val_batches": trainer_cfg.limit_val_batches,
        "log_every_n_steps": trainer_cfg.log_every_n_steps,
    }
    world_size = _device_count(devices, accelerator) * num_nodes
    options.update(builder.trainer_options(recipe, datamodule, world_size))
    plugins: list[Any] = [AtomicCheckpointIO()]
    if preemption is not None:  # our pre-emption handling replaces Lightning's (see SlurmPreemption)
        plugins.append(SLURMEnvironment(auto_requeue=False))
        callbacks = [*callbacks, preemption]
    loggers = make_loggers(run_dir, recipe, wandb, config=raw)
    return L.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, num_sanity_val_steps=0,
        default_root_dir=str(run_dir), logger=loggers, callbacks=callbacks, plugins=plugins,
        enable_progress_bar=trainer_cfg.progress_bar, **options)


def write_resolved_recipe(run_dir: Path, recipe: dict[str, Any]) -> None:
    """RUN/recipe.yaml: the recipe file as this run reads it (overrides applied), committed atomically; re-running
    `mgen fit RUN/recipe.yaml` reads the same recipe."""
    write_text_atomic(run_dir / "recipe.yaml", yaml.safe_dump(recipe, sort_keys=False))


def _train(trainer: L.Trainer, builder: Any, module: L.LightningModule, datamodule: L.LightningDataModule,
           recipe: dict[str, Any], run_dir: Path, resume: bool,
           preemption: SlurmPreemption | None) -> dict[str, Any]:
    primary = trainer.is_global_zero
    if primary:  # under the run lock: what killed processes left half-written is debris now
        for folder in (run_dir, run_dir / CHECKPOINT_DIR, run_dir / "logs", run_dir / "logs" / "media"):
            remove_stale_temporaries(folder, owned=True)
    found = resume_checkpoint(run_dir, primary=primary) if resume else None
    ckpt, resumed_at = found if found else (None, None)
    if found:
        print(f"[mgen fit] resuming from {ckpt} (global step {resumed_at})")
    for logger in trainer.loggers:
        if isinstance(logger, ResumableCSVLogger):
            logger.resumed_at = resumed_at
    if primary:
        write_resolved_recipe(run_dir, recipe)
    failed = True
    try:
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
        except SlurmPreempted:
            failed = False
            assert preemption is not None and preemption.saved is not None
            print(f"[mgen fit] pre-empted at global step {preemption.step}: saved {preemption.saved}")
            requeued = requeue_job() if trainer.is_global_zero else None
            return {"run_dir": str(run_dir), "export": None, "global_step": preemption.step, "metrics": {},
                    "preempted": True, "checkpoint": str(preemption.saved), "requeued": requeued}
        export_dir = builder.export(module, trainer, run_dir)
        failed = False
    finally:
        finish_loggers(trainer.loggers, failed)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    return {"run_dir": str(run_dir), "export": str(export_dir) if export_dir else None,
            "global_step": trainer.global_step, "metrics": metrics}
