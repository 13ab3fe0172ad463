"""The recipes' `eval:` section: FAD / KAD (and chroma) of clips generated at validation, against statistics of the
real validation audio, logged as val/<metric> to every logger; a typo in the section is an error."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from wandb_records import WandbRun

from mgen.cli import main
from mgen.train.fit import fit

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def token_shards(eval_setup, tmp_path_factory) -> Path:
    from data_prep.tokenize import tokenize_shards

    out = tmp_path_factory.mktemp("eval_tokens") / "tokens"
    tokenize_shards(eval_setup["shards"], out, eval_setup["codec"], chroma=True, progress=False)
    return out


@pytest.fixture(scope="module")
def reference(eval_setup, tmp_path_factory) -> Path:
    """Statistics of the real validation audio, as the README tells users to make them."""
    out = tmp_path_factory.mktemp("eval_ref") / "valid-codec.npz"
    assert main(["evaluate", "--ref", str(eval_setup["shards"]), "--split", "valid", "--embedder",
                 f"codec={eval_setup['codec']}", "--device", "cpu", "-o", str(out)]) == 0
    return out


def lm_recipe(shards: Path, codec: Path, reference: Path, steps: int = 4) -> dict:
    return {
        "task": "lm", "seed": 0, "codec": str(codec),
        "model": {"preset": "tiny", "n_q": 4, "card": 256},
        "conditioning": {"text": True, "melody": True},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "data": {"shards": str(shards), "segment_seconds": 1.0, "global_batch_size": 4, "num_workers": 0,
                 "resampled": True, "epoch_length": 16, "chroma": True},
        "trainer": {"max_steps": steps, "val_every_n_steps": 2, "limit_val_batches": 2,
                    "checkpoint_every_n_steps": 100, "progress_bar": False, "log_every_n_steps": 1},
        "eval": {"metrics": ["fad", "kad", "chroma"], "embedders": ["codec"], "reference": str(reference),
                 "num_samples": 4, "seconds": 1.0, "batch_size": 2, "top_k": 20},
    }


def logged(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "logs" / "metrics.csv").open()))


def test_lm_eval_section_logs_metrics_at_validation(token_shards, eval_setup, reference, tmp_path,
                                                    monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    summary = fit(lm_recipe(token_shards, eval_setup["codec"], reference), run, wandb=True)
    rows = logged(run)
    validations = [int(r["step"]) for r in rows if r.get("val/ce")]
    assert len(validations) == 2
    for key in ("val/fad_codec-encoder", "val/kad_codec-encoder", "val/chroma_cosine_recon"):
        values = [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
        assert [step for step, _ in values] == validations, (key, values)  # logged with each validation
        assert all(math.isfinite(v) for _, v in values)
        assert key in summary["metrics"]
    fad = [float(r["val/fad_codec-encoder"]) for r in rows if r.get("val/fad_codec-encoder")]
    assert all(v > 0 for v in fad)
    # the W&B run (offline, read back from its records) got the evaluation table: one row per evaluation so far,
    # each row equal to the values of metrics.csv at that validation
    wandb_run = WandbRun.load(run / "logs")
    tables = wandb_run.table("val/eval_table")
    assert len(tables) == 2, tables
    _, columns, data = tables[-1]
    assert columns[:2] == ["step", "fad_codec-encoder"] and len(data) == 2
    assert [row[columns.index("fad_codec-encoder")] for row in data] == pytest.approx(fad, rel=1e-6)
    assert wandb_run.series("val/fad_codec-encoder") and wandb_run.config["recipe"]["eval"]["num_samples"] == 4


def test_lm_on_audio_shards_pairs_with_the_real_validation_clips(eval_setup, reference, tmp_path):
    """Audio batches hold the real clips: chroma (and KL) pair with them, logged without the _recon suffix."""
    recipe = lm_recipe(eval_setup["shards"], eval_setup["codec"], reference, steps=2)
    recipe["data"].pop("chroma")
    recipe["eval"] = {"metrics": ["chroma"], "num_samples": 2, "seconds": 1.0, "batch_size": 2, "top_k": 20}
    run = tmp_path / "run"
    summary = fit(recipe, run)
    values = [float(r["val/chroma_cosine"]) for r in logged(run) if r.get("val/chroma_cosine")]
    assert len(values) == 1 and 0.0 <= values[0] <= 1.0 and "val/chroma_cosine" in summary["metrics"]


def test_eval_section_is_checked_before_training(token_shards, eval_setup, reference, tmp_path):
    recipe = lm_recipe(token_shards, eval_setup["codec"], reference)
    bad = {**recipe, "eval": {**recipe["eval"], "num_sample": 4}}
    with pytest.raises(ValueError, match=r"eval: unknown keys \['num_sample'\] in eval"):
        fit(bad, tmp_path / "a")
    bad = {**recipe, "eval": {**recipe["eval"], "metrics": ["fad", "is"]}}
    with pytest.raises(ValueError, match="unknown metric"):
        fit(bad, tmp_path / "b")
    bad = {**recipe, "eval": {**recipe["eval"], "reference": []}}
    with pytest.raises(ValueError, match="mgen evaluate --ref SHARDS --split valid"):
        fit(bad, tmp_path / "c")
    few = {**recipe, "eval": {**recipe["eval"], "num_samples": 1, "seconds": 0.5}}
    with pytest.raises(ValueError, match="1 clips of 0.5 s give 25 codec-encoder frames, but a 32-d FAD needs"):
        fit(few, tmp_path / "d")


def test_codec_eval_section_scores_reconstructions_against_the_real_clips(eval_setup, tmp_path):
    """A codec run logs FAD / KAD of its validation reconstructions against the real validation clips, embedded by
    a fixed codec (the one being trained would move the embedding space at every update)."""
    import yaml

    recipe = yaml.safe_load((Path(__file__).resolve().parents[2] / "recipes/codec/tiny.yaml").read_text())
    recipe["data"].update(shards=str(eval_setup["shards"]), num_workers=0, global_batch_size=2)
    recipe["trainer"].update(max_steps=2, val_every_n_steps=2, limit_val_batches=2,
                             checkpoint_every_n_steps=2, progress_bar=False)
    recipe["optim"]["num_audio_examples"] = 0
    recipe["eval"] = {"metrics": ["fad", "kad"], "embedders": [f"codec={eval_setup['codec']}"]}
    run = tmp_path / "codec"
    summary = fit(recipe, run)
    rows = logged(run)
    for key in ("val/fad_codec-encoder", "val/kad_codec-encoder"):
        values = [float(r[key]) for r in rows if r.get(key)]
        assert len(values) == 1 and math.isfinite(values[0]) and key in summary["metrics"]
    recipe["eval"]["embedders"] = ["codec"]
    with pytest.raises(ValueError, match="the codec being trained changes"):
        fit(recipe, tmp_path / "moving")
