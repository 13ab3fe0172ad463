"""Where one rank's training stream stands inside an epoch, so that a resumed run continues it sample-exactly.

A stream is read by ``W`` DataLoader workers (one when ``num_workers`` is 0). Every worker's samples are a pure
function of (seed, epoch, rank, worker) and of their index in the worker's stream (see :mod:`mgen.data.stream`),
so a worker's progress is three numbers: how many samples it has drawn (decoded, or skipped as undecodable), how
many batches of them were consumed and how many samples those batches held. The DataLoader hands out the workers'
batches in turn (0, 1, ..., W-1, 0, ...; a worker that has run out is passed over), so the worker that follows the
last consumed batch's one is the next in line. A resumed stream starts every worker where it stopped and rotates
the workers so that this one comes first: the batches then arrive exactly as the uninterrupted run would have
seen them, without decoding a skipped sample again.

``complete`` marks a position taken at the last batch of an epoch: resuming from it starts the next epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass(frozen=True)
class WorkerProgress:
    """What the consumed batches of one worker covered this epoch."""

    samples: int = 0  # samples drawn from the worker's (shuffled) stream, undecodable ones included
    batches: int = 0
    delivered: int = 0  # samples in those batches


@dataclass(frozen=True)
class StreamPosition:
    """Epoch, per-worker progress, the worker of the last consumed batch, and whether the epoch is over."""

    epoch: int
    workers: tuple[WorkerProgress, ...] = field(default_factory=tuple)
    last_worker: int = -1
    complete: bool = False

    @classmethod
    def start_of(cls, epoch: int, num_workers: int) -> "StreamPosition":
        return cls(int(epoch), (WorkerProgress(),) * max(1, num_workers))

    @property
    def batches(self) -> int:
        return sum(w.batches for w in self.workers)

    @property
    def first_worker(self) -> int:
        """The worker whose batch comes next: the one after the last consumed batch's worker."""
        return (self.last_worker + 1) % len(self.workers)

    def after(self, worker: int, samples: int, batch_size: int, last: bool) -> "StreamPosition":
        """The position once a batch of ``batch_size`` samples from ``worker`` ending at sample ``samples`` of its
        stream is consumed; ``last``: it was the epoch's last batch."""
        before = self.workers[worker]
        workers = list(self.workers)
        workers[worker] = WorkerProgress(int(samples), before.batches + 1, before.delivered + int(batch_size))
        return replace(self, workers=tuple(workers), last_worker=int(worker), complete=bool(last))

    def next_pass(self) -> "StreamPosition":
        """Where the next pass over the stream starts: here, or at the next epoch when this one is complete."""
        return StreamPosition.start_of(self.epoch + 1, len(self.workers)) if self.complete else self

    # ------------------------------------------------------------------- checkpoints (tensors, gathered per rank)
    def to_tensor(self) -> torch.Tensor:
        """``int64 [W + 1, 3]``: row 0 = (epoch, last_worker, complete), then (samples, batches, delivered) per
        worker. Same shape on every rank of a job, so ranks' positions can be gathered into one checkpoint."""
        rows = [[self.epoch, self.last_worker, int(self.complete)]]
        rows += [[w.samples, w.batches, w.delivered] for w in self.workers]
        return torch.tensor(rows, dtype=torch.int64)

    @classmethod
    def from_tensor(cls, value: torch.Tensor) -> "StreamPosition":
        rows = [[int(x) for x in row] for row in value.tolist()]
        (epoch, last_worker, complete), workers = rows[0], rows[1:]
        if not workers or not -1 <= last_worker < len(workers):
            raise ValueError(f"not a stream position: {rows}")
        return cls(epoch, tuple(WorkerProgress(*w) for w in workers), last_worker, bool(complete))
