"""`mgen bench generate`: guided sampling speed of the LM, in frames per second.

Default workload (issue 2): preset bench-small, 250 frames (5 s at 50 Hz), CFG coefficient 3, top-k 250,
batch 1, cross-attention to 64 condition tokens. With vs_transformers, transformers'
`MusicgenForConditionalGeneration.generate(guidance_scale=3)` (tiny T5 encoder, the 32 kHz EnCodec config,
the same decoder weights) runs alternately with ours; its text-encoder and audio-decoder time is subtracted
so both numbers measure the LM's guided generation.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from mgen.bench.timing import alternate, machine_info, median, sync
from mgen.lm.generate import SamplingParams, generate_window
from mgen.lm.model import LM, Conditioning, LMConfig


def _workload(smoke: bool) -> dict:
    if smoke:
        return {"preset": "tiny", "frames": 20, "cond_tokens": 8, "cfg_coef": 3.0, "top_k": 250, "batch": 1}
    return {"preset": "bench-small", "frames": 250, "cond_tokens": 64, "cfg_coef": 3.0, "top_k": 250, "batch": 1}


def _ours(lm: LM, work: dict, device: torch.device) -> Callable[[], None]:
    memory = torch.randn(work["batch"], work["cond_tokens"], lm.cfg.dim, device=device)
    params = SamplingParams(top_k=work["top_k"], cfg_coef=work["cfg_coef"])
    generator = torch.Generator(device=device).manual_seed(0)

    def run() -> None:
        generate_window(lm, work["frames"], Conditioning(cross=memory), params=params, generator=generator)
        sync(device)

    return run


def build_transformers_musicgen(lm: LM, text_hidden: int = 32) -> "torch.nn.Module":
    """A random-init MusicgenForConditionalGeneration whose decoder carries `lm`'s weights."""
    from transformers import (  # heavy import
        EncodecConfig, MusicgenConfig, MusicgenForConditionalGeneration, T5Config)

    from mgen.interop.hf import lm_to_transformers

    decoder = lm_to_transformers(lm)
    text = T5Config(vocab_size=100, d_model=text_hidden, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    audio = EncodecConfig(sampling_rate=32000, audio_channels=1, num_filters=64, upsampling_ratios=[8, 5, 4, 4],
                          codebook_size=lm.cfg.card, codebook_dim=128, hidden_size=128, target_bandwidths=[2.2],
                          normalize=False, use_causal_conv=False, pad_mode="reflect", num_lstm_layers=2,
                          compress=2, num_residual_layers=1, residual_kernel_size=3, kernel_size=7,
                          last_kernel_size=7)
    config = MusicgenConfig(text_encoder=text.to_dict(), audio_encoder=audio.to_dict(),
                            decoder=decoder.config.to_dict())
    model = MusicgenForConditionalGeneration(config).eval()
    model.decoder.load_state_dict(decoder.state_dict())
    return model


def _transformers(lm: LM, work: dict, device: torch.device) -> Callable[[], float]:
    model = build_transformers_musicgen(lm).to(device)
    input_ids = torch.randint(0, 100, (work["batch"], work["cond_tokens"]), device=device)
    outside_lm = [0.0]

    def timed(fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(device)
            outside_lm[0] += time.perf_counter() - start
            return out
        return wrapper

    model.audio_encoder.decode = timed(model.audio_encoder.decode)
    model.text_encoder.forward = timed(model.text_encoder.forward)
    n_q = lm.cfg.n_q

    def run() -> float:
        outside_lm[0] = 0.0
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(input_ids=input_ids, do_sample=True, top_k=work["top_k"],
                           guidance_scale=work["cfg_coef"], max_new_tokens=work["frames"] + n_q - 1)
        sync(device)
        return time.perf_counter() - start - outside_lm[0]

    return run


def run_generate_bench(vs_transformers: bool = False, smoke: bool = False, repeats: int = 3,
                       device: str = "cpu", seed: int = 0) -> dict:
    work = _workload(smoke)
    torch.manual_seed(seed)
    dev = torch.device(device)
    lm = LM(LMConfig.preset(work["preset"])).to(dev).eval()
    contenders: dict[str, Callable] = {"mgen": _ours(lm, work, dev)}
    if vs_transformers:
        contenders["transformers"] = _transformers(lm, work, dev)
    times = alternate(contenders, repeats)
    result = {"bench": "generate", **work, "device": device, "parameters": lm.num_parameters(), "repeats": repeats}
    for name, values in times.items():
        result[f"{name}_s"] = round(median(values), 4)
        result[f"{name}_frames_per_s"] = round(work["frames"] / median(values), 2)
    if vs_transformers:
        result["speedup_vs_transformers"] = round(median(times["transformers"]) / median(times["mgen"]), 3)
    result["machine"] = machine_info()
    return result
