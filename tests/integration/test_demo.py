"""The main job end to end on a very small setting: corpus, shards, codec, tokens, LM, generation, and the quality
check (trained vs untrained LM, melody vs text-only) with its report."""

import json
import math

import pytest
import soundfile as sf
import torch

from mgen.atomic import is_temporary
from mgen.commands.demo import run_demo
from mgen.evaluation.demo_quality import (MIN_CHROMA_GAIN, QualitySettings, _chroma, _chroma_gain, held_out_windows,
                                          untrained_like)
from mgen.musicgen import MusicGen

SMALL = dict(clips=8, clip_seconds=4.0, codec_updates=12, lm_steps=12, duration=1.0)
QUALITY = QualitySettings(clips=4, seconds=1.0)


def test_demo_runs_every_stage_reports_quality_and_resumes(tmp_path) -> None:
    report = run_demo(tmp_path, **SMALL, quality=QUALITY)
    for name in ("text", "melody"):
        audio, rate = sf.read(tmp_path / "samples" / f"{name}.wav")
        assert rate == 32000 and audio.shape == (32000,)
        assert (tmp_path / "samples" / f"{name}.png").stat().st_size > 0
    assert report["codec"]["train/updates"] == 12 and "val/si_snr" in report["codec"]
    assert "train/ce" in report["lm"]
    assert set(report["stage_seconds"]) == {"corpus", "shards", "codec", "tokens", "lm", "generate", "quality"}
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["text_prompt"] == report["text_prompt"] and written["quality"] == report["quality"]
    assert not [p for p in tmp_path.iterdir() if is_temporary(p)]

    quality = report["quality"]
    assert quality["embedder"] == "mgen-codec" and quality["embedder_id"].startswith("codec-encoder-")
    assert len(quality["held_out"]["windows"]) == QUALITY.clips
    for side in ("trained", "untrained"):
        for metric in ("fad", "kad"):
            record = quality[side][metric]
            assert math.isfinite(record["value"]) and record["reference_source"] == "real"
            assert record["frames"]["generated"] == QUALITY.clips * 50 * QUALITY.seconds  # 50 Hz codec latents
    checks, chroma = quality["checks"], quality["chroma_cosine"]
    assert checks["fad_trained_below_untrained"] == (quality["trained"]["fad"]["value"]
                                                     < quality["untrained"]["fad"]["value"])
    assert checks["kad_trained_below_untrained"] == (quality["trained"]["kad"]["value"]
                                                     < quality["untrained"]["kad"]["value"])
    assert chroma["gain"] == pytest.approx(chroma["melody"] - chroma["text_only"], abs=1e-12)
    assert checks["melody_raises_chroma"] == (chroma["gain"] >= MIN_CHROMA_GAIN or chroma["gain_ci"]["low"] > 0)
    clips = {p.name for p in (tmp_path / "samples" / "quality").iterdir()}
    assert clips == {f"{i:02d}_{c}.wav" for i in range(QUALITY.clips)
                     for c in ("text", "untrained", "melody", "reference")}
    trained_clip, _ = sf.read(tmp_path / "samples" / "quality" / "00_text.wav")
    untrained_clip, _ = sf.read(tmp_path / "samples" / "quality" / "00_untrained.wav")
    assert trained_clip.shape == untrained_clip.shape and not (trained_clip == untrained_clip).all()

    again = run_demo(tmp_path, **SMALL, quality=None)
    assert "codec" not in again and "lm" not in again and "quality" not in again  # finished stages are reused

    # the held-out windows: round-robin over the held-out clips, each window `seconds` long, too many is an error
    windows, whole = held_out_windows(tmp_path / "shards", 4, 1.0)
    assert len(whole) >= 2 and [w.name.split("@")[0] for w in windows[:2]] == [whole[0].name, whole[1].name]
    assert all(w.audio.shape[-1] == w.sample_rate for w in windows)
    assert torch.equal(windows[0].audio, whole[0].audio[:, :32000])
    with pytest.raises(ValueError, match=r"gives \d+ windows of 1.0 s, 1000 needed"):
        held_out_windows(tmp_path / "shards", 1000, 1.0)

    # the untrained model: same architecture, its LM re-initialised from the seed, conditioner and codec shared
    model = MusicGen.load(tmp_path / "lm" / "export")
    floor = untrained_like(model, seed=0)
    assert floor.conditioner is model.conditioner and floor.codec is model.codec
    assert floor.lm.cfg == model.lm.cfg
    assert all(torch.equal(a, b) for a, b in zip(floor.lm.parameters(), untrained_like(model, 0).lm.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(floor.lm.parameters(), model.lm.parameters()))


def tone(hz: float, seconds: float = 2.0, rate: int = 32000) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    return (0.3 * torch.sin(2 * math.pi * hz * t))[None]


def test_the_chroma_gain_is_paired_per_window() -> None:
    """A melody clip equal to its window scores 1; a text-only clip on another pitch class scores 0 against the
    same windows: the gain is 1 and its paired interval excludes 0. Equal clips give a gain of exactly 0."""
    from mgen.evaluation.demo_quality import Window

    windows = [Window(f"w{i}", "", tone(hz), 32000) for i, hz in enumerate((261.63, 329.63, 392.0))]  # C, E, G
    melody = [w.audio for w in windows]
    text = [tone(hz) for hz in (369.99, 466.16, 277.18)]  # F#, A#, C#
    gain = _chroma_gain(_chroma(melody, windows, 32000), _chroma(text, windows, 32000), seed=0)
    assert gain["melody"] == pytest.approx(1.0) and gain["text_only"] == pytest.approx(0.0)
    assert gain["gain"] == pytest.approx(1.0) and gain["gain_ci"]["low"] > 0
    same = _chroma_gain(_chroma(text, windows, 32000), _chroma(text, windows, 32000), seed=0)
    assert same["gain"] == 0.0 and same["gain_ci"]["low"] == same["gain_ci"]["high"] == 0.0
