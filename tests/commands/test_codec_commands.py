"""`mgen codec encode | decode` on real files through soundfile, and their one-line errors on bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mgen import cli
from mgen.codec.checkpoint import save_codec
from mgen.codec.model import Codec
from data_fixtures import tone

pytestmark = pytest.mark.usefixtures("single_thread")

RATE = 32000


@pytest.fixture(autouse=True)
def _codec_command(monkeypatch):
    """Register the codec command with `mgen` (until cli.py lists it) so the real `main` and its errors run."""
    if "mgen.commands.codec" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "mgen.commands.codec"])


def _trained_like(codec: Codec) -> Codec:
    torch.manual_seed(0)
    with torch.no_grad():
        codec.train()(0.1 * torch.randn(2, codec.channels, 16000))  # k-means init: codes spread out
    return codec.eval()


@pytest.fixture(scope="module")
def mono(tmp_path_factory) -> tuple[Codec, Path]:
    torch.manual_seed(0)
    codec = _trained_like(Codec.from_preset("tiny", quantizer={"kmeans_iters": 2}))
    return codec, save_codec(codec, tmp_path_factory.mktemp("codec") / "mono")


def mgen(*argv: str | Path) -> int:
    return cli.main([str(a) for a in argv])


def write(path: Path, audio: np.ndarray, rate: int = RATE, subtype: str | None = None) -> Path:
    sf.write(path, audio, rate, subtype=subtype)
    return path


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_encode_then_decode_round_trip(mono, tmp_path, capsys):
    codec, ckpt = mono
    wav = write(tmp_path / "in.wav", tone(0.7, RATE, 1))
    assert mgen("codec", "encode", wav, "-o", tmp_path / "codes.npy", "--codec", ckpt) == 0
    codes = np.load(tmp_path / "codes.npy")
    frames = math.ceil(0.7 * RATE / 640)
    assert codes.shape == (4, frames) and codes.dtype == np.int16
    audio, _ = sf.read(wav, dtype="float32", always_2d=True)
    expected = codec.encode(torch.from_numpy(audio.T.copy())[None])[0]
    assert np.array_equal(codes, expected.numpy())
    assert "codes [4, 35]" in capsys.readouterr().out

    assert mgen("codec", "decode", tmp_path / "codes.npy", "-o", tmp_path / "out.wav", "--codec", ckpt) == 0
    out, rate = sf.read(tmp_path / "out.wav", dtype="float32", always_2d=True)
    assert rate == RATE and out.shape == (frames * 640, 1)
    reference = codec.decode(expected[None].long())[0].numpy().T
    assert np.allclose(out, np.clip(reference, -1, 1), atol=1.5 / 32768)
    assert leftovers(tmp_path) == []

    assert mgen("codec", "encode", wav, "-o", tmp_path / "codes64.npy", "--codec", ckpt, "--dtype", "int64") == 0
    assert np.load(tmp_path / "codes64.npy").dtype == np.int64
    assert mgen("codec", "decode", tmp_path / "codes64.npy", "-o", tmp_path / "out.flac", "--codec", ckpt,
                "--subtype", "PCM_24") == 0
    assert sf.info(tmp_path / "out.flac").format == "FLAC"


def test_encode_resamples_and_says_so(mono, tmp_path, capsys):
    _, ckpt = mono
    wav = write(tmp_path / "cd.wav", tone(0.5, 44100, 1), rate=44100)
    assert mgen("codec", "encode", wav, "-o", tmp_path / "codes.npy", "--codec", ckpt) == 0
    err = capsys.readouterr().err
    assert "resampling" in err and "cd.wav" in err and "44100 Hz to 32000 Hz" in err
    assert np.load(tmp_path / "codes.npy").shape == (4, math.ceil(16000 / 640))


def test_channel_mismatch_needs_the_flag(mono, tmp_path, capsys):
    _, ckpt = mono
    stereo = write(tmp_path / "stereo.wav", tone(0.5, RATE, 2))
    assert mgen("codec", "encode", stereo, "-o", tmp_path / "codes.npy", "--codec", ckpt) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stereo.wav" in err and "2 channel(s)" in err and "expects 1" in err
    assert "--convert-channels" in err and not (tmp_path / "codes.npy").exists()
    assert mgen("codec", "encode", stereo, "-o", tmp_path / "codes.npy", "--codec", ckpt, "--convert-channels") == 0
    assert np.load(tmp_path / "codes.npy").shape[0] == 4

    stereo_codec = _trained_like(Codec.from_preset("tiny", channels=2, quantizer={"kmeans_iters": 2}))
    stereo_ckpt = save_codec(stereo_codec, tmp_path / "stereo_codec")
    mono_wav = write(tmp_path / "mono.wav", tone(0.5, RATE, 1))
    assert mgen("codec", "encode", mono_wav, "-o", tmp_path / "s.npy", "--codec", stereo_ckpt) == 2
    assert "1 channel(s) but the codec expects 2" in capsys.readouterr().err
    assert mgen("codec", "encode", mono_wav, "-o", tmp_path / "s.npy", "--codec", stereo_ckpt,
                "--convert-channels") == 0
    codes = np.load(tmp_path / "s.npy")
    assert codes.shape[0] == 8 and np.array_equal(codes[0::2], codes[1::2])  # L and R are the same signal
    assert mgen("codec", "decode", tmp_path / "s.npy", "-o", tmp_path / "s.wav", "--codec", stereo_ckpt) == 0
    assert sf.info(tmp_path / "s.wav").channels == 2


@pytest.mark.parametrize("case", ["nan", "silent", "not_audio", "missing", "empty"])
def test_bad_audio_is_a_one_line_error(mono, tmp_path, capsys, case):
    _, ckpt = mono
    path = tmp_path / f"{case}.wav"
    if case == "nan":
        audio = tone(0.2, RATE, 1)
        audio[100] = np.nan
        write(path, audio, subtype="FLOAT")
        expected = "NaN or infinite"
    elif case == "silent":
        write(path, np.zeros((6400, 1), np.float32))
        expected = "entirely silent"
    elif case == "not_audio":
        path.write_text("this is not a wav file")
        expected = "cannot be read as audio"
    elif case == "empty":
        write(path, np.zeros((0, 1), np.float32))
        expected = "the audio is empty"
    else:
        expected = "not found"
    assert mgen("codec", "encode", path, "-o", tmp_path / "codes.npy", "--codec", ckpt) == 2
    err = capsys.readouterr().err
    assert err.startswith("mgen codec: error:") and err.count("\n") == 1
    assert expected in err and path.name in err
    assert not (tmp_path / "codes.npy").exists() and leftovers(tmp_path) == []
    if case == "silent":
        assert mgen("codec", "encode", path, "-o", tmp_path / "codes.npy", "--codec", ckpt, "--allow-silence") == 0


@pytest.mark.parametrize("case,expected", [
    ("one_dim", "shape [K, T]"),
    ("three_dim", "shape [K, T]"),
    ("wrong_k", "has 3 codebooks but the codec expects 4"),
    ("float", "must be integers"),
    ("too_big", "must be in [0, 256)"),
    ("negative", "must be in [0, 256)"),
    ("no_frames", "no frames"),
    ("pickled", "not a .npy array"),
    ("not_npy", "not a .npy array"),
    ("missing", "not found"),
])
def test_bad_codes_are_a_one_line_error(mono, tmp_path, capsys, case, expected):
    _, ckpt = mono
    path = tmp_path / f"{case}.npy"
    good = np.random.default_rng(0).integers(0, 256, (4, 10))
    arrays = {"one_dim": good[0], "three_dim": good[None], "wrong_k": good[:3], "float": good.astype(np.float32),
              "too_big": np.where(good == good.max(), 256, good), "negative": good - 1, "no_frames": good[:, :0]}
    if case in arrays:
        np.save(path, arrays[case])
    elif case == "pickled":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif case == "not_npy":
        path.write_bytes(b"\x00" * 64)
    assert mgen("codec", "decode", path, "-o", tmp_path / "out.wav", "--codec", ckpt) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and path.name in err
    assert not (tmp_path / "out.wav").exists() and leftovers(tmp_path) == []


def test_bad_checkpoint_and_output_format(mono, tmp_path, capsys):
    _, ckpt = mono
    wav = write(tmp_path / "in.wav", tone(0.2, RATE, 1))
    assert mgen("codec", "encode", wav, "-o", tmp_path / "c.npy", "--codec", tmp_path / "nope") == 2
    assert "codec checkpoint not found" in capsys.readouterr().err
    not_codec = tmp_path / "lm.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lm": {}}}, not_codec)
    assert mgen("codec", "encode", wav, "-o", tmp_path / "c.npy", "--codec", not_codec) == 2
    assert "not a codec training checkpoint" in capsys.readouterr().err
    np.save(tmp_path / "c.npy", np.zeros((4, 5), np.int16))
    assert mgen("codec", "decode", tmp_path / "c.npy", "-o", tmp_path / "out.mp4", "--codec", ckpt) == 2
    assert "unknown audio format" in capsys.readouterr().err


def test_a_folder_as_output_file_and_bad_devices_are_one_line_errors(mono, tmp_path, capsys):
    """Was an IsADirectoryError traceback after the work was done (encode, decode); devices were torch errors."""
    _, ckpt = mono
    wav = write(tmp_path / "in.wav", tone(0.2, RATE, 1))
    np.save(tmp_path / "c.npy", np.zeros((4, 5), np.int16))
    folder = tmp_path / "taken"
    folder.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    missing_gpu = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    cases = [(("encode", wav, "-o", folder), f"{folder} is a folder"),
             (("decode", tmp_path / "c.npy", "-o", folder), f"{folder} is a folder"),
             (("encode", wav, "-o", a_file / "c.npy"), f"{a_file} is a file"),
             (("decode", tmp_path / "c.npy", "-o", a_file / "x.wav"), f"{a_file} is a file"),
             (("encode", wav, "-o", tmp_path / "d.npy", "--device", "nonsense"),
              "--device 'nonsense' is not a torch device"),
             (("decode", tmp_path / "c.npy", "-o", tmp_path / "d.wav", "--device", missing_gpu),
              f"--device {missing_gpu}")]
    for args, named in cases:
        assert mgen("codec", *args, "--codec", ckpt) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and named in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "c.npy", "in.wav", "taken"]
    assert not any(folder.iterdir()) and a_file.read_text() == "mine"
