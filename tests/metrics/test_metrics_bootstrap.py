"""Seeded percentile bootstrap over clips: reproducible, ratio-of-sums statistic, plausible interval width."""

from __future__ import annotations

import pytest
import torch

from mgen.metrics.bootstrap import bootstrap_ratio, bootstrap_statistic, resample_counts


def test_resample_counts_are_seeded_multiplicities() -> None:
    counts = resample_counts(50, 30, seed=1)
    assert counts.shape == (30, 50) and bool((counts.sum(1) == 50).all())
    assert torch.equal(counts, resample_counts(50, 30, seed=1))
    assert not torch.equal(counts, resample_counts(50, 30, seed=2))


def test_interval_of_a_mean_and_of_a_frame_weighted_ratio() -> None:
    values = torch.randn(400, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    interval = bootstrap_ratio(values, n_boot=2000, seed=0)
    assert interval.value == pytest.approx(float(values.mean()), rel=1e-12)
    assert interval.low < interval.value < interval.high
    # a 95 % interval of a mean of 400 unit-variance values is about ±1.96 / 20 wide
    assert interval.high - interval.low == pytest.approx(2 * 1.96 / 20, rel=0.15)
    sums, frames = torch.tensor([3.0, 10.0, 0.0]), torch.tensor([4.0, 10.0, 2.0])
    weighted = bootstrap_ratio(sums, frames, n_boot=500, seed=3)
    assert weighted.value == pytest.approx(13 / 16) and 0 <= weighted.low <= weighted.high <= 1
    with pytest.raises(ValueError, match="confidence must be in"):
        bootstrap_ratio(values, confidence=1.5)
    with pytest.raises(ValueError, match="no replicate gave a value"):
        bootstrap_statistic(5, lambda counts: None, 0.0, n_boot=10)
