"""Melody adherence: cosine similarity between the chromagrams of generated clips and of the reference melodies
they were conditioned on (audiocraft ``ChromaCosineSimilarityMetric`` with its MusicGen settings: 32 kHz mono,
n_fft = window = 2^14, hop 4096, 12 pitch classes, ``argmax=True``).

Per pair, both clips are mono at 32 kHz and cut to the reference's length (see `mgen.metrics.clips.cut_pair`); the
chroma is `mgen.conditioning.chroma.chromagram` (the same extractor as the melody conditioner); each frame is made
one-hot at its strongest pitch class, so the cosine of a frame is 1 when both clips have the same dominant pitch
class and 0 otherwise, and the score is the mean over the first ``ceil(length / hop)`` frames of every pair (frames
weighted equally across clips, as audiocraft; the length is counted at 32 kHz, where audiocraft divides the length
at the input rate, the same thing for its 32 kHz models).

Differences from audiocraft's extractor, none of which changes an argmax except in digital silence:
- audiocraft's ``Spectrogram(normalized=True)`` divides the power by Σ window² (= 6144 for 2^14): a positive scale,
  invisible to the argmax and to a cosine;
- its ``normalize(p=inf, eps=1e-6)`` leaves frames whose peak is below 1e-6 un-normalised but keeps their argmax;
  mgen's chromagram zeroes frames whose (unnormalised) peak is at most 1e-6, i.e. below about -130 dBFS;
- librosa's filterbank gives the DC bin a (negligible, ~1e-6) weight; mgen's gives it none.
Silent frames come out all zero and their argmax is pitch class 0, so silence counts as **C** on both sides
(audiocraft's behaviour, kept for comparability): silence against silence, or against a C, agrees.
Each clip's chroma is computed on that clip alone (audiocraft computes it on the padded batch, so the last frames
of a shorter item see zero padding rather than reflection).

``argmax=False`` scores the cosine of the inf-normalised chroma vectors instead (silent frames then score 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from mgen.conditioning.chroma import PUBLISHED_HOP, PUBLISHED_N_FFT, PUBLISHED_SAMPLE_RATE, chromagram
from mgen.metrics.bootstrap import ConfidenceInterval, bootstrap_ratio
from mgen.metrics.clips import (Audio, SilencePolicy, check_policy, check_sample_rate, clip_name, cut_pair,
                                keep_pair, paired_clips, to_mono)
from mgen.metrics.states import cat_state, synced


def one_hot_argmax(chroma: Tensor) -> Tensor:
    """[T, 12] -> one-hot of each frame's strongest class (an all-zero frame -> class 0, C)."""
    return F.one_hot(chroma.argmax(dim=-1), chroma.shape[-1]).to(chroma.dtype)


class ChromaCosine(Metric):
    """``compute()`` -> frame-weighted mean chroma cosine (float64 scalar tensor)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, *, sample_rate: int = PUBLISHED_SAMPLE_RATE, n_fft: int = PUBLISHED_N_FFT,
                 hop_length: int = PUBLISHED_HOP, argmax: bool = True, silence: SilencePolicy = "error",
                 eps: float = 1e-8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sample_rate, self.n_fft, self.hop_length = sample_rate, n_fft, hop_length
        self.argmax, self.eps = argmax, eps
        self.silence = check_policy(silence)
        self.add_state("cosine_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("frames", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("pairs", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("silent_clips", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("clip_values", [], dist_reduce_fx="cat")  # (cosine sum, frames) per pair, metric dtype

    def update(self, generated: Audio, reference: Audio, sample_rate: int, *,
               reference_sample_rate: int | None = None, lengths: Sequence[int] | Tensor | None = None,
               reference_lengths: Sequence[int] | Tensor | None = None, names: Sequence[str] | None = None) -> None:
        """Pairs (generated clip, its reference melody) in the same order, each side ``[B, C, L]`` or a list of
        ``[C, L]``, with valid lengths in samples; the reference may have its own sample rate."""
        rate = check_sample_rate(sample_rate)
        ref_rate = check_sample_rate(reference_sample_rate or rate, "reference_sample_rate")
        for i, (gen, ref) in enumerate(zip(*paired_clips(generated, reference, lengths, reference_lengths, names))):
            if not keep_pair(self, gen, ref, i, names):
                continue
            gen, ref = to_mono(gen, rate, self.sample_rate), to_mono(ref, ref_rate, self.sample_rate)
            gen, ref = cut_pair(gen, ref, clip_name(i, names, "generated"))
            frames = math.ceil(ref.shape[-1] / self.hop_length)
            cosines = F.cosine_similarity(self._chroma(ref, frames), self._chroma(gen, frames), dim=1, eps=self.eps)
            total = cosines.sum().to(self.device, torch.float64)
            self.cosine_sum += total
            self.frames += frames
            self.pairs += 1
            self.clip_values.append(torch.stack([total, total.new_tensor(float(frames))]).to(self.dtype))

    def _chroma(self, wav: Tensor, frames: int) -> Tensor:
        chroma = chromagram(wav[None], self.sample_rate, self.n_fft, self.hop_length)[0, :frames]
        return one_hot_argmax(chroma) if self.argmax else chroma

    def describe(self) -> dict[str, Any]:
        """What a report must say besides the value (JSON-able)."""
        with synced(self):
            return {"metric": "ChromaCosine", "sample_rate": self.sample_rate, "n_fft": self.n_fft,
                    "hop_length": self.hop_length, "argmax": self.argmax, "pairs": int(self.pairs),
                    "frames": int(self.frames), "silent_clips": int(self.silent_clips),
                    "silence_policy": self.silence}

    def compute(self) -> Tensor:
        if int(self.frames) == 0:
            raise ValueError("chroma cosine has no pair to score")
        return self.cosine_sum / self.frames

    def bootstrap(self, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> ConfidenceInterval:
        """Clip-level percentile bootstrap of the frame-weighted mean (pairs resampled with their frames)."""
        with synced(self):
            values = cat_state(self.clip_values, torch.float64).view(-1, 2)
        return bootstrap_ratio(values[:, 0], values[:, 1], n_boot, confidence, seed)

