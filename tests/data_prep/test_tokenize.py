"""Token shards: codes equal the codec's, resumable and atomic writes, codec checks, and TokenDataModule crops."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data_fixtures import read_shard
from data_module_fixtures import RATE, tar_members
from data_prep.cli import register as register_prep
from data_prep.tokenize import tokenize_shards
from mgen.codec.checkpoint import load_codec, save_codec
from mgen.codec.model import Codec
from mgen.data import AudioDataModule, TokenDataModule, lm_datamodule


def token_samples(path: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name, data in tar_members(path):
        key, ext = name.split(".", 1)
        item = out.setdefault(key, {})
        item[ext] = np.load(io.BytesIO(data)) if ext.endswith(".npy") else json.loads(data)
    return out


def test_token_shards_hold_the_codecs_codes(music_shards, token_shards, tiny_codec_dir):
    codec = load_codec(tiny_codec_dir)
    audio_index = json.loads((music_shards / "shards.json").read_text())
    index = json.loads((token_shards / "shards.json").read_text())
    assert index["kind"] == "tokens" and index["config"]["chroma"] is True
    assert index["codec"]["sample_rate"] == RATE and index["codec"]["path"] == str(tiny_codec_dir.resolve())
    assert [e["name"] for e in index["shards"]] == [e["name"] for e in audio_index["shards"]]
    assert [e["split"] for e in index["shards"]] == [e["split"] for e in audio_index["shards"]]
    assert index["totals"]["samples"] == audio_index["totals"]["samples"]
    for entry in audio_index["shards"][:3]:
        audio = {s["key"]: s for s in read_shard(music_shards / entry["name"])}
        tokens = token_samples(token_shards / entry["name"])
        assert set(tokens) == set(audio)
        for key, item in tokens.items():
            wav = torch.from_numpy(audio[key]["audio"].T.copy()).unsqueeze(0)
            expected = codec.encode(wav)[0].numpy()
            codes = item["codes.npy"]
            assert codes.dtype == np.int16 and codes.shape == expected.shape
            assert len(np.unique(codes[0])) > 3  # a codec whose codes carry information
            assert np.array_equal(codes, expected)
            assert item["chroma.npy"].shape == (12, codes.shape[1]) and item["chroma.npy"].dtype == np.float16
            meta = item["json"]
            assert meta["description"] == audio[key]["meta"]["description"]
            assert (meta["frame_rate"], meta["n_q"], meta["card"]) == (
                codec.frame_rate, codec.n_q, codec.card)
            assert meta["codec"]["sha256"] == index["codec"]["sha256"]


def test_rerun_skips_and_interrupted_run_leaves_no_half_shard(music_shards, token_shards, tiny_codec_dir, tmp_path,
                                                             monkeypatch):
    import data_prep.tokenize as tok

    out = tmp_path / "tokens"
    real_encode = tok._Encoder._encode

    def dying_encode(self, items):
        if self.shard == "train-000001.tar":
            raise KeyboardInterrupt  # the run is killed while the second shard is being written
        return real_encode(self, items)

    monkeypatch.setattr(tok._Encoder, "_encode", dying_encode)
    with pytest.raises(KeyboardInterrupt):
        tokenize_shards(music_shards, out, tiny_codec_dir, batch_size=4, chroma=True, progress=False)
    monkeypatch.setattr(tok._Encoder, "_encode", real_encode)
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000000.tar"]  # never a half shard under its name
    assert not list(out.glob("*.tmp-*")) and not (out / "shards.json").exists()
    (out / "train-000001.tar.tmp-99999").write_bytes(b"half a shard from a SIGKILLed run")

    first = tokenize_shards(music_shards, out, tiny_codec_dir, batch_size=4, chroma=True, progress=False)
    assert first["shards_resumed"] == 1 and first["shards_written"] == first["shards"] - 1
    assert not list(out.glob("*.tmp-*"))
    # resumed output is byte-identical to an uninterrupted run (the session's token shards)
    for tar in token_shards.glob("*.tar"):
        assert (out / tar.name).read_bytes() == tar.read_bytes()
    again = tokenize_shards(music_shards, out, tiny_codec_dir, batch_size=4, chroma=True, progress=False)
    assert again["shards_written"] == 0 and again["shards_resumed"] == again["shards"]

    # another codec or another chroma setting means other inputs: every shard is planned again
    planned = []
    monkeypatch.setattr(tok, "tokenize_one", lambda task, *a: planned.append(task.name) or {
        "name": task.name, "split": task.split, "samples": 0, "frames": 0, "seconds": 0.0, "skipped": [],
        "plan_hash": task.digest, "bytes": 0, "sha256": None})
    fresh = tokenize_shards(music_shards, out, tiny_codec_dir, chroma=False, progress=False)
    assert fresh["shards_written"] == fresh["shards"] == len(planned)
    torch.manual_seed(1)
    other = Codec.from_preset("tiny", sample_rate=RATE)
    planned.clear()
    tokenize_shards(music_shards, tmp_path / "other", other, chroma=True, progress=False)
    assert len(planned) == fresh["shards"]


def test_wrong_codec_is_a_clear_error(music_shards, tmp_path):
    codec32k = save_codec(Codec.from_preset("tiny"), tmp_path / "codec32k")
    with pytest.raises(ValueError, match=r"expects 32000 Hz mono audio.*are 16000 Hz mono"):
        tokenize_shards(music_shards, tmp_path / "out", codec32k, progress=False)
    stereo = Codec.from_preset("tiny", sample_rate=RATE, channels=2)
    with pytest.raises(ValueError, match=r"16000 Hz stereo audio.*16000 Hz mono"):
        tokenize_shards(music_shards, tmp_path / "out", stereo, progress=False)
    with pytest.raises(ValueError, match="must differ"):
        tokenize_shards(music_shards, music_shards, stereo, progress=False)


def test_corrupt_samples_are_reported(corrupt_shards, tiny_codec_dir, tmp_path):
    summary = tokenize_shards(corrupt_shards, tmp_path / "tok", tiny_codec_dir, progress=False)
    report = [json.loads(line) for line in (tmp_path / "tok" / "report.jsonl").read_text().splitlines()]
    keys = {r["key"] for r in report}
    # + the member the truncated tar cuts, named by its header
    assert keys == {"bad-flac", "bad-json", "nan-audio", "empty-audio", "truncated-tail"}
    assert "tar: ReadError" in next(r["reason"] for r in report if r["key"] == "truncated-tail")
    assert summary["skipped_samples"] == len(report) == 5
    good = sum(len(token_samples(tmp_path / "tok" / e)) for e in ("train-000000.tar", "train-000001.tar",
                                                                  "train-000002.tar"))
    assert summary["samples"] == good


def test_token_datamodule_crops_in_token_space(token_shards):
    index = json.loads((token_shards / "shards.json").read_text())
    stored = {}
    for entry in index["shards"]:
        stored.update(token_samples(token_shards / entry["name"]))
    frames = {k: v["codes.npy"].shape[1] for k, v in stored.items()}
    longest = max(frames.values())
    # longer than every clip: all padded, mask = real frames
    dm = TokenDataModule(token_shards, segment_frames=longest + 7, global_batch_size=4, num_workers=0, chroma=True,
                         verbose=False)
    for batch in dm.train_dataloader():
        assert batch["codes"].shape[1:] == (4, longest + 7) and batch["codes"].dtype == torch.int64
        assert batch["chroma"].shape[1:] == (12, longest + 7)
        for i, key in enumerate(batch["key"]):
            t = frames[key]
            assert int(batch["padding_mask"][i].sum()) == t and bool(batch["padding_mask"][i, :t].all())
            assert np.array_equal(batch["codes"][i, :, :t].numpy(), stored[key]["codes.npy"])
            assert bool((batch["codes"][i, :, t:] == 0).all())
    # shorter: a true window of the codes, chroma cut at the same frames
    dm = TokenDataModule(token_shards, segment_seconds=0.4, global_batch_size=2, num_workers=2, chroma=True,
                         seed=3, verbose=False)
    seg = dm.segment_frames
    assert seg == round(0.4 * index["config"]["frame_rate"])
    starts = set()
    for batch in dm.train_dataloader():
        for i, key in enumerate(batch["key"]):
            codes, chroma = stored[key]["codes.npy"].astype(np.int64), stored[key]["chroma.npy"]
            hits = [s for s in range(codes.shape[1] - seg + 1)
                    if np.array_equal(codes[:, s:s + seg], batch["codes"][i].numpy())]
            assert hits and any(np.allclose(chroma[:, s:s + seg], batch["chroma"][i].numpy()) for s in hits)
            starts.add(hits[0])
    assert len(starts) > 1
    assert not TokenDataModule(token_shards, 1.0, 2, num_workers=0, verbose=False).make_decoder(True).chroma


def test_lm_datamodule_reads_the_kind(music_shards, token_shards):
    tokens = lm_datamodule(token_shards, 1.0, 2, num_workers=0, verbose=False)
    audio = lm_datamodule(music_shards, 1.0, 2, num_workers=0, verbose=False)
    assert isinstance(tokens, TokenDataModule) and tokens.kind == "tokens"
    assert isinstance(audio, AudioDataModule) and audio.kind == "audio" and audio.sample_rate == RATE
    with pytest.raises(ValueError, match="holds tokens shards"):
        AudioDataModule(token_shards, 1.0, global_batch_size=2)
    batch = next(iter(tokens.val_dataloader()))
    assert batch["text"] and all(": " not in t for t in batch["text"])  # validation: plain descriptions


def test_cli_registration(music_shards, token_shards, tiny_codec_dir, tmp_path, capsys):
    import shutil

    shutil.copytree(token_shards, tmp_path / "t")  # finished shards: the command resumes them all
    parser = argparse.ArgumentParser(prog="mgen")
    register_prep(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prep", "tokenize", str(music_shards), "--codec", str(tiny_codec_dir), "--out",
                              str(tmp_path / "t"), "--chroma", "--no-progress", "--batch-size", "8"])
    assert args.func(args) == 0
    assert "0 token shards written" in capsys.readouterr().out
    assert json.loads((tmp_path / "t" / "shards.json").read_text())["kind"] == "tokens"


@pytest.fixture(scope="module")
def twenty_sample_shard(tmp_path_factory) -> dict[str, Path]:
    """One audio shard of 20 half-second tones at 16 kHz, and a random-init tiny codec for it."""
    import soundfile as sf

    from data_prep.shards import ShardConfig, write_shards

    root = tmp_path_factory.mktemp("twenty")
    (root / "src").mkdir()
    t = np.arange(RATE // 2) / RATE
    for i in range(20):
        sf.write(root / "src" / f"tone{i:02d}.wav", (0.3 * np.sin(2 * np.pi * (200 + 30 * i) * t)).astype("float32"),
                 RATE)
        (root / "src" / f"tone{i:02d}.txt").write_text(f"tone {i}")
    config = ShardConfig(sample_rate=RATE, channels=1, valid_fraction=0.0, shard_max_samples=20, loudness_db=None)
    write_shards(root / "src", root / "audio", config, workers=1, progress=False)
    torch.manual_seed(0)
    codec = save_codec(Codec.from_preset("tiny", sample_rate=RATE).eval(), root / "codec")
    return {"src": root / "src", "audio": root / "audio", "codec": codec, "config": config}


def _random_bytes_in_the_middle(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2 - 25_000)
        f.write(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 4)


@pytest.mark.parametrize("damage", [_random_bytes_in_the_middle, _truncate], ids=["random-50KB", "truncated"])
@pytest.mark.parametrize("markers", [True, False], ids=["keys-in-markers", "old-shards-without-markers"])
def test_damaged_audio_shard_is_reported_sample_by_sample(twenty_sample_shard, tmp_path, capsys, damage, markers):
    """A shard whose bytes changed since it was indexed: nothing of it is tokenized, every one of its 20 samples is
    reported (by key where the done marker or a surviving tar header names it), exit code 1; rebuilding it with
    `prep shards --verify` and re-running tokenizes just that shard."""
    import shutil

    from data_prep.shards import write_shards
    from mgen.cli import main

    audio = tmp_path / "audio"
    shutil.copytree(twenty_sample_shard["audio"], audio)
    keys = {name.split(".", 1)[0] for name, _ in tar_members(audio / "train-000000.tar")}
    assert len(keys) == 20
    if not markers:
        shutil.rmtree(audio / "done")  # shard folders written before done markers listed keys, or copied without
    damage(audio / "train-000000.tar")
    out = tmp_path / "tokens"
    rc = main(["prep", "tokenize", str(audio), "--codec", str(twenty_sample_shard["codec"]), "-o", str(out),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "1 audio shard(s) are damaged or missing" in err
    assert "train-000000.tar" in err and str(out / "report.jsonl") in err
    report = [json.loads(line) for line in (out / "report.jsonl").read_text().splitlines()]
    assert len(report) == 20 and all("damaged" in r["reason"] for r in report)
    named = [r["key"] for r in report if r["key"] is not None]
    assert len(set(named)) == len(named) and set(named) <= keys
    if markers:
        assert set(named) == keys
    else:  # the headers before (and, for random bytes, after) the damage still name their samples
        assert 0 < len(named) < 20
    index = json.loads((out / "shards.json").read_text())
    assert index["shards"] == [] and index["totals"]["skipped_samples"] == 20
    assert not (out / "train-000000.tar").exists() and not (out / "done" / "train-000000.tar.json").exists()

    rebuilt = write_shards(twenty_sample_shard["src"], audio, twenty_sample_shard["config"], verify=True, workers=1,
                           progress=False)
    assert rebuilt["shards_written"] == 1
    assert main(["prep", "tokenize", str(audio), "--codec", str(twenty_sample_shard["codec"]), "-o", str(out),
                 "--no-progress"]) == 0
    assert set(token_samples(out / "train-000000.tar")) == keys
    assert (out / "report.jsonl").read_text() == ""


def test_missing_audio_shard_is_reported_and_the_others_are_tokenized(twenty_sample_shard, tmp_path, capsys):
    import shutil

    from mgen.cli import main

    audio = tmp_path / "audio"
    shutil.copytree(twenty_sample_shard["audio"], audio)
    keys = {name.split(".", 1)[0] for name, _ in tar_members(audio / "train-000000.tar")}
    (audio / "train-000000.tar").unlink()
    out = tmp_path / "tokens"
    assert main(["prep", "tokenize", str(audio), "--codec", str(twenty_sample_shard["codec"]), "-o", str(out),
                 "--no-progress"]) == 1
    assert "damaged or missing" in capsys.readouterr().err
    report = [json.loads(line) for line in (out / "report.jsonl").read_text().splitlines()]
    assert {r["key"] for r in report} == keys and all("file is missing" in r["reason"] for r in report)
