"""Recipes: the typed schema (`mgen.train.recipe`), the shipped recipes, and one-line errors naming the key."""

import json
from pathlib import Path

import pytest

from mgen.lm.model import LMConfig
from mgen.train.recipe import (RENAMED, CodecRecipe, LMRecipe, RecipeError, load_recipe, read_yaml,
                               recipe_json_schema, recipe_reference)

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"


@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_lm_recipes_match_presets(size: str) -> None:
    recipe, _ = load_recipe(RECIPES / "lm" / f"{size}.yaml")
    assert isinstance(recipe, LMRecipe)
    preset = LMConfig.preset(size)
    cfg = recipe.model
    assert (cfg.dim, cfg.num_layers, cfg.num_heads, cfg.ffn_dim) == (preset.dim, preset.num_layers,
                                                                     preset.num_heads, preset.ffn_dim)
    assert recipe.data.global_batch_size == 192 and recipe.optim.lr == 1e-4


def test_bad_recipe_files_are_clear_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="recipe not found"):
        read_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        read_yaml(bad)
    bad.write_text("- 1\n")
    with pytest.raises(RecipeError, match="a recipe is a mapping"):
        read_yaml(bad)
    bad.write_text("optim: {}\n")
    with pytest.raises(RecipeError, match=r"task must be one of \['lm', 'codec'\], got None"):
        load_recipe(bad)


@pytest.mark.parametrize("path", ["lm/small.yaml", "lm/medium.yaml", "lm/large.yaml", "quickstart/lm.yaml",
                                  "codec/tiny.yaml", "codec/paper-32khz.yaml"])
def test_shipped_recipes_parse(path: str) -> None:
    """Every shipped recipe passes the schema (known keys, right types, consistent sections)."""
    recipe, raw = load_recipe(RECIPES / path)
    assert recipe.task == raw["task"] and recipe.trainer.max_steps == raw["trainer"]["max_steps"]
    assert isinstance(recipe, CodecRecipe if recipe.task == "codec" else LMRecipe)


@pytest.mark.parametrize(("raw", "expected"), [
    ({"task": "lm", "optim": {"lr": "abc"}}, "optim.lr: Input should be a valid number"),
    ({"task": "codec", "optim": {"lr": "abc"}}, "optim.lr: Input should be a valid number"),
    ({"task": "lm", "trainer": {"max_stepz": 5}}, "unknown key trainer.max_stepz; known: checkpoint_every_n_steps"),
    ({"task": "codec", "optim": {"learning_rate": 1.0}}, "unknown key optim.learning_rate; known: "),
    ({"task": "codec", "trainer": {"strategy": "fsdp"}}, "trainer.strategy is a key of lm recipes, not of codec"),
    ({"task": "codec", "samples": {"count": 2}}, "samples is a key of lm recipes, not of codec recipes"),
    ({"task": "lm", "optim": {"disc_every": 2}}, "optim.disc_every is a key of codec recipes, not of lm recipes"),
    ({"task": "lm", "model": {"preset": "tiny", "dimm": 3}}, "unknown key model.dimm; known: activation"),
    ({"task": "codec", "model": {"preset": "tiny", "quantizer": {"n_q": "x"}}},
     "model.quantizer.n_q: Input should be a valid integer"),
    ({"task": "lm", "trainer": {"precision": "fp8"}}, "trainer.precision: Input should be '32-true', 'bf16-mixed' or"),
    ({"task": "codec", "trainer": {"precision": "bf16-true"}}, "would keep the weights and the optimiser state in 16"),
    ({"task": "lm", "trainer": {"strategy": "fsdp"}, "ema": {"decay": 0.9}}, "fsdp does not support `ema:`"),
    ({"task": "lm", "trainer": {"fsdp": {"param_dtype": "bf16"}}}, "trainer.fsdp is set but trainer.strategy is"),
    ({"task": "codec", "data": {"segment_seconds": 0.01}}, "shorter than the longest STFT window"),
    ({"task": "codec", "data": {"sample_rate": 44100}}, "data.sample_rate was removed: a codec run reads audio at"),
    ({"task": "lm", "trainer": {"val_every_n_steps": None}, "data": {"resampled": True}},
     "data.resampled without data.epoch_length never ends an epoch"),
])
def test_schema_errors_name_the_key_path_and_the_expectation(raw: dict, expected: str) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(raw)
    message = str(err.value)
    assert expected in message and len(message.splitlines()) == 1, message


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_renamed_keys_say_their_new_name(old: str) -> None:
    task = "codec" if old in ("train", "logging") or "updates" in old or old.startswith("model.q") else "lm"
    *parents, leaf = old.split(".")
    raw: dict = {"task": task}
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = {} if leaf in ("train", "logging") else 1
    with pytest.raises(RecipeError, match=f"{old} was renamed to {RENAMED[old]}"):
        load_recipe(raw)
    with pytest.raises(RecipeError, match=f"--set {old}=1: {old} was renamed to {RENAMED[old]}"):
        load_recipe({"task": task}, [f"{old}=1"])


def test_sections_are_typed_objects() -> None:
    """The modules receive dataclasses and pydantic models, never dicts; YAML-1.1 `1e-4` strings are numbers."""
    from mgen.codec.model import CodecConfig
    from mgen.train.checkpoints import Retention
    from mgen.train.codec_module import CodecTrainConfig
    from mgen.train.ema import EMAConfig

    recipe, _ = load_recipe(RECIPES / "codec" / "tiny.yaml", ["optim.lr=1e-4", "trainer.checkpoints.keep_last=2"])
    assert isinstance(recipe.model, CodecConfig) and recipe.model.quantizer.n_q == 4
    assert isinstance(recipe.optim, CodecTrainConfig) and recipe.optim.lr == 1e-4
    assert isinstance(recipe.ema, EMAConfig) and recipe.ema.decay == 0.99
    assert recipe.trainer.checkpoints == Retention(keep_last=2)


def test_reference_doc_is_current_and_schema_exports() -> None:
    """docs/recipes.md is generated from the schema (`python -m mgen.train.recipe > docs/recipes.md`)."""
    assert DOCS.read_text() == recipe_reference()
    for task in ("lm", "codec"):
        schema = recipe_json_schema(task)
        json.dumps(schema)
        assert "trainer" in schema["properties"] and "optim" in schema["properties"]


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
    (QUICKSTART, "model.nonexistent=1", ["model.nonexistent"]),  # was a TypeError in LMConfig
    (QUICKSTART, "conditioning.attribute_dropout=0", ["conditioning.attribute_dropout", "0"]),  # TypeError
    (QUICKSTART, "trainer.checkpoint_every_n_steps=0", ["trainer.checkpoint_every_n_steps", "0"]),
    (QUICKSTART, "optim.betas=[0.9]", ["optim.betas", "0.9"]),
    (QUICKSTART, "data.global_batch_size=eight", ["data.global_batch_size", "eight"]),
    (QUICKSTART, "optim.lr=.nan", ["optim.lr", "nan"]),
    (QUICKSTART, "seed=zero", ["seed", "zero"]),
    (CODEC_TINY, "optim.lr=abc", ["optim.lr", "abc"]),
    (CODEC_TINY, "trainer.max_steps=0", ["trainer.max_steps", "0"]),
    (CODEC_TINY, "trainer.max_updates=10", ["trainer.max_updates was renamed to trainer.max_steps"]),
    (CODEC_TINY, "model.seanet.dimension=wide", ["model.seanet.dimension", "wide"]),
    (CODEC_TINY, "model.quantizer.nq=2", ["nq"]),
    (CODEC_TINY, "optim.disc_n_ffts=[512, big]", ["optim.disc_n_ffts", "big"]),
    (CODEC_TINY, "trainer.strategy=ddp", ["trainer.strategy is a key of lm recipes"]),
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

    recipe = read_yaml(QUICKSTART)
    with pytest.raises(ValueError, match=r"optim\.lr.*'abc'"):
        fit(recipe, tmp_path / "run", data=str(tmp_path / "no-shards"), overrides=["optim.lr=abc"])
    with pytest.raises(ValueError, match="nonexistent"):
        fit({**recipe, "model": {**recipe["model"], "nonexistent": 1}}, tmp_path / "run", data="x")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["optim.lr=1e-4", "optim.lr=1", "trainer.max_steps=400", "ema.decay=0.99",
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
