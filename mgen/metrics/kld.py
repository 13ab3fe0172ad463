"""KL divergence between the AudioSet label distributions of generated and reference clips: audiocraft's current
protocol ("v2", audiocraft PR #213, the one behind the MusicGen paper's KLD).

Per pair of clips (generated, reference), both as mono at the classifier's 32 kHz:
- the generated clip is cut to the reference's length (audiocraft evaluates generations cut to the reference
  length). A generated clip *shorter* than its reference cuts the reference to the common length instead (audiocraft
  never sees that case; mgen warns);
- both are split into non-overlapping windows (``torch.split``: no padding, the last window is shorter) of
  `window_seconds` (20 s for the paper's PaSST, ``passt.pretrained_length: 20``); windows of at most 0.15 s are
  dropped (PaSST cannot take them);
- each window is one distribution: softmax over the 527 logits (not sigmoid);
- ``kld`` = mean over windows of KL(reference ‖ generated) = Σ q (log q − log(p + 1e-6)), with 1e-6 on the
  generated side only (audiocraft's ``F.kl_div((p + 1e-6).log(), q)``); ``kld_qp`` is the reverse direction
  (1e-6 on the reference side) and ``kld_both`` their sum. Zero reference mass contributes nothing (0 log 0 = 0).

The classifier is duck-typed: ``info`` (`EmbedderInfo`, sample_rate 32000), ``window_seconds`` and
``logits(wav [B, L]) -> [B, 527]`` (mgen's PaSST embedder provides them). It is not a submodule of the metric.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from mgen.metrics.bootstrap import ConfidenceInterval, bootstrap_ratio
from mgen.metrics.clips import (Audio, SilencePolicy, check_policy, check_sample_rate, clip_name, cut_pair,
                                keep_pair, module_device, paired_clips, to_mono)
from mgen.metrics.states import cat_state, synced

KLD_PROTOCOL = "audiocraft-passt-kld-v2"
MIN_SEGMENT_SECONDS = 0.15
EPS = 1e-6
KEYS = ("kld", "kld_qp", "kld_both")


def kl_divergence(pred: Tensor, target: Tensor, eps: float = EPS) -> Tensor:
    """KL(target ‖ pred) per row, with `eps` added to `pred` only (audiocraft's ``kl_divergence(pred, target)``)."""
    return F.kl_div((pred + eps).log(), target, reduction="none").sum(-1)


class PasstKLD(Metric):
    """``compute()`` -> ``{"kld", "kld_qp", "kld_both"}`` (float64 scalar tensors), means over all windows."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, classifier: Any, window_seconds: float | None = None, *,
                 min_segment_seconds: float = MIN_SEGMENT_SECONDS, batch_size: int = 8,
                 silence: SilencePolicy = "error", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not callable(getattr(classifier, "logits", None)) or not hasattr(classifier, "info"):
            raise TypeError("classifier must have `info` and `logits(wav [B, L]) -> [B, classes]` (e.g. mgen's "
                            "PaSST embedder)")
        object.__setattr__(self, "_classifier", classifier)  # not a submodule (frozen, out of checkpoints)
        self.window_seconds = float(window_seconds or classifier.window_seconds)
        self.sample_rate = int(classifier.info.sample_rate)
        self.window = round(self.window_seconds * self.sample_rate)
        self.min_samples = int(min_segment_seconds * self.sample_rate)  # kept: longer than this (4800 at 32 kHz)
        self.batch_size = batch_size
        self.silence = check_policy(silence)
        for name in ("pq_sum", "qp_sum"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("segments", "pairs", "short_pairs", "silent_clips"):
            self.add_state(name, torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        # per pair: KL sums and window count, for the clip-level bootstrap (in the metric's dtype, float32, as
        # torchmetrics fills an empty rank's list: every rank must send the same dtype)
        self.add_state("clip_values", [], dist_reduce_fx="cat")

    @property
    def info(self) -> Any:
        return self._classifier.info

    def update(self, generated: Audio, reference: Audio, sample_rate: int, *,
               reference_sample_rate: int | None = None, lengths: Sequence[int] | Tensor | None = None,
               reference_lengths: Sequence[int] | Tensor | None = None, names: Sequence[str] | None = None) -> None:
        """Pairs of clips (same order; `names`, e.g. the shared file stems, label them in errors), each side
        ``[B, C, L]`` or a list of ``[C, L]``, with valid lengths in samples."""
        rate = check_sample_rate(sample_rate)
        ref_rate = check_sample_rate(reference_sample_rate or rate, "reference_sample_rate")
        pairs = []
        for i, (gen, ref) in enumerate(zip(*paired_clips(generated, reference, lengths, reference_lengths, names))):
            if not keep_pair(self, gen, ref, i, names):
                continue
            gen, ref = to_mono(gen, rate, self.sample_rate), to_mono(ref, ref_rate, self.sample_rate)
            pairs.append(cut_pair(gen, ref, clip_name(i, names, "generated")))
        gen_probs = self._distributions([g for g, _ in pairs])
        ref_probs = self._distributions([r for _, r in pairs])
        for p, q in zip(gen_probs, ref_probs):
            self.pairs += 1
            if p.shape[0] == 0:
                self.short_pairs += 1
                continue
            pq, qp = kl_divergence(p, q), kl_divergence(q, p)
            self.pq_sum += pq.sum()
            self.qp_sum += qp.sum()
            self.segments += p.shape[0]
            count = torch.tensor(float(p.shape[0]), dtype=torch.float64, device=pq.device)
            self.clip_values.append(torch.stack([pq.sum(), qp.sum(), count]).to(self.device, self.dtype))

    @torch.no_grad()
    def _distributions(self, clips: list[Tensor]) -> list[Tensor]:
        """Mono clips -> per clip [windows, classes] float64 softmax probabilities (windows ≤ 0.15 s dropped)."""
        device = module_device(self._classifier)
        segments = [[s for s in torch.split(clip, self.window) if s.shape[-1] > self.min_samples] for clip in clips]
        out: list[list[Tensor | None]] = [[None] * len(s) for s in segments]
        by_length: dict[int, list[tuple[int, int]]] = {}
        for c, segs in enumerate(segments):
            for k, s in enumerate(segs):
                by_length.setdefault(s.shape[-1], []).append((c, k))
        for index in by_length.values():  # equal lengths share a batch
            for start in range(0, len(index), self.batch_size):
                chunk = index[start:start + self.batch_size]
                wav = torch.stack([segments[c][k] for c, k in chunk])
                logits = self._classifier.logits(wav if device is None else wav.to(device))
                probs = torch.softmax(logits.float(), dim=-1).to(self.device, torch.float64)
                for (c, k), row in zip(chunk, probs):
                    out[c][k] = row
        return [torch.stack(rows) if rows else torch.zeros(0, 1, dtype=torch.float64) for rows in out]

    def describe(self) -> dict[str, Any]:
        """What a report must say besides the values (JSON-able)."""
        with synced(self):
            return {"metric": "PasstKLD", "protocol": KLD_PROTOCOL, "classifier": self.info.to_dict(),
                    "window_seconds": self.window_seconds, "pairs": int(self.pairs), "windows": int(self.segments),
                    "short_pairs": int(self.short_pairs), "silent_clips": int(self.silent_clips),
                    "silence_policy": self.silence}

    def compute(self) -> dict[str, Tensor]:
        if int(self.segments) == 0:
            raise ValueError(f"KLD has no window to score: {int(self.pairs)} pair(s), none longer than "
                             f"{self.min_samples / self.sample_rate:g} s")
        if int(self.short_pairs):
            warnings.warn(f"KLD: {int(self.short_pairs)} pair(s) had no window longer than "
                          f"{self.min_samples / self.sample_rate:g} s and were left out", RuntimeWarning,
                          stacklevel=2)
        pq, qp = self.pq_sum / self.segments, self.qp_sum / self.segments
        return {"kld": pq, "kld_qp": qp, "kld_both": pq + qp}

    def bootstrap(self, key: str = "kld", n_boot: int = 1000, confidence: float = 0.95,
                  seed: int = 0) -> ConfidenceInterval:
        """Clip-level percentile bootstrap of one of `KEYS` (pairs resampled, their windows kept together)."""
        if key not in KEYS:
            raise ValueError(f"key must be one of {KEYS}, got {key!r}")
        with synced(self):
            values = cat_state(self.clip_values, torch.float64).view(-1, 3)
        sums = {"kld": values[:, 0], "kld_qp": values[:, 1], "kld_both": values[:, 0] + values[:, 1]}[key]
        return bootstrap_ratio(sums, values[:, 2], n_boot, confidence, seed)
