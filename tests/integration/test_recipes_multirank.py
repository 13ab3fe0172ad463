"""The published LM recipes train on several ranks as written: `recipes/lm/{small,medium,large}.yaml` through
`mgen fit --devices 2` (2 gloo ranks; DDP for small and medium, FSDP2 for large) past the end of the first epoch
and its validation (with generated samples).

Only what a CPU test must change is overridden: the model size (`tiny`), the text encoder (a small T5 folder), the
batch, the segment length, `max_steps` and the precision. Everything else is as written, including 8 data workers,
the epoch length (samples per rank) and validation at every epoch end; the global batch is chosen so that an epoch
is a few hundred-sample steps. The token shards have the recipes' 2048 codes per codebook.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from rank_launch import launch
from text_encoder_fixtures import build_t5_encoder

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "lm"
PER_DEVICE = 1000  # samples per step and rank
SEGMENT_SECONDS = 0.02  # one frame: the delay pattern scores codebook 0 only, the plumbing is what is tested


@pytest.fixture(scope="module")
def card2048(token_shards, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The session's audio shards tokenized by a tiny codec with 2048 codes per codebook, and a T5 folder."""
    from data_prep.tokenize import tokenize_shards
    from mgen.codec.checkpoint import save_codec
    from mgen.codec.model import Codec

    root = tmp_path_factory.mktemp("card2048")
    torch.manual_seed(0)
    save_codec(Codec.from_preset("tiny", quantizer={"card": 2048}).eval(), root / "codec")
    tokenize_shards(token_shards.parent / "audio", root / "tokens", root / "codec", progress=False)
    return {"tokens": root / "tokens", "t5": build_t5_encoder(root / "t5")}


@pytest.mark.slow
@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_published_recipe_trains_on_two_ranks_through_an_epoch_end(size: str, card2048: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    written = yaml.safe_load((RECIPES / f"{size}.yaml").read_text())
    epoch_steps = written["data"]["epoch_length"] // PER_DEVICE
    assert written["data"]["resampled"] and written["trainer"]["val_every_n_steps"] is None
    steps = epoch_steps + 1
    run = tmp_path / "run"
    overrides = {"model.preset": "tiny", "conditioning.text_encoder": str(card2048["t5"]),
                 "data.global_batch_size": 2 * PER_DEVICE, "data.segment_seconds": SEGMENT_SECONDS,
                 "trainer.max_steps": steps, "trainer.precision": "32-true"}
    cmd = [sys.executable, "-m", "mgen.cli", "fit", str(RECIPES / f"{size}.yaml"), "--data", str(card2048["tokens"]),
           "--out", str(run), "--devices", "2", "--accelerator", "cpu"]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={value}"]
    res, seconds = launch(cmd, f"mgen fit {size}.yaml on 2 ranks")
    print(f"\n[recipes] {size}.yaml, 2 ranks, {steps} steps (epoch of {epoch_steps}): {seconds:.1f} s")

    recipe = yaml.safe_load((run / "recipe.yaml").read_text())  # the resolved recipe: only the overrides changed
    for key, value in overrides.items():
        section, name = key.split(".")
        assert recipe[section].pop(name) == value
        written[section].pop(name, None)
    recipe["data"].pop("shards")
    assert recipe == written

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == steps
    # every rank's data position: epoch 1 (past the first epoch's end), 1 batch of it consumed, then training ended
    positions = ckpt["callbacks"]["ExactResume"]["ranks"]["data"]  # [rank, (epoch, last worker, complete) + workers]
    assert positions.shape[0] == 2 and positions[:, 0, 0].tolist() == [1, 1] and positions[:, 0, 2].tolist() == [1, 1]
    assert positions[:, 1:, 1].sum(dim=1).tolist() == [1, 1]
    rows = [r for r in csv.DictReader((run / "logs" / "metrics.csv").open()) if r.get("val/ce")]
    assert len(rows) == 1 and rows[0]["epoch"] == "0"  # one validation, at the end of epoch 0
    assert sorted((run / "logs" / "media").glob("val_samples_step*_0.wav"))
    assert json.loads((run / "export" / "config.json").read_text())["lm"]["card"] == 2048
