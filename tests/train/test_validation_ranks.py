"""Validation over several ranks: every rank runs the same number of batches, every validation sample counts exactly
once, and the logged metrics equal the single-process ones.

The data: the validation samples of the session's token (and audio) shards repacked into ONE shard with an
undecodable sample in it, the layout that used to leave rank 1 without data (shards were split over ranks) and
rank 0 waiting in the `val/ce` sync. This file is also the 2-rank program (`python tests/train/test_validation_ranks.py
TOKENS AUDIO OUT`), started with a launcher's environment so that one process group runs several validations.
"""

from __future__ import annotations

import json
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from rank_launch import launch_ranks
from data_module_fixtures import tar_members, write_tar
from lm_fixtures import recipe as lm_recipe

HERE = Path(__file__).resolve().parent
CORRUPT_AT = 1  # the undecodable sample's place in the validation shard


def one_validation_shard(src: Path, dst: Path, member: str) -> Path:
    """`src`'s shards with every validation sample moved into one shard, an undecodable one inserted at
    CORRUPT_AT (its `member` holds garbage); the index counts it like the real ones."""
    from mgen.checksum import file_sha256

    dst.mkdir(parents=True)
    index = json.loads((src / "shards.json").read_text())
    valid = [e for e in index["shards"] if e["split"] == "valid"]
    members = [m for e in valid for m in tar_members(src / e["name"])]
    keys = list(dict.fromkeys(name.split(".", 1)[0] for name, _ in members))
    broken = [("broken.json", b'{"description": "a broken sample"}'), (f"broken.{member}", b"\x00garbage" * 40)]
    samples = [[(n, d) for n, d in members if n.split(".", 1)[0] == key] for key in keys]
    samples.insert(CORRUPT_AT, broken)
    write_tar(dst / "valid-000000.tar", [m for sample in samples for m in sample])
    entries = [e for e in index["shards"] if e["split"] != "valid"]
    for entry in entries:
        (dst / entry["name"]).write_bytes((src / entry["name"]).read_bytes())
    shard = dst / "valid-000000.tar"
    entries.append({"name": shard.name, "split": "valid", "samples": len(samples), "bytes": shard.stat().st_size,
                    "sha256": file_sha256(shard)})
    (dst / "shards.json").write_text(json.dumps({**index, "shards": entries}))
    return dst


def valid_keys(shards: Path) -> list[str]:
    with tarfile.open(shards / "valid-000000.tar") as tar:
        return [n.split(".", 1)[0] for n in tar.getnames() if n.endswith(".json") and not n.startswith("broken")]


# ------------------------------------------------------------------------------------------------- the program
class CountBatches(L.Callback):
    def __init__(self) -> None:
        self.batches, self.real = 0, []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.batches += 1
        self.real += [k for k, r in zip(batch["key"], batch["real"].tolist()) if r]


def validate(module: L.LightningModule, datamodule: L.LightningDataModule, devices: int,
             limit: float | int = 1.0) -> dict[str, Any]:
    """One `trainer.validate`: the logged metrics, and what this rank ran (batches, real sample keys)."""
    count = CountBatches()
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=limit, callbacks=[count])
    metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    return {"metrics": {k: float(v) for k, v in metrics.items()}, "batches": count.batches, "keys": count.real,
            "rank": trainer.global_rank}


def lm_and_datamodule(tokens: Path, devices: int) -> tuple[L.LightningModule, L.LightningDataModule]:
    from mgen.data import TokenDataModule
    from mgen.train.lm_module import LMModule
    from mgen.train.recipe import parse_recipe

    L.seed_everything(0, verbose=False)
    recipe = parse_recipe(lm_recipe(tokens, 1))
    module = LMModule(recipe.model, recipe.conditioning, recipe.optim, max_steps=recipe.trainer.max_steps)
    datamodule = TokenDataModule(tokens, 1.0, global_batch_size=devices, num_workers=2, verbose=False)
    return module, datamodule


def codec_and_datamodule(audio: Path, devices: int) -> tuple[L.LightningModule, L.LightningDataModule]:
    from mgen.data import AudioDataModule
    from mgen.codec.model import CodecConfig
    from mgen.train.codec_module import CodecModule, CodecTrainConfig
    from mgen.train.ema import EMAConfig

    L.seed_everything(0, verbose=False)
    module = CodecModule(CodecConfig.preset("tiny"), CodecTrainConfig(num_audio_examples=0), EMAConfig(decay=None))
    module.codec.train()(0.1 * torch.randn(4, 1, 16000))  # k-means initialises the codebooks: codes vary
    datamodule = AudioDataModule(audio, 0.5, global_batch_size=devices, num_workers=0, verbose=False)
    return module, datamodule


def validations(tokens: Path, audio: Path, devices: int) -> dict[str, Any]:
    """Codec validation, LM validation over all samples and with limit_val_batches=1. The codec comes first: its
    codebooks are initialised by a training forward, which would average its statistics over the ranks once a
    process group exists."""
    codec = validate(*codec_and_datamodule(audio, devices), devices)
    return {"codec": codec, "lm": validate(*lm_and_datamodule(tokens, devices), devices),
            "lm_limited": validate(*lm_and_datamodule(tokens, devices), devices, limit=1)}


@pytest.fixture(scope="module")
def shards(token_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("one_valid_shard")
    return {"tokens": one_validation_shard(token_shards, root / "tokens", "codes.npy"),
            "audio": one_validation_shard(token_shards.parent / "audio", root / "audio", "flac")}


@pytest.fixture(scope="module")
def runs(shards: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The validations on 2 gloo ranks (one job) and in this process."""
    out = tmp_path_factory.mktemp("validation_ranks")
    launch_ranks([str(HERE / "test_validation_ranks.py"), str(shards["tokens"]), str(shards["audio"]), str(out)], 2,
                 out / "job", timeout_s=300)
    two = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = validations(shards["tokens"], shards["audio"], 1)
    finally:
        torch.set_num_threads(threads)
    return {"one": one, "two": two}


# ---------------------------------------------------------------------------------------------------- tests
def test_every_rank_runs_the_same_batches_and_every_sample_counts_once(runs: dict[str, Any],
                                                                       shards: dict[str, Path]) -> None:
    expected = valid_keys(shards["tokens"])
    assert len(expected) >= 3
    for name in ("lm", "codec"):
        ranks = [r[name] for r in runs["two"]]
        assert ranks[0]["batches"] == ranks[1]["batches"] > 0, name
        seen = ranks[0]["keys"] + ranks[1]["keys"]
        assert Counter(seen) == Counter(valid_keys(shards["tokens" if name == "lm" else "audio"])), name
        assert ranks[0]["keys"] and ranks[1]["keys"], f"{name}: a rank validated nothing"
    assert Counter(runs["one"]["lm"]["keys"]) == Counter(expected)
    limited = [r["lm_limited"] for r in runs["two"]]
    assert limited[0]["batches"] == limited[1]["batches"] == 1


def test_validation_metrics_equal_the_single_process_ones(runs: dict[str, Any]) -> None:
    one, two = runs["one"], runs["two"]
    for name, keys in (("lm", ("val/ce", "val/ce_q0", "val/ce_q3")),
                       ("codec", ("val/si_snr", "val/mel_distance", "val/perplexity_mean", "val/usage_mean"))):
        for key in keys:
            assert two[0][name]["metrics"][key] == two[1][name]["metrics"][key], (name, key)  # same on every rank
            assert two[0][name]["metrics"][key] == pytest.approx(one[name]["metrics"][key], rel=1e-6), (name, key)
    assert one["codec"]["metrics"]["val/perplexity_mean"] > 2  # the code histograms are not trivially equal


def test_val_ce_is_the_token_weighted_mean_over_all_samples(runs: dict[str, Any], shards: dict[str, Path]) -> None:
    """The reference, sample by sample: each codebook's mean cross-entropy over all its scored tokens."""
    from mgen.data.samples import TokenDecoder
    from mgen.lm.model import cross_entropy_per_codebook

    module, datamodule = lm_and_datamodule(shards["tokens"], 1)
    module.eval()
    decoder = TokenDecoder(datamodule.n_q, datamodule.card, datamodule.segment_frames, None, False)
    sums, counts = torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    members = dict(tar_members(shards["tokens"] / "valid-000000.tar"))
    with torch.no_grad():
        for key in valid_keys(shards["tokens"]):
            example = decoder({"__key__": key, "json": members[f"{key}.json"],
                               "codes.npy": members[f"{key}.codes.npy"]}, None, None)
            codes = torch.from_numpy(example["codes"])[None]
            padding = torch.from_numpy(example["padding_mask"])[None]
            logits, mask = module.lm.compute_predictions(codes, module.conditioning_of({"text": [example["text"]]}, 1))
            _, per_codebook = cross_entropy_per_codebook(logits, codes, mask, padding)
            tokens = (mask[None] & padding[:, None]).sum(dim=(0, 2)).double()
            sums += per_codebook.double() * tokens
            counts += tokens
    expected = (sums / counts).mean().item()
    assert runs["one"]["lm"]["metrics"]["val/ce"] == pytest.approx(expected, rel=1e-5)


def test_padding_batches_and_an_empty_split(shards: dict[str, Path], tmp_path: Path) -> None:
    """A rank with no validation sample left runs padding batches (real all False, same shapes as data); a run
    whose validation split is empty fails at start with the numbers."""
    from mgen.data import TokenDataModule

    lengths, padding = set(), 0
    for rank in range(5):  # more ranks than validation samples
        dm = TokenDataModule(shards["tokens"], 1.0, global_batch_size=5, num_workers=0, rank=rank, world_size=5,
                             verbose=False)
        dm.setup("validate")
        batches = list(dm.val_dataloader())
        lengths.add((len(dm.val_dataloader()), len(batches)))
        for batch in batches:
            if not batch["real"].any():
                padding += 1
                assert batch["codes"].shape[1:] == (4, dm.segment_frames) and not batch["padding_mask"].any()
    assert lengths == {(1, 1)} and padding >= 1

    index = json.loads((shards["tokens"] / "shards.json").read_text())
    empty = tmp_path / "no_valid"
    empty.mkdir()
    index["shards"] = [e for e in index["shards"] if e["split"] != "valid"]
    (empty / "shards.json").write_text(json.dumps(index))
    dm = TokenDataModule(empty, 1.0, global_batch_size=2, num_workers=0, verbose=False)
    dm.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, limit_val_batches=4)
    with pytest.raises(ValueError, match=r"validation split is empty \(0 of the \d+ samples"):
        dm.setup("fit")


def test_exact_epochs_are_refused_with_several_ranks(token_shards: Path) -> None:
    from mgen.data import lm_datamodule
    from mgen.train.lm_recipe import trainer_options
    from mgen.train.recipe import parse_recipe

    recipe = lm_recipe(token_shards, 5)
    recipe["data"]["resampled"] = False
    recipe = parse_recipe(recipe)
    dm = lm_datamodule(token_shards, 1.0, 4, resampled=False, verbose=False)
    with pytest.raises(ValueError, match="data.resampled is false .* with 2 devices.*stall"):
        trainer_options(recipe, dm, 2)
    assert trainer_options(recipe, dm, 1)["max_steps"] == 5  # one device: exact epochs are fine


def test_epoch_end_validation_needs_an_epoch_length(token_shards: Path) -> None:
    from mgen.data import lm_datamodule
    from mgen.train.lm_recipe import trainer_options
    from mgen.train.recipe import parse_recipe

    recipe = lm_recipe(token_shards, 5)
    recipe["trainer"]["val_every_n_steps"] = None
    dm = lm_datamodule(token_shards, 1.0, 4, resampled=True, epoch_length=8, verbose=False)
    assert trainer_options(parse_recipe(recipe), dm, 1)["check_val_every_n_epoch"] == 1
    del recipe["data"]["epoch_length"]
    with pytest.raises(ValueError, match="never ends an epoch"):
        parse_recipe(recipe)  # the schema refuses it before any model or data is built


if __name__ == "__main__":
    tokens_dir, audio_dir, out_dir = (Path(a) for a in sys.argv[1:4])
    torch.set_num_threads(1)
    result = validations(tokens_dir, audio_dir, 2)
    (out_dir / f"rank{result['lm']['rank']}.json").write_text(json.dumps(result))
