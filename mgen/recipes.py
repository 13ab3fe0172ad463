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


def lm_config_from_recipe(recipe: dict[str, Any]) -> LMConfig:
    """The LMConfig of a recipe's model section: a size preset plus field overrides."""
    model = dict(recipe["model"])
    preset = model.pop("preset", None)
    return LMConfig.preset(preset, **model) if preset else LMConfig.from_dict(model)
