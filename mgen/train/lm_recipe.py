"""How `mgen fit` builds an LM run from a recipe: module, token/audio DataModule, callbacks, export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from safetensors.torch import save_file

from mgen.atomic import atomic_directory
from mgen.codec.checkpoint import load_codec, save_codec
from mgen.data import SkippedSamplesMonitor, lm_datamodule
from mgen.musicgen import EXPORT_KIND
from mgen.recipes import lm_config_from_recipe
from mgen.train.lm_module import LMModule



def build(recipe: dict[str, Any], run_dir: Path) -> tuple[LMModule, L.LightningDataModule, list[L.Callback]]:
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
    trainer_cfg = recipe.get("trainer", {})
    every = int(trainer_cfg.get("checkpoint_every_n_steps", 500))
    callbacks: list[L.Callback] = [
        ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), save_last=True, every_n_train_steps=every,
                        save_top_k=-1),
        LearningRateMonitor(logging_interval="step"),
        SkippedSamplesMonitor(),
    ]
    return module, datamodule, callbacks


def trainer_options(recipe: dict[str, Any], datamodule: L.LightningDataModule, world_size: int) -> dict[str, Any]:
    """Trainer arguments the LM run derives from the recipe and the data: steps, accumulation, clipping."""
    trainer_cfg = recipe.get("trainer", {})
    optim = recipe.get("optim", {})
    return {"max_steps": int(trainer_cfg.get("max_steps", optim.get("total_steps", 1_000_000))),
            "accumulate_grad_batches": datamodule.batch_plan(world_size).accumulate,
            "gradient_clip_val": optim.get("max_grad_norm", 1.0)}


def export(module: LMModule, trainer: L.Trainer, run_dir: Path) -> Path | None:
    """config.json (LM, conditioning, training window) + model.safetensors (trainable weights) + codec/ (the
    codec export, when the run knows its codec): what `mgen.MusicGen.load` reads. Written by rank 0."""
    if not trainer.is_global_zero:
        return None
    target = run_dir / "export"
    with atomic_directory(target) as tmp:
        config = {"kind": EXPORT_KIND, **{k: v for k, v in dict(module.hparams).items() if k != "codec_path"}}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        if module.codec_path:
            save_codec(load_codec(module.codec_path), tmp / "codec")
    return target
