"""Shared fixtures for the DataModule and tokenize tests (imported explicitly; no tests here).

* ``music_shards``: the session's real-music corpus (6 clips x 5 s) sharded at 16 kHz mono into 2 s segments,
  2 samples per shard: 6 train shards (12 samples, some 1 s tails) and 3 valid shards, so 2 ranks x 2 workers
  all get data.
* ``tone_shards``: hand-made clips with known content (a 0.6 s stereo tone, a 3 s stereo noise) sharded whole.
* ``corrupt_shards``: two music shards plus one holding a corrupt FLAC, a broken json, NaN audio, an empty
  FLAC and a truncated tar tail.
* ``tiny_codec_dir`` / ``token_shards``: a random-init tiny codec at 16 kHz and the music shards tokenized with it.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf


RATE = 16000
_cache: dict[str, Any] = {}

# What corrupt_shards breaks: per-sample problems the pipeline must skip and count.
CORRUPT_SAMPLE_SKIPS = 4


def tar_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isreg()]


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def shard_keys(shards_dir: Path, split: str) -> list[str]:
    """Every sample key of a split, read straight from the tars listed in the index."""
    index = json.loads((shards_dir / "shards.json").read_text())
    keys = []
    for entry in index["shards"]:
        if entry["split"] == split:
            keys += sorted({name.split(".", 1)[0] for name, _ in tar_members(shards_dir / entry["name"])})
    return keys


@pytest.fixture(scope="session")
def music_shards(synth_corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if "music" not in _cache:
        from data_prep.shards import ShardConfig, write_shards

        out = tmp_path_factory.mktemp("music_shards")
        write_shards(synth_corpus["dir"] / "audio", out,
                     ShardConfig(sample_rate=RATE, channels=1, segment_seconds=2.0, min_segment_seconds=0.5,
                                 shard_max_samples=2, valid_fraction=0.2), workers=1, progress=False)
        _cache["music"] = out
    return _cache["music"]


def _flac(audio: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="session")
def tone_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``short``: 0.6 s 440 Hz stereo tone; ``noise``: 3 s stereo noise (left != right), both at 22.05 kHz in the
    source files and sharded at 16 kHz stereo without loudness changes."""
    if "tones" not in _cache:
        from data_prep.shards import ShardConfig, write_shards

        src = tmp_path_factory.mktemp("tone_src")
        t = np.arange(int(0.6 * 22050)) / 22050
        tone = 0.3 * np.sin(2 * np.pi * 440 * t)
        sf.write(src / "short.flac", np.stack([tone, 0.5 * tone], axis=1), 22050)
        (src / "short.txt").write_text("a short tone")
        rng = np.random.default_rng(0)
        sf.write(src / "noise.flac", 0.2 * rng.standard_normal((3 * 22050, 2)), 22050)
        (src / "noise.txt").write_text("some noise")
        out = tmp_path_factory.mktemp("tone_shards")
        write_shards(src, out, ShardConfig(sample_rate=RATE, channels=2, valid_fraction=0.0, loudness_db=None,
                                           min_segment_seconds=0.1), workers=1, progress=False)
        _cache["tones"] = out
    return _cache["tones"]


def _nan_wav() -> bytes:
    buf = io.BytesIO()
    audio = np.zeros((1600, 1), dtype=np.float32)
    audio[100] = np.nan
    sf.write(buf, audio, RATE, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def _empty_flac() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros((0, 1), dtype=np.float32), RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="session")
def corrupt_shards(music_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train-000000/1 copied intact; train-000002 rebuilt with 2 good samples, a corrupt FLAC, a broken json, NaN
    audio (a float WAV under .flac), an empty FLAC, then a truncated member at the end of the tar."""
    if "corrupt" not in _cache:
        from mgen.checksum import file_sha256

        out = tmp_path_factory.mktemp("corrupt_shards")
        index = json.loads((music_shards / "shards.json").read_text())
        train = [e for e in index["shards"] if e["split"] == "train"]
        for entry in train[:2]:
            shutil.copy(music_shards / entry["name"], out / entry["name"])
        good = tar_members(music_shards / train[2]["name"]) + tar_members(music_shards / train[3]["name"])
        samples: dict[str, dict[str, bytes]] = {}
        for name, data in good:
            key, ext = name.split(".", 1)
            samples.setdefault(key, {})[ext] = data
        keys = sorted(samples)[:4]
        a, b, c, d = (samples[k] for k in keys)
        members = []
        for key in keys:  # two good samples, then the broken ones
            members += [(f"{key}.flac", samples[key]["flac"]), (f"{key}.json", samples[key]["json"])]
        members += [("bad-flac.flac", b"fLaC" + bytes(range(256)) * 8), ("bad-flac.json", a["json"]),
                    ("bad-json.flac", b["flac"]), ("bad-json.json", b'{"description": "unterminated'),
                    ("nan-audio.flac", _nan_wav()), ("nan-audio.json", c["json"]),
                    ("empty-audio.flac", _empty_flac()), ("empty-audio.json", d["json"])]
        name = "train-000002.tar"
        write_tar(out / name, members)
        # a member whose header promises more bytes than the file holds: a tar-level error, not a sample one
        with tarfile.open(out / name) as tar:
            last = tar.getmembers()[-1]
            end = last.offset_data + -(-last.size // 512) * 512  # drop the end-of-archive blocks after it
        with open(out / name, "r+b") as f:
            f.truncate(end)
            f.seek(end)
            info = tarfile.TarInfo("truncated-tail.flac")
            info.size = 50_000
            f.write(info.tobuf(format=tarfile.GNU_FORMAT) + b"x" * 1000)
        entries = [{k: e[k] for k in ("name", "split", "samples", "seconds")} for e in train[:2]]
        entries.append({"name": name, "split": "train", "samples": 8, "seconds": 0.0})
        for e in entries:
            e["bytes"] = (out / e["name"]).stat().st_size
            e["sha256"] = file_sha256(out / e["name"])
        (out / "shards.json").write_text(json.dumps({**index, "shards": entries}))
        _cache["corrupt"] = out
    return _cache["corrupt"]


def corrupt_good_keys(corrupt_dir: Path) -> set[str]:
    """Keys a reader should deliver from ``corrupt_shards``: all of the intact shards, 4 of the broken one."""
    keys = set()
    for name, _ in sum((tar_members(corrupt_dir / f"train-00000{i}.tar") for i in (0, 1)), []):
        keys.add(name.split(".", 1)[0])
    with tarfile.open(corrupt_dir / "train-000002.tar", mode="r|*") as tar:
        try:
            for member in tar:
                key = member.name.split(".", 1)[0]
                if "-" in key and key.startswith("s0-"):
                    keys.add(key)
        except tarfile.TarError:
            pass
    return keys


@pytest.fixture(scope="session")
def tiny_codec_dir(music_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 16 kHz codec whose codebooks were k-means initialised on the music (one training forward), so its
    codes vary over time; a purely random codec maps everything to one code and would make tests vacuous."""
    if "codec" not in _cache:
        import torch

        from data_fixtures import read_shard
        from mgen.codec.checkpoint import save_codec
        from mgen.codec.model import Codec

        torch.manual_seed(0)
        codec = Codec.from_preset("tiny", sample_rate=RATE)
        wav = np.stack([s["audio"].T for s in read_shard(music_shards / "train-000000.tar")])
        codec.train()
        codec(torch.from_numpy(wav))
        codec.eval()
        _cache["codec"] = save_codec(codec, tmp_path_factory.mktemp("codec") / "tiny16k")
    return _cache["codec"]


@pytest.fixture(scope="session")
def token_shards(music_shards: Path, tiny_codec_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if "tokens" not in _cache:
        from data_prep.tokenize import tokenize_shards

        out = tmp_path_factory.mktemp("token_shards")
        tokenize_shards(music_shards, out, tiny_codec_dir, batch_size=4, chroma=True, progress=False)
        _cache["tokens"] = out
    return _cache["tokens"]
