"""AudioDataModule over real shards: rank/worker splitting, determinism, resampled epochs, crops, captions,
corrupt samples, the global-batch plan and a Lightning fit smoke test."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from data_fixtures import read_shard
from data_module_fixtures import CORRUPT_SAMPLE_SKIPS, RATE, corrupt_good_keys, shard_keys
from mgen.data import AudioDataModule, CaptionConfig, SkippedSamplesMonitor, derive_batch, select_caption
from mgen.data.batching import batch_plan


def make_dm(shards: Path, rank: int = 0, world_size: int = 1, **kw) -> AudioDataModule:
    args = dict(segment_seconds=1.0, sample_rate=RATE, channels=1, global_batch_size=2 * world_size,
                num_workers=2, shuffle_buffer=4, seed=0, rank=rank, world_size=world_size, verbose=False)
    args.update(kw)
    dm = AudioDataModule(shards, **args)
    dm.setup("fit")
    return dm


def epoch_keys(dm: AudioDataModule, split: str = "train", epoch: int = 0) -> list[str]:
    dm.set_epoch(epoch)
    loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
    return [k for batch in loader for k in batch["key"]]


# ------------------------------------------------------------------------------------------- splitting, order

def test_every_sample_once_per_epoch_across_two_ranks_with_two_workers(music_shards):
    expected = shard_keys(music_shards, "train")
    assert len(expected) >= 8
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            keys = epoch_keys(make_dm(music_shards, rank, 2), epoch=epoch)
            assert keys, f"rank {rank} got no data"
            seen += keys
        assert Counter(seen) == Counter(expected)  # each exactly once, nothing else
    valid = epoch_keys(make_dm(music_shards, 0, 2), "valid") + epoch_keys(make_dm(music_shards, 1, 2), "valid")
    assert Counter(valid) == Counter(shard_keys(music_shards, "valid"))


def test_order_is_a_function_of_seed_and_epoch(music_shards):
    dm = make_dm(music_shards, 0, 2)
    first = epoch_keys(dm, epoch=3)
    assert epoch_keys(make_dm(music_shards, 0, 2), epoch=3) == first  # fresh module, same seed+epoch
    assert epoch_keys(dm, epoch=4) != first
    assert epoch_keys(make_dm(music_shards, 0, 2, seed=1), epoch=3) != first
    # crops and captions too, not just the key order
    a = next(iter(make_dm(music_shards, 0, 2).train_dataloader()))
    b = next(iter(make_dm(music_shards, 0, 2).train_dataloader()))
    assert a["key"] == b["key"] and a["text"] == b["text"] and torch.equal(a["audio"], b["audio"])


def test_resampled_mode_yields_epoch_length_per_rank_and_is_endless_without_it(music_shards):
    for rank in (0, 1):
        dm = make_dm(music_shards, rank, 2, resampled=True, epoch_length=10, global_batch_size=4)
        loader = dm.train_dataloader()
        assert len(loader) == 5
        batches = list(loader)
        assert len(batches) == 5 and all(b["audio"].shape == (2, 1, RATE) for b in batches)
        assert sum(len(b["key"]) for b in batches) == 10
    # rounded up to whole batches: 7 samples of batch 2 -> 4 batches
    dm = make_dm(music_shards, 0, 2, resampled=True, epoch_length=7, global_batch_size=4)
    assert sum(len(b["key"]) for b in dm.train_dataloader()) == 8
    # no epoch_length: keeps going far beyond the dataset's size
    dm = make_dm(music_shards, 0, 1, resampled=True, num_workers=0)
    total = len(shard_keys(music_shards, "train"))
    keys = [k for b in itertools.islice(iter(dm.train_dataloader()), 3 * total) for k in b["key"]]
    assert len(keys) == 6 * total and len(set(keys)) <= total


# --------------------------------------------------------------------------------------- audio: crops, formats

def _tone_batches(tone_shards: Path, **kw) -> dict[str, dict]:
    """One-sample batches of the tone shards by caption, batch dimension removed."""
    dm = make_dm(tone_shards, num_workers=0, global_batch_size=1, **kw)
    out = {}
    for batch in dm.train_dataloader():
        out[batch["text"][0]] = {"audio": batch["audio"][0], "padding_mask": batch["padding_mask"][0]}
    return out


def test_short_clip_is_zero_padded_with_a_mask(tone_shards):
    got = _tone_batches(tone_shards, channels=2)["a short tone"]
    audio, mask = got["audio"], got["padding_mask"]
    assert audio.shape == (2, RATE) and audio.dtype == torch.float32 and mask.shape == (RATE,)
    real = int(0.6 * RATE)
    assert mask.dtype == torch.bool and int(mask.sum()) == real and bool(mask[:real].all())
    assert torch.all(audio[:, real:] == 0) and audio[:, :real].abs().amax() > 0.1
    # stereo kept: right channel is half the left one
    assert torch.allclose(audio[1, :real], 0.5 * audio[0, :real], atol=2e-4)


def test_channel_conversion_and_resampling(tone_shards, music_shards):
    batch = next(iter(make_dm(music_shards, num_workers=0, channels=2).train_dataloader()))  # mono shards
    assert batch["audio"].shape == (2, 2, RATE) and torch.equal(batch["audio"][:, 0], batch["audio"][:, 1])
    mono = _tone_batches(tone_shards, channels=1)["a short tone"]
    stereo = _tone_batches(tone_shards, channels=2)["a short tone"]
    assert mono["audio"].shape == (1, RATE)
    assert torch.allclose(mono["audio"][0], stereo["audio"].mean(0), atol=1e-6)
    up = _tone_batches(tone_shards, channels=1, sample_rate=32000)["a short tone"]
    assert up["audio"].shape == (1, 32000) and int(up["padding_mask"].sum()) == int(0.6 * 32000)
    spectrum = np.abs(np.fft.rfft(up["audio"][0, :19200].numpy()))
    assert abs(np.argmax(spectrum) * 32000 / 19200 - 440) < 5  # still a 440 Hz tone at the new rate


def test_random_crop_is_a_true_window_and_varies(tone_shards):
    full = read_shard(tone_shards / "train-000000.tar")
    noise = next(s for s in full if s["meta"]["description"] == "some noise")["audio"].T  # [2, 48000]
    starts = set()
    for epoch in range(4):
        dm = make_dm(tone_shards, num_workers=0, global_batch_size=1, channels=2)
        dm.set_epoch(epoch)
        for batch in dm.train_dataloader():
            if batch["text"][0] != "some noise":
                continue
            crop = batch["audio"][0].numpy()
            assert bool(batch["padding_mask"].all())
            hits = [s for s in range(noise.shape[1] - RATE + 1) if np.array_equal(noise[:, s:s + 8], crop[:, :8])]
            assert len(hits) == 1 and np.array_equal(noise[:, hits[0]:hits[0] + RATE], crop)
            starts.add(hits[0])
    assert len(starts) > 1
    # validation crops start at 0
    from data_module_fixtures import tar_members

    members = dict(tar_members(tone_shards / "train-000000.tar"))
    key = next(name.split(".")[0] for name, data in members.items() if b"some noise" in data)
    decoder = make_dm(tone_shards, num_workers=0, global_batch_size=1, channels=2).make_decoder(train=False)
    example = decoder({"__key__": key, "flac": members[f"{key}.flac"], "json": members[f"{key}.json"]},
                      np.random.default_rng(0), random.Random(0))
    assert np.array_equal(example["audio"], noise[:, :RATE]) and example["text"] == "some noise"


# ------------------------------------------------------------------------------------------------- captions

def test_caption_selection_statistics():
    meta = {"description": "a calm piano piece.", "meta": {"key": "C major", "bpm": 90, "genre": "classical",
                                                            "moods": ["calm", "gentle"], "instrument": "piano",
                                                            "keywords": []}}
    cfg = CaptionConfig()
    rng = random.Random(0)
    n = 20000
    texts = [select_caption(meta, cfg, rng) for _ in range(n)]
    plain = sum(t == "a calm piano piece." for t in texts)
    merged = [t for t in texts if t != "a calm piano piece."]
    with_desc = sum(t.startswith("a calm piano piece. ") for t in merged)
    without_desc = [t for t in merged if not t.startswith("a calm piano piece")]
    # plain = not merged (0.75) + merged-but-nothing-kept-and-desc-kept (0.25 * 0.5 * 0.5**5)
    assert abs(plain / n - (0.75 + 0.25 * 0.5 * 0.5 ** 5)) < 0.015
    assert abs(with_desc / n - 0.25 * 0.5 * (1 - 0.5 ** 5)) < 0.015
    assert abs(len(without_desc) / n - 0.25 * 0.5) < 0.015
    # each of the 5 present fields is kept about half the time, in shuffled order; empty lists never appear
    body = [t.split("piece. ", 1)[-1] for t in merged]
    for field in ("key: C major", "bpm: 90", "genre: classical", "moods: calm, gentle", "instrument: piano"):
        share = sum(field in t for t in body) / len(body)
        assert 0.45 < share < 0.58, (field, share)
    assert not any("keywords" in t for t in texts)
    firsts = Counter(t.split(". ")[0] for t in without_desc if t)
    assert len(firsts) == 5  # every field shows up first sometimes: the order is shuffled
    # validation and a zero config: the plain description
    assert select_caption(meta, cfg, rng, train=False) == "a calm piano piece."
    assert select_caption(meta, CaptionConfig(merge_text_p=0.0), rng) == "a calm piano piece."
    with pytest.raises(ValueError):
        CaptionConfig(drop_desc_p=1.5)


def test_captions_in_batches_follow_the_config(music_shards):
    dm = make_dm(music_shards, num_workers=0, caption=CaptionConfig(merge_text_p=1.0, drop_desc_p=1.0))
    texts = [t for b in dm.train_dataloader() for t in b["text"]]
    assert texts and all(": " in t or t == "" for t in texts)
    valid = [t for b in dm.val_dataloader() for t in b["text"]]
    assert valid and all(": " not in t and len(t) > 20 for t in valid)  # plain descriptions


# --------------------------------------------------------------------------------------------- corrupt data

def test_corrupt_samples_are_skipped_and_counted(corrupt_shards):
    dm = make_dm(corrupt_shards, num_workers=2)
    keys, last_count = [], {}
    for batch in dm.train_dataloader():
        keys += batch["key"]
        last_count[int(batch["worker"])] = int(batch["skipped"])
        assert torch.isfinite(batch["audio"]).all()
    assert set(keys) == corrupt_good_keys(corrupt_shards) and len(keys) == len(set(keys))
    assert sum(last_count.values()) == CORRUPT_SAMPLE_SKIPS + 1  # 4 bad samples + 1 truncated shard


def test_missing_shard_file_is_counted_not_fatal(music_shards, tmp_path):
    import json
    import shutil

    index = json.loads((music_shards / "shards.json").read_text())
    shutil.copy(music_shards / index["shards"][0]["name"], tmp_path / index["shards"][0]["name"])
    (tmp_path / "shards.json").write_text(json.dumps(index))  # every other shard is missing on disk
    dm = make_dm(tmp_path, num_workers=0)
    batches = list(dm.train_dataloader())
    missing = sum(1 for e in index["shards"] if e["split"] == "train") - 1
    assert sum(len(b["key"]) for b in batches) == index["shards"][0]["samples"]
    assert int(batches[-1]["skipped"]) == missing


# ------------------------------------------------------------------------------------------------ batch plan

def test_derive_batch():
    assert derive_batch(192, 32) == (6, 1)
    assert derive_batch(192, 8, max_batch_per_device=4) == (4, 6)  # 24 per device -> 4 x 6 accumulation
    assert derive_batch(192, 8, max_batch_per_device=24) == (24, 1)
    assert derive_batch(192, 8, max_batch_per_device=5) == (4, 6)  # micro-batches must divide the share
    assert derive_batch(7, 1, max_batch_per_device=4) == (1, 7)
    with pytest.raises(ValueError, match="does not divide evenly over 5 devices"):
        derive_batch(192, 5)
    assert "6 accumulation" in batch_plan(192, 8, 4).describe()


def test_datamodule_exposes_the_batch_plan(music_shards, capsys):
    dm = AudioDataModule(music_shards, 1.0, RATE, 1, global_batch_size=192, max_batch_per_device=4, rank=3,
                         world_size=8, num_workers=0)
    dm.setup("fit")
    assert (dm.per_device_batch_size, dm.accumulate_grad_batches) == (4, 6)
    assert (dm.batch_plan(32).per_device_batch, dm.batch_plan(32).accumulate) == (3, 2)  # 6 > 4: 3 x 2
    assert capsys.readouterr().out == ""  # only rank 0 prints
    dm0 = AudioDataModule(music_shards, 1.0, RATE, 1, global_batch_size=192, max_batch_per_device=4, rank=0,
                          world_size=8, num_workers=0)
    dm0.setup("fit")
    assert "8 device(s) x 4 per device x 6 accumulation" in capsys.readouterr().out
    with pytest.raises(ValueError, match="does not divide"):
        AudioDataModule(music_shards, 1.0, RATE, 1, global_batch_size=10, rank=0, world_size=4).setup("fit")


def test_rank_from_environment(music_shards, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    dm = AudioDataModule(music_shards, 1.0, global_batch_size=4, num_workers=0, verbose=False)
    dm.setup("fit")
    assert (dm.rank, dm.world_size, dm.per_device_batch_size) == (1, 2, 2)
    assert (dm.sample_rate, dm.channels) == (RATE, 1)  # from the index


# -------------------------------------------------------------------------------------------- Lightning smoke

class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(()))
        self.keys: dict[int, list[str]] = {}

    def training_step(self, batch, batch_idx):
        self.keys.setdefault(self.current_epoch, []).extend(batch["key"])
        mask = batch["padding_mask"].unsqueeze(1)
        return ((self.gain * batch["audio"] * mask) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_fit_logs_skipped_samples_and_follows_epochs(corrupt_shards, tmp_path):
    dm = AudioDataModule(corrupt_shards, 0.5, RATE, 1, global_batch_size=2, num_workers=2, shuffle_buffer=4,
                         seed=0, verbose=False)
    model, monitor = _Tiny(), SkippedSamplesMonitor()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[monitor],
                        default_root_dir=tmp_path, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    good = corrupt_good_keys(corrupt_shards)
    assert set(model.keys[0]) == good and set(model.keys[1]) == good
    assert model.keys[0] != model.keys[1]  # the epoch reached the workers: a new order
    assert monitor.total == 2 * (CORRUPT_SAMPLE_SKIPS + 1)
    assert float(trainer.callback_metrics["data/skipped_samples"]) == 2 * (CORRUPT_SAMPLE_SKIPS + 1)
    # the same order as iterating the module by hand at that epoch
    replay = AudioDataModule(corrupt_shards, 0.5, RATE, 1, global_batch_size=2, num_workers=2, shuffle_buffer=4,
                             seed=0, verbose=False, rank=0, world_size=1)
    replay.setup("fit")
    assert epoch_keys(replay, epoch=1) == model.keys[1]


# ------------------------------------------------------------------------------------------- resume positions

class CountingDecoder:
    """A decoder that counts its calls (num_workers=0: they happen in this process)."""

    def __init__(self, decoder) -> None:
        self.decoder, self.calls = decoder, 0

    def __call__(self, *args):
        self.calls += 1
        return self.decoder(*args)

    def __getattr__(self, name):
        return getattr(self.decoder, name)


def resumed_pass(dm: AudioDataModule, position) -> list[dict]:
    from mgen.data.datamodule import EpochDataLoader

    return list(EpochDataLoader(dm.stream("train"), lambda: position, num_workers=dm.num_workers))


@pytest.mark.parametrize("workers", [0, 2, 3])
@pytest.mark.parametrize("resampled", [False, True], ids=["exact", "resampled"])
def test_a_resumed_stream_continues_at_the_next_sample(corrupt_shards, workers, resampled):
    """Cut an epoch after any number of batches, resume from the position those batches describe: the rest comes
    out as in the uninterrupted epoch (keys, crops, captions, worker order), and no skip is counted twice."""
    from mgen.data.position import StreamPosition

    kw = dict(num_workers=workers, resampled=resampled, epoch_length=9 if resampled else None, global_batch_size=1)
    dm = make_dm(corrupt_shards, **kw)
    dm.set_epoch(3)
    full = list(dm.train_dataloader())
    assert len(full) >= 5
    last_skips = {}  # per worker: the running skip count of its last batch
    for batch in full:
        last_skips[int(batch["worker"])] = int(batch["skipped"])
    for cut in range(1, len(full)):
        position = StreamPosition.start_of(3, max(1, workers))
        for batch in full[:cut]:
            s = batch["stream"]
            position = position.after(s["worker"], s["samples"], len(batch["key"]), last=False)
        assert position.batches == cut
        position = StreamPosition.from_tensor(position.to_tensor())  # through a checkpoint
        rest = resumed_pass(make_dm(corrupt_shards, **kw), position)
        assert [b["key"] for b in rest] == [b["key"] for b in full[cut:]], cut
        assert all(torch.equal(a["audio"], b["audio"]) and a["text"] == b["text"] for a, b in zip(rest, full[cut:]))
        before = {}
        for batch in full[:cut]:
            before[int(batch["worker"])] = int(batch["skipped"])
        after = {int(b["worker"]): int(b["skipped"]) for b in rest}
        for worker, total in last_skips.items():  # what the skipped-samples monitor adds up
            assert before.get(worker, 0) + after.get(worker, 0) == total, (cut, worker)
    if workers == 0:  # skipped samples are not decoded again
        counting = make_dm(corrupt_shards, **kw)
        stream = counting.stream("train")
        stream.decoder = CountingDecoder(stream.decoder)
        cut = len(full) - 2
        position = StreamPosition.start_of(3, 1)
        for batch in full[:cut]:
            position = position.after(0, batch["stream"]["samples"], len(batch["key"]), last=False)
        resumed_pass(counting, position)
        assert stream.decoder.calls <= position.workers[0].samples and stream.decoder.calls < 10


def test_a_position_taken_at_the_end_of_an_epoch_starts_the_next(music_shards):
    from mgen.data.position import StreamPosition

    dm = make_dm(music_shards, num_workers=2, resampled=True, epoch_length=8)
    dm.set_epoch(0)
    first = list(dm.train_dataloader())
    position = StreamPosition.start_of(0, 2)
    for i, batch in enumerate(first):
        position = position.after(batch["stream"]["worker"], batch["stream"]["samples"], 2, last=i == len(first) - 1)
    assert position.complete and position.batches == len(first)
    following = resumed_pass(make_dm(music_shards, num_workers=2, resampled=True, epoch_length=8),
                             position.next_pass())
    assert [b["key"] for b in following] == epoch_keys_batches(music_shards, epoch=1)
    assert {b["stream"]["epoch"] for b in following} == {1}


def epoch_keys_batches(shards, epoch: int) -> list[list[str]]:
    dm = make_dm(shards, num_workers=2, resampled=True, epoch_length=8)
    dm.set_epoch(epoch)
    return [b["key"] for b in dm.train_dataloader()]
