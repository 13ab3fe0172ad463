"""Helpers for torchmetrics states shared by the metrics: gathered views, list states, update bookkeeping."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import Tensor
from torchmetrics import Metric

F = TypeVar("F", bound=Callable[..., Any])


def counts_as_update(method: F) -> F:
    """Bookkeeping torchmetrics does for `update`, for the other methods that change states."""

    @functools.wraps(method)
    def wrapped(self: Metric, *args: Any, **kwargs: Any) -> Any:
        self._computed = None
        self._update_count += 1
        with torch.no_grad():
            return method(self, *args, **kwargs)

    return wrapped  # type: ignore[return-value]


def cat_state(state: list[Tensor] | Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """A "cat" list state as one 1-D tensor (it is already one after a sync), empty when nothing was added."""
    if isinstance(state, Tensor):
        out = state.flatten()
    else:
        out = torch.cat([t.flatten() for t in state]) if state else torch.zeros(0)
    return out if dtype is None else out.to(dtype)


@contextmanager
def synced(metric: Metric) -> Iterator[None]:
    """A metric's states gathered from all ranks for the duration (what `compute` does), for its other results
    (FAD∞, per-song values, bootstraps); the local states come back afterwards."""
    if metric._is_synced:
        yield
        return
    with metric.sync_context(dist_sync_fn=metric.dist_sync_fn, should_sync=metric._to_sync,
                             should_unsync=metric._should_unsync):
        yield
