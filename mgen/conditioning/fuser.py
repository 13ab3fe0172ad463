"""Fusing named conditions into the one `Conditioning` the LM takes: cross-attention memory and/or input prefix.

The fuse map says where each named condition goes, e.g. ``{"description": "cross", "self_wav": "prefix"}``
(text through cross-attention, melody prepended: mgen's default), or ``{"self_wav": "prefix", "description":
"prefix"}`` (the published melody model, whose LM has no cross-attention). Conditions of one kind are concatenated
along the token axis in the order of the map, masks with them. Every configured condition must be present and
every present one configured, so a condition is never silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from mgen.conditioning.base import ConditionTensors
from mgen.lm.model import Conditioning

FuseMethod = Literal["cross", "prefix"]
FUSE_METHODS = ("cross", "prefix")


class ConditionFuser(nn.Module):
    """dict of named ConditionTensors -> Conditioning(cross, cross_mask, prefix, prefix_mask)."""

    def __init__(self, fuse: Mapping[str, FuseMethod]):
        super().__init__()
        if not fuse:
            raise ValueError("the fuse map is empty: say where each condition goes, e.g. {'description': 'cross'}")
        bad = {name: how for name, how in fuse.items() if how not in FUSE_METHODS}
        if bad:
            raise ValueError(f"unknown fuse method(s) {bad}; choose one of {FUSE_METHODS}")
        self.fuse: dict[str, FuseMethod] = dict(fuse)

    def forward(self, conditions: Mapping[str, ConditionTensors]) -> Conditioning:
        missing = [name for name in self.fuse if name not in conditions]
        extra = [name for name in conditions if name not in self.fuse]
        if missing or extra:
            raise ValueError(f"conditions do not match the fuse map {self.fuse}: missing {missing}, "
                             f"not configured {extra}")
        sizes = {(c.batch_size, c.embedding.shape[-1]) for c in conditions.values()}
        if len(sizes) != 1:
            raise ValueError(f"conditions disagree on (batch, width): {sorted(sizes)}")
        grouped: dict[str, list[ConditionTensors]] = {"cross": [], "prefix": []}
        for name, how in self.fuse.items():
            grouped[how].append(conditions[name])

        def cat(parts: list[ConditionTensors]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
            if not parts:
                return None, None
            return (torch.cat([p.embedding for p in parts], dim=1), torch.cat([p.mask for p in parts], dim=1))

        cross, cross_mask = cat(grouped["cross"])
        prefix, prefix_mask = cat(grouped["prefix"])
        return Conditioning(cross=cross, cross_mask=cross_mask, prefix=prefix, prefix_mask=prefix_mask)
