"""From raw attributes (captions, melody audio) to the LM's `Conditioning`, with training-time dropout.

`ConditionProvider` owns the conditioners (text, melody, optional CLAP) under the published attribute names
(``description``, ``self_wav``, ``clap``), runs them, applies attribute dropout then classifier-free-guidance
dropout in train mode (the published order), and fuses. Defaults follow the published recipes: CFG dropout 0.3
for text-only models and 0.2 with melody, attribute dropout ``{"self_wav": 0.5}`` with melody, text through
cross-attention and melody as a prefix. At generation, `null_conditioning` (or ``cond.null()``) gives the
unconditional branch of CFG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mgen.conditioning.base import ConditionTensors
from mgen.conditioning.dropout import PUBLISHED_SEED, AttributeDropout, ClassifierFreeGuidanceDropout
from mgen.conditioning.fuser import ConditionFuser, FuseMethod
from mgen.conditioning.melody import MelodyConditioner
from mgen.conditioning.text import TextConditioner
from mgen.lm.model import Conditioning

if TYPE_CHECKING:
    from mgen.conditioning.clap import ClapConditioner

TEXT, MELODY, CLAP = "description", "self_wav", "clap"
DEFAULT_FUSE: dict[str, FuseMethod] = {TEXT: "cross", CLAP: "cross", MELODY: "prefix"}


class ConditionProvider(nn.Module):
    """texts / melody audio / CLAP audio -> Conditioning at the LM width."""

    def __init__(self, text: TextConditioner | None = None, melody: MelodyConditioner | None = None,
                 clap: "ClapConditioner | None" = None, fuse: Mapping[str, FuseMethod] | None = None,
                 cfg_dropout: float | None = None, attribute_dropout: Mapping[str, float] | None = None,
                 per_sample: bool = False, seed: int = PUBLISHED_SEED, generator: torch.Generator | None = None):
        super().__init__()
        self.conditioners = nn.ModuleDict(
            {name: c for name, c in ((TEXT, text), (MELODY, melody), (CLAP, clap)) if c is not None})
        if not self.conditioners:
            raise ValueError("a ConditionProvider needs at least one conditioner (text, melody or clap)")
        fuse = dict(fuse) if fuse is not None else {n: DEFAULT_FUSE[n] for n in DEFAULT_FUSE if n in self.conditioners}
        if set(fuse) != set(self.conditioners):
            raise ValueError(f"fuse map names {sorted(fuse)} must be exactly the conditioners "
                             f"{sorted(self.conditioners)}")
        if cfg_dropout is None:
            cfg_dropout = 0.2 if melody is not None else 0.3
        if attribute_dropout is None:
            attribute_dropout = {MELODY: 0.5} if melody is not None else {}
        unknown = set(attribute_dropout) - set(self.conditioners)
        if unknown:
            raise ValueError(f"attribute dropout for unknown condition(s) {sorted(unknown)}")
        generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        self.attribute_dropout = AttributeDropout(attribute_dropout, per_sample, generator=generator)
        self.cfg_dropout = ClassifierFreeGuidanceDropout(cfg_dropout, per_sample, generator=generator)
        self.fuser = ConditionFuser(fuse)

    @staticmethod
    def _batch_size(texts: Sequence[str | None] | None, *wavs: Tensor | None) -> int:
        sizes = set()
        if texts is not None:
            if isinstance(texts, str):
                raise TypeError("texts must be a list of str | None (one per sample), not a single str")
            sizes.add(len(texts))
        sizes.update(w.shape[0] for w in wavs if isinstance(w, Tensor) and w.dim() > 0)
        if not sizes:
            raise ValueError("no attributes given: pass texts and/or melody audio, or use null_conditioning(B)")
        if len(sizes) != 1:
            raise ValueError(f"attributes disagree on the batch size: {sorted(sizes)}")
        size = sizes.pop()
        if size == 0:
            raise ValueError("empty batch: texts / audio hold no sample")
        return size

    def conditions(self, texts: Sequence[str | None] | None = None, melody_wavs: Tensor | None = None,
                   sample_rate: int | None = None, melody_frames: int | None = None,
                   clap_wavs: Tensor | None = None) -> dict[str, ConditionTensors]:
        """Every conditioner's output, before dropout and fusing; missing attributes come out nulled."""
        batch = self._batch_size(texts, melody_wavs, clap_wavs)
        if (melody_wavs is not None or clap_wavs is not None) and sample_rate is None:
            raise ValueError("sample_rate is required with melody or CLAP audio")
        out: dict[str, ConditionTensors] = {}
        for name, conditioner in self.conditioners.items():
            if name == TEXT:
                out[name] = conditioner(list(texts) if texts is not None else [None] * batch)
            elif name == MELODY:
                out[name] = (conditioner(melody_wavs, sample_rate, melody_frames) if melody_wavs is not None
                             else conditioner.null(batch, melody_frames or 1))
            else:
                out[name] = conditioner(texts=texts, wavs=clap_wavs, sample_rate=sample_rate, batch_size=batch)
        return out

    def forward(self, texts: Sequence[str | None] | None = None, melody_wavs: Tensor | None = None,
                sample_rate: int | None = None, melody_frames: int | None = None,
                clap_wavs: Tensor | None = None) -> Conditioning:
        """texts [B] (str | None), melody_wavs [B, C, L], clap_wavs [B, C, L] (training audio for CLAP;
        without it CLAP embeds the texts). Dropout applies in train mode only."""
        conditions = self.conditions(texts, melody_wavs, sample_rate, melody_frames, clap_wavs)
        conditions = self.cfg_dropout(self.attribute_dropout(conditions))
        return self.fuser(conditions)

    def null_conditioning(self, batch_size: int, melody_frames: int = 1) -> Conditioning:
        """The unconditional input of classifier-free guidance: every condition nulled (zeros, masks off)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        conditions: dict[str, ConditionTensors] = {}
        for name, conditioner in self.conditioners.items():
            if name == TEXT:
                conditions[name] = conditioner([None] * batch_size).null()
            elif name == MELODY:
                conditions[name] = conditioner.null(batch_size, melody_frames)
            else:
                conditions[name] = conditioner.null(batch_size)
        return self.fuser(conditions)


@dataclass
class ConditioningConfig:
    """Which conditioners the LM uses; `text_encoder` is a local path, an HF cache name, or None for the
    packaged offline MiniLM."""

    text: bool = True
    text_encoder: str | None = None
    word_dropout: float = 0.3
    melody: bool = False
    melody_frame_rate: float | None = None
    cfg_dropout: float | None = None  # None: 0.3 text-only, 0.2 with melody (published)
    attribute_dropout: dict[str, float] | None = None
    per_sample_dropout: bool = False
    fuse: dict[str, str] | None = field(default=None)


def build_condition_provider(cfg: ConditioningConfig, dim: int) -> ConditionProvider:
    """The provider a training run or an export describes (plain torch: inference needs no Lightning)."""
    text = TextConditioner(dim, cfg.text_encoder, word_dropout=cfg.word_dropout) if cfg.text else None
    melody = MelodyConditioner(dim, frame_rate=cfg.melody_frame_rate) if cfg.melody else None
    return ConditionProvider(text=text, melody=melody, fuse=cfg.fuse, cfg_dropout=cfg.cfg_dropout,
                             attribute_dropout=cfg.attribute_dropout, per_sample=cfg.per_sample_dropout)
