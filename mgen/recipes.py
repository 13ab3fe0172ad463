"""Recipes: one YAML file = one reproducible run. This module reads them; training sections grow with
the training issues."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mgen.lm.model import LMConfig


def load_recipe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict) or "model" not in data:
        raise ValueError(f"{path}: a recipe is a mapping with at least a 'model' section")
    return data


def recipe_section(recipe: dict[str, Any], name: str, known: set[str] | None = None,
                   kind: str = "") -> dict[str, Any]:
    """A copy of one section (a mapping, empty when absent); unknown keys are an error naming them, so a
    typo never silently falls back to a default."""
    value = recipe.get(name) or {}
    where = f"{kind} recipe section {name!r}".strip()
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a mapping, got {type(value).__name__}")
    if known is not None and set(value) - known:
        raise ValueError(f"unknown keys in {where}: {sorted(set(value) - known)}; known: {sorted(known)}")
    return dict(value)


def lm_config_from_recipe(recipe: dict[str, Any]) -> LMConfig:
    """The LMConfig of a recipe's model section: a size preset plus field overrides."""
    model = dict(recipe["model"])
    preset = model.pop("preset", None)
    return LMConfig.preset(preset, **model) if preset else LMConfig.from_dict(model)
