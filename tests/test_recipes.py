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


QUICKSTART = RECIPES / "quickstart" / "lm.yaml"
CODEC_TINY = RECIPES / "codec" / "tiny.yaml"


def fit_fails(capsys, recipe: Path, run: Path, *overrides: str) -> str:
    """`mgen fit` refuses: exit code 2, one line on stderr, no run directory. Returns the line."""
    from mgen.cli import main

    args = ["fit", str(recipe), "--out", str(run), "--data", str(run.parent / "no-shards")]
    assert main([*args, *(a for o in overrides for a in ("--set", o))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert not run.exists()
    return err


@pytest.mark.parametrize(("recipe", "override", "named"), [
    (QUICKSTART, "optim.lr=abc", ["optim.lr", "abc"]),  # was a TypeError inside torch's AdamW
    (QUICKSTART, "trainer.max_steps=-5", ["trainer.max_steps", "-5"]),  # was a Lightning traceback
    (QUICKSTART, "trainer.max_steps=0", ["trainer.max_steps", "0"]),  # exported an untrained model, exit 0
    (QUICKSTART, "model.nonexistent=1", ["nonexistent"]),  # was a TypeError in LMConfig
    (QUICKSTART, "conditioning.attribute_dropout=0", ["conditioning.attribute_dropout", "0"]),  # TypeError
    (QUICKSTART, "trainer.checkpoint_every_n_steps=0", ["trainer.checkpoint_every_n_steps", "0"]),
    (QUICKSTART, "optim.betas=[0.9]", ["optim.betas", "0.9"]),
    (QUICKSTART, "data.global_batch_size=eight", ["data.global_batch_size", "eight"]),
    (QUICKSTART, "optim.lr=.nan", ["optim.lr", "nan"]),
    (QUICKSTART, "seed=zero", ["seed", "zero"]),
    (CODEC_TINY, "train.lr=abc", ["train.lr", "abc"]),
    (CODEC_TINY, "trainer.max_updates=0", ["trainer.max_updates", "0"]),
    (CODEC_TINY, "model.seanet.dimension=wide", ["model.seanet.dimension", "wide"]),
    (CODEC_TINY, "model.quantizer.nq=2", ["nq"]),
    (CODEC_TINY, "train.disc_n_ffts=[512, big]", ["train.disc_n_ffts", "big"]),
])
def test_wrong_recipe_values_are_one_line_errors_naming_the_key(tmp_path: Path, capsys, recipe: Path, override: str,
                                                                named: list[str]) -> None:
    err = fit_fails(capsys, recipe, tmp_path / "run", override)
    assert str(recipe) in err
    for word in named:
        assert word in err, (word, err)


def test_wrong_values_in_the_recipe_file_are_named_too(tmp_path: Path, capsys) -> None:
    text = QUICKSTART.read_text()
    assert "max_steps: 600" in text
    bad = tmp_path / "lm.yaml"
    bad.write_text(text.replace("max_steps: 600", "max_steps: -5"))
    err = fit_fails(capsys, bad, tmp_path / "run")
    assert str(bad) in err and "trainer.max_steps" in err and "-5" in err
    bad.write_text(text.replace("warmup_steps: 60", "warmup_steps: thirty"))
    err = fit_fails(capsys, bad, tmp_path / "run")
    assert "optim.warmup_steps" in err and "thirty" in err


def test_fit_api_refuses_wrong_values_before_creating_the_run(tmp_path: Path) -> None:
    from mgen.train.fit import fit

    recipe = load_recipe(QUICKSTART)
    with pytest.raises(ValueError, match=r"optim\.lr.*'abc'"):
        fit(recipe, tmp_path / "run", data=str(tmp_path / "no-shards"), overrides=["optim.lr=abc"])
    with pytest.raises(ValueError, match="nonexistent"):
        fit({**recipe, "model": {**recipe["model"], "nonexistent": 1}}, tmp_path / "run", data="x")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["optim.lr=1e-4", "optim.lr=1", "optim.total_steps=400", "ema.decay=0.99",
                                      "conditioning.attribute_dropout={text: 0.1}", "model.ffn_dim=128"])
def test_well_typed_overrides_pass_the_checks(tmp_path: Path, capsys, override: str) -> None:
    """An int for a float, YAML-1.1 `1e-4` for a number, a value for a key the recipe leaves at its default: the
    recipe is accepted, and `mgen fit` goes on to look for the (missing) data."""
    from mgen.cli import main

    run = tmp_path / "run"
    assert main(["fit", str(QUICKSTART), "--out", str(run), "--data", str(tmp_path / "no-shards"),
                 "--set", override]) == 2
    err = capsys.readouterr().err
    assert "no-shards" in err and "recipe" not in err, err


def test_a_float_may_replace_a_whole_number_where_the_recipe_takes_a_number(tmp_path: Path, capsys) -> None:
    """`segment_seconds: 30` in a published recipe is a number, not an integer: `--set data.segment_seconds=0.5`
    passes (the type comes from the schema, not from how the file happened to spell the old value)."""
    from mgen.cli import main

    small = RECIPES / "lm" / "small.yaml"
    assert "segment_seconds: 30\n" in small.read_text()
    run = tmp_path / "run"
    assert main(["fit", str(small), "--out", str(run), "--data", str(tmp_path / "no-shards"),
                 "--set", "data.segment_seconds=0.5"]) == 2
    err = capsys.readouterr().err
    assert "no-shards" in err and "segment_seconds" not in err, err
    err = fit_fails(capsys, small, run, "data.segment_seconds=half")
    assert "data.segment_seconds" in err and "half" in err
