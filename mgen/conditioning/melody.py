"""Melody condition: the dominant pitch class of each chroma frame, projected and prepended to the LM input.

MusicGen-melody keeps only the argmax pitch class per chroma frame (a one-hot, the information bottleneck that
stops the model from copying the reference audio), projects it with Linear(12, D) and prepends the frames to the
token sequence. Frames stay at the chroma's own rate (7.8 Hz, as published: ``frame_rate=None``) or are picked by
nearest time to another rate, e.g. the LM's 50 Hz (``frame_rate=50``).

Choices worth knowing:
- Silent frames (no energy at all) give an all-zero one-hot (``silence="zero"``, the default). The published
  extractor takes argmax of zeros, i.e. "C"; ``silence="argmax"`` reproduces that.
- ``num_frames`` fixes the output length: a shorter melody is looped (as published at generation), a longer one cut.
- Source separation is a pluggable callable ``(wav [B, C, L], sample_rate) -> wav [B, C, L]`` applied before the
  chroma; off by default. ``separator="demucs"`` builds the published one (HT-Demucs, keep vocals + other) when
  the ``demucs`` package is importable and raises a clear ImportError otherwise; its weights must already be in
  torch's hub cache, nothing downloads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from mgen.conditioning.audio import check_audio, resample
from mgen.conditioning.base import ConditionTensors
from mgen.conditioning.chroma import (PUBLISHED_HOP, PUBLISHED_N_FFT, PUBLISHED_SAMPLE_RATE, chromagram,
                                      frames_per_second, num_chroma_frames)
from mgen.dsp import N_CHROMA

Separator = Callable[[Tensor, int], Tensor]


def demucs_separator(model_name: str = "htdemucs", keep: tuple[str, ...] = ("vocals", "other")) -> Separator:
    """The published stem filter: separate with Demucs and sum the kept stems (drums and bass go)."""
    try:
        from demucs.apply import apply_model  # optional dependency
        from demucs.pretrained import get_model
    except ImportError as err:
        raise ImportError("separator='demucs' needs the demucs package (not an mgen dependency): install it "
                          "with its weights in torch's hub cache, or pass your own separator callable") from err
    model = get_model(model_name).eval()
    unknown = set(keep) - set(model.sources)
    if unknown:
        raise ValueError(f"{model_name} has stems {model.sources}, not {sorted(unknown)}")
    indices = [model.sources.index(s) for s in keep]

    def separate(wav: Tensor, sample_rate: int) -> Tensor:
        mixed = resample(wav, sample_rate, model.samplerate)
        if mixed.shape[1] != model.audio_channels:
            mixed = mixed.mean(dim=1, keepdim=True).expand(-1, model.audio_channels, -1)
        with torch.no_grad():
            stems = apply_model(model, mixed, device=wav.device)  # [B, S, C, L]
        return resample(stems[:, indices].sum(dim=1), model.samplerate, sample_rate)[..., :wav.shape[-1]]

    return separate


def argmax_one_hot(chroma: Tensor, silence: Literal["zero", "argmax"] = "zero") -> Tensor:
    """chroma [B, T, 12] -> one-hot of the strongest pitch class per frame (all zero for silent frames)."""
    one_hot = torch.nn.functional.one_hot(chroma.argmax(dim=-1), N_CHROMA).to(chroma.dtype)
    if silence == "zero":
        one_hot = one_hot * (chroma.amax(dim=-1, keepdim=True) > 0).to(chroma.dtype)
    return one_hot


def retime(frames: Tensor, rate_in: float, rate_out: float) -> Tensor:
    """[B, T, C] frames at rate_in -> nearest frames at rate_out covering the same duration."""
    if rate_in == rate_out:
        return frames
    n_out = max(1, round(frames.shape[1] * rate_out / rate_in))
    index = torch.round(torch.arange(n_out, dtype=torch.float64) * rate_in / rate_out).long()
    return frames[:, index.clamp(max=frames.shape[1] - 1).to(frames.device)]


def fit_length(frames: Tensor, num_frames: int) -> Tensor:
    """Loop a shorter sequence of frames [B, T, C] / cut a longer one to exactly num_frames."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    repeats = -(-num_frames // frames.shape[1])
    return frames.repeat(1, repeats, 1)[:, :num_frames]


class MelodyConditioner(nn.Module):
    """melody audio [B, C, L] -> ConditionTensors([B, T, dim], mask [B, T]) to prepend to the LM input."""

    def __init__(self, dim: int, frame_rate: float | None = None, sample_rate: int = PUBLISHED_SAMPLE_RATE,
                 n_fft: int = PUBLISHED_N_FFT, hop_length: int = PUBLISHED_HOP,
                 silence: Literal["zero", "argmax"] = "zero", separator: Separator | str | None = None):
        super().__init__()
        if silence not in ("zero", "argmax"):
            raise ValueError(f"silence must be 'zero' or 'argmax', got {silence!r}")
        if frame_rate is not None and frame_rate <= 0:
            raise ValueError(f"frame_rate must be positive or None (the chroma's own rate), got {frame_rate}")
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.chroma_rate = frames_per_second(sample_rate, hop_length)
        self.frame_rate = frame_rate or self.chroma_rate
        self.silence = silence
        self.separator: Separator | None = demucs_separator() if separator == "demucs" else separator
        if isinstance(self.separator, str):
            raise ValueError(f"separator must be None, 'demucs' or a callable, got {separator!r}")
        self.proj = nn.Linear(N_CHROMA, dim)

    def frames_for(self, num_samples: int, sample_rate: int) -> int:
        """Output frames for a melody of num_samples at sample_rate when num_frames is not forced."""
        chroma_frames = num_chroma_frames(round(num_samples * self.sample_rate / sample_rate), self.hop_length,
                                          self.n_fft)
        return max(1, round(chroma_frames * self.frame_rate / self.chroma_rate))

    def chroma(self, wavs: Tensor, sample_rate: int) -> Tensor:
        """[B, C, L] audio at sample_rate -> [B, T, 12] chroma at the chroma rate (after optional separation)."""
        check_audio(wavs, sample_rate, "melody audio")
        with torch.no_grad():
            if self.separator is not None:
                wavs = self.separator(wavs, sample_rate)
            mono = resample(wavs.float().mean(dim=1), sample_rate, self.sample_rate)
            return chromagram(mono, self.sample_rate, self.n_fft, self.hop_length)

    def embed_chroma(self, chroma: Tensor, chroma_rate: float | None = None, num_frames: int | None = None,
                     present: Tensor | None = None) -> ConditionTensors:
        """Argmax bottleneck + projection of a chroma [B, T, 12] (e.g. precomputed next to the tokens)."""
        if chroma.dim() != 3 or chroma.shape[-1] != N_CHROMA:
            raise ValueError(f"chroma must be [B, T, 12], got shape {tuple(chroma.shape)}")
        one_hot = retime(argmax_one_hot(chroma.float(), self.silence), chroma_rate or self.chroma_rate,
                         self.frame_rate)
        if num_frames is not None:
            one_hot = fit_length(one_hot, num_frames)
        one_hot = one_hot.to(device=self.proj.weight.device, dtype=self.proj.weight.dtype)
        mask = torch.ones(one_hot.shape[:2], dtype=torch.bool, device=one_hot.device)
        out = ConditionTensors(self.proj(one_hot), mask)
        return out if present is None else out.keep(present)

    def forward(self, wavs: Tensor, sample_rate: int, num_frames: int | None = None,
                present: Tensor | None = None) -> ConditionTensors:
        """present [B] bool marks the samples that really have a melody; the others come out nulled."""
        check_audio(wavs, sample_rate, "melody audio")
        if present is not None and present.shape != (wavs.shape[0],):
            raise ValueError(f"present must be [B] = [{wavs.shape[0]}], got {tuple(present.shape)}")
        return self.embed_chroma(self.chroma(wavs, sample_rate), self.chroma_rate, num_frames, present)

    def null(self, batch_size: int, num_frames: int = 1) -> ConditionTensors:
        """No melody for the whole batch: num_frames zero tokens with the mask off."""
        weight = self.proj.weight
        return ConditionTensors(weight.new_zeros(batch_size, num_frames, weight.shape[0]),
                                torch.zeros(batch_size, num_frames, dtype=torch.bool, device=weight.device))
