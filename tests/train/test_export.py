"""`mgen export`: a real 2-step `mgen fit` run (tiny codec, tiny LM, random-init T5 text encoder) exported from its
run directory, a checkpoint and an export; the same audio after the round trip, a self-contained text encoder,
transformers' MusicgenForConditionalGeneration with the same logits / greedy codes / audio, and clear refusals."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from text_encoder_fixtures import build_t5_encoder

from mgen.cli import main
from mgen.codec.checkpoint import load_codec, save_codec
from mgen.codec.model import Codec
from mgen.conditioning.provider import ConditioningConfig
from mgen.lm.generate import SamplingParams, generate_window
from mgen.lm.model import LMConfig
from mgen.musicgen import MusicGen
from mgen.train.fit import fit
from mgen.train.lm_export import write_lm_export
from mgen.train.lm_module import LMModule

N_Q, CARD, RATE = 4, 256, 32000
PROMPTS = ["a calm piano track with cello", "a dark techno track with drums and bass"]
CAPTIONS = ["a calm piano track", "an energetic rock track with guitar", "a dreamy ambient track with organ",
            "a happy folk track with flute"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, single_thread) -> dict[str, Path]:
    """Token shards of four captioned tones, then `mgen fit` for 2 steps with a T5 text encoder."""
    from data_prep.shards import ShardConfig, write_shards
    from data_prep.tokenize import tokenize_shards

    root = tmp_path_factory.mktemp("export_run")
    t5 = build_t5_encoder(root / "t5")
    audio = root / "audio"
    audio.mkdir()
    t = np.arange(2 * RATE) / RATE
    for i, caption in enumerate(CAPTIONS):
        sf.write(audio / f"clip{i}.wav", (0.3 * np.sin(2 * np.pi * 110 * (i + 2) * t)).astype("float32"), RATE)
        (audio / f"clip{i}.txt").write_text(caption)
    config = ShardConfig(sample_rate=RATE, channels=1, segment_seconds=1.0, shard_max_samples=2, valid_fraction=0.25)
    write_shards(audio, root / "shards", config, workers=1, progress=False)
    torch.manual_seed(0)
    save_codec(Codec.from_preset("tiny").eval(), root / "codec")
    tokenize_shards(root / "shards", root / "tokens", root / "codec", progress=False)
    recipe = {
        "task": "lm", "seed": 0,
        "model": {"preset": "tiny", "n_q": N_Q, "card": CARD},
        "conditioning": {"text": True, "text_encoder": str(t5)},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "data": {"shards": str(root / "tokens"), "segment_seconds": 1.0, "global_batch_size": 2, "num_workers": 0},
        "trainer": {"max_steps": 2, "val_every_n_steps": 1000, "limit_val_batches": 0,
                    "checkpoint_every_n_steps": 1, "progress_bar": False},
    }
    fit(recipe, root / "run")
    return {"root": root, "run": root / "run", "t5": t5, "codec": root / "codec"}


def reference_model(ckpt_path: Path) -> MusicGen:
    """The model the checkpoint holds, rebuilt the training way (LMModule + its state dict), independently of
    the export code."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    module = LMModule.from_hparams(hp)
    module.load_state_dict(ckpt["state_dict"])
    return MusicGen(module.lm, module.conditioner, load_codec(hp["codec_path"]), hp["train_segment_seconds"])


def sample(model: MusicGen) -> torch.Tensor:
    return model.generate(PROMPTS, duration=0.4, top_k=20, seed=0)


def test_mgen_format_round_trip_from_run_checkpoint_and_export(run: dict[str, Path], tmp_path: Path) -> None:
    last = run["run"] / "checkpoints" / "last.ckpt"
    expected = sample(reference_model(last))
    assert expected.shape == (2, 1, int(0.4 * RATE)) and expected.abs().max() > 0

    # what `mgen fit` wrote is the same format, text encoder included
    config = json.loads((run["run"] / "export" / "config.json").read_text())
    assert config["kind"] == "mgen-lm" and config["conditioning"]["text_encoder"] == "text_encoder"
    assert "codec_path" not in config and config["train_segment_seconds"] == 1.0
    assert torch.equal(sample(MusicGen.load(run["run"] / "export")), expected)

    periodic = next(p.name for p in (run["run"] / "checkpoints").glob("*step=1*.ckpt"))
    sources = {"from_run": [str(run["run"])], "from_ckpt": [str(last)],
               "from_step1": [str(run["run"]), "--ckpt-name", periodic]}
    for name, args in sources.items():
        assert main(["export", *args, "-o", str(tmp_path / name)]) == 0, name
    assert main(["export", str(tmp_path / "from_ckpt"), "-o", str(tmp_path / "from_export")]) == 0
    for name in ("from_run", "from_ckpt", "from_export"):
        out = tmp_path / name
        assert sorted(p.name for p in out.iterdir()) == ["codec", "config.json", "model.safetensors", "text_encoder"]
        assert torch.equal(sample(MusicGen.load(out)), expected), name
    weights = load_file(str(tmp_path / "from_run" / "model.safetensors"))
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    assert set(weights) == set(state) and all(torch.equal(weights[k], state[k]) for k in weights)
    step1 = load_file(str(tmp_path / "from_step1" / "model.safetensors"))  # one update earlier
    assert set(step1) == set(weights) and any(not torch.equal(step1[k], weights[k]) for k in weights)

    # the export carries its T5: it loads, generates the same and re-exports without the original folder
    moved = run["root"] / "t5-away"
    shutil.move(run["t5"], moved)
    try:
        assert torch.equal(sample(MusicGen.load(tmp_path / "from_ckpt")), expected)
        assert main(["export", str(tmp_path / "from_ckpt"), "-o", str(tmp_path / "again")]) == 0
        assert torch.equal(sample(MusicGen.load(tmp_path / "again")), expected)
        assert main(["export", str(run["run"]), "-o", str(tmp_path / "no_encoder")]) == 2  # the checkpoint needs it
        assert not (tmp_path / "no_encoder").exists()
    finally:
        shutil.move(moved, run["t5"])


def test_transformers_format_same_logits_codes_and_audio(run: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoProcessor, AutoTokenizer, MusicgenForConditionalGeneration

    out = tmp_path / "hf"
    assert main(["export", str(run["run"]), "-o", str(out), "--format", "transformers"]) == 0
    hf = MusicgenForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert type(processor).__name__ == "MusicgenProcessor"
    assert processor.feature_extractor.sampling_rate == RATE
    gen = hf.generation_config
    assert gen.decoder_start_token_id == gen.pad_token_id == CARD and hf.config.decoder.pad_token_id == CARD
    assert (gen.guidance_scale, gen.top_k, gen.do_sample) == (3.0, 250, True)
    assert gen.max_length == 50 + N_Q  # the 1 s training window at 50 Hz, plus the start step and the delays
    model = MusicGen.load(run["run"] / "export")
    text = model.conditioner.conditioners["description"]

    inputs = processor(text=PROMPTS, padding=True, return_tensors="pt")
    assert torch.equal(inputs["input_ids"], AutoTokenizer.from_pretrained(out)(PROMPTS, padding=True,
                                                                               return_tensors="pt")["input_ids"])
    assert torch.equal(inputs["input_ids"], text.tokenize(PROMPTS)[0]["input_ids"])
    cond = model.conditioner(texts=PROMPTS)
    codes = torch.randint(0, CARD, (2, N_Q, 12), generator=torch.Generator().manual_seed(0))
    pattern = model.lm.pattern_provider.get_pattern(codes.shape[-1])
    sequence, _ = pattern.build_sequence(codes, model.lm.special_token)  # the delay layout transformers reads
    with torch.no_grad():
        theirs = hf(**inputs, decoder_input_ids=sequence.reshape(2 * N_Q, -1)).logits
        ours = model.lm(sequence, cond)
    assert (theirs.reshape(ours.shape) - ours).abs().max().item() <= 1e-4

    # greedy generation: the same codes (caught on their way to EnCodec) and the same audio, with and without CFG
    frames = 15
    decode = hf.audio_encoder.decode
    caught: list[torch.Tensor] = []

    def catching_decode(audio_codes: torch.Tensor, *args, **kwargs):
        caught.append(audio_codes)  # [1, B, K, T]
        return decode(audio_codes, *args, **kwargs)

    hf.audio_encoder.decode = catching_decode
    for cfg in (1.0, 3.0):
        with torch.no_grad():
            audio = hf.generate(**inputs, do_sample=False, guidance_scale=cfg, max_new_tokens=frames + N_Q - 1)
        greedy = generate_window(model.lm, frames, cond, params=SamplingParams(greedy=True, cfg_coef=cfg))
        assert torch.equal(caught[-1][0], greedy), cfg
        expected = model.codec.decode(greedy)
        assert audio.shape == expected.shape
        torch.testing.assert_close(audio, expected, atol=1e-5, rtol=1e-4)


def test_stereo_model_generates_the_same_audio_in_transformers(run: dict[str, Path]) -> None:
    """Stereo: interleaved codebooks with per-channel delays; transformers decodes each channel with the mono
    EnCodec, as mgen's stereo codec does."""
    from mgen.interop.transformers_musicgen import to_transformers
    from mgen.lm.patterns import stereo_delays

    torch.manual_seed(0)
    lm = LMConfig.preset("tiny", n_q=2 * N_Q, card=CARD, pattern_options={"delays": stereo_delays(N_Q)})
    module = LMModule(lm, ConditioningConfig(text=True, text_encoder=str(run["t5"])))
    model = MusicGen(module.lm, module.conditioner, Codec.from_preset("tiny", channels=2), 1.0)
    hf, processor = to_transformers(model)
    assert hf.config.decoder.audio_channels == 2 and hf.generation_config.max_length == 50 + 1 + N_Q - 1
    inputs = processor(text=PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        audio = hf.generate(**inputs, do_sample=False, guidance_scale=3.0, max_new_tokens=10 + N_Q - 1)
    greedy = generate_window(model.lm, 10, model.conditioner(texts=PROMPTS),
                             params=SamplingParams(greedy=True, cfg_coef=3.0))
    expected = model.codec.decode(greedy)
    assert audio.shape == expected.shape == (2, 2, 10 * 640)
    torch.testing.assert_close(audio, expected, atol=1e-5, rtol=1e-4)


def write_export(tmp_path: Path, conditioning: dict, codec_dir: Path, **lm: object) -> Path:
    torch.manual_seed(0)
    module = LMModule(replace(LMConfig.preset("tiny", n_q=N_Q, card=CARD), **lm), ConditioningConfig(**conditioning))
    return write_lm_export(tmp_path / "export", dict(module.hparams), module.lm, module.conditioner,
                           load_codec(codec_dir))


@pytest.mark.parametrize(("t5", "melody", "lm", "reason"), [
    (False, False, {}, "its text encoder is a 'bert' model"),  # the packaged MiniLM
    (True, True, {}, "its self_wav condition(s) (melody chroma prefix / CLAP) have no counterpart"),
    (True, False, {"pattern": "parallel"}, "transformers' MusicGen generates with the delay pattern"),
    (True, False, {"dim": 32}, "the T5 width equals the LM width (32)"),
])
def test_models_transformers_cannot_express_are_refused(run: dict[str, Path], tmp_path: Path, capsys, t5: bool,
                                                        melody: bool, lm: dict, reason: str) -> None:
    conditioning = {"text": True, "melody": melody, **({"text_encoder": str(run["t5"])} if t5 else {})}
    source = write_export(tmp_path, conditioning, run["codec"], **lm)
    MusicGen.load(source)  # a valid mgen export
    assert main(["export", str(source), "-o", str(tmp_path / "hf"), "--format", "transformers"]) == 2
    err = capsys.readouterr().err
    assert "cannot" in err and reason in err, err
    assert not (tmp_path / "hf").exists()


def test_bad_sources_are_clear_errors_and_write_nothing(run: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"

    def fails(source: str, target: str, *args: str, match: str) -> None:
        assert main(["export", source, "-o", target, *args]) == 2, (source, target, args)
        assert match in capsys.readouterr().err, match
        assert not out.exists()

    fails(str(tmp_path / "nothing.ckpt"), str(out), match="not found")
    fails(str(run["codec"]), str(out), match="is a codec export, not an LM")
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    fails(str(empty_run), str(out), match="neither an mgen export (no config.json) nor a run directory")
    fails(str(run["run"]), str(out), "--ckpt-name", "step=999.ckpt", match="checkpoints/step=999.ckpt")
    (tmp_path / "corrupt.ckpt").write_bytes(b"PK\x03\x04 not really a checkpoint" * 10)
    fails(str(tmp_path / "corrupt.ckpt"), str(out), match="corrupt.ckpt: cannot be read as a checkpoint")
    torch.save({"hyper_parameters": {"codec": {}}, "state_dict": {}}, tmp_path / "codec.ckpt")
    fails(str(tmp_path / "codec.ckpt"), str(out), match="a codec training checkpoint, not an LMModule checkpoint")

    # the codec recorded in the checkpoint is gone: say so, and --codec replaces it
    ckpt = torch.load(run["run"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["codec_path"] = str(tmp_path / "moved-codec")
    torch.save(ckpt, tmp_path / "moved.ckpt")
    fails(str(tmp_path / "moved.ckpt"), str(out), match="moved-codec, no longer exists; pass --codec PATH")
    assert main(["export", str(tmp_path / "moved.ckpt"), "-o", str(out), "--codec", str(run["codec"])]) == 0
    assert MusicGen.load(out).codec.n_q == N_Q
    shutil.rmtree(out)

    # OUT is replaced only when it is an export: never the run directory or an unrelated folder
    fails(str(run["run"] / "checkpoints" / "last.ckpt"), str(run["run"]), match="is not an export")
    assert (run["run"] / "checkpoints" / "last.ckpt").is_file()
