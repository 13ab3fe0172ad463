"""Recipes load into the model configs they describe."""

from pathlib import Path

import pytest

from mgen.lm.model import LMConfig
from mgen.recipes import lm_config_from_recipe, load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_lm_recipes_match_presets(size: str) -> None:
    recipe = load_recipe(RECIPES / "lm" / f"{size}.yaml")
    cfg = lm_config_from_recipe(recipe)
    preset = LMConfig.preset(size)
    assert (cfg.dim, cfg.num_layers, cfg.num_heads) == (preset.dim, preset.num_layers, preset.num_heads)
    assert recipe["data"]["global_batch_size"] == 192 and recipe["optim"]["lr"] == 1e-4


def test_bad_recipes_are_clear_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_recipe(bad)
    bad.write_text("optim: {}\n")
    with pytest.raises(ValueError, match="'model' section"):
        load_recipe(bad)


@pytest.mark.parametrize("path", ["lm/small.yaml", "lm/medium.yaml", "lm/large.yaml", "quickstart/lm.yaml"])
def test_lm_recipes_are_runnable(path: str) -> None:
    """Every shipped LM recipe passes `mgen fit`'s checks: known sections and keys, valid configs."""
    from dataclasses import fields

    from mgen.conditioning.provider import ConditioningConfig
    from mgen.train.lm_module import LMTrainConfig
    from mgen.train.lm_recipe import check_recipe
    from mgen.train.parallel import lm_strategy_options

    recipe = load_recipe(RECIPES / path)
    assert recipe["task"] == "lm"
    check_recipe(recipe)
    ConditioningConfig(**recipe["conditioning"])
    train = LMTrainConfig(**recipe["optim"])
    assert {f.name for f in fields(train)} >= set(recipe["optim"])
    lm_config_from_recipe(recipe)
    options = lm_strategy_options(recipe, world_size=32)  # recipe errors (e.g. fsdp + ema) surface here
    assert options["strategy"] == "ddp" or recipe["trainer"]["strategy"] == "fsdp"
