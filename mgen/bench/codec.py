"""Codec speed: encode/decode real-time factors of mgen's codec, optionally against transformers' `EncodecModel`.

Both models run the same configuration with the same (random) weights: transformers' model is built from ours
with `codec_to_transformers`, which also lets the bench check that both produce the same codes. Calls alternate
(ours, theirs, ours, …) so that machine noise from other jobs hits both sides alike; medians are reported.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch

from mgen.codec.model import Codec, CodecConfig


def _timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def _speeds(name: str, times: list[float], audio_seconds: float) -> dict[str, float]:
    median = statistics.median(times)
    return {
        f"{name}_s": median,
        f"{name}_min_s": min(times),
        # "x real time": audio seconds processed per wall-clock second (higher is faster).
        f"{name}_x_realtime": audio_seconds / median,
        # classic real-time factor: wall-clock seconds per audio second (lower is faster).
        f"{name}_rtf": median / audio_seconds,
    }


def run_codec_bench(
    preset: str = "paper-32khz",
    seconds: float = 10.0,
    repeats: int = 3,
    vs_transformers: bool = False,
    smoke: bool = False,
    *,
    batch_size: int = 1,
    threads: int | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """Time ``encode`` and ``decode`` on ``seconds`` of random audio; returns a flat-ish dict for one JSON line.

    ``smoke`` caps the clip at 1 s and runs one timed repeat: a quick check that the bench works, not a number.
    """
    if smoke:
        seconds, repeats = min(seconds, 1.0), 1
    if seconds <= 0 or repeats < 1 or batch_size < 1:
        raise ValueError("seconds must be > 0 and repeats, batch_size >= 1")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(preset, seconds, repeats, vs_transformers, smoke, batch_size, torch.device(device), seed)
    finally:
        torch.set_num_threads(previous_threads)


def _run(
    preset: str,
    seconds: float,
    repeats: int,
    vs_transformers: bool,
    smoke: bool,
    batch_size: int,
    device: torch.device,
    seed: int,
) -> dict:
    torch.manual_seed(seed)
    config = CodecConfig.preset(preset)
    codec = Codec(config).eval().to(device)
    length = int(round(seconds * config.sample_rate))
    wav = 0.1 * torch.randn(batch_size, config.channels, length, device=device)
    audio_seconds = seconds * batch_size  # channels are part of one stream, batch items are separate clips

    theirs = None
    if vs_transformers:
        from mgen.interop.encodec import codec_to_transformers

        theirs = codec_to_transformers(codec).to(device)
        bandwidth = theirs.config.target_bandwidths[0]
        mono = wav.reshape(batch_size * config.channels, 1, length)  # transformers' model is the mono model

    ours_enc, ours_dec, their_enc, their_dec = [], [], [], []
    codes_match = None
    with torch.inference_mode():
        # One untimed warm-up call each: first calls pay allocator and kernel-selection costs.
        codes = codec.encode(wav)
        codec.decode(codes)
        if theirs is not None:
            hf_codes = theirs.encode(mono, bandwidth=bandwidth).audio_codes
            theirs.decode(hf_codes, [None])
        for _ in range(repeats):
            t, codes = _timed(lambda: codec.encode(wav), device)
            ours_enc.append(t)
            if theirs is not None:
                t, hf_codes = _timed(lambda: theirs.encode(mono, bandwidth=bandwidth).audio_codes, device)
                their_enc.append(t)
            t, _ = _timed(lambda: codec.decode(codes), device)
            ours_dec.append(t)
            if theirs is not None:
                t, _ = _timed(lambda: theirs.decode(hf_codes, [None]).audio_values, device)
                their_dec.append(t)
        if theirs is not None:
            # transformers: [1, B·C, K, T] per mono stream; ours interleaves channels → compare per stream.
            ours_per_stream = codes.reshape(batch_size, -1, config.channels, codes.shape[-1]).permute(0, 2, 1, 3)
            codes_match = bool(torch.equal(ours_per_stream.reshape_as(hf_codes[0]), hf_codes[0]))

    result: dict = {
        "bench": "codec",
        "preset": preset,
        "smoke": smoke,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__.split("+")[0],
        "sample_rate": config.sample_rate,
        "channels": config.channels,
        "frame_rate": config.frame_rate,
        "n_q": codec.n_q,
        "params_m": round(sum(p.numel() for p in codec.parameters()) / 1e6, 2),
        "seconds": seconds,
        "batch_size": batch_size,
        "repeats": repeats,
        "frames": codes.shape[-1],
        "mgen": {**_speeds("encode", ours_enc, audio_seconds), **_speeds("decode", ours_dec, audio_seconds)},
    }
    if theirs is not None:
        import transformers

        result["transformers_version"] = transformers.__version__
        result["transformers"] = {
            **_speeds("encode", their_enc, audio_seconds),
            **_speeds("decode", their_dec, audio_seconds),
        }
        result["codes_match"] = codes_match
        result["speedup_encode"] = statistics.median(their_enc) / statistics.median(ours_enc)
        result["speedup_decode"] = statistics.median(their_dec) / statistics.median(ours_dec)
    # Round for a readable JSON line.
    return _round(result)


def _round(obj):
    if isinstance(obj, float) and math.isfinite(obj):
        return float(f"{obj:.4g}")
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    return obj


__all__ = ["run_codec_bench"]
