"""CodecModule trained with the Lightning Trainer on real rendered music: it learns (held-out mel distance and
SI-SNR improve by a margin), validates and exports its EMA weights, logs every metric and audio media, and its
checkpoints load with `load_codec` (weights_only) and resume with the loss balancer state."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from lightning.pytorch.loggers import CSVLogger

from mgen.codec.checkpoint import load_codec, save_codec
from mgen.codec.model import Codec
from mgen.codec.model import CodecConfig
from mgen.train.codec_module import CodecModule, export_codec
from mgen.train.codec_recipe import build_codec_module, codec_callbacks, codec_trainer_kwargs
from mgen.train.ema import EMAConfig
from mgen.train.recipe import RecipeError, parse_recipe

pytestmark = pytest.mark.usefixtures("single_thread")

SEGMENT = 16000  # 0.5 s at 32 kHz: 25 codec frames
HELD_OUT = 2  # clips of the corpus kept out of training
UPDATES = 360  # ~1 min on one CPU thread: the SEANet leaves its initial plateau after ~100-250 updates (by seed)
ADVERSARIAL_UPDATES = 20  # a short GAN phase at the end: a discriminator step costs ~5x a generator step


class RandomCrops(torch.utils.data.Dataset):
    """Random 0.5 s crops of the training clips; item i is always the same crop (seeded by i)."""

    def __init__(self, clips: list[torch.Tensor], length: int = 100_000) -> None:
        self.clips = clips
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(index)
        clip = self.clips[int(torch.randint(0, len(self.clips), (1,), generator=g))]
        start = int(torch.randint(0, clip.shape[-1] - SEGMENT, (1,), generator=g))
        return {"audio": clip[None, start:start + SEGMENT]}


@pytest.fixture(scope="module")
def music(synth_corpus) -> dict[str, Any]:
    """Training clips and held-out 0.5 s crops (4 per held-out clip) from the rendered corpus."""
    files = sorted((Path(synth_corpus["dir"]) / "audio").glob("*.flac"))
    clips = []
    for f in files:
        audio, rate = sf.read(f, dtype="float32", always_2d=True)
        assert rate == 32000
        clips.append(torch.from_numpy(audio.mean(1)))
    held = clips[-HELD_OUT:]
    starts = [np.linspace(8000, c.numel() - SEGMENT, 4, dtype=int) for c in held]
    val = torch.stack([c[None, s:s + SEGMENT] for c, ss in zip(held, starts) for s in ss])
    return {"train": clips[:-HELD_OUT], "val": val}


def tiny_recipe(**trainer: Any) -> dict[str, Any]:
    """The tiny recipe's training settings (recipes/codec/tiny.yaml), with small checkpoint/validation intervals."""
    import yaml

    recipe = yaml.safe_load((Path(__file__).resolve().parents[2] / "recipes/codec/tiny.yaml").read_text())
    recipe["trainer"].update(trainer)
    return recipe


def fit(recipe: dict[str, Any], music: dict[str, Any], root: Path, batch_size: int = 4,
        module: CodecModule | None = None, ckpt_path: str | None = None, seed: int = 0,
        extra_callbacks: tuple[L.Callback, ...] = (), **trainer_kw: Any) -> tuple[CodecModule, L.Trainer]:
    L.seed_everything(seed, workers=True, verbose=False)
    typed = parse_recipe(recipe)
    module = module or build_codec_module(typed)
    kwargs = codec_trainer_kwargs(typed)
    kwargs.update(trainer_kw)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=CSVLogger(root, name="logs", version=0),
                        callbacks=[*codec_callbacks(typed, root / "ckpt"), *extra_callbacks],
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kwargs)
    train = torch.utils.data.DataLoader(RandomCrops(music["train"]), batch_size=batch_size)
    val = torch.utils.data.DataLoader(music["val"], batch_size=len(music["val"]))
    trainer.fit(module, train, val, ckpt_path=ckpt_path)
    return module, trainer


def read_metrics(root: Path) -> list[dict[str, str]]:
    with open(root / "logs" / "version_0" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], name: str) -> list[float]:
    return [float(r[name]) for r in rows if r.get(name) not in (None, "")]


# --------------------------------------------------------------------------------------------- learning
@pytest.fixture(scope="module")
def trained(music, tmp_path_factory) -> dict[str, Any]:
    """The tiny recipe for a few hundred updates: most without the GAN, then a short adversarial phase."""
    root = tmp_path_factory.mktemp("codec_fit")
    recipe = tiny_recipe(max_steps=UPDATES, val_every_n_steps=UPDATES, checkpoint_every_n_steps=UPDATES,
                         log_every_n_steps=10)
    recipe["optim"]["adversarial_start"] = UPDATES - ADVERSARIAL_UPDATES
    L.seed_everything(0, verbose=False)
    module = build_codec_module(parse_recipe(recipe))
    before = {k: float(v) for k, v in module.reconstruction_metrics(music["val"]).items() if k != "recon"}
    start = time.perf_counter()
    module, trainer = fit(recipe, music, root, module=module)
    seconds = time.perf_counter() - start
    module.eval()
    after = {k: float(v) for k, v in module.reconstruction_metrics(music["val"]).items() if k != "recon"}
    live = {k: float(v) for k, v in module.reconstruction_metrics(music["val"], module.codec).items() if k != "recon"}
    print(f"\ncodec tiny, {int(module.generator_updates)} updates in {seconds:.1f} s: before {before}\n"
          f"after (EMA) {after}\nafter (live) {live}")
    return {"root": root, "module": module, "trainer": trainer, "before": before, "after": after, "live": live,
            "recipe": recipe, "seconds": seconds}


@pytest.mark.slow
def test_tiny_codec_learns_real_music(trained):
    before, after = trained["before"], trained["after"]
    assert int(trained["module"].generator_updates) == UPDATES
    # Mel distance on held-out music falls by at least a third (measured over seeds 0-5: 57 -> 30-32).
    assert after["mel_distance"] < 0.67 * before["mel_distance"]
    # SI-SNR: from chance (about -65 dB: output uncorrelated with the input) to a waveform that follows the
    # music (measured over seeds: -10 to -19 dB with the EMA weights). The absolute bound rules out the plateau
    # the SEANet starts on (-40 to -55 dB: the right spectrum with random phase).
    assert after["si_snr"] > before["si_snr"] + 35
    assert after["si_snr"] > -25
    # Codebooks are in use, not collapsed onto a handful of codes.
    assert after["perplexity_mean"] > 16


@pytest.mark.slow
def test_validation_and_export_use_ema_weights(trained, tmp_path):
    module = trained["module"]
    assert module.codec_ema is not None
    live = dict(module.codec.named_parameters())
    differs = [n for n, p in module.codec_ema.named_parameters() if not torch.equal(p, live[n])]
    assert len(differs) > 0.9 * len(live)
    rows = read_metrics(trained["root"])
    logged = column(rows, "val/si_snr")[-1]
    assert logged == pytest.approx(trained["after"]["si_snr"], abs=1e-3)
    assert abs(logged - trained["live"]["si_snr"]) > 1e-3  # validation did not use the live weights
    exported = load_codec(export_codec(module, tmp_path / "export"))
    wav = torch.randn(1, 1, 6400) * 0.1
    assert torch.equal(exported.encode(wav), module.codec_ema.encode(wav))


@pytest.mark.slow
def test_metrics_and_media_are_logged(trained):
    rows = read_metrics(trained["root"])
    names = set().union(*(r.keys() for r in rows))
    for loss in ("l1", "msspec", "adv", "feat", "commitment", "d_loss"):
        assert column(rows, f"train/{loss}"), f"train/{loss} was not logged"
    for q in range(4):
        assert f"train/perplexity_q{q}" in names and f"train/usage_q{q}" in names
    assert column(rows, "train/bitrate_kbps")[0] == pytest.approx(4 * 8 * 50 / 1000)
    assert column(rows, "val/mel_distance") and column(rows, "val/perplexity_mean")
    assert any(n.startswith("lr-Adam") for n in names)
    assert max(column(rows, "train/adversarial")) == 1.0 and min(column(rows, "train/adversarial")) == 0.0
    media = Path(trained["root"]) / "logs" / "version_0" / "media"
    wavs, pngs = sorted(media.glob("val_reconstruction_*.wav")), sorted(media.glob("val_reconstruction_*.png"))
    assert len(wavs) == 2 and len(pngs) == 2
    audio, rate = sf.read(wavs[0])
    assert rate == 32000 and audio.shape == (SEGMENT,) and np.abs(audio).max() > 0
    from PIL import Image

    assert Image.open(pngs[0]).size[0] > 10


@pytest.mark.slow
def test_trainer_checkpoint_loads_with_load_codec(trained):
    ckpt = Path(trained["root"]) / "ckpt" / "last.ckpt"
    assert (Path(trained["root"]) / "ckpt" / f"codec-updates={UPDATES}.ckpt").is_file()
    codec = load_codec(ckpt)  # torch.load(weights_only=True) inside
    assert not codec.training
    wav = torch.randn(2, 1, 8000) * 0.1
    assert torch.equal(codec.encode(wav), trained["module"].codec_ema.encode(wav))
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert raw["loss_balancer"]["ema_sum"].keys() == {"l1", "msspec", "adv", "feat"}


# ------------------------------------------------------------------------------------- small, fast ones
class PickledObject:
    """Stands for arbitrary pickled code in a checkpoint: weights_only loading must refuse it."""

def short_recipe(**train: Any) -> dict[str, Any]:
    recipe = tiny_recipe(max_steps=4, val_every_n_steps=4, checkpoint_every_n_steps=2, log_every_n_steps=1)
    recipe["optim"].update({"adversarial_start": 2, "disc_filters": 4, "disc_n_ffts": [256, 128],
                            "num_audio_examples": 0, **train})
    return recipe


def test_resume_restores_balancer_ema_and_update_count(music, tmp_path):
    recipe = short_recipe()
    module, _ = fit(recipe, music, tmp_path / "a")
    ckpt = tmp_path / "a" / "ckpt" / "last.ckpt"
    balancer = module.balancer.state_dict()
    assert set(balancer["ema_sum"]) == {"l1", "msspec", "adv", "feat"}

    recipe["trainer"]["max_steps"] = 5
    resumed = build_codec_module(parse_recipe(recipe))
    captured: dict[str, Any] = {}

    class Spy(L.Callback):
        def on_train_start(self, trainer, pl_module):
            captured["balancer"] = pl_module.balancer.state_dict()
            captured["updates"] = int(pl_module.generator_updates)
            captured["ema"] = {k: v.clone() for k, v in pl_module.codec_ema.state_dict().items()}

    fit(recipe, music, tmp_path / "b", module=resumed, ckpt_path=str(ckpt), extra_callbacks=(Spy(),))
    assert captured["updates"] == 4
    assert captured["balancer"] == balancer
    assert all(torch.equal(v, module.codec_ema.state_dict()[k]) for k, v in captured["ema"].items())
    assert int(resumed.generator_updates) == 5


def test_save_load_codec_round_trip(tmp_path):
    torch.manual_seed(0)
    codec = Codec.from_preset("tiny", quantizer={"kmeans_iters": 2})
    with torch.no_grad():
        codec.train()(0.1 * torch.randn(2, 1, 16000))  # k-means init, so codes are spread out
    codec.eval()
    out = save_codec(codec, tmp_path / "codec")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["kind"] == "mgen-codec"
    loaded = load_codec(out)
    wav = 0.1 * torch.randn(1, 1, 9600)
    assert torch.equal(loaded.encode(wav), codec.encode(wav))
    assert torch.equal(loaded.decode(codec.encode(wav)), codec.decode(codec.encode(wav)))
    save_codec(codec, out)  # overwriting an export is allowed
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".codec")]  # no temporary leftovers


def test_wrong_kind_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_codec(tmp_path / "missing.ckpt")
    random_pt = tmp_path / "random.pt"
    torch.save({"weights": torch.randn(3)}, random_pt)
    with pytest.raises(ValueError, match="not a codec training checkpoint"):
        load_codec(random_pt)
    tensor_pt = tmp_path / "tensor.pt"
    torch.save(torch.randn(3), tensor_pt)
    with pytest.raises(ValueError, match="not a codec checkpoint"):
        load_codec(tensor_pt)
    lm_ckpt = tmp_path / "lm.ckpt"  # what an LM training checkpoint looks like
    torch.save({"state_dict": {"lm.emb.weight": torch.randn(2, 2)}, "hyper_parameters": {"lm": {"dim": 8}}}, lm_ckpt)
    with pytest.raises(ValueError, match="is it an LM checkpoint"):
        load_codec(lm_ckpt)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="weights_only"):
        load_codec(garbage)
    evil = tmp_path / "evil.ckpt"  # a pickled object is refused, not executed
    torch.save({"hyper_parameters": {"codec": PickledObject()}, "state_dict": {}}, evil)
    with pytest.raises(ValueError, match="weights_only"):
        load_codec(evil)
    export = tmp_path / "lm_export"
    export.mkdir()
    (export / "config.json").write_text(json.dumps({"kind": "mgen-lm"}))
    (export / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="'mgen-lm' model, not a codec"):
        load_codec(export)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="needs config.json and model.safetensors"):
        load_codec(tmp_path / "empty")


def test_build_codec_module_checks_recipes():
    recipe = tiny_recipe()
    module = build_codec_module(parse_recipe(recipe))
    assert module.max_steps == recipe["trainer"]["max_steps"]
    assert module.ema_cfg.decay == recipe["ema"]["decay"]
    with pytest.raises(RecipeError, match="optim.disc_every is a key of codec recipes, not of lm recipes"):
        parse_recipe({**recipe, "task": "lm"})
    with pytest.raises(RecipeError, match="data.sample_rate was removed: a codec run reads audio at its model's"):
        parse_recipe({**recipe, "data": {**recipe["data"], "sample_rate": 44100}})
    with pytest.raises(RecipeError, match="data.channels was removed"):
        parse_recipe({**recipe, "data": {**recipe["data"], "channels": 2}})
    with pytest.raises(RecipeError, match="unknown codec losses"):
        parse_recipe({**recipe, "optim": {"loss_weights": {"l2": 1.0}}})
    with pytest.raises(RecipeError, match="unknown key optim.learning_rate"):
        parse_recipe({**recipe, "optim": {"learning_rate": 1.0}})
    with pytest.raises(RecipeError, match="train was renamed to optim"):
        parse_recipe({**recipe, "train": {}})
    with pytest.raises(RecipeError, match="shorter than the longest STFT window"):
        parse_recipe({**recipe, "data": {**recipe["data"], "segment_seconds": 0.01}})
    with pytest.raises(RecipeError, match="unknown key model.hop"):
        parse_recipe({**recipe, "model": {"preset": "tiny", "hop": 320}})


def test_ema_is_unbiased_and_optional():
    module = CodecModule(CodecConfig.preset("tiny"), ema=EMAConfig(decay=0.5))
    live, ema = module.codec.state_dict(), module.codec_ema.state_dict()
    with torch.no_grad():
        first = {k: v.clone() + 1.0 if v.is_floating_point() else v for k, v in live.items()}
        module.codec.load_state_dict(first)
        module.update_ema()  # the first update copies (weight 1/1), it is not pulled towards the init
        assert all(torch.equal(ema[k], first[k]) for k in ema)
        second = {k: v + 3.0 if v.is_floating_point() and not k.endswith("inited") else v for k, v in first.items()}
        module.codec.load_state_dict(second)
        module.update_ema()  # weight 1 / (1 + 0.5)
        name = "decoder.layers.0.conv.bias"
        assert torch.allclose(ema[name], first[name] + 3.0 / 1.5)
    assert not any(p.requires_grad for p in module.codec_ema.parameters())
    plain = CodecModule(CodecConfig.preset("tiny"), ema=EMAConfig(decay=None))
    assert plain.codec_ema is None and plain.eval_codec is plain.codec
    assert not any(k.startswith("codec_ema.") for k in plain.state_dict())


@pytest.mark.parametrize("name", ["paper-32khz", "tiny"])
def test_recipes_build(name):
    import yaml

    recipe = yaml.safe_load((Path(__file__).resolve().parents[2] / f"recipes/codec/{name}.yaml").read_text())
    typed = parse_recipe(recipe)
    module = build_codec_module(typed)
    callbacks = codec_callbacks(typed)
    assert len(callbacks) == 2
    kwargs = codec_trainer_kwargs(typed)
    assert kwargs["max_steps"] == -1
    if name == "paper-32khz":
        cfg = module.train_cfg
        assert (cfg.lr, cfg.betas, module.ema_cfg.decay, module.max_steps) == (3e-4, (0.5, 0.9), 0.99, 400_000)
        assert cfg.loss_weights == {"adv": 4.0, "feat": 4.0, "l1": 0.1, "msspec": 2.0}
        assert cfg.disc_n_ffts == (1024, 2048, 512, 256, 128) and cfg.disc_filters == 32
        assert recipe["data"]["global_batch_size"] == 64 and recipe["data"]["segment_seconds"] == 1.0
        assert module.codec.config.quantizer.card == 2048 and module.codec.config.seanet.n_filters == 64


DDP_SCRIPT = """
import sys, torch, lightning as L
from lightning.pytorch.loggers import CSVLogger
from mgen.train.codec_module import DDP_STRATEGY
from mgen.train.codec_recipe import build_codec_module, codec_callbacks, codec_trainer_kwargs
from mgen.train.recipe import parse_recipe
from mgen.codec.checkpoint import load_codec

class Noise(torch.utils.data.Dataset):
    def __len__(self):
        return 1000
    def __getitem__(self, i):
        return {"audio": 0.1 * torch.randn(1, 8000, generator=torch.Generator().manual_seed(i))}

if __name__ == "__main__":
    torch.set_num_threads(1)
    recipe = {"task": "codec", "model": {"preset": "tiny", "quantizer": {"kmeans_iters": 2}},
              "optim": {"lr": 1e-3, "loss_weights": {"l1": 1, "msspec": 1, "adv": 1, "feat": 1},
                        "adversarial_start": 2, "disc_filters": 4, "disc_n_ffts": [256, 128]},
              "data": {"segment_seconds": 0.25},
              "trainer": {"max_steps": 5, "val_every_n_steps": 5, "checkpoint_every_n_steps": 5}}
    L.seed_everything(0, verbose=False)
    recipe = parse_recipe(recipe)
    module, out = build_codec_module(recipe), sys.argv[1]
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=DDP_STRATEGY, logger=CSVLogger(out),
                        callbacks=codec_callbacks(recipe, out + "/ckpt"), enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, **codec_trainer_kwargs(recipe))
    data = torch.utils.data.DataLoader(Noise(), batch_size=2)
    trainer.fit(module, data, torch.utils.data.DataLoader(Noise(), batch_size=2))
    flat = torch.cat([v.double().flatten() for v in module.state_dict().values()])
    gathered = [torch.zeros_like(flat) for _ in range(2)]
    torch.distributed.all_gather(gathered, flat)
    print(f"RANK {trainer.global_rank} updates={int(module.generator_updates)} identical={torch.equal(*gathered)}")
    if trainer.global_rank == 0:
        print("LOADED", load_codec(out + "/ckpt/last.ckpt").n_q)
"""


@pytest.mark.slow
def test_ddp_two_processes_stay_in_sync(tmp_path):
    """Two CPU processes (gloo): codec, EMA, codebooks (all-reduced EMA, broadcast k-means / dead codes) and the
    discriminator end identical, with the discriminator and the generator updated through one DDP forward."""
    script = tmp_path / "ddp_codec.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True,
                            timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RANK 0 updates=5 identical=True" in result.stdout and "RANK 1 updates=5 identical=True" in result.stdout
    assert "LOADED 4" in result.stdout
