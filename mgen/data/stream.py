"""The per-worker shard stream: which samples this rank/worker reads, in what order, and how they become batches.

Training, two modes:

* **exact** (default): each epoch the shard list is shuffled with a seed of (seed, epoch), identical on every rank;
  rank ``r`` of ``R`` takes every R-th shard, its worker ``w`` of ``W`` every W-th of those. Every sample is read
  exactly once per epoch across all ranks and workers. Ranks can end up with different numbers of batches (shards
  differ in size), which multi-device training cannot tolerate: the DataModule refuses it there.
* **resampled**: every worker draws shards with replacement (weighted by their sample counts, so every sample is
  equally likely) from its own RNG seeded with (seed, epoch, rank, worker). Infinite, or ``epoch_length`` samples
  per rank (rounded up to whole batches, spread over the workers) so every rank runs the same number of steps:
  the mode for multi-device training and uneven shard counts.

In both modes samples pass a shuffle buffer seeded with (seed, epoch, rank, worker), are decoded (undecodable ones
are skipped and counted) and batched inside the worker. The crop and caption of the ``i``-th sample of a worker's
stream come from RNGs seeded with (seed, epoch, rank, worker, i): a resumed run skips the samples it had already
used without decoding them (:mod:`mgen.data.position`). Everything is a function of (seed, epoch, rank, world
size, number of workers), so a run is reproducible.

Validation is split by samples, not shards: the split's samples (counted in the index, in shard order) are cut into
one contiguous range per rank and per worker, as equal as possible, read once, unshuffled, cropped from the start.
Every rank is given the same number of batches, the largest any rank needs (:meth:`ShardStream.__len__`); a rank
that runs out (fewer samples, or undecodable ones) is topped up with padding batches whose ``real`` flags are all
False, so the ranks' collectives stay in step and every validation sample counts exactly once.

Each batch carries ``real`` (``[B]`` bool), ``skipped`` (this worker's running count this epoch), ``worker`` and
``stream`` (epoch, worker, samples drawn: where the batch ends in the worker's stream).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from mgen.data.position import StreamPosition, WorkerProgress
from mgen.data.seeding import np_rng, py_rng
from mgen.data.skips import SampleError, SkipCounter, skipped_tensor


def split_range(start: int, stop: int, parts: int, part: int) -> tuple[int, int]:
    """The ``part``-th of ``parts`` contiguous pieces of ``range(start, stop)``, sizes differing by at most one and
    the larger ones first (rank 0, worker 0 get a sample whenever there is one: they log validation media)."""
    size = stop - start
    return start - (-part * size // parts), start - (-(part + 1) * size // parts)


class ShardStream(IterableDataset):
    """Batches from WebDataset shards for one rank; see the module docstring for the modes.

    ``counts``: samples per shard (from the index): they weight resampled draws and plan validation.
    ``num_workers``: DataLoader workers that will read the stream (0 and 1 both mean one stream).
    """

    def __init__(self, urls: list[str], decoder: Callable[..., dict], collate: Callable[[list[dict]], dict],
                 batch_size: int, *, counts: list[int] | None = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, train: bool = True, resampled: bool = False,
                 epoch_length: int | None = None, shuffle_buffer: int = 256, drop_last: bool = False) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if epoch_length is not None and epoch_length < 1:
            raise ValueError(f"epoch_length must be >= 1 samples per rank, got {epoch_length}")
        if resampled and not urls:
            raise ValueError("resampled mode needs at least one shard")
        if counts is not None and len(counts) != len(urls):
            raise ValueError(f"{len(counts)} sample counts for {len(urls)} shards")
        self.urls = list(urls)
        self.counts = [int(c) for c in counts] if counts is not None else [1] * len(self.urls)
        self.decoder, self.collate, self.batch_size = decoder, collate, int(batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.streams = max(1, int(num_workers))
        self.train, self.resampled, self.epoch_length = train, resampled, epoch_length
        self.shuffle_buffer, self.drop_last = int(shuffle_buffer), drop_last
        self.position = StreamPosition.start_of(0, self.streams)

    @property
    def epoch(self) -> int:
        return self.position.epoch

    def set_epoch(self, epoch: int) -> None:
        """Read ``epoch`` from its start at the next iteration."""
        self.position = StreamPosition.start_of(epoch, self.streams)

    def start_at(self, position: StreamPosition) -> None:
        """Continue an epoch where a consumed position left it (see :mod:`mgen.data.position`)."""
        if len(position.workers) != self.streams:
            raise ValueError(f"a position of {len(position.workers)} worker stream(s) cannot resume a stream read "
                             f"by {self.streams}")
        self.position = position

    # ------------------------------------------------------------------------------------------------ planning
    def shard_order(self, epoch: int | None = None) -> list[str]:
        """All shards in an epoch's order (default: the next pass's epoch; the same on every rank)."""
        order = list(self.urls)
        if self.train:
            py_rng(self.seed, self.epoch if epoch is None else epoch, "shards").shuffle(order)
        return order

    def shards_for(self, worker: int, num_workers: int) -> list[str]:
        """Exact mode: the shards one worker of this rank reads in the next pass's epoch."""
        return self.shard_order()[self.rank::self.world_size][worker::num_workers]

    def batches_per_rank(self) -> int | None:
        if not self.resampled or self.epoch_length is None:
            return None
        return math.ceil(self.epoch_length / self.batch_size)

    def batches_for(self, worker: int, num_workers: int) -> int | None:
        """Resampled mode with ``epoch_length``: how many (full) batches one worker produces."""
        total = self.batches_per_rank()
        if total is None:
            return None
        return total // num_workers + (1 if worker < total % num_workers else 0)

    def validation_range(self, rank: int, worker: int) -> tuple[int, int]:
        """Validation: the samples (indices into the split, in shard order) one worker of one rank reads."""
        start, stop = split_range(0, sum(self.counts), self.world_size, rank)
        return split_range(start, stop, self.streams, worker)

    def validation_batches(self, rank: int) -> int:
        """Validation: real batches one rank produces when every sample decodes."""
        sizes = (b - a for a, b in (self.validation_range(rank, w) for w in range(self.streams)))
        return sum(math.ceil(n / self.batch_size) for n in sizes)

    def __len__(self) -> int:
        """Batches per epoch on this rank: in resampled mode with ``epoch_length``, and for validation (the most
        any rank needs, the same on every rank)."""
        if not self.train:
            return max(self.validation_batches(r) for r in range(self.world_size))
        total = self.batches_per_rank()
        if total is None:
            raise TypeError("the number of batches is only known in resampled mode with epoch_length")
        return total

    # ------------------------------------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        loader_worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if num_workers != self.streams:
            raise RuntimeError(f"the stream was planned for {self.streams} worker(s) but is read by {num_workers}")
        position = self.position
        worker = (loader_worker + position.first_worker) % num_workers  # the next worker in line reads first
        return self._batches(position.epoch, worker, num_workers, position.workers[worker])

    def _batches(self, epoch: int, worker: int, num_workers: int,
                 progress: WorkerProgress) -> Iterator[dict[str, Any]]:
        """One worker's batches. A full batch waits for the next usable sample before it leaves, so that the
        undecodable samples in between are counted with it (the stream's tail included); its ``samples`` is where
        that next sample starts, so a resumed stream neither decodes nor counts a sample twice."""
        counter = SkipCounter(worker)
        quota = self.batches_for(worker, num_workers)
        quota = quota * self.batch_size if quota is not None else None
        delivered, drawn = progress.delivered, progress.samples
        examples: list[dict] = []
        waiting: list[dict] | None = None
        if quota is not None and delivered >= quota:
            return
        counter.quiet = progress.samples > 0  # tar errors met again while skipping were counted before
        for index, sample in enumerate(self._samples(epoch, worker, num_workers, counter)):
            if index < progress.samples:
                continue  # used before a resume: not decoded again
            counter.quiet = False
            drawn = index + 1
            example = self._decode(sample, (self.seed, epoch, self.rank, worker, index), counter)
            if example is None:
                continue
            if waiting is not None:
                yield self._batch(waiting, epoch, worker, index, counter)
                waiting = None
            examples.append(example)
            if len(examples) == self.batch_size:
                delivered, full, examples = delivered + len(examples), examples, []
                if quota is not None and delivered >= quota:
                    yield self._batch(full, epoch, worker, drawn, counter)
                    return
                waiting = full
        if waiting is not None:
            yield self._batch(waiting, epoch, worker, drawn, counter)
        if examples and not (self.train and (self.drop_last or self.resampled)):
            yield self._batch(examples, epoch, worker, drawn, counter)

    def _samples(self, epoch: int, worker: int, num_workers: int, counter: SkipCounter) -> Iterator[dict[str, Any]]:
        """Raw samples (undecoded bytes) of one worker's stream, in the order they are used."""
        if not self.train:
            return _range_of_samples(self.urls, self.counts, *self.validation_range(self.rank, worker), counter)
        coords = (self.seed, epoch, self.rank, worker)
        progress = {"raw": 0}
        if self.resampled:
            source = _draw_shards(self.urls, self.counts, py_rng(*coords, "resample"), progress, counter)
        else:
            source = _listed_shards(self.shard_order(epoch)[self.rank::self.world_size][worker::num_workers], counter)
        samples = _counting(wds.tarfile_to_samples(handler=counter.handler)(source), progress)
        if self.shuffle_buffer > 1:
            samples = wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=py_rng(*coords, "shuffle"))(samples)
        return samples

    def _decode(self, sample: dict[str, Any], coords: tuple[int, ...], counter: SkipCounter) -> dict | None:
        """One example, or None (counted) when the sample cannot be used; ``coords`` = (seed, epoch, rank, worker,
        index in the worker's stream) seed its crop and caption."""
        key = str(sample.get("__key__", "?"))
        rngs = (np_rng(*coords, "crop"), py_rng(*coords, "text")) if self.train else (None, None)
        try:
            return self.decoder(sample, *rngs)
        except SampleError as err:
            counter.skip(err.reason, key, str(err))
        except Exception as err:  # a decoder bug on one odd sample must not stop training either
            counter.skip("error", key, f"{type(err).__name__}: {str(err)[:200]}")
        return None

    def _batch(self, examples: list[dict], epoch: int, worker: int, drawn: int,
               counter: SkipCounter) -> dict[str, Any]:
        batch = self.collate(examples)
        batch["real"] = torch.ones(len(examples), dtype=torch.bool)
        batch["skipped"] = skipped_tensor(counter)
        batch["worker"] = torch.tensor(worker, dtype=torch.long)
        batch["stream"] = {"epoch": epoch, "worker": worker, "samples": drawn}
        return batch

    def padding_batch(self) -> dict[str, Any]:
        """A one-sample batch that counts for nothing (``real`` False): what a rank that ran out of validation
        samples runs so that every rank runs the same number of batches."""
        batch = self.collate([self.decoder.padding_example()])
        batch["real"] = torch.zeros(1, dtype=torch.bool)
        batch["skipped"] = torch.tensor(0, dtype=torch.long)
        batch["worker"] = torch.tensor(-1, dtype=torch.long)
        return batch


def _listed_shards(urls: list[str], counter: SkipCounter) -> Iterator[dict[str, str]]:
    for draw, url in enumerate(urls):
        counter.reading(draw, url)
        yield {"url": url}


def _draw_shards(urls: list[str], weights: list[int], rng: random.Random, progress: dict[str, int],
                 counter: SkipCounter) -> Iterator[dict[str, str]]:
    """Shards with replacement, forever; gives up when many draws in a row produced no sample at all."""
    patience = max(64, 4 * len(urls))
    idle, last = 0, progress["raw"]
    for draw in itertools.count():
        idle = idle + 1 if progress["raw"] == last else 0
        last = progress["raw"]
        if idle > patience:
            raise RuntimeError(f"no readable sample in {patience} consecutive shard draws from {len(urls)} shards "
                               f"(first: {urls[0]}); are the shards corrupt or empty?")
        url = rng.choices(urls, weights=weights)[0]
        counter.reading(draw, url)
        yield {"url": url}


def _range_of_samples(urls: list[str], counts: list[int], start: int, stop: int,
                      counter: SkipCounter) -> Iterator[dict[str, Any]]:
    """Samples ``start .. stop - 1`` of the shards taken in order, each holding ``counts`` samples (the index).
    A shard holding more than its count contributes only that many: no sample can be read twice."""
    offset = 0
    for draw, (url, count) in enumerate(zip(urls, counts)):
        lo, hi = max(start - offset, 0), min(stop - offset, count)
        offset += count
        if lo >= hi:
            continue
        counter.reading(draw, url)
        for index, sample in enumerate(wds.tarfile_to_samples(handler=counter.handler)(iter([{"url": url}]))):
            if index >= hi:
                break
            if index >= lo:
                yield sample


def _counting(samples: Iterator[dict], progress: dict[str, int]) -> Iterator[dict]:
    for sample in samples:
        progress["raw"] += 1
        yield sample
