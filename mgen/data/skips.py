"""Bad samples are skipped and counted, never fatal: one corrupt file must not end a week-long run.

Each DataLoader worker owns a :class:`SkipCounter`. Sample-level problems (undecodable FLAC, NaN, empty audio,
broken json, missing members) and tar-level problems (a corrupt header ends the rest of that shard; webdataset
calls :meth:`SkipCounter.handler` and moves on to the next shard) are counted by reason. Every batch carries its
worker's running total (``batch["skipped"]``, ``batch["worker"]``); :class:`SkippedSamplesMonitor` turns those into
one logged number (a shard cut short by a tar error counts once). The first few problems per worker are also
logged as warnings so their cause can be found.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import lightning as L
import torch

log = logging.getLogger(__name__)

WARN_FIRST = 5


class SampleError(ValueError):
    """A sample that cannot be used; ``reason`` is a short category (``flac``, ``json``, ``nan``, ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SkipCounter:
    """Running counts of skipped samples (and tar-level errors) for one worker of one epoch."""

    def __init__(self, worker: int = 0) -> None:
        self.worker = worker
        self.by_reason: Counter[str] = Counter()
        self.shard: tuple[int, str] = (-1, "")  # (draw number, url) of the shard being read, set by the source
        self.quiet = False  # a resumed stream skipping samples it used before: their tar errors were counted then
        self._tar_error_shard: tuple[int, str] | None = None

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def skip(self, reason: str, key: str, message: str) -> None:
        self.by_reason[reason] += 1
        if self.total <= WARN_FIRST:
            log.warning("data worker %d: skipped sample %s (%s): %s", self.worker, key, reason, message)

    def reading(self, draw: int, url: str) -> None:
        """Called by the shard source as each shard starts, so tar errors can name and de-duplicate it."""
        self.shard = (draw, url)

    def handler(self, exn: BaseException) -> bool:
        """A webdataset exception handler: count the error and continue with the next member or shard.

        A broken tar raises twice in webdataset (once for the member, once more ending the shard), so tar errors
        count once per shard read; the samples lost after the break are unknown and not counted.
        """
        if self._tar_error_shard != self.shard and not self.quiet:
            self._tar_error_shard = self.shard
            self.skip("tar", self.shard[1] or "?", f"{type(exn).__name__}: {str(exn)[:200]}")
        return True


class SkippedSamplesMonitor(L.Callback):
    """Logs ``data/skipped_samples``: samples skipped so far on this rank (all workers, all epochs).

    Batches carry each worker's running count for the current epoch; the monitor keeps the latest value per worker
    and folds them into a total when a new epoch starts (workers restart each epoch). A batch leaves its worker only
    once the next usable sample is found, so skips up to the end of a worker's stream are counted with its last
    batch. The value is per rank (no cross-rank reduction per step).
    """

    def __init__(self, name: str = "data/skipped_samples") -> None:
        super().__init__()
        self.name = name
        self.previous_epochs = 0
        self.current: dict[int, int] = {}

    @property
    def total(self) -> int:
        return self.previous_epochs + sum(self.current.values())

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.previous_epochs += sum(self.current.values())
        self.current = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not isinstance(batch, dict) or "skipped" not in batch:
            return
        worker = int(batch.get("worker", 0))
        self.current[worker] = max(self.current.get(worker, 0), int(batch["skipped"]))
        pl_module.log(self.name, float(self.total), on_step=True, on_epoch=False, batch_size=1)

    def state_dict(self) -> dict[str, Any]:
        return {"previous_epochs": self.total}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous_epochs = int(state_dict.get("previous_epochs", 0))
        self.current = {}


def skipped_tensor(counter: SkipCounter) -> torch.Tensor:
    return torch.tensor(counter.total, dtype=torch.long)
