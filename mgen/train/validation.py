"""Validation metrics as totals over the whole validation set, summed over ranks before anything is divided.

Averaging per-batch means weights a batch of 1 sample like a batch of 16, and averaging per-rank means (what
``self.log(..., sync_dist=True)`` does) weights a rank with 3 samples like one with 300. Modules therefore add up
sums and counts (loss x tokens and tokens, a metric x samples and samples, code histograms) in a :class:`Totals`;
at the end of validation the totals of all ranks are added (torchmetrics' sync) and only then divided, so a metric
over ``N`` ranks equals the one a single process computes over the same samples. Padding batches (``real`` False,
see :mod:`mgen.data.stream`) add nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric


class Totals(Metric):
    """Named running sums (float64) over a validation pass; ``compute()`` returns them summed over ranks."""

    full_state_update = False

    def __init__(self, shapes: dict[str, tuple[int, ...]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.names = tuple(shapes)
        for name, shape in shapes.items():
            self.add_state(name, default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, **values: torch.Tensor) -> None:
        for name, value in values.items():
            setattr(self, name, getattr(self, name) + value.detach().to(torch.float64))

    def compute(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.names}


def real_samples(batch: Any, size: int, device: torch.device) -> torch.Tensor:
    """``[B]`` bool: which samples of a batch count (all of them for batches without a ``real`` flag)."""
    real = batch.get("real") if isinstance(batch, dict) else None
    if real is None:
        return torch.ones(size, dtype=torch.bool, device=device)
    return real.to(device=device, dtype=torch.bool)
