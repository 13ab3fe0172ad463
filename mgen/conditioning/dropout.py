"""Condition dropout at training time, so one model learns both p(x | c) and p(x) for classifier-free guidance.

Published (audiocraft): ``ClassifierFreeGuidanceDropout`` draws **one coin per batch** and, on heads, nulls every
condition of every sample; ``AttributeDropout`` draws one coin per named attribute per batch (melody models:
``{"self_wav": 0.5}``) and nulls that attribute for the whole batch. Both do nothing in eval mode. A per-sample
variant (one coin per sample) is offered as an option.

Coins come from a ``torch.Generator`` owned by the module and seeded (1234 by default, as published, which makes
every rank of a data-parallel job draw the same coins). Pass your own generator for other streams. Training
checkpoints carry the generator's state (``mgen.train.exact_resume``), so a resumed run continues the coin sequence.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mgen.conditioning.base import ConditionTensors

PUBLISHED_SEED = 1234


def _make_generator(seed: int, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        return generator
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def _check_p(p: float, what: str) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{what} dropout probability must be in [0, 1], got {p}")
    return float(p)


def _batch_size(conditions: Mapping[str, ConditionTensors]) -> int:
    sizes = {c.batch_size for c in conditions.values()}
    if len(sizes) != 1:
        raise ValueError(f"conditions disagree on the batch size: {sorted(sizes)}")
    return sizes.pop()


class _CoinDropout(nn.Module):
    def __init__(self, per_sample: bool, seed: int, generator: torch.Generator | None):
        super().__init__()
        self.per_sample = per_sample
        self.generator = _make_generator(seed, generator)

    def keep(self, p: float, batch_size: int) -> Tensor:
        """[B] bool, False where a sample is dropped: one coin shared by the batch, or one per sample."""
        coins = torch.rand(batch_size if self.per_sample else 1, generator=self.generator)
        return (coins >= p).expand(batch_size)


class ClassifierFreeGuidanceDropout(_CoinDropout):
    """With probability p, null every condition (per batch, as published, or per sample)."""

    def __init__(self, p: float, per_sample: bool = False, seed: int = PUBLISHED_SEED,
                 generator: torch.Generator | None = None):
        super().__init__(per_sample, seed, generator)
        self.p = _check_p(p, "CFG")

    def forward(self, conditions: Mapping[str, ConditionTensors]) -> dict[str, ConditionTensors]:
        if not self.training or self.p == 0.0 or not conditions:
            return dict(conditions)
        keep = self.keep(self.p, _batch_size(conditions))
        return {name: cond.keep(keep) for name, cond in conditions.items()}


class AttributeDropout(_CoinDropout):
    """Null named conditions independently: p maps a condition name to its drop probability."""

    def __init__(self, p: Mapping[str, float], per_sample: bool = False, seed: int = PUBLISHED_SEED,
                 generator: torch.Generator | None = None):
        super().__init__(per_sample, seed, generator)
        self.p = {name: _check_p(prob, f"attribute {name!r}") for name, prob in p.items()}

    def forward(self, conditions: Mapping[str, ConditionTensors]) -> dict[str, ConditionTensors]:
        out = dict(conditions)
        if not self.training or not conditions:
            return out
        batch_size = _batch_size(conditions)
        for name, prob in self.p.items():  # a coin for every configured name, present or not: stable streams
            keep = self.keep(prob, batch_size)
            if name in out and prob > 0:
                out[name] = out[name].keep(keep)
        return out
