"""`mgen fit`: one entry that turns a recipe into a Lightning run, on a laptop or under Slurm.

A run directory holds everything a run makes: `recipe.yaml` (the resolved recipe), `checkpoints/`
(`last.ckpt` and periodic ones), `logs/` (CSV, and W&B when asked), `export/` (the final model in the
documented format). Re-running the same command resumes from `checkpoints/last.ckpt`; under Slurm,
Lightning's SLURM environment saves an `hpc_ckpt_*.ckpt` on the pre-emption signal, requeues the job, and
the restarted job resumes from it.
"""

from __future__ import annotations

import copy
import importlib
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from mgen.recipes import load_recipe

# recipe `task:` -> module with build(recipe, run_dir) -> (module, datamodule, callbacks),
# trainer_options(recipe, datamodule, world_size) -> Trainer kwargs, and export(module, trainer, run_dir)
TASK_BUILDERS = {"codec": "mgen.train.codec_recipe", "lm": "mgen.train.lm_recipe"}
TASKS = tuple(TASK_BUILDERS)


def _set(recipe: dict[str, Any], dotted: str, value: Any) -> None:
    node = recipe
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def apply_overrides(recipe: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`section.key=value` overrides (values parsed as YAML), e.g. `trainer.max_updates=50`."""
    recipe = copy.deepcopy(recipe)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        _set(recipe, key.strip(), yaml.safe_load(raw))
    return recipe


def make_loggers(run_dir: Path, recipe: dict[str, Any], wandb: bool) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(str(run_dir / "logs"), name="", version="")]
    if wandb or recipe.get("logger", {}).get("wandb"):
        project = recipe.get("logger", {}).get("project", "mgen")
        loggers.append(WandbLogger(project=project, name=run_dir.name, save_dir=str(run_dir / "logs"),
                                   offline=os.environ.get("WANDB_MODE") == "offline"))
    return loggers


def _device_count(devices: int | str, accelerator: str) -> int:
    if isinstance(devices, int):
        return devices
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 1


def _resume_path(run_dir: Path) -> str | None:
    last = run_dir / "checkpoints" / "last.ckpt"
    return str(last) if last.is_file() else None


def fit(recipe: dict[str, Any] | str | Path, run_dir: str | Path, data: str | None = None,
        overrides: list[str] | None = None, devices: int | str = "auto", num_nodes: int = 1,
        accelerator: str = "auto", wandb: bool = False, resume: bool = True) -> dict[str, Any]:
    """Train what the recipe describes; returns a summary (paths, metrics)."""
    recipe = load_recipe(recipe) if not isinstance(recipe, dict) else recipe
    recipe = apply_overrides(recipe, overrides or [])
    if data is not None:
        _set(recipe, "data.shards", data)
    task = recipe.get("task")
    if task not in TASKS:
        raise ValueError(f"recipe task must be one of {TASKS}, got {task!r}")
    if not recipe.get("data", {}).get("shards"):
        raise ValueError("no training data: pass --data SHARDS_DIR or set data.shards in the recipe")
    run_dir = Path(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "recipe.yaml.tmp"
    tmp.write_text(yaml.safe_dump(recipe, sort_keys=False))
    os.replace(tmp, run_dir / "recipe.yaml")
    L.seed_everything(int(recipe.get("seed", 0)), workers=True)
    builder = importlib.import_module(TASK_BUILDERS[task])
    module, datamodule, callbacks = builder.build(recipe, run_dir)
    trainer_cfg = recipe.get("trainer", {})
    options: dict[str, Any] = {
        "max_epochs": -1, "max_steps": -1, "check_val_every_n_epoch": None,
        "precision": trainer_cfg.get("precision", "32-true"),
        "val_check_interval": int(trainer_cfg.get("val_every_n_batches", 200)),
        "limit_val_batches": trainer_cfg.get("limit_val_batches", 4),
        "log_every_n_steps": int(trainer_cfg.get("log_every_n_steps", 10)),
    }
    world_size = _device_count(devices, accelerator) * num_nodes
    options.update(builder.trainer_options(recipe, datamodule, world_size))
    trainer = L.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, num_sanity_val_steps=0,
        default_root_dir=str(run_dir), logger=make_loggers(run_dir, recipe, wandb), callbacks=callbacks,
        enable_progress_bar=trainer_cfg.get("progress_bar", True), **options)
    ckpt = _resume_path(run_dir) if resume else None
    if ckpt:
        print(f"[mgen fit] resuming from {ckpt}")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    export_dir = builder.export(module, trainer, run_dir)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    return {"run_dir": str(run_dir), "export": str(export_dir) if export_dir else None,
            "global_step": trainer.global_step, "metrics": metrics}
