"""LM training on real token shards through `mgen fit`: it learns, checkpoints, resumes and exports."""

from __future__ import annotations

import csv
import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lm_fixtures import recipe

from mgen.cli import main
from mgen.conditioning.provider import ConditioningConfig
from mgen.lm.model import LMConfig, cross_entropy_per_codebook
from mgen.musicgen import MusicGen
from mgen.train.fit import fit
from mgen.train.lm_module import LMModule, LMTrainConfig


def unigram_entropy(shards: Path, split: str) -> float:
    """Mean over codebooks of the entropy (nats) of the code distribution in one split."""
    counts: dict[int, np.ndarray] = {}
    for tar_path in sorted(shards.glob(f"{split}-*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith("codes.npy"):
                    codes = np.load(io.BytesIO(tar.extractfile(member).read())).astype(np.int64)
                    for q, row in enumerate(codes):
                        counts.setdefault(q, np.zeros(4096))[: row.max() + 1] += np.bincount(row)
    entropies = []
    for c in counts.values():
        p = c[c > 0] / c.sum()
        entropies.append(float(-(p * np.log(p)).sum()))
    return sum(entropies) / len(entropies)


def logged(run: Path, name: str) -> list[float]:
    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    return [float(r[name]) for r in rows if r.get(name)]


def test_lm_learns_real_tokens_below_unigram_entropy(token_shards: Path, tmp_path: Path) -> None:
    """On the training tokens the LM's cross-entropy falls well below their unigram entropy (what a model
    without context could reach). On this 6-clip corpus with an untrained codec, validation cross-entropy is only
    checked to be finite; tests/integration/test_lm_generalises.py shows held-out val/ce well below the held-out unigram
    entropy, with a larger corpus and a briefly trained codec."""
    run = tmp_path / "run"
    summary = fit(recipe(token_shards, 200), run)
    train_ce = logged(run, "train/ce")
    entropy = unigram_entropy(token_shards, "train")
    assert train_ce[0] > entropy  # starts above: an untrained model is worse than the unigram
    assert sum(train_ce[-3:]) / 3 < 0.9 * entropy, (train_ce[-3:], entropy)
    assert math.isfinite(summary["metrics"]["val/ce"])
    assert summary["global_step"] == 200
    assert (run / "checkpoints" / "last.ckpt").is_file()
    for name in ("train/ce_q0", "train/ppl_q3", "train/tokens_per_s", "val/ce_q1"):
        assert logged(run, name)
    config = json.loads((run / "export" / "config.json").read_text())
    assert config["kind"] == "mgen-lm" and config["lm"]["card"] == 256

    model = MusicGen.load(run / "export")  # no Lightning: safetensors + JSON + the codec export
    audio = model.generate(["a cheerful folk tune", "a calm chorale"], duration=0.6, top_k=20, seed=0)
    assert audio.shape == (2, 1, 19200) and torch.isfinite(audio).all()
    again = model.generate(["a cheerful folk tune", "a calm chorale"], duration=0.6, top_k=20, seed=0)
    assert torch.equal(audio, again)
    with pytest.raises(ValueError, match="empty text prompt"):
        model.generate([""], duration=1.0)
    with pytest.raises(ValueError, match="duration must be > 0"):
        model.generate(["a tune"], duration=0)
    with pytest.raises(ValueError, match="not an mgen LM export"):
        MusicGen.load(run / "export" / "codec")

    # the command: several prompts from a file, continuation from audio, bad input named clearly
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cheerful folk tune\n\na calm chorale\n")
    sf.write(tmp_path / "start.wav", np.random.default_rng(0).normal(0, 0.1, 16000).astype("float32"), 32000)
    out = tmp_path / "gen" / "clip.wav"
    assert main(["generate", "--model", str(run / "export"), "--text-file", str(prompts), "--duration", "1.0",
                 "--continue-from", str(tmp_path / "start.wav"), "--top-k", "20", "--seed", "1",
                 "--out", str(out)]) == 0
    for name in ("clip_000.wav", "clip_001.wav"):
        clip, rate = sf.read(out.parent / name)
        assert rate == 32000 and clip.shape == (32000,)
    (tmp_path / "notes.wav").write_text("not audio")
    assert main(["generate", "--model", str(run / "export"), "--text", "a tune", "--melody",
                 str(tmp_path / "notes.wav"), "-o", str(tmp_path / "x.wav")]) == 2
    assert main(["generate", "--model", str(run / "export" / "codec"), "--text", "a tune",
                 "-o", str(tmp_path / "x.wav")]) == 2
    assert not (tmp_path / "x.wav").exists()  # nothing written for a failed request


def test_fit_resumes_from_last_checkpoint(token_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    fit(recipe(token_shards, 30), run)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 30
    steps_before = [int(r["step"]) for r in csv.DictReader((run / "logs" / "metrics.csv").open()) if r["train/ce"]]
    summary = fit(recipe(token_shards, 40), run)  # same run directory: continues from step 30
    assert summary["global_step"] == 40
    # the metrics of the first 30 steps are kept, each training step is logged once
    steps = [int(r["step"]) for r in csv.DictReader((run / "logs" / "metrics.csv").open()) if r["train/ce"]]
    assert steps[: len(steps_before)] == steps_before and max(steps_before) < 30 <= max(steps)
    assert len(steps) == len(set(steps)) and steps == sorted(steps)


def test_padding_and_invalid_positions_do_not_reach_the_loss() -> None:
    module = LMModule(LMConfig(dim=64, num_heads=2, num_layers=1, card=32, n_q=4, cross_attention=False),
                      ConditioningConfig(text=False, melody=True), LMTrainConfig(warmup_steps=1))
    codes = torch.randint(0, 32, (2, 4, 12))
    cond = module.conditioner(melody_wavs=torch.randn(2, 1, 32000) * 0.1, sample_rate=32000)
    logits, mask = module.lm.compute_predictions(codes, cond)
    padding = torch.ones(2, 12, dtype=torch.bool)
    padding[1, 8:] = False
    loss, _ = cross_entropy_per_codebook(logits, codes, mask, padding)
    changed = logits.detach().clone()
    changed[1, :, 8:] = 50.0  # padded frames
    changed[:, ~mask] = 50.0  # positions the pattern leaves without a target
    assert math.isclose(cross_entropy_per_codebook(changed, codes, mask, padding)[0].item(), loss.item(),
                        rel_tol=1e-6)


def test_wrong_shards_for_the_model_is_a_clear_error(token_shards: Path, tmp_path: Path) -> None:
    bad = recipe(token_shards, 5)
    bad["model"]["card"] = 2048
    with pytest.raises(ValueError, match="token shards hold 4 codebooks x 256"):
        fit(bad, tmp_path / "run")


def test_ema_weights_and_validation_samples(token_shards: Path, tmp_path: Path) -> None:
    """With `ema:` the checkpoint and the export hold the averaged weights (the live ones are kept for
    resuming); with `samples:` every validation writes generated clips + spectrograms next to references."""
    run = tmp_path / "run"
    r = recipe(token_shards, 20)
    r["ema"] = {"decay": 0.9}
    r["samples"] = {"count": 2, "seconds": 0.5, "top_k": 20}
    r["trainer"]["val_every_n_steps"] = 10
    fit(r, run)
    media = run / "logs" / "media"
    for step in (10, 20):
        for i in range(2):
            clip, rate = sf.read(media / f"val_samples_step{step}_{i}.wav")
            assert rate == 32000 and clip.shape == (16000,) and np.abs(clip).max() > 0
            assert (media / f"val_samples_step{step}_{i}.png").stat().st_size > 0
            assert (media / f"val_samples_reference_step{step}_{i}.wav").is_file()

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    average, live = ckpt["state_dict"], ckpt["current_model_state"]
    assert set(average) == set(live)
    assert any(not torch.equal(average[k], live[k]) for k in average)
    from safetensors.torch import load_file
    exported = load_file(str(run / "export" / "model.safetensors"))
    for name, value in exported.items():
        assert torch.equal(value, average[name]), name

    summary = fit({**r, "trainer": {**r["trainer"], "max_steps": 25}}, run)  # resumes live + average weights
    assert summary["global_step"] == 25


def test_lm_recipe_typos_are_errors(token_shards: Path, tmp_path: Path) -> None:
    bad = recipe(token_shards, 5)
    bad["conditioning"]["text_word_dropout"] = 0.3
    with pytest.raises(ValueError, match=r"unknown key conditioning.text_word_dropout; known: attribute_dropout"):
        fit(bad, tmp_path / "run")
    bad = recipe(token_shards, 5)
    bad["sampels"] = {"count": 2}
    with pytest.raises(ValueError, match="unknown key sampels; known: codec, conditioning"):
        fit(bad, tmp_path / "run")


def test_audio_batches_are_tokenized_in_fp32_under_bf16_autocast(tmp_path: Path) -> None:
    """bf16-mixed training must not change the codes of audio batches: the RVQ search runs in fp32."""
    from mgen.codec.checkpoint import save_codec
    from mgen.codec.model import Codec

    torch.manual_seed(0)
    codec = Codec.from_preset("tiny")
    wav = 0.1 * torch.randn(4, 1, codec.hop_length * 50)
    with torch.no_grad():  # k-means codebooks from the latents, so that the codes spread and rounding can move them
        codec.train()
        codec.quantizer(codec.encoder(wav))
    codec.eval()
    save_codec(codec, tmp_path / "codec")
    with torch.no_grad():
        expected = codec.encode(wav, sample_rate=codec.sample_rate)
    assert expected.unique().numel() > 50
    module = LMModule(LMConfig.preset("tiny", n_q=4, card=256, cross_attention=False),
                      ConditioningConfig(text=False, melody=True), codec_path=str(tmp_path / "codec"))
    batch = {"audio": wav.to(torch.bfloat16), "padding_mask": torch.ones(4, wav.shape[-1], dtype=torch.bool)}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        codes, frames = module.tokens_of({**batch, "audio": wav})
        codes_of_bf16, _ = module.tokens_of(batch)
    assert torch.equal(codes, expected) and frames.shape == (4, 50) and bool(frames.all())
    # bf16 audio is upcast first: the codes are those of the rounded audio encoded in fp32
    with torch.no_grad():
        assert torch.equal(codes_of_bf16, codec.encode(wav.to(torch.bfloat16).float(), sample_rate=codec.sample_rate))


def test_non_finite_loss_is_checked_on_logged_steps_only() -> None:
    """The check reads the loss on the host, which waits for the device: only every log_every_n_steps."""
    from types import SimpleNamespace

    module = LMModule(LMConfig(dim=64, num_heads=2, num_layers=1, card=32, n_q=4, cross_attention=False),
                      ConditioningConfig(text=False, melody=True))
    nan = torch.tensor(float("nan"))
    module._check_finite(torch.tensor(1.0))
    with pytest.raises(FloatingPointError, match="non-finite LM loss nan at step 0"):
        module._check_finite(nan)  # no trainer: every step
    module._trainer = SimpleNamespace(log_every_n_steps=5, global_step=3)
    module._check_finite(nan)  # not a logged step: not read
    module._trainer.global_step = 10
    with pytest.raises(FloatingPointError, match="at step 10"):
        module._check_finite(nan)
