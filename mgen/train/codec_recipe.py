"""How `mgen fit` builds a codec run from a recipe: module, audio DataModule, callbacks, export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from mgen.data import AudioDataModule
from mgen.train.checkpoints import CHECKPOINT_DIR
from mgen.train.eval_metrics import codec_eval_callbacks
from mgen.train.codec_module import (DDP_STRATEGY, CodecModule, build_codec_module, codec_callbacks, codec_trainer_kwargs,
                                     export_codec)

FIT_ONLY_KEYS = {"data": {"shards", "resampled", "epoch_length", "max_batch_per_device"},
                 "trainer": {"progress_bar"}}


def _module_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe without what only `mgen fit` reads (data location, seed, progress bar)."""
    out = {k: v for k, v in recipe.items() if k != "seed"}
    for section, keys in FIT_ONLY_KEYS.items():
        out[section] = {k: v for k, v in recipe.get(section, {}).items() if k not in keys}
    return out


def build(recipe: dict[str, Any], run_dir: Path) -> tuple[CodecModule, AudioDataModule, list[L.Callback]]:
    module = build_codec_module(_module_recipe(recipe))
    data = recipe.get("data", {})
    codec = module.codec
    datamodule = AudioDataModule(
        data.get("shards") or data["shards_dir"], segment_seconds=float(data.get("segment_seconds", 1.0)),
        sample_rate=codec.sample_rate, channels=codec.channels,
        global_batch_size=int(data.get("global_batch_size", 8)), num_workers=int(data.get("num_workers", 2)),
        seed=int(recipe.get("seed", 0)), resampled=bool(data.get("resampled", True)),
        epoch_length=data.get("epoch_length", 1000), max_batch_per_device=data.get("max_batch_per_device"))
    callbacks = codec_callbacks(_module_recipe(recipe), run_dir / CHECKPOINT_DIR) + codec_eval_callbacks(recipe)
    return module, datamodule, callbacks


def trainer_options(recipe: dict[str, Any], datamodule: AudioDataModule, world_size: int) -> dict[str, Any]:
    if datamodule.batch_plan(world_size).accumulate != 1:
        raise ValueError("codec training updates the generator and the discriminator every batch and does not "
                         "accumulate gradients: make data.global_batch_size fit on the devices "
                         "(or raise data.max_batch_per_device)")
    datamodule.check_world_size(world_size)
    options = codec_trainer_kwargs(_module_recipe(recipe))
    if world_size > 1:
        options["strategy"] = DDP_STRATEGY
    return options


def export(module: CodecModule, trainer: L.Trainer, run_dir: Path) -> Path | None:
    """The final codec (EMA weights) as config.json + model.safetensors, written by rank 0."""
    if not trainer.is_global_zero:
        return None
    return export_codec(module, run_dir / "export")
