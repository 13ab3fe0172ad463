"""The main job end to end on a very small setting: corpus, shards, codec, tokens, LM, generation."""

import json

import soundfile as sf

from mgen.commands.demo import run_demo


def test_demo_runs_every_stage_and_resumes(tmp_path) -> None:
    report = run_demo(tmp_path, clips=6, clip_seconds=4.0, codec_updates=12, lm_steps=12, duration=1.0)
    for name in ("text", "melody"):
        audio, rate = sf.read(tmp_path / "samples" / f"{name}.wav")
        assert rate == 32000 and audio.shape == (32000,)
        assert (tmp_path / "samples" / f"{name}.png").stat().st_size > 0
    assert report["codec"]["train/updates"] == 12 and "val/si_snr" in report["codec"]
    assert "train/ce" in report["lm"]
    assert json.loads((tmp_path / "report.json").read_text())["text_prompt"] == report["text_prompt"]
    again = run_demo(tmp_path, clips=6, clip_seconds=4.0, codec_updates=12, lm_steps=12, duration=1.0)
    assert "codec" not in again and "lm" not in again  # finished stages are reused, not redone
