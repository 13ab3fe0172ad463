"""Checkpoints of a run (mgen.train.checkpoints): every strategy writes through AtomicCheckpointIO, never through
$TMPDIR; the retention keeps keep_last + keep_every + last.ckpt for LM and codec runs (pre-emption checkpoints
included); a start resumes from the most advanced intact checkpoint of any kind and moves damaged ones aside."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from mgen.data.batching import batch_plan
from mgen.train import codec_recipe, lm_recipe
from mgen.train.checkpoints import (LAST, AtomicCheckpointIO, Retention, RunCheckpoint, check_interval, is_intact,
                                    resume_checkpoint)
from mgen.train.fit import make_trainer
from mgen.train.recipe import parse_recipe
from mgen.train.preemption import next_hpc_path


class Batches:
    """What `trainer_options` reads of a DataModule: its batch plan and its check of the device count."""

    def batch_plan(self, world_size: int):
        return batch_plan(4, world_size)

    def check_world_size(self, world_size: int) -> None:
        """Resampled epochs: any number of devices is fine."""


@pytest.mark.parametrize("builder, devices, strategy, expected", [
    (lm_recipe, 1, "auto", "SingleDeviceStrategy"),
    (lm_recipe, 2, "ddp", "DDPStrategy"),
    (lm_recipe, 2, "fsdp", "ModelParallelStrategy"),
    (codec_recipe, 2, None, "DDPStrategy"),
])
def test_every_strategy_writes_through_the_atomic_checkpoint_io(tmp_path: Path, builder, devices: int,
                                                                strategy: str | None, expected: str) -> None:
    """The Trainer `mgen fit` builds (one device, DDP, FSDP with single-file checkpoints written by rank 0, the
    codec's DDP) hands every save, periodic, last, pre-emption and the codec's, to AtomicCheckpointIO."""
    recipe = {"task": "lm", "trainer": {"progress_bar": False}}
    if strategy:
        recipe["trainer"]["strategy"] = strategy
    if builder is codec_recipe:
        recipe = {"task": "codec", "model": {"preset": "tiny"}, "trainer": {"progress_bar": False}}
    trainer = make_trainer(parse_recipe(recipe), builder, Batches(), [], tmp_path / "run", devices=devices,
                           accelerator="cpu")
    assert type(trainer.strategy).__name__ == expected
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    if expected == "ModelParallelStrategy":
        assert not trainer.strategy._save_distributed_checkpoint
    assert not (tmp_path / "run").exists()  # building the Trainer writes nothing


def test_atomic_checkpoint_io_commits_beside_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No temporary file in $TMPDIR (Lightning's way, a plain copy across filesystems); a failed save keeps the
    previous checkpoint and leaves nothing behind."""
    def no_tmpdir(*args, **kwargs):
        raise AssertionError("a checkpoint must not be written through $TMPDIR")

    monkeypatch.setattr(tempfile, "mkstemp", no_tmpdir)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", no_tmpdir)
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 3, "w": torch.arange(4.0)}, path)
    assert io.load_checkpoint(path)["global_step"] == 3 and is_intact(path)
    with pytest.raises(Exception):
        io.save_checkpoint({"global_step": 4, "bad": lambda: None}, path)  # not picklable: fails mid-save
    assert torch.load(path, weights_only=True)["global_step"] == 3
    assert os.listdir(path.parent) == ["last.ckpt"]
    io.remove_checkpoint(path)
    assert not path.exists()


def _save(path: Path, step: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {"w": torch.full((64, 64), float(step))}}, path)
    return path


def test_resume_picks_the_most_advanced_readable_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """last.ckpt, pre-emption and periodic checkpoints compete on the global step; a file cut short, or damaged
    inside a tensor (zip directory intact), is moved aside as NAME.corrupt-TIME by the primary process only, and
    the others reach the same choice without touching anything."""
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    assert resume_checkpoint(run) is None
    _save(ckpts / LAST, 20)
    assert resume_checkpoint(run) == (str(ckpts / LAST), 20)
    _save(ckpts / "hpc_ckpt_1.ckpt", 23)  # pre-empted 3 steps after the last checkpoint
    assert resume_checkpoint(run) == (str(ckpts / "hpc_ckpt_1.ckpt"), 23)
    _save(ckpts / "epoch=1-step=40.ckpt", 40)  # a periodic checkpoint whose last.ckpt write was killed
    assert resume_checkpoint(run) == (str(ckpts / "epoch=1-step=40.ckpt"), 40)
    _save(ckpts / LAST, 40)  # a tie: the newest file
    assert resume_checkpoint(run) == (str(ckpts / LAST), 40)

    whole = (ckpts / LAST).read_bytes()
    (ckpts / "hpc_ckpt_2.ckpt").write_bytes(whole[: len(whole) // 2])  # killed while copied
    damaged = bytearray(whole)
    damaged[len(damaged) // 2] ^= 0xFF
    (ckpts / LAST).write_bytes(bytes(damaged))  # same step, one flipped bit in a tensor
    before = sorted(os.listdir(ckpts))
    assert resume_checkpoint(run, primary=False) == (str(ckpts / LAST), 40)  # header-only view, nothing moved
    assert sorted(os.listdir(ckpts)) == before
    capsys.readouterr()
    assert resume_checkpoint(run) == (str(ckpts / "epoch=1-step=40.ckpt"), 40)
    out = capsys.readouterr().out
    assert out.count("is not a readable checkpoint: moved aside") == 2
    names = sorted(os.listdir(ckpts))
    assert [n for n in names if ".corrupt-" in n and n.startswith("hpc_ckpt_2.ckpt.corrupt-")]
    assert [n for n in names if n.startswith("last.ckpt.corrupt-")] and LAST not in names
    assert resume_checkpoint(run, primary=False) == (str(ckpts / "epoch=1-step=40.ckpt"), 40)  # agrees now too
    assert next_hpc_path(run) == ckpts / "hpc_ckpt_2.ckpt"  # the moved-aside file no longer counts

    solo = _save(tmp_path / "solo" / "checkpoints" / LAST, 5)  # its only checkpoint damaged inside
    damaged = bytearray(solo.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    solo.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="every checkpoint is damaged"):  # other ranks would not know
        resume_checkpoint(tmp_path / "solo")
    assert resume_checkpoint(tmp_path / "solo") is None  # kept aside; starting again trains from step 0


def test_retention_keeps_the_last_n_and_every_m(tmp_path: Path) -> None:
    """keep_last counts the most advanced periodic and pre-emption checkpoints together; keep_every keeps periodic
    checkpoints whose step (or codec update count) is a multiple of it; last.ckpt is never a candidate."""
    steps = {}
    for step in (5, 10, 15, 20, 25):
        steps[_save(tmp_path / f"epoch=0-step={step}.ckpt", step)] = step
    steps[_save(tmp_path / "hpc_ckpt_1.ckpt", 23)] = 23
    steps[_save(tmp_path / "codec-updates=30.ckpt", 30)] = 30
    doomed = Retention(keep_last=3, keep_every=10).to_delete(steps)
    assert sorted(p.name for p in doomed) == ["epoch=0-step=15.ckpt", "epoch=0-step=5.ckpt"]
    assert sorted(p.name for p in Retention(keep_last=1).to_delete(steps)) == sorted(
        p.name for p in steps if p.name != "codec-updates=30.ckpt")
    assert parse_recipe({"task": "lm"}).trainer.checkpoints == Retention(3, 0)
    recipe = parse_recipe({"task": "codec", "trainer": {"checkpoints": {"keep_last": 5, "keep_every": 1000}}})
    assert recipe.trainer.checkpoints == Retention(5, 1000)
    for bad, match in (({"keep_last": 0}, "keep_last must be an integer >= 1"),
                       ({"keep_every": -1}, "keep_every must be an integer >= 0"),
                       ({"keep_last": "three"}, "trainer.checkpoints.keep_last: Input should be a valid integer"),
                       ({"keep": 3}, "unknown key trainer.checkpoints.keep; known: keep_every, keep_last")):
        with pytest.raises(ValueError, match=match):
            parse_recipe({"task": "lm", "trainer": {"checkpoints": bad}})


def test_checkpoint_interval_zero_is_refused(tmp_path: Path) -> None:
    """`checkpoint_every_n_steps: 0` used to write no periodic checkpoint at all, silently."""
    for task in ("lm", "codec"):
        for value in (0, -5, 2.5):
            with pytest.raises(ValueError, match="trainer.checkpoint_every_n_steps: Input should be"):
                parse_recipe({"task": task, "trainer": {"checkpoint_every_n_steps": value}})
    with pytest.raises(ValueError, match="trainer.checkpoint_every_n_steps must be an integer >= 1"):
        check_interval("checkpoint_every_n_steps", True)
    assert check_interval("checkpoint_every_n_steps", 500) == 500
    callbacks = lm_recipe.lm_callbacks(parse_recipe({"task": "lm", "trainer": {"checkpoints": {"keep_last": 4}}}),
                                       tmp_path)
    checkpoint = next(c for c in callbacks if isinstance(c, RunCheckpoint))
    assert checkpoint.retention == Retention(4, 0) and checkpoint.save_top_k == -1
    assert not checkpoint._enable_version_counter  # never last-v1.ckpt


class Noise(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"audio": 0.1 * torch.randn(1, 4096, generator=torch.Generator().manual_seed(i))}


def test_codec_run_keeps_what_its_recipe_says(tmp_path: Path) -> None:
    """A codec run counts checkpoints in generator updates: every update saved, keep_last 2 + keep_every 2 of 5."""
    from mgen.train.codec_recipe import build_codec_module, codec_callbacks, codec_trainer_kwargs

    recipe = parse_recipe({"task": "codec", "model": {"preset": "tiny", "quantizer": {"kmeans_iters": 1}},
                           "optim": {"lr": 1e-3, "loss_weights": {"l1": 1, "msspec": 1}}, "ema": {"decay": None},
                           "data": {"segment_seconds": 0.125},
                           "trainer": {"max_steps": 5, "val_every_n_steps": 100, "checkpoint_every_n_steps": 1,
                                       "limit_val_batches": 0,
                                       "checkpoints": {"keep_last": 2, "keep_every": 2}}})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        L.seed_everything(0, verbose=False)
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=CSVLogger(tmp_path), enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0,
                            plugins=[AtomicCheckpointIO()], callbacks=codec_callbacks(recipe, tmp_path / "ckpt"),
                            **codec_trainer_kwargs(recipe))
        trainer.fit(build_codec_module(recipe), torch.utils.data.DataLoader(Noise(), batch_size=2))
    finally:
        torch.set_num_threads(threads)
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["codec-updates=2.ckpt", "codec-updates=4.ckpt",
                                                     "codec-updates=5.ckpt", LAST]
