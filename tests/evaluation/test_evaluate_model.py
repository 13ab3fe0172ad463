"""`mgen evaluate --model EXPORT --data SHARDS`: generation from a split's captions and melodies, cached and
resumable, scored against the split's real audio, with a report that says what was measured how."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch
from eval_fixtures import without_run

from mgen.cli import main
from mgen.evaluation import EvalOptions, GenerationSettings, evaluate_model
from mgen.evaluation.generation import SETTINGS_NAME, clip_seed
from mgen.metrics.embedders import file_sha256
from mgen.musicgen import MusicGen

pytestmark = pytest.mark.usefixtures("single_thread")

METRICS = "fad,kad,chroma"


def cli(setup: dict[str, Path], out: Path, *extra: str) -> int:
    return main(["evaluate", "--model", str(setup["lm"]), "--data", str(setup["shards"]), "--split", "valid",
                 "--num-samples", "4", "--metrics", METRICS, "--embedder", "codec", "--top-k", "20",
                 "--batch-size", "2", "--device", "cpu", "--no-progress", "-o", str(out), *extra])


def test_evaluate_model_resumes_an_interrupted_run_to_the_same_report(eval_setup, tmp_path, monkeypatch):
    # An interrupted run: the first batch is written, then the process stops (as on Ctrl-C or a kill).
    out = tmp_path / "eval"

    def stop(batch: int) -> None:
        raise KeyboardInterrupt

    settings = GenerationSettings(top_k=20, batch_size=2)
    options = EvalOptions(metrics=METRICS, embedders=["codec"], progress=False)
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(eval_setup["lm"], eval_setup["shards"], out, "valid", 4, settings, options, on_batch=stop)
    cached = sorted(p.name for p in (out / "generated").glob("*.wav"))
    assert len(cached) == 2 and not (out / "report.json").exists()
    first = {name: sf.read(out / "generated" / name)[0] for name in cached}
    (out / "generated" / f"{Path(cached[0]).stem}.wav.tmp-12345").write_bytes(b"RIFF half a file")  # a killed write

    # The command resumes: the cached clips are reused untouched, the rest generated, the report written.
    calls: list[int] = []
    original = MusicGen.generate

    def counting(self, texts, *args, **kwargs):
        calls.append(len(texts))
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(MusicGen, "generate", counting)
    assert cli(eval_setup, out) == 0
    assert calls == [2]  # only the second batch
    report = json.loads((out / "report.json").read_text())
    assert report["run"] == {**report["run"], "reused": 2, "generated": 2}
    for name, audio in first.items():
        assert (sf.read(out / "generated" / name)[0] == audio).all()
    assert not list((out / "generated").glob("*.tmp-*"))

    # An uninterrupted run elsewhere gives the very same clips and report.
    fresh = tmp_path / "fresh"
    assert cli(eval_setup, fresh) == 0
    assert without_run(json.loads((fresh / "report.json").read_text())) == without_run(report)
    for wav in (out / "generated").glob("*.wav"):
        assert (sf.read(wav)[0] == sf.read(fresh / "generated" / wav.name)[0]).all()

    # What the report says.
    shards = eval_setup["shards"]
    assert report["data"]["num_samples"] == 4 and report["data"]["split"] == "valid"
    assert report["data"]["available"] >= 4
    assert report["reference"]["source"] == "real" and report["reference"]["clips"] == 4
    assert report["generated"]["clips"] == 4 and report["generated"]["max_seconds"] == 1.0
    assert report["generation"] == {**report["generation"], "top_k": 20, "cfg_coef": 3.0, "seed": 0,
                                    "max_duration": 1.0, "batch_size": 2}
    codec = report["models"]["codec-encoder"]
    assert codec["label"] == "mgen-codec"
    assert codec["sha256"] == file_sha256(eval_setup["lm"] / "codec" / "model.safetensors")
    assert report["subject"]["melody"] is True and len(report["subject"]["sha256"]) == 64
    assert set(report["metrics"]) == {"fad_codec-encoder", "kad_codec-encoder", "chroma_cosine"}
    fad = report["metrics"]["fad_codec-encoder"]
    assert fad["frames"] == {"generated": 200, "reference": 200} and fad["reference_source"] == "real"
    assert fad["ci"]["low"] <= fad["value"] <= fad["ci"]["high"] and fad["ci"]["unit"] == "songs"
    assert 0.0 <= report["metrics"]["chroma_cosine"]["value"] <= 1.0
    assert report["protocols"]["fad"] == "mgen-fad-v1" and report["random_weights"] == []
    markdown = (out / "report.md").read_text()
    assert "fad_codec-encoder" in markdown and "mgen-codec" in markdown and str(shards) in markdown
    captions = [json.loads(line) for line in (out / "generated" / "captions.jsonl").read_text().splitlines()]
    assert sorted(c["stem"] + ".wav" for c in captions) == sorted(p.name for p in (out / "generated").glob("*.wav"))


def test_each_clip_has_its_own_seed_whatever_the_batch(eval_setup):
    """A clip's tokens come from its own generator: alone or next to another prompt, the same audio."""
    model = MusicGen.load(eval_setup["lm"])
    melody = torch.zeros(2, 1, 32000)
    melody[:, 0, ::80] = 0.5
    both = model.generate(["a tune", "another tune"], 0.5, melody=melody, melody_sample_rate=32000, top_k=20,
                          seed=[clip_seed(0, "a"), clip_seed(0, "b")])
    alone = model.generate(["another tune"], 0.5, melody=melody[1:], melody_sample_rate=32000, top_k=20,
                           seed=[clip_seed(0, "b")])
    torch.testing.assert_close(both[1], alone[0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(both[0], both[1])
    with pytest.raises(ValueError, match="2 seeds for 1 prompts"):
        model.generate(["a tune"], 0.5, seed=[1, 2])


def test_evaluate_model_bad_input_is_a_clear_error(eval_setup, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    out = tmp_path / "eval"
    cases = [
        (["--metrics", "fad,snr"], "unknown metric(s) 'snr'"),
        (["--num-samples", "400"], "--num-samples asks for 400"),
        (["--embedder", "vggish"], "vggish-10086976.pth"),                   # default weights not there
        (["--embedder", f"vggish={tmp_path / 'nope.pth'}"], "nope.pth"),
        (["--metrics", "kl"], "passt-s-f128-20sec-p16-s10-ap.474-swa.pt"),  # KL's published PaSST not there
        (["--metrics", "clap"], "music_audioset_epoch_15_esc_90.14.pt"),
        (["--split", "test"], "no 'test' shards"),
    ]
    for extra, message in cases:
        args = ["evaluate", "--model", str(eval_setup["lm"]), "--data", str(eval_setup["shards"]),
                "--num-samples", "4", "--no-progress", "--device", "cpu", "-o", str(out)]
        assert main(args + extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err, (extra, err)
        assert not (out / "report.json").exists() and not list(out.glob("generated/*.wav"))

    # token shards hold no real audio
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "shards.json").write_text(json.dumps({"kind": "tokens", "shards": []}))
    assert main(["evaluate", "--model", str(eval_setup["lm"]), "--data", str(tokens), "-o", str(out)]) == 2
    assert "pass the audio shards" in capsys.readouterr().err

    # a cache made with other settings is never mixed with new clips
    (out / "generated").mkdir(parents=True, exist_ok=True)
    (out / "generated" / SETTINGS_NAME).write_text(json.dumps({"format": "mgen-generated-clips", "settings": {}}))
    assert cli(eval_setup, out) == 2
    assert "holds clips generated with other" in capsys.readouterr().err
