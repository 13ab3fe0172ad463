"""Seeded percentile-bootstrap confidence intervals over clips (or songs), for reports.

Clips are the unit that is resampled, because frames or segments of one clip are not independent. Each replicate
draws the clips with replacement (as multiplicities), recomputes the statistic, and the interval is the
(1 − confidence)/2 and (1 + confidence)/2 quantiles of the replicates. The reference side is held fixed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class ConfidenceInterval:
    value: float        # the statistic on all clips
    low: float
    high: float
    confidence: float
    n_boot: int         # replicates that gave a value
    unit: str           # what was resampled: "clips" (or "songs" for FAD)
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resample_counts(n_items: int, n_boot: int, seed: int, device: torch.device | str = "cpu") -> Tensor:
    """[n_boot, n_items] int64 multiplicities: row b says how often each item is drawn in replicate b."""
    if n_items < 1 or n_boot < 1:
        raise ValueError(f"bootstrap needs at least one item and one replicate, got {n_items} and {n_boot}")
    generator = torch.Generator().manual_seed(int(seed))
    draws = torch.randint(n_items, (n_boot, n_items), generator=generator)
    counts = torch.zeros(n_boot, n_items, dtype=torch.int64).scatter_add_(1, draws, torch.ones_like(draws))
    return counts.to(device)


def percentile_interval(replicates: Tensor, confidence: float) -> tuple[float, float]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    values = replicates.double()
    alpha = (1 - confidence) / 2
    low, high = torch.quantile(values, torch.tensor([alpha, 1 - alpha], dtype=torch.float64, device=values.device))
    return float(low), float(high)


def bootstrap_ratio(sums: Tensor, counts: Tensor | None = None, n_boot: int = 1000, confidence: float = 0.95,
                    seed: int = 0, unit: str = "clips") -> ConfidenceInterval:
    """Interval of Σ sums / Σ counts over resampled clips: a per-clip mean when `counts` is None, a frame- or
    segment-weighted mean (chroma, KL) when each clip contributes `counts[i]` frames summing to `sums[i]`."""
    sums = sums.double().flatten()
    counts = torch.ones_like(sums) if counts is None else counts.double().flatten()
    if sums.shape != counts.shape:
        raise ValueError(f"bootstrap: {sums.numel()} per-clip sums but {counts.numel()} counts")
    if counts.sum() <= 0:
        raise ValueError("bootstrap: nothing to resample (no clip contributed)")
    multiplicity = resample_counts(sums.numel(), n_boot, seed, sums.device).double()
    weight = multiplicity @ counts
    valid = weight > 0
    replicates = (multiplicity @ sums)[valid] / weight[valid]
    low, high = percentile_interval(replicates, confidence)
    return ConfidenceInterval(float(sums.sum() / counts.sum()), low, high, confidence, int(valid.sum()), unit, seed)


def bootstrap_statistic(n_items: int, statistic: Callable[[Tensor], float | None], value: float, n_boot: int = 200,
                        confidence: float = 0.95, seed: int = 0, unit: str = "clips") -> ConfidenceInterval:
    """Interval of any `statistic(multiplicities [n_items]) -> value` (None: replicate unusable, left out)."""
    replicates = []
    for row in resample_counts(n_items, n_boot, seed):
        result = statistic(row)
        if result is not None:
            replicates.append(result)
    if not replicates:
        raise ValueError("bootstrap: no replicate gave a value")
    low, high = percentile_interval(torch.tensor(replicates, dtype=torch.float64), confidence)
    return ConfidenceInterval(float(value), low, high, confidence, len(replicates), unit, seed)
