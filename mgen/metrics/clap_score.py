"""CLAP score: mean cosine similarity between the CLAP embedding of each generated clip and of its caption
(audiocraft ``CLAPTextConsistencyMetric``: ``cosine_similarity(audio, text, dim=1, eps=1e-8)``, averaged over
clips).

The CLAP model is duck-typed: ``info`` (`EmbedderInfo`; sample_rate 48000 for laion-clap), ``audio_embeddings(wav
[N, L] at info.sample_rate) -> [N, D]`` (one embedding per clip: the crop policy — deterministic by default,
audiocraft's random crop as a seeded option — lives in the CLAP embedder) and ``text_embeddings(list[str]) ->
[N, D]`` (tokenizer and 77-token truncation are the embedder's). It is not a submodule of the metric.

Scores differ a lot between CLAP checkpoints (audiocraft#512: 0.13 vs 0.31 for one model), so the logged name
carries the checkpoint's name and a short hash: ``clap_score[music_audioset_epoch_15_esc_90.14:1a2b3c4d]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from mgen.metrics.bootstrap import ConfidenceInterval, bootstrap_ratio
from mgen.metrics.clips import (Audio, SilencePolicy, check_policy, check_sample_rate, clip_name, is_silent,
                                module_device, silence_error, split_clips, to_mono)
from mgen.metrics.embedders.base import EmbedderInfo
from mgen.metrics.states import cat_state, synced

WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


def checkpoint_label(info: EmbedderInfo) -> str:
    """``<weights file stem>:<first 8 hex of its sha256>`` (the id when there is no file, 'nohash' when no
    checksum), e.g. ``music_audioset_epoch_15_esc_90.14:1a2b3c4d``."""
    stem = info.id
    if info.weights:
        stem = Path(info.weights).name  # not .stem: "…_90.14" has a dot of its own
        for suffix in WEIGHT_SUFFIXES:
            stem = stem.removesuffix(suffix)
    return f"{stem}:{info.weights_sha256[:8] or 'nohash'}"


class ClapScore(Metric):
    """``compute()`` -> mean text–audio cosine (float64 scalar tensor); ``name`` is the name to log it under."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, clap: Any, *, silence: SilencePolicy = "error", batch_size: int = 16, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for method in ("audio_embeddings", "text_embeddings"):
            if not callable(getattr(clap, method, None)) or not isinstance(getattr(clap, "info", None),
                                                                            EmbedderInfo):
                raise TypeError("clap must have `info: EmbedderInfo`, `audio_embeddings(wav [N, L])` and "
                                "`text_embeddings(texts)` (mgen's CLAP embedder)")
        object.__setattr__(self, "_clap", clap)  # not a submodule (frozen, out of checkpoints)
        self.silence = check_policy(silence)
        self.batch_size = batch_size
        self.add_state("cosine_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("clips", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("silent_clips", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("clip_cosines", [], dist_reduce_fx="cat")  # for the bootstrap, in the metric's dtype

    @property
    def info(self) -> EmbedderInfo:
        return self._clap.info

    @property
    def name(self) -> str:
        return f"clap_score[{checkpoint_label(self.info)}]"

    def update(self, audio: Audio, texts: Sequence[str], sample_rate: int, *,
               lengths: Sequence[int] | Tensor | None = None, names: Sequence[str] | None = None) -> None:
        """Generated clips (``[B, C, L]`` or a list of ``[C, L]``, valid `lengths`) and their captions."""
        rate = check_sample_rate(sample_rate)
        clips = split_clips(audio, lengths, "generated")
        texts = list(texts)
        if len(texts) != len(clips):
            raise ValueError(f"{len(clips)} clips but {len(texts)} captions")
        if names is not None and len(names) != len(clips):
            raise ValueError(f"{len(names)} names for {len(clips)} clips")
        kept_audio, kept_texts = [], []
        for i, (clip, text) in enumerate(zip(clips, texts)):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{clip_name(i, names, 'generated')}: empty caption")
            if is_silent(clip, clip_name(i, names, "generated")):
                if self.silence == "error":
                    raise silence_error(clip_name(i, names, "generated"))
                self.silent_clips += 1
                if self.silence == "skip":
                    continue
            kept_audio.append(to_mono(clip, rate, self.info.sample_rate))
            kept_texts.append(text)
        if not kept_audio:
            return
        audio_emb = self._audio_embeddings(kept_audio)
        text_emb = self._clap.text_embeddings(kept_texts).to(self.device, torch.float64)
        cosines = F.cosine_similarity(audio_emb, text_emb, dim=1, eps=1e-8)
        self.cosine_sum += cosines.sum()
        self.clips += cosines.numel()
        self.clip_cosines.append(cosines.to(self.dtype))

    @torch.no_grad()
    def _audio_embeddings(self, clips: list[Tensor]) -> Tensor:
        """One embedding per clip, clips of equal length batched together, returned in input order."""
        device = module_device(self._clap)
        out: list[Tensor | None] = [None] * len(clips)
        by_length: dict[int, list[int]] = {}
        for i, clip in enumerate(clips):
            by_length.setdefault(clip.shape[-1], []).append(i)
        for index in by_length.values():
            for start in range(0, len(index), self.batch_size):
                chunk = index[start:start + self.batch_size]
                wav = torch.stack([clips[i] for i in chunk])
                emb = self._clap.audio_embeddings(wav if device is None else wav.to(device))
                for i, row in zip(chunk, emb):
                    out[i] = row.to(self.device, torch.float64)
        return torch.stack(out)  # type: ignore[arg-type]

    def describe(self) -> dict[str, Any]:
        """What a report must say besides the value (JSON-able)."""
        with synced(self):
            return {"metric": self.name, "clap": self.info.to_dict(), "clips": int(self.clips),
                    "silent_clips": int(self.silent_clips), "silence_policy": self.silence}

    def compute(self) -> Tensor:
        if int(self.clips) == 0:
            raise ValueError("CLAP score has no clip to score")
        return self.cosine_sum / self.clips

    def bootstrap(self, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> ConfidenceInterval:
        """Clip-level percentile bootstrap of the mean cosine."""
        with synced(self):
            cosines = cat_state(self.clip_cosines, torch.float64)
        return bootstrap_ratio(cosines, None, n_boot, confidence, seed)
