"""Audio arriving at a conditioner: checked for shape and content, resampled to the rate the extractor expects.

Shared by the melody (32 kHz chroma) and CLAP (48 kHz) conditioners, so both reject bad input with the same
clear messages instead of failing deep inside an STFT or a pretrained model.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from mgen.audio import resample_tensor as resample  # noqa: F401 - the conditioners' name for it


def check_audio(wavs: Tensor, sample_rate: int, what: str = "audio") -> None:
    """Raise a clear error, naming `what`, for anything that is not a batch of audio [B, C, L]."""
    if not isinstance(wavs, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor [B, C, L], got {type(wavs).__name__}")
    if not wavs.dtype.is_floating_point:
        raise TypeError(f"{what} must be floating point samples, got {wavs.dtype} (token ids? chroma?)")
    if wavs.dim() != 3:
        raise ValueError(f"{what} must be [B, C, L], got shape {tuple(wavs.shape)}")
    if wavs.shape[0] == 0 or wavs.shape[-1] == 0:
        raise ValueError(f"{what} is empty: shape {tuple(wavs.shape)}")
    if wavs.shape[1] > 8:
        raise ValueError(f"{what} has {wavs.shape[1]} channels; expected [B, C, L] with C <= 8 "
                         f"(was it passed as [B, L, C]?)")
    if not isinstance(sample_rate, numbers.Integral) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    if not bool(torch.isfinite(wavs).all()):
        raise ValueError(f"{what} contains NaN or inf")
