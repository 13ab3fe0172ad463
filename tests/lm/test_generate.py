"""Generation: sampling rules, CFG as one doubled batch, KV cache vs recomputation, prompts, long windows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lm_fixtures import cond, tiny

from mgen.lm.generate import SamplingParams, generate, generate_window, sample_next_tokens
from mgen.lm.model import LM, Conditioning, LMConfig

PATTERNS = ["parallel", "delay", "unroll", "coarse_first", "musiclm"]


def naive_greedy(lm: LM, num_frames: int, conditioning: Conditioning, cfg_coef: float,
                 prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Reference: recompute the whole sequence at every step, conditional and null passes run separately."""
    pattern = lm.pattern_provider.get_pattern(num_frames)
    b = conditioning.batch_size
    codes = torch.full((b, lm.cfg.n_q, num_frames), -1)
    if prompt is not None:
        codes[..., :prompt.shape[-1]] = prompt
    seq, valid = pattern.build_sequence(codes, lm.special_token)
    start = max(pattern.first_step_at_or_after(0 if prompt is None else prompt.shape[-1]), 1)
    with torch.no_grad():
        for s in range(start, pattern.num_steps):
            logits = lm(seq[..., :s], conditioning)[:, :, -1]
            if cfg_coef != 1.0:
                null = lm(seq[..., :s], conditioning.null())[:, :, -1]
                logits = null + cfg_coef * (logits - null)
            tokens = torch.where(valid[:, s], logits.argmax(-1), lm.special_token)
            seq[..., s] = torch.where(seq[..., s] == -1, tokens, seq[..., s])
    return pattern.revert_sequence(seq, lm.special_token)[0]


def test_top_k_keeps_only_the_k_best() -> None:
    logits = torch.tensor([[0.0, 5.0, 4.9, -1.0, 4.8]]).repeat(500, 1)
    g = torch.Generator().manual_seed(0)
    tokens = sample_next_tokens(logits, SamplingParams(top_k=2), g)
    assert set(tokens.tolist()) == {1, 2}


def test_top_p_keeps_the_nucleus() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    tokens = sample_next_tokens(logits, SamplingParams(top_p=0.7, top_k=0), g)
    assert set(tokens.tolist()) == {0, 1}
    assert abs((tokens == 0).float().mean().item() - 0.5 / 0.8) < 0.05


def test_plain_sampling_follows_the_distribution() -> None:
    probs = torch.tensor([0.7, 0.2, 0.1])
    tokens = sample_next_tokens(probs.log().repeat(5000, 1), SamplingParams(top_k=0), torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=3).float() / 5000
    torch.testing.assert_close(freq, probs, atol=0.03, rtol=0)


def test_greedy_and_temperature_zero_take_the_argmax() -> None:
    logits = torch.randn(3, 4, 10)
    assert torch.equal(sample_next_tokens(logits, SamplingParams(greedy=True)), logits.argmax(-1))
    assert torch.equal(sample_next_tokens(logits, SamplingParams(temperature=0)), logits.argmax(-1))
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=1.5)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("cfg_coef", [1.0, 3.0])
def test_cached_guided_generation_equals_naive_recomputation(pattern: str, cfg_coef: float) -> None:
    lm = tiny(pattern=pattern)
    c = cond()
    ours = generate_window(lm, 7, c, params=SamplingParams(greedy=True, cfg_coef=cfg_coef))
    assert torch.equal(ours, naive_greedy(lm, 7, c, cfg_coef))


def test_cfg_changes_the_output() -> None:
    lm = tiny()
    c = cond()
    a = generate_window(lm, 12, c, params=SamplingParams(greedy=True, cfg_coef=1.0))
    b = generate_window(lm, 12, c, params=SamplingParams(greedy=True, cfg_coef=5.0))
    assert not torch.equal(a, b)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_sampled_codes_never_hold_the_special_token(pattern: str) -> None:
    lm = tiny(pattern=pattern)
    out = generate_window(lm, 9, cond(), params=SamplingParams(top_k=0, temperature=2.0),
                          generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 4, 9)
    assert out.min() >= 0 and out.max() < lm.cfg.card


def test_prefix_conditioning_generation_matches_naive() -> None:
    lm = tiny(cross_attention=False)
    c = Conditioning(prefix=torch.randn(2, 4, 64), prefix_mask=torch.tensor([[True] * 4, [False, True, True, True]]))
    ours = generate_window(lm, 6, c, params=SamplingParams(greedy=True, cfg_coef=3.0))
    assert torch.equal(ours, naive_greedy(lm, 6, c, 3.0))


def test_prompt_is_continued_and_kept() -> None:
    lm = tiny()
    c = cond()
    prompt = torch.randint(0, 32, (2, 4, 5))
    out = generate_window(lm, 11, c, prompt=prompt, params=SamplingParams(greedy=True, cfg_coef=3.0))
    assert torch.equal(out[..., :5], prompt)
    assert torch.equal(out, naive_greedy(lm, 11, c, 3.0, prompt))


def test_sampling_is_reproducible_with_a_generator() -> None:
    lm = tiny()
    c = cond()
    a = generate_window(lm, 8, c, generator=torch.Generator().manual_seed(3))
    b = generate_window(lm, 8, c, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_long_generation_slides_windows() -> None:
    lm = tiny()
    c = cond()
    params = SamplingParams(greedy=True, cfg_coef=3.0)
    out = generate(lm, 23, c, params=params, max_window=10, stride=6)
    assert out.shape == (2, 4, 23)
    first = generate_window(lm, 10, c, params=params)
    assert torch.equal(out[..., :10], first)
    # the second window continues from the last 4 frames of the first
    second = generate_window(lm, 10, c, prompt=first[..., 6:], params=params)
    assert torch.equal(out[..., 10:16], second[..., 4:])


def test_long_generation_from_a_long_prompt() -> None:
    lm = tiny()
    prompt = torch.randint(0, 32, (2, 4, 15))
    out = generate(lm, 20, cond(), prompt=prompt, params=SamplingParams(greedy=True), max_window=10, stride=5)
    assert out.shape == (2, 4, 20) and torch.equal(out[..., :15], prompt)


def test_progress_is_reported() -> None:
    seen: list[tuple[int, int]] = []
    generate_window(tiny(), 5, cond(), progress=lambda done, total: seen.append((done, total)))
    assert seen[-1][0] == seen[-1][1] == len(seen)


def test_bad_generation_requests_are_clear_errors() -> None:
    lm = tiny()
    c = cond()
    with pytest.raises(ValueError, match="longer than the 4 frames requested"):
        generate(lm, 4, c, prompt=torch.zeros(2, 4, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="must be > 0"):
        generate(lm, 0, c)
    with pytest.raises(ValueError, match="2 codebooks"):
        generate(lm, 8, c, prompt=torch.zeros(2, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="codes must lie"):
        generate(lm, 8, c, prompt=torch.full((2, 4, 3), 40))
    with pytest.raises(ValueError, match="conditioning batch"):
        generate(lm, 8, cond(batch=3), prompt=torch.zeros(2, 4, 3, dtype=torch.long))


# ------------------------------------------------------------------------------------------- `mgen generate`

@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init export (MiniLM text conditioning, tiny codec): what `mgen fit` writes at the end."""
    from mgen.codec.model import Codec
    from mgen.train.lm_export import write_lm_export
    from mgen.conditioning.provider import ConditioningConfig
    from mgen.train.lm_module import LMModule

    root = tmp_path_factory.mktemp("generate_export")
    torch.manual_seed(0)
    codec = Codec.from_preset("tiny").eval()
    module = LMModule(LMConfig.preset("tiny", n_q=4, card=256), ConditioningConfig(text=True))
    return write_lm_export(root / "export", dict(module.hparams), module.lm, module.conditioner, codec)


def generate_cli(export: Path, out: Path, *args: str) -> list[str]:
    return ["generate", "--model", str(export), "--text", "a calm piano", "--duration", "0.2", "--seed", "0",
            "-o", str(out), *args]


def _unavailable_cuda() -> str:
    return "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"


@pytest.mark.parametrize(("args", "named"), [
    (["--duration", "inf"], "--duration"), (["--duration", "nan"], "--duration"),
    (["--duration", "-1"], "--duration"), (["--duration", "1e9"], "--max-duration 300"),
    (["--duration", "0.2", "--max-duration", "0.1"], "--max-duration 0.1"),
    (["--cfg", "nan"], "--cfg"), (["--cfg", "-5"], "--cfg"), (["--temperature", "nan"], "--temperature"),
    (["--top-p", "nan"], "--top-p"), (["--device", "nonsense"], "--device 'nonsense'"),
    (["--device", _unavailable_cuda()], f"--device {_unavailable_cuda()}"),
])
def test_generate_refuses_bad_settings_in_one_line(export_dir: Path, tmp_path: Path, capsys, args: list[str],
                                                   named: str) -> None:
    from mgen.cli import main

    out = tmp_path / "clips" / "a.wav"
    assert main([*generate_cli(export_dir, out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mgen generate: error:") and named in err, err
    assert not (tmp_path / "clips").exists()


def test_generate_refuses_bad_paths_and_leaves_nothing(export_dir: Path, tmp_path: Path, capsys) -> None:
    from mgen.cli import main

    folder = tmp_path / "taken"
    folder.mkdir()
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    cases = [(folder, [], "is a folder"), (tmp_path / "x.mp9", [], "unknown audio format '.mp9'"),
             (tmp_path / "x", [], "unknown audio format"), (a_file / "x.wav", [], f"{a_file} is a file"),
             (tmp_path / "y.wav", ["--text-file", str(folder)], f"--text-file {folder} is a folder"),
             (tmp_path / "y.wav", ["--text-file", str(tmp_path / "none.txt")], "none.txt not found")]
    for out, extra, named in cases:
        assert main([*generate_cli(export_dir, out), *extra]) == 2, out
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and named in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "taken"] and not any(folder.iterdir())


def test_generate_writes_the_extensions_format_atomically(export_dir: Path, tmp_path: Path, capsys,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import soundfile as sf

    from mgen.cli import main

    import subprocess
    import sys

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a calm piano\n\na fast drum groove\n")
    out = tmp_path / "clips" / "clip.flac"
    killed_mid_write = ("import os, sys\nfrom mgen.atomic import atomic_path\n"
                        "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'fLaC half')\n"
                        "    os._exit(9)\n")
    subprocess.run([sys.executable, "-c", killed_mid_write, str(out.with_name("clip_000.flac"))])
    assert len(list((tmp_path / "clips").iterdir())) == 1  # the killed writer's temporary
    assert main(["generate", "--model", str(export_dir), "--text-file", str(prompts), "--duration", "0.2",
                 "-o", str(out)]) == 0
    written = sorted((tmp_path / "clips").iterdir())
    assert [p.name for p in written] == ["clip_000.flac", "clip_001.flac"]  # no temporaries, none left over
    for path in written:
        info = sf.info(str(path))
        assert info.format == "FLAC" and info.samplerate == 32000 and abs(info.duration - 0.2) < 0.01

    def disk_full(file, *args, **kwargs):  # a real partial write, then the error
        with open(file, "wb") as f:
            f.write(b"RIFF half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sf, "write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        main(generate_cli(export_dir, tmp_path / "clips" / "new.wav"))
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == ["clip_000.flac", "clip_001.flac"]


def test_export_whose_text_encoder_has_custom_code_is_refused(export_dir: Path, tmp_path: Path) -> None:
    """An export's `text_encoder/` with an `auto_map` and a Python file: `mgen generate` with stdin answering "y"
    exits 2 with one line, and the file never runs."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    from text_encoder_fixtures import write_custom_code_folder

    export = tmp_path / "export"
    shutil.copytree(export_dir, export)
    marker = tmp_path / "MARKER"
    write_custom_code_folder(export / "text_encoder", marker)
    config = json.loads((export / "config.json").read_text())
    config["conditioning"]["text_encoder"] = "text_encoder"  # bundled with the export, as for T5 encoders
    (export / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-m", "mgen.cli", *generate_cli(export, tmp_path / "a.wav")],
                            input="y\n" * 10, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 2, result.stderr
    err = [line for line in result.stderr.strip().splitlines() if not line.startswith("Loading weights")]
    assert err[-1].startswith("mgen generate: error:") and "auto_map" in err[-1], result.stderr
    assert "Traceback" not in result.stderr and "Do you wish to run the custom code" not in result.stdout
    assert not marker.exists() and not (tmp_path / "a.wav").exists()


def test_half_precision_lm_generates_with_fp32_codec_conditioners_and_guidance(export_dir: Path, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`MusicGen.load(dtype="bf16")` / `mgen generate --dtype bf16`: the LM runs in bf16, everything around it in
    fp32; the CFG mix sees fp32 logits; greedy codes mostly agree with the fp32 model's (bf16 rounding)."""
    from mgen.cli import main
    from mgen.lm import generate as generation
    from mgen.musicgen import MusicGen, _cast

    fp32 = MusicGen.load(export_dir)
    bf16 = MusicGen.load(export_dir, dtype="bf16")
    assert {p.dtype for p in bf16.lm.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in bf16.codec.parameters()} == {p.dtype for p in bf16.conditioner.parameters()} == {
        torch.float32}
    seen: list[torch.dtype] = []
    guided = generation._guided_logits

    def spy(*args, **kwargs):
        logits = guided(*args, **kwargs)
        seen.append(logits.dtype)
        return logits

    monkeypatch.setattr(generation, "_guided_logits", spy)
    codes = {}
    for name, model in (("fp32", fp32), ("bf16", bf16)):
        cond = _cast(model.conditioner(texts=["a calm piano"]), next(model.lm.parameters()).dtype)
        codes[name] = generation.generate(model.lm, 20, cond, params=generation.SamplingParams(greedy=True))
    assert set(seen) == {torch.float32}
    assert codes["bf16"].shape == codes["fp32"].shape
    assert (codes["bf16"] == codes["fp32"]).float().mean() > 0.5
    audio = bf16.generate(["a calm piano"], duration=0.2, seed=0)
    assert audio.dtype == torch.float32 and torch.isfinite(audio).all()
    with pytest.raises(ValueError, match="dtype must be one of"):
        MusicGen.load(export_dir, dtype="int8")
    out = tmp_path / "half.wav"
    assert main(generate_cli(export_dir, out, "--dtype", "bf16")) == 0 and out.is_file()
