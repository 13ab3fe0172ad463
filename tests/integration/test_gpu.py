"""CUDA checks: what only a GPU can break (kernels, mixed precision, devices of new tensors), against the CPU.

Every test skips without CUDA, so CI (CPU) skips this module; `scripts/gpu_check.sh` runs it on a GPU machine
(< 1 min). Models are the small random-init ones the CPU tests use. Tolerances:

- fp32 on CUDA vs fp32 on CPU: 1e-4 absolute on logits of unit scale. PyTorch keeps TF32 off for fp32 matmuls by
  default, so the only differences are summation order and the fused attention kernel (~1e-6 measured).
- bf16 autocast vs fp32: bf16 keeps 8 significant bits (relative rounding 2^-9 ~ 0.002 per operation); through the
  tiny LM this gives ~0.02 at worst on logits of standard deviation ~1 (measured with CPU bf16 autocast), so 0.06
  absolute (3x margin) and a KL between the two softmaxes below 1e-4 nats.
- cuDNN runs fp32 convolutions in TF32 by default (10-bit mantissa); the codec test turns TF32 off to compare the
  arithmetic itself at 1e-4, and allows codes to differ only at near-ties of the nearest-codeword search.
"""

from __future__ import annotations

import copy
import csv
import itertools
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import tone, write_tone
from lm_fixtures import cond, tiny
from lm_fixtures import recipe as lm_recipe
from text_encoder_fixtures import GENRES, INSTRUMENTS, MOODS, build_t5_encoder

from mgen.codec.model import Codec
from mgen.lm.generate import SamplingParams, generate_window
from mgen.lm.model import LM, Conditioning, LMConfig
from mgen.lm.transformer import attention, select_backend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")
FP32_ATOL = 1e-4
BF16_ATOL = 0.06
BF16_MAX_KL = 1e-4


@pytest.fixture
def no_tf32() -> Iterator[None]:
    """fp32 means fp32: cuDNN's TF32 convolutions (on by default) would hide real differences behind 1e-3 noise."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _lm_inputs(lm: LM, batch: int = 2, frames: int = 50) -> tuple[torch.Tensor, Conditioning]:
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, lm.cfg.card, (batch, lm.cfg.n_q, frames), generator=g)
    return codes, Conditioning(cross=torch.randn(batch, 8, lm.cfg.dim, generator=g))


def _to(conditioning: Conditioning, device: torch.device) -> Conditioning:
    return Conditioning(*(None if t is None else t.to(device) for t in
                          (conditioning.cross, conditioning.cross_mask, conditioning.prefix, conditioning.prefix_mask)))


def _kl(reference: torch.Tensor, other: torch.Tensor) -> float:
    log_p, log_q = reference.float().log_softmax(-1), other.float().log_softmax(-1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


def _fused_only() -> list:
    """The SDPA backends that are not the math fallback: inside `sdpa_kernel(...)` of these, a call SDPA cannot
    serve with a fused kernel raises instead of silently running the slow path."""
    from torch.nn.attention import SDPBackend

    return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]


# ------------------------------------------------------------------------------------------------------ LM forward
def test_cuda_forward_matches_cpu_in_fp32_and_bf16_autocast() -> None:
    """Same weights, same inputs: fp32 on CUDA equals the CPU; bf16 autocast stays within bf16 rounding of it."""
    torch.manual_seed(0)
    lm = LM(LMConfig.preset("tiny")).eval()
    codes, conditioning = _lm_inputs(lm)
    with torch.no_grad():
        reference, mask = lm.compute_predictions(codes, conditioning)
        gpu = copy.deepcopy(lm).to(CUDA)
        fp32, _ = gpu.compute_predictions(codes.to(CUDA), _to(conditioning, CUDA))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16, _ = gpu.compute_predictions(codes.to(CUDA), _to(conditioning, CUDA))
    valid = mask[None].expand(codes.shape)  # the other positions hold NaN by design
    reference, fp32, bf16 = reference[valid], fp32.cpu()[valid], bf16.float().cpu()[valid]
    assert reference.std() > 0.5  # logits of unit scale: the absolute tolerances below mean what they say
    torch.testing.assert_close(fp32, reference, atol=FP32_ATOL, rtol=0)
    assert torch.isfinite(bf16).all()
    assert (bf16 - reference).abs().max() < BF16_ATOL, (bf16 - reference).abs().max()
    assert _kl(reference, bf16) < BF16_MAX_KL


def test_cuda_picks_a_fused_attention_kernel() -> None:
    """On CUDA `auto` is xformers when installed, else SDPA; the model's bf16 training forward then runs with the
    math fallback forbidden (and its self-attention with FlashAttention alone), so no silent slow path."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from mgen.lm.transformer import _xformers_ops

    picked = select_backend("auto", CUDA)
    assert picked == ("xformers" if _xformers_ops() is not None else "sdpa")
    assert select_backend("auto", torch.device("cpu")) == "sdpa"
    torch.manual_seed(0)
    lm = LM(LMConfig.preset("tiny")).to(CUDA).train()
    codes, conditioning = _lm_inputs(lm)
    codes, conditioning = codes.to(CUDA), _to(conditioning, CUDA)
    with sdpa_kernel(_fused_only()), torch.autocast("cuda", dtype=torch.bfloat16):
        logits, mask = lm.compute_predictions(codes, conditioning)
        logits[:, mask].float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in lm.parameters() if p.requires_grad)
    if picked == "sdpa":
        q, k, v = (torch.randn(2, 2, 50, 32, device=CUDA, dtype=torch.bfloat16) for _ in range(3))
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            attention(q, k, v, causal=True)  # raises if FlashAttention cannot take the causal self-attention


CASES = {  # q_len, k_len, causal, key_mask kind
    "self-attention (training)": (50, 50, True, None),
    "cached step": (1, 37, True, None),
    "cached chunk, bottom-right causal": (5, 37, True, None),
    "self-attention with a prefix mask": (40, 40, True, "prefix"),
    "cross-attention, padded memory": (40, 12, False, "padded"),
    "cross-attention, null condition": (40, 12, False, "none"),
}


def _key_mask(kind: str | None, batch: int, k_len: int) -> torch.Tensor | None:
    if kind is None:
        return None
    mask = torch.ones(batch, k_len, dtype=torch.bool)
    if kind == "prefix":
        mask[0, :6] = False  # a masked melody prefix on the first item
    elif kind == "padded":
        mask[1, 7:] = False
    elif kind == "none":
        mask[1] = False  # CFG's null condition: every key masked
    return mask


@pytest.mark.parametrize("case", CASES)
def test_cuda_attention_kernel_equals_the_math_path(case: str) -> None:
    """The kernel `auto` picks on CUDA computes what the plain-math reference computes, masks and KV-cache
    alignment included: fp32 to 1e-5, bf16 to bf16 rounding."""
    q_len, k_len, causal, kind = CASES[case]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 32, generator=g) for n in (q_len, k_len, k_len))
    mask = _key_mask(kind, 2, k_len)
    reference = attention(q, k, v, causal=causal, key_mask=mask, backend="math")
    assert torch.isfinite(reference).all()
    cuda = [t.to(CUDA) for t in (q, k, v)]
    cuda_mask = None if mask is None else mask.to(CUDA)
    math_cuda = attention(*cuda, causal=causal, key_mask=cuda_mask, backend="math")
    fused = attention(*cuda, causal=causal, key_mask=cuda_mask, backend="auto")
    torch.testing.assert_close(math_cuda.cpu(), reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused.cpu(), reference, atol=1e-5, rtol=0)
    half = attention(*(t.bfloat16() for t in cuda), causal=causal, key_mask=cuda_mask, backend="auto")
    assert half.dtype == torch.bfloat16
    # inputs rounded to bf16 and bf16 probabilities in the P·V product: ~0.015 at worst on CPU's bf16 kernel
    torch.testing.assert_close(half.float().cpu(), reference, atol=5e-2, rtol=0)


# ------------------------------------------------------------------------------------------------------ generation
def test_greedy_generation_on_cuda_equals_cpu() -> None:
    """50 frames of guided greedy decoding (KV cache, CFG as one doubled batch): the same codes on both devices."""
    lm = tiny()  # the random-init tiny LM of the CPU generation tests
    conditioning = cond(batch=2)
    params = SamplingParams(greedy=True, cfg_coef=3.0)
    on_cpu = generate_window(lm, 50, conditioning, params=params)
    on_cuda = generate_window(copy.deepcopy(lm).to(CUDA), 50, _to(conditioning, CUDA), params=params)
    assert on_cuda.device.type == "cuda"
    assert torch.equal(on_cuda.cpu(), on_cpu)
    # a prompt continues the same way too (chunked first step: bottom-right causal attention over the cache)
    prompt = on_cpu[..., :12]
    continued = generate_window(copy.deepcopy(lm).to(CUDA), 50, _to(conditioning, CUDA), prompt=prompt.to(CUDA),
                                params=params)
    assert torch.equal(continued.cpu(), generate_window(lm, 50, conditioning, prompt=prompt, params=params))


def test_sampling_on_cuda_is_seeded_by_a_cuda_generator() -> None:
    """top-k sampling with a CUDA generator: the same seed gives the same codes, another seed other codes."""
    lm = tiny().to(CUDA)
    conditioning = _to(cond(batch=2), CUDA)
    params = SamplingParams(top_k=10, cfg_coef=3.0)

    def run(seed: int) -> torch.Tensor:
        return generate_window(lm, 40, conditioning, params=params,
                               generator=torch.Generator(device=CUDA).manual_seed(seed))

    first = run(0)
    assert first.device.type == "cuda" and 0 <= int(first.min()) and int(first.max()) < lm.cfg.card
    assert torch.equal(first, run(0))
    assert not torch.equal(first, run(1))


# ------------------------------------------------------------------------------------------------------ codec
def _music(seconds: float = 1.0, batch: int = 3) -> torch.Tensor:
    """[B, 1, L] of harmonic tones (distinct pitches) plus a little noise: latents spread over many codewords."""
    rng = np.random.default_rng(0)
    clips = [tone(seconds, 32000, freq=f)[:, 0] + 0.01 * rng.standard_normal(int(seconds * 32000), dtype=np.float32)
             for f in (220.0, 330.0, 495.0, 660.0)[:batch]]
    return torch.tensor(np.stack(clips))[:, None]


def _tiny_codec() -> Codec:
    torch.manual_seed(0)
    codec = Codec.from_preset("tiny")
    codec.train()(_music(2.0, batch=4))  # k-means initialises the codebooks on real signal
    return codec.eval()


def test_codec_encode_decode_on_cuda_equals_cpu(no_tf32: None) -> None:
    codec = _tiny_codec()
    wav = _music()
    gpu = copy.deepcopy(codec).to(CUDA)
    with torch.no_grad():
        latent_cpu = codec.encoder(wav)
        latent_gpu = gpu.encoder(wav.to(CUDA)).cpu()
        codes_cpu, codes_gpu = codec.encode(wav), gpu.encode(wav.to(CUDA)).cpu()
        audio_cpu, audio_gpu = codec.decode(codes_cpu), gpu.decode(codes_cpu.to(CUDA)).cpu()
    scale = latent_cpu.abs().max()
    torch.testing.assert_close(latent_gpu / scale, latent_cpu / scale, atol=FP32_ATOL, rtol=0)
    assert len(codes_cpu.unique()) > 16  # a meaningful comparison: many codewords in use
    differ = codes_gpu != codes_cpu
    # a code may flip only where two codewords are (nearly) equally close: a residual-VQ flip then changes the
    # later codebooks of that frame too, so count frames, not codes
    assert differ.any(dim=1).float().mean() <= 0.02, differ.any(dim=1).float().mean()
    assert audio_gpu.shape == audio_cpu.shape == (3, 1, 32000)
    peak = audio_cpu.abs().max()
    torch.testing.assert_close(audio_gpu / peak, audio_cpu / peak, atol=FP32_ATOL, rtol=0)


# ------------------------------------------------------------------------------------------------------ training
def _captions() -> Iterator[str]:
    """Captions in the vocabulary of `build_t5_encoder`'s tokenizer."""
    for mood, genre, a, b in itertools.product(MOODS, GENRES, INSTRUMENTS, INSTRUMENTS[::-1]):
        yield f"a {mood} {genre} track with {a} and {b}"


def build_tone_token_shards(root: Path, device: str = "cuda", clips: int = 12) -> Path:
    """Token shards of harmonic-tone clips (no FluidSynth needed): audio shards -> tiny codec (k-means on the
    clips) -> `tokenize_shards` on `device`, the path `mgen prep tokenize` takes."""
    from data_prep.shards import ShardConfig, write_shards
    from data_prep.tokenize import tokenize_shards

    from mgen.codec.checkpoint import save_codec

    captions = _captions()
    for i in range(clips):
        write_tone(root / "clips" / f"clip_{i:02d}.wav", 2.5, rate=32000, channels=1, caption=next(captions),
                   freq=110.0 * 2 ** (i / 5))
    write_shards(root / "clips", root / "audio", ShardConfig(sample_rate=32000, channels=1, segment_seconds=2.5,
                                                             shard_max_samples=3, valid_fraction=0.34),
                 workers=1, progress=False)
    save_codec(_tiny_codec(), root / "codec")
    tokenize_shards(root / "audio", root / "tokens", root / "codec", device=device, progress=False)
    return root / "tokens"


def fit_recipe(shards: Path, text_encoder: Path, steps: int, precision: str) -> dict:
    """The CPU LM-training tests' recipe, with a local T5 text encoder and the given Lightning precision."""
    recipe = lm_recipe(shards, steps)
    recipe["conditioning"]["text_encoder"] = str(text_encoder)
    recipe["optim"]["warmup_steps"] = 5
    recipe["trainer"].update(precision=precision, val_every_n_steps=steps // 2, checkpoint_every_n_steps=steps // 2,
                             log_every_n_steps=1)
    return recipe


def run_fit(tmp_path: Path, accelerator: str = "gpu", precision: str = "bf16-mixed", steps: int = 30) -> dict:
    """Token shards + `mgen.train.fit.fit` on one device; returns the summary, the run directory and the losses."""
    from mgen.train.fit import fit

    device = "cuda" if accelerator == "gpu" else "cpu"
    shards = build_tone_token_shards(tmp_path / "data", device=device)
    encoder = build_t5_encoder(tmp_path / "t5", d_model=32)
    run = tmp_path / "run"
    summary = fit(fit_recipe(shards, encoder, steps, precision), run, devices=1, accelerator=accelerator)
    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    losses = [float(r["train/ce"]) for r in rows if r.get("train/ce")]
    return {"summary": summary, "run": run, "losses": losses}


def test_bf16_mixed_training_on_one_gpu(tmp_path: Path) -> None:
    """A few LMModule steps through the real `fit` path in bf16-mixed on CUDA: the loss is finite and falls, the
    checkpoint is readable (fp32 master weights), and the export generates on the GPU."""
    from mgen.musicgen import MusicGen

    steps = 30
    result = run_fit(tmp_path, "gpu", "bf16-mixed", steps)
    summary, run, losses = result["summary"], result["run"], result["losses"]
    assert summary["global_step"] == steps
    assert len(losses) >= steps - 1 and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, (first, last)
    assert math.isfinite(summary["metrics"]["val/ce"])

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == steps
    weights = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("lm.")}
    assert weights and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())

    model = MusicGen.load(run / "export", device="cuda")
    prompts = ["a calm jazz track with piano and bass", "a happy folk track with flute and drums"]
    audio = model.generate(prompts, duration=0.5, top_k=20, seed=0)
    assert audio.shape == (2, 1, 16000) and torch.isfinite(audio).all()
    assert torch.equal(audio, model.generate(prompts, duration=0.5, top_k=20, seed=0))
