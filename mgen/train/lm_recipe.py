"""How `mgen fit` builds an LM run from a recipe: module, token/audio DataModule, callbacks, export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor

from mgen.codec.checkpoint import load_codec
from mgen.data import SkippedSamplesMonitor, lm_datamodule
from mgen.train.checkpoints import CHECKPOINT_DIR, RunCheckpoint
from mgen.train.ema import LMWeightAverage
from mgen.train.eval_metrics import lm_eval_callbacks
from mgen.train.lm_export import write_lm_export
from mgen.train.lm_module import LMModule
from mgen.train.lm_samples import ValidationSamples
from mgen.train.parallel import lm_strategy_options
from mgen.train.recipe import LMRecipe


def lm_callbacks(recipe: LMRecipe, run_dir: Path) -> list[L.Callback]:
    """Checkpoints, learning rate, skipped samples; evaluation metrics, EMA of the weights and validation samples
    when asked."""
    trainer = recipe.trainer
    callbacks: list[L.Callback] = [
        RunCheckpoint(run_dir / CHECKPOINT_DIR, trainer.checkpoints,
                      every_n_train_steps=trainer.checkpoint_every_n_steps),
        LearningRateMonitor(logging_interval="step"),
        SkippedSamplesMonitor(),
        *lm_eval_callbacks(recipe.eval, seed=recipe.seed),  # before EMA: it generates while the average is in place
    ]
    ema = recipe.ema
    if ema.decay:
        callbacks.append(LMWeightAverage(decay=ema.decay, update_every_n_steps=ema.every_n_steps,
                                         update_starting_at_step=ema.start_step))
    samples = recipe.samples
    if samples.count:
        callbacks.append(ValidationSamples(**samples.model_dump(), seed=recipe.seed))
    return callbacks


def build(recipe: LMRecipe, run_dir: Path) -> tuple[LMModule, L.LightningDataModule, list[L.Callback]]:
    data = recipe.data
    datamodule = lm_datamodule(
        data.shards, segment_seconds=data.segment_seconds, global_batch_size=data.global_batch_size,
        num_workers=data.num_workers, seed=recipe.seed, resampled=data.resampled, epoch_length=data.epoch_length,
        max_batch_per_device=data.max_batch_per_device, chroma=data.chroma)
    lm_cfg = recipe.model
    if datamodule.kind == "tokens" and (lm_cfg.n_q, lm_cfg.card) != (datamodule.n_q, datamodule.card):
        raise ValueError(f"the token shards hold {datamodule.n_q} codebooks x {datamodule.card} "
                         f"codes, the recipe's LM models {lm_cfg.n_q} x {lm_cfg.card}: set model.n_q / model.card")
    codec_path = recipe.codec or (getattr(datamodule, "codec", None) or {}).get("path")
    module = LMModule(lm_cfg, recipe.conditioning, recipe.optim, max_steps=recipe.trainer.max_steps,
                      codec_path=codec_path, fsdp_plan=recipe.trainer.fsdp)
    module.hparams["train_segment_seconds"] = datamodule.segment_seconds
    return module, datamodule, lm_callbacks(recipe, run_dir)


def validation_schedule(recipe: LMRecipe, accumulate: int) -> dict[str, Any]:
    """`trainer.val_every_n_steps`: validate every N optimiser steps (N x `accumulate` batches), or at the end of
    every epoch when it is null (the published schedule: epochs of `data.epoch_length` samples per rank)."""
    every = recipe.trainer.val_every_n_steps
    if every is not None:
        return {"val_check_interval": every * accumulate, "check_val_every_n_epoch": None}
    return {"val_check_interval": 1.0, "check_val_every_n_epoch": 1}


def trainer_options(recipe: LMRecipe, datamodule: L.LightningDataModule, world_size: int) -> dict[str, Any]:
    """Trainer arguments the LM run derives from the recipe and the data: steps, accumulation, clipping, validation
    schedule, and the multi-device strategy (`trainer.strategy`: auto | ddp | fsdp, see `mgen.train.parallel`)."""
    datamodule.check_world_size(world_size)
    accumulate = datamodule.batch_plan(world_size).accumulate
    return {"max_steps": recipe.trainer.max_steps,
            "accumulate_grad_batches": accumulate,
            "gradient_clip_val": recipe.optim.max_grad_norm,
            **validation_schedule(recipe, accumulate),
            **lm_strategy_options(recipe.trainer.strategy, world_size)}


def export(module: LMModule, trainer: L.Trainer, run_dir: Path) -> Path | None:
    """RUN/export in the format `mgen export` writes too (`mgen.train.lm_export`), which `mgen.MusicGen.load`
    reads: config + weights + codec/ (when the run knows its codec) + the text encoder. Written by rank 0."""
    if not trainer.is_global_zero:
        return None
    codec = load_codec(module.codec_path) if module.codec_path else None
    return write_lm_export(run_dir / "export", dict(module.hparams), module.lm, module.conditioner, codec)
