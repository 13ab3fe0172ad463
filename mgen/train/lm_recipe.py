"""How `mgen fit` builds an LM run from a recipe: module, token/audio DataModule, callbacks, export."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor

from mgen.codec.checkpoint import load_codec
from mgen.data import SkippedSamplesMonitor, lm_datamodule
from mgen.recipes import lm_config_from_recipe, recipe_section
from mgen.train.checkpoints import CHECKPOINT_DIR, Retention, RunCheckpoint, check_interval
from mgen.train.lm_export import write_lm_export
from mgen.train.lm_ema import LMWeightAverage
from mgen.conditioning.provider import ConditioningConfig
from mgen.train.lm_module import LMModule, LMTrainConfig
from mgen.train.eval_metrics import LM_EVAL_KEYS, lm_eval_callbacks
from mgen.train.lm_samples import ValidationSamples
from mgen.train.parallel import lm_strategy_options

RECIPE_SECTIONS = {"task", "seed", "model", "codec", "conditioning", "optim", "data", "trainer", "ema", "samples",
                   "logger", "eval"}
DATA_KEYS = {"shards", "segment_seconds", "global_batch_size", "num_workers", "resampled", "epoch_length",
             "max_batch_per_device", "chroma"}
TRAINER_KEYS = {"max_steps", "precision", "val_every_n_batches", "limit_val_batches", "log_every_n_steps",
                "checkpoint_every_n_steps", "checkpoints", "progress_bar", "strategy", "fsdp"}
EMA_KEYS = {"decay", "every_n_steps", "start_step"}
SAMPLES_KEYS = {"count", "seconds", "every_n_validations", "cfg_coef", "top_k", "temperature"}


def check_recipe(recipe: dict[str, Any]) -> None:
    """Every section and key of an LM recipe is one mgen reads: a typo is an error, not a silent default."""
    unknown = set(recipe) - RECIPE_SECTIONS
    if unknown:
        raise ValueError(f"unknown LM recipe sections {sorted(unknown)}; known: {sorted(RECIPE_SECTIONS)}")
    sections = {"conditioning": {f.name for f in fields(ConditioningConfig)},
                "optim": {f.name for f in fields(LMTrainConfig)}, "data": DATA_KEYS, "trainer": TRAINER_KEYS,
                "ema": EMA_KEYS, "samples": SAMPLES_KEYS, "logger": {"wandb", "project"}, "eval": LM_EVAL_KEYS}
    for name, known in sections.items():
        recipe_section(recipe, name, known, kind="LM")


def lm_callbacks(recipe: dict[str, Any], run_dir: Path) -> list[L.Callback]:
    """Checkpoints, learning rate, skipped samples; evaluation metrics, EMA of the weights and validation samples
    when asked."""
    trainer = recipe_section(recipe, "trainer")
    every = check_interval("checkpoint_every_n_steps", trainer.get("checkpoint_every_n_steps", 500))
    callbacks: list[L.Callback] = [
        RunCheckpoint(run_dir / CHECKPOINT_DIR, Retention.from_recipe(trainer), every_n_train_steps=every),
        LearningRateMonitor(logging_interval="step"),
        SkippedSamplesMonitor(),
        *lm_eval_callbacks(recipe),  # before EMA: it generates while the averaged weights are in place
    ]
    ema = recipe_section(recipe, "ema", EMA_KEYS)
    if ema.get("decay"):
        callbacks.append(LMWeightAverage(decay=float(ema["decay"]),
                                        update_every_n_steps=int(ema.get("every_n_steps", 1)),
                                        update_starting_at_step=ema.get("start_step")))
    samples = recipe_section(recipe, "samples", SAMPLES_KEYS)
    if samples.get("count", 0):
        callbacks.append(ValidationSamples(**samples, seed=int(recipe.get("seed", 0))))
    return callbacks


def build(recipe: dict[str, Any], run_dir: Path) -> tuple[LMModule, L.LightningDataModule, list[L.Callback]]:
    check_recipe(recipe)
    data = recipe.get("data", {})
    datamodule = lm_datamodule(
        data["shards"], segment_seconds=float(data.get("segment_seconds", 30.0)),
        global_batch_size=int(data.get("global_batch_size", 192)), num_workers=int(data.get("num_workers", 2)),
        seed=int(recipe.get("seed", 0)), resampled=bool(data.get("resampled", False)),
        epoch_length=data.get("epoch_length"), max_batch_per_device=data.get("max_batch_per_device"),
        chroma=bool(data.get("chroma", False)))
    lm_cfg = lm_config_from_recipe(recipe)
    if datamodule.kind == "tokens" and (lm_cfg.n_q, lm_cfg.card) != (datamodule.num_codebooks, datamodule.cardinality):
        raise ValueError(f"the token shards hold {datamodule.num_codebooks} codebooks x {datamodule.cardinality} "
                         f"codes, the recipe's LM models {lm_cfg.n_q} x {lm_cfg.card}: set model.n_q / model.card")
    codec_path = recipe.get("codec") or (getattr(datamodule, "codec", None) or {}).get("path")
    module = LMModule(lm_cfg.to_dict(), recipe.get("conditioning", {}), recipe.get("optim", {}),
                      codec_path=codec_path)
    module.hparams["train_segment_seconds"] = datamodule.segment_seconds
    return module, datamodule, lm_callbacks(recipe, run_dir)


def validation_schedule(recipe: dict[str, Any]) -> dict[str, Any]:
    """`trainer.val_every_n_batches`: validate every N training batches (default 200), or at the end of every
    epoch when it is null (the published schedule: epochs of `data.epoch_length` samples per rank)."""
    every = recipe_section(recipe, "trainer").get("val_every_n_batches", 200)
    if every is not None:
        return {"val_check_interval": int(every), "check_val_every_n_epoch": None}
    data = recipe_section(recipe, "data")
    if data.get("resampled") and data.get("epoch_length") is None:
        raise ValueError("trainer.val_every_n_batches is null (validate at every epoch end), but data.resampled "
                         "without data.epoch_length never ends an epoch: set data.epoch_length or "
                         "trainer.val_every_n_batches")
    return {"val_check_interval": 1.0, "check_val_every_n_epoch": 1}


def trainer_options(recipe: dict[str, Any], datamodule: L.LightningDataModule, world_size: int) -> dict[str, Any]:
    """Trainer arguments the LM run derives from the recipe and the data: steps, accumulation, clipping, validation
    schedule, and the multi-device strategy (`trainer.strategy`: auto | ddp | fsdp, see `mgen.train.parallel`)."""
    trainer_cfg = recipe.get("trainer", {})
    optim = recipe.get("optim", {})
    datamodule.check_world_size(world_size)
    return {"max_steps": int(trainer_cfg.get("max_steps", optim.get("total_steps", 1_000_000))),
            "accumulate_grad_batches": datamodule.batch_plan(world_size).accumulate,
            "gradient_clip_val": optim.get("max_grad_norm", 1.0),
            **validation_schedule(recipe),
            **lm_strategy_options(recipe, world_size)}


def export(module: LMModule, trainer: L.Trainer, run_dir: Path) -> Path | None:
    """RUN/export in the format `mgen export` writes too (`mgen.train.lm_export`), which `mgen.MusicGen.load`
    reads: config + weights + codec/ (when the run knows its codec) + the text encoder. Written by rank 0."""
    if not trainer.is_global_zero:
        return None
    codec = load_codec(module.codec_path) if module.codec_path else None
    return write_lm_export(run_dir / "export", dict(module.hparams), module.lm, module.conditioner, codec)
