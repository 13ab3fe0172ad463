"""`mgen evaluate --gen DIR --ref DIR|SHARDS|STATS.npz` and `--ref DIR -o STATS.npz`: any folder of audio scored
against real audio or precomputed statistics; pairs by stem, captions from captions.jsonl; bad input refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from eval_fixtures import nan_wav, write_folder

from mgen.cli import main
from mgen.codec.checkpoint import save_codec
from mgen.codec.model import Codec
from mgen.evaluation import EvalOptions, MetricSuite, evaluate_folders
from mgen.evaluation.runner import folder_lock
from mgen.evaluation.suite import GeneratedItem
from mgen.metrics import FrechetAudioDistance, KernelAudioDistance, PasstKLD
from mgen.metrics.embedders import file_sha256, load_embedder

pytestmark = pytest.mark.usefixtures("single_thread")

GEN_FREQS = [262.0, 294.0, 330.0, 349.0]
REF_FREQS = [262.0, 330.0, 392.0, 440.0]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("folders")
    return {"gen": write_folder(root / "gen", GEN_FREQS, seconds=1.0),
            "ref": write_folder(root / "ref", REF_FREQS, seconds=1.0)}


def evaluate(*args: str) -> int:
    return main(["evaluate", "--device", "cpu", "--no-progress", *map(str, args)])


def test_folders_scored_as_the_metrics_score_them(folders, eval_setup, random_weights, tmp_path):
    """FAD / KAD with the codec encoder, KL with (random) PaSST paired by stem: the values are the metrics' own
    on the same audio, and the report names every model with its checksum and label."""
    codec, passt = eval_setup["codec"], random_weights["passt"]
    out = tmp_path / "out"
    assert evaluate("--gen", folders["gen"], "--ref", folders["ref"], "--metrics", "fad,kad,kl",
                    "--embedder", f"codec={codec}", "--passt-weights", passt, "-o", out) == 0
    report = json.loads((out / "report.json").read_text())

    embedder = load_embedder("codec", codec)
    fad, kad = FrechetAudioDistance(embedder), KernelAudioDistance(embedder)
    kld = PasstKLD(load_embedder("passt", passt))
    gen = [sf.read(folders["gen"] / f"clip{i}.wav", dtype="float32")[0] for i in range(4)]
    ref = [sf.read(folders["ref"] / f"clip{i}.wav", dtype="float32")[0] for i in range(4)]
    gen_t, ref_t = [torch.from_numpy(a)[None] for a in gen], [torch.from_numpy(a)[None] for a in ref]
    for metric in (fad, kad):
        metric.update(ref_t, 32000, reference=True)
        metric.update(gen_t, 32000)
    kld.update(gen_t, ref_t, 32000)
    values = {k: r["value"] for k, r in report["metrics"].items()}
    assert math.isclose(values["fad_codec-encoder"], float(fad.compute()), rel_tol=1e-9)
    assert math.isclose(values["kad_codec-encoder"], float(kad.compute()), rel_tol=1e-9)
    assert math.isclose(values["kld"], float(kld.compute()["kld"]), rel_tol=1e-9)
    assert report["metrics"]["kld"]["pairs"] == 4 and "ci" in report["metrics"]["kld"]

    models = report["models"]
    assert models["kl"] == {**models["kl"], "id": "passt-10s", "label": "random-weights",
                            "sha256": file_sha256(passt)}
    assert models["codec-encoder"]["label"] == "mgen-codec"
    assert report["random_weights"] == ["kl"]
    assert report["protocols"] == {**report["protocols"], "fad": "mgen-fad-v1", "kld": "audiocraft-passt-kld-v2"}
    assert report["reference"] == {**report["reference"], "kind": "audio", "source": "real", "clips": 4}
    markdown = (out / "report.md").read_text()
    assert markdown.index("random-weights") < markdown.index("| metric |")  # said before any number


def test_reference_statistics_once_then_reused(folders, eval_setup, tmp_path, capsys):
    """`--ref DIR -o REF.npz` keeps what FAD and KAD need: scoring against it equals scoring against the folder;
    statistics of another embedder or protocol are refused."""
    codec = eval_setup["codec"]
    stats = tmp_path / "ref.npz"
    assert evaluate("--ref", folders["ref"], "--embedder", f"codec={codec}", "-o", stats) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["frames"] == 4 * 50 and printed["clips"] == 4 and printed["label"] == "mgen-codec"
    common = ["--metrics", "fad,kad", "--embedder", f"codec={codec}", "--no-bootstrap"]
    assert evaluate("--gen", folders["gen"], "--ref", stats, *common, "-o", tmp_path / "a") == 0
    assert evaluate("--gen", folders["gen"], "--ref", folders["ref"], *common, "-o", tmp_path / "b") == 0
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in "ab")
    for key in ("fad_codec-encoder", "kad_codec-encoder"):
        assert math.isclose(a["metrics"][key]["value"], b["metrics"][key]["value"], rel_tol=1e-9)
    assert a["reference"]["kind"] == "statistics" and a["reference"]["source"] == "real"

    # statistics from another embedder (another codec), or an older protocol, are refused by name
    other = tmp_path / "other_codec"
    torch.manual_seed(1)
    save_codec(Codec.from_preset("tiny").eval(), other)
    assert evaluate("--gen", folders["gen"], "--ref", stats, "--metrics", "fad", "--embedder", f"codec={other}",
                    "-o", tmp_path / "c") == 2
    assert "made with embedder codec-encoder-" in capsys.readouterr().err
    with np.load(stats) as data:
        arrays = dict(data)
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.asarray(json.dumps({**meta, "fad_protocol": "mgen-fad-v0"}))
    old = tmp_path / "old.npz"
    np.savez(old, **arrays)
    assert evaluate("--gen", folders["gen"], "--ref", old, *common, "-o", tmp_path / "d") == 2
    assert "FAD protocol mgen-fad-v0" in capsys.readouterr().err
    # pairs need reference audio, not statistics
    assert evaluate("--gen", folders["gen"], "--ref", stats, "--metrics", "kl", "-o", tmp_path / "e") == 2
    assert "kl pairs each generated file" in capsys.readouterr().err
    assert not any((tmp_path / d / "report.json").exists() for d in "cde")


def test_generated_audio_scored_against_shards(eval_setup, tmp_path):
    """A folder named by shard keys (as `mgen evaluate --model` writes) pairs with the shard split's clips."""
    from mgen.evaluation.sources import shard_clips

    clips = shard_clips(eval_setup["shards"], "valid", 3)
    gen = tmp_path / "gen"
    gen.mkdir()
    for clip in clips:
        audio = clip.load().numpy().T
        sf.write(gen / f"{clip.name}.wav", np.roll(audio, 800, axis=0), clip.sample_rate, subtype="FLOAT")
    options = EvalOptions(metrics="fad,chroma", embedders=[f"codec={eval_setup['codec']}"], progress=False)
    report = evaluate_folders(gen, eval_setup["shards"], tmp_path / "out", "valid", options)
    assert report["reference"]["clips"] == len(shard_clips(eval_setup["shards"], "valid"))
    assert report["metrics"]["chroma_cosine"]["value"] > 0.9  # the same music, 25 ms later
    assert report["reference"]["source"] == "real" and "shards" in report["reference"]["description"]


def test_bad_folders_are_clear_errors(folders, eval_setup, random_weights, tmp_path, capsys):
    codec = f"codec={eval_setup['codec']}"
    out = tmp_path / "out"

    def refused(message: str, *args) -> None:
        assert evaluate(*args, "-o", out) == 2, args
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mgen evaluate: error:")]
        assert len(errors) == 1 and message in errors[0], errors  # one line, naming the problem
        assert not (out / "report.json").exists() and not (out / "report.md").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    refused("no audio files", "--gen", empty, "--ref", folders["ref"], "--embedder", codec)
    refused("unknown metric(s) 'fda'", "--gen", folders["gen"], "--ref", folders["ref"], "--metrics", "fad,fda")
    refused("nothing to evaluate", "--split", "valid")

    # formats: another rate or channel count is refused unless --resample (then a notice in the report)
    low = write_folder(tmp_path / "low", GEN_FREQS, rate=16000)
    stereo = write_folder(tmp_path / "stereo", GEN_FREQS, channels=2)
    refused("generated audio is 16000 Hz 1 ch, the reference 32000 Hz, 1 channel(s)", "--gen", low, "--ref",
            folders["ref"], "--metrics", "fad", "--embedder", codec)
    refused("pass --resample", "--gen", stereo, "--ref", folders["ref"], "--metrics", "fad", "--embedder", codec)
    assert evaluate("--gen", low, "--ref", folders["ref"], "--metrics", "fad", "--embedder", codec, "--resample",
                    "--no-bootstrap", "-o", tmp_path / "resampled") == 0
    notices = json.loads((tmp_path / "resampled" / "report.json").read_text())["notices"]
    assert len(notices) == 1 and "resampled" in notices[0]

    # NaN and silent audio
    bad = write_folder(tmp_path / "nan", GEN_FREQS[:3])
    nan_wav(bad / "clip3.wav")
    refused("clip3.wav: the audio contains NaN", "--gen", bad, "--ref", folders["ref"], "--metrics", "fad",
            "--embedder", codec)
    silent = write_folder(tmp_path / "silent", GEN_FREQS[:3])
    sf.write(silent / "clip3.wav", np.zeros(32000, dtype="float32"), 32000)
    refused("generated clip 'clip3' is silent", "--gen", silent, "--ref", folders["ref"], "--metrics", "fad",
            "--embedder", codec)
    assert evaluate("--gen", silent, "--ref", folders["ref"], "--metrics", "fad", "--embedder", codec, "--silence",
                    "keep", "--no-bootstrap", "-o", tmp_path / "kept") == 0
    assert json.loads((tmp_path / "kept" / "report.json").read_text())["generated"]["silent"] == 1
    refused("reference clip 'clip3' is silent", "--gen", folders["gen"], "--ref", silent, "--metrics", "fad",
            "--embedder", codec)
    (bad / "clip3.wav").write_bytes(b"RIFF not really")
    refused("clip3.wav: cannot be read as audio", "--gen", bad, "--ref", folders["ref"])

    # pairs and captions
    renamed = write_folder(tmp_path / "renamed", GEN_FREQS, prefix="take")
    refused("kl pairs generated and reference files by stem: 4 generated file(s) have no reference of the same "
            "stem (take0, take1, take2, take3)", "--gen", renamed, "--ref", folders["ref"], "--metrics", "kl")
    uncaptioned = write_folder(tmp_path / "uncaptioned", GEN_FREQS, captions=False)
    refused("clap needs a caption per generated file", "--gen", uncaptioned, "--metrics", "clap")
    refused("fad needs a reference", "--gen", folders["gen"], "--metrics", "fad")

    # too few frames for the statistics: the error says how many there are and how many are needed
    refused("vggish: 4 reference embedding frames from 4 clip(s), but a 128-d FAD (a full-rank covariance) needs at "
            "least 129", "--gen", folders["gen"], "--ref", folders["ref"], "--metrics", "fad", "--embedder",
            f"vggish={random_weights['vggish']}")
    # one evaluation at a time per output folder
    with folder_lock(out):
        refused("another mgen evaluate is writing there", "--gen", folders["gen"], "--ref", folders["ref"],
                "--metrics", "fad", "--embedder", codec)
    # missing weights name the file expected and where the published one comes from
    refused("the published file is vggish-10086976.pth, from https://github.com/harritaylor/torchvggish",
            "--gen", folders["gen"], "--ref", folders["ref"], "--metrics", "fad", "--embedder",
            f"vggish={tmp_path / 'missing.pth'}")


def test_suite_counts_frames_across_the_whole_set():
    """The frame check sees the gathered count, not a batch's: many short clips add up."""
    from metric_fixtures import FrameEmbedder, sine

    embedder = FrameEmbedder(dim=8)
    suite = MetricSuite(["fad"], {"toy": embedder})
    for i in range(3):
        suite.add_reference(sine(300 + 50 * i, 0.2, 16000)[None], 16000, f"r{i}")  # 15 frames each
    suite.check_reference()
    suite.add_generated([GeneratedItem(f"g{i}", sine(320 + 40 * i, 0.2, 16000)[None], 16000) for i in range(3)])
    results, _ = suite.results(bootstrap=False)
    assert results["fad_toy"]["frames"] == {"generated": 45, "reference": 45}
    short = MetricSuite(["fad"], {"toy": embedder})
    short.add_reference(sine(300, 0.05, 16000)[None], 16000, "r")  # 3 frames < 9
    with pytest.raises(ValueError, match="toy: 3 reference embedding frames from 1 clip"):
        short.check_reference()
