"""How `mgen fit` builds a codec run from a typed recipe (`CodecRecipe`): module, audio DataModule, callbacks,
Trainer arguments, export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor

from mgen.data import AudioDataModule
from mgen.train.checkpoints import CHECKPOINT_DIR
from mgen.train.codec_module import DDP_STRATEGY, CodecModule, UpdateCheckpoint, export_codec
from mgen.train.eval_metrics import codec_eval_callbacks
from mgen.train.recipe import CodecRecipe


def build_codec_module(recipe: CodecRecipe) -> CodecModule:
    return CodecModule(recipe.model, recipe.optim, recipe.ema, max_steps=recipe.trainer.max_steps)


def codec_callbacks(recipe: CodecRecipe, dirpath: str | Path | None = None) -> list[L.Callback]:
    """LR monitor and an update-counting checkpoint (`trainer.checkpoints` says how many are kept, last.ckpt
    always). EMA is not a callback: the module keeps `codec_ema` itself."""
    trainer = recipe.trainer
    return [LearningRateMonitor(logging_interval="step"),
            UpdateCheckpoint(every_n_updates=trainer.checkpoint_every_n_steps, dirpath=dirpath,
                             retention=trainer.checkpoints)]


def codec_trainer_kwargs(recipe: CodecRecipe) -> dict[str, Any]:
    """`lightning.Trainer` arguments of a codec recipe.

    `max_steps` stays -1 on purpose: the module stops at `trainer.max_steps` generator updates, while Lightning's
    step counter advances once per optimiser step (two per batch once the discriminator trains). One batch is one
    generator update, so batch-based intervals (validation, logging) count updates.
    """
    trainer = recipe.trainer
    return {"max_steps": -1, "max_epochs": -1, "precision": str(trainer.precision),
            "log_every_n_steps": trainer.log_every_n_steps, "limit_val_batches": trainer.limit_val_batches,
            "val_check_interval": trainer.val_every_n_steps or 1.0,
            "check_val_every_n_epoch": None if trainer.val_every_n_steps else 1}


def build(recipe: CodecRecipe, run_dir: Path) -> tuple[CodecModule, AudioDataModule, list[L.Callback]]:
    module = build_codec_module(recipe)
    data, codec = recipe.data, module.codec
    datamodule = AudioDataModule(
        data.shards, segment_seconds=data.segment_seconds, sample_rate=codec.sample_rate, channels=codec.channels,
        global_batch_size=data.global_batch_size, num_workers=data.num_workers, seed=recipe.seed,
        resampled=data.resampled, epoch_length=data.epoch_length, max_batch_per_device=data.max_batch_per_device)
    callbacks = codec_callbacks(recipe, run_dir / CHECKPOINT_DIR) + codec_eval_callbacks(recipe.eval)
    return module, datamodule, callbacks


def trainer_options(recipe: CodecRecipe, datamodule: AudioDataModule, world_size: int) -> dict[str, Any]:
    if datamodule.batch_plan(world_size).accumulate != 1:
        raise ValueError("codec training updates the generator and the discriminator every batch and does not "
                         "accumulate gradients: make data.global_batch_size fit on the devices "
                         "(or raise data.max_batch_per_device)")
    datamodule.check_world_size(world_size)
    options = codec_trainer_kwargs(recipe)
    if world_size > 1:
        options["strategy"] = DDP_STRATEGY
    return options


def export(module: CodecModule, trainer: L.Trainer, run_dir: Path) -> Path | None:
    """The final codec (EMA weights) as config.json + model.safetensors, written by rank 0."""
    if not trainer.is_global_zero:
        return None
    return export_codec(module, run_dir / "export")
