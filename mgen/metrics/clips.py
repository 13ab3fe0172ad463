"""Audio going into a metric: the accepted batch forms, padding cut off, NaN refused, silence policed.

Every metric's `update` takes audio as a ``[B, C, L]`` tensor or a list of ``[C, L]`` (or ``[L]``) tensors at
one `sample_rate`, with optional valid `lengths` (samples at that rate) so that batch padding is never scored.
Channels are averaged and audio is resampled (libsoxr HQ, `mgen.audio`) to the model's rate inside the metric.

NaN or infinite samples are always an error. A *silent* clip (every sample rounds to 0 in 16-bit PCM, i.e. peak
below 2^-16) has no meaningful embedding. A silent *reference* clip is always an error: it is bad data, to be
removed from the reference set (`is_silent` lets a caller find such files first). For a silent *generated* clip,
the metric's `silence` policy decides: ``"error"`` (default) refuses it with a message naming the clip; ``"keep"``
scores it as it is (a model that generates silence is then penalised rather than flattered) and counts it;
``"skip"`` leaves it (and, in paired metrics, its pair) out and counts it. The count is the metric's
``silent_clips`` state, for reports.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from mgen.audio import resample_tensor

SILENCE_PEAK = 2.0 ** -16  # below half a 16-bit step: the clip is all zeros as 16-bit PCM
SilencePolicy = Literal["error", "keep", "skip"]
SILENCE_POLICIES = ("error", "keep", "skip")

Audio = Tensor | Sequence[Tensor]


def check_policy(silence: str) -> str:
    if silence not in SILENCE_POLICIES:
        raise ValueError(f"silence must be one of {SILENCE_POLICIES}, got {silence!r}")
    return silence


def check_sample_rate(sample_rate: int, what: str = "sample_rate") -> int:
    if int(sample_rate) != sample_rate or int(sample_rate) <= 0:
        raise ValueError(f"{what} must be a positive integer, got {sample_rate!r}")
    return int(sample_rate)


def clip_name(index: int, names: Sequence[str] | None, what: str) -> str:
    return f"{what} clip {names[index]!r}" if names is not None else f"{what} clip {index} of the batch"


def split_clips(audio: Audio, lengths: Sequence[int] | Tensor | None = None, what: str = "audio") -> list[Tensor]:
    """``[B, C, L]`` or a list of ``[C, L]`` / ``[L]`` -> list of ``[C, L_i]`` (cut to `lengths` when given)."""
    if isinstance(audio, Tensor):
        if audio.dim() != 3:
            raise ValueError(f"{what}: a batch tensor must be [B, C, L], got shape {tuple(audio.shape)} (pass a "
                             "list of [C, L] tensors for single clips)")
        clips = list(audio)
    else:
        clips = []
        for i, clip in enumerate(audio):
            if not isinstance(clip, Tensor) or clip.dim() not in (1, 2):
                shape = tuple(clip.shape) if isinstance(clip, Tensor) else type(clip).__name__
                raise ValueError(f"{what} clip {i}: expected a [C, L] or [L] tensor, got {shape}")
            clips.append(clip if clip.dim() == 2 else clip[None])
    if lengths is not None:
        lengths = [int(n) for n in (lengths.tolist() if isinstance(lengths, Tensor) else lengths)]
        if len(lengths) != len(clips):
            raise ValueError(f"{what}: {len(lengths)} lengths for {len(clips)} clips")
        for i, (clip, n) in enumerate(zip(clips, lengths)):
            if not 0 < n <= clip.shape[-1]:
                raise ValueError(f"{what} clip {i}: length {n} outside 1..{clip.shape[-1]}")
        clips = [clip[..., :n] for clip, n in zip(clips, lengths)]
    return clips


def is_silent(clip: Tensor, name: str) -> bool:
    """Raise on NaN/inf samples; True when the clip is digital silence (see the module docstring)."""
    if clip.numel() == 0:
        raise ValueError(f"{name} is empty")
    if not torch.isfinite(clip).all():
        raise ValueError(f"{name} contains NaN or infinite samples")
    return bool(clip.abs().max() < SILENCE_PEAK)


def silence_error(name: str) -> ValueError:
    if name.startswith("reference"):
        return ValueError(f"{name} is silent (peak below 2^-16): remove it from the reference set")
    return ValueError(f"{name} is silent (peak below 2^-16): pass silence='keep' to score it as it is or "
                      "silence='skip' to leave it out (either way it is counted in silent_clips)")


def to_mono(clip: Tensor, sample_rate: int, target_rate: int) -> Tensor:
    """``[C, L]`` -> float32 ``[L']``: channel mean, then resampling to `target_rate`."""
    return resample_tensor(clip.float().mean(0), sample_rate, target_rate)


def module_device(module: Any) -> torch.device | None:
    """Device of an nn.Module's first parameter or buffer (None for duck-typed objects without any)."""
    for tensors in (getattr(module, "parameters", None), getattr(module, "buffers", None)):
        if tensors is not None:
            for t in tensors():
                return t.device
    return None


def paired_clips(generated: Audio, reference: Audio, lengths: Sequence[int] | Tensor | None,
                 reference_lengths: Sequence[int] | Tensor | None,
                 names: Sequence[str] | None = None) -> tuple[list[Tensor], list[Tensor]]:
    """Generated and reference clips of a paired metric (KLD, chroma), checked to pair up."""
    gen = split_clips(generated, lengths, "generated")
    ref = split_clips(reference, reference_lengths, "reference")
    if len(gen) != len(ref):
        raise ValueError(f"{len(gen)} generated clips but {len(ref)} reference clips: they are compared in pairs")
    if names is not None and len(names) != len(gen):
        raise ValueError(f"{len(names)} names for {len(gen)} pairs of clips")
    return gen, ref


def keep_pair(metric: Any, gen: Tensor, ref: Tensor, index: int, names: Sequence[str] | None) -> bool:
    """NaN refused; a silent reference refused; a silent generated clip per ``metric.silence`` (counted in
    ``metric.silent_clips``). False: leave the pair out."""
    if is_silent(ref, clip_name(index, names, "reference")):
        raise silence_error(clip_name(index, names, "reference"))
    if not is_silent(gen, clip_name(index, names, "generated")):
        return True
    if metric.silence == "error":
        raise silence_error(clip_name(index, names, "generated"))
    metric.silent_clips += 1
    return metric.silence == "keep"


def cut_pair(gen: Tensor, ref: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """Mono clips cut to the reference's length (or both to the generated one's when it is shorter, warned)."""
    if gen.shape[-1] < ref.shape[-1]:
        warnings.warn(f"{name} is shorter than its reference ({gen.shape[-1]} < {ref.shape[-1]} samples): both "
                      "are cut to the common length", RuntimeWarning, stacklevel=4)  # the caller of update
    n = min(gen.shape[-1], ref.shape[-1])
    return gen[..., :n], ref[..., :n]
