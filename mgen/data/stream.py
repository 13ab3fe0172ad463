"""The per-worker shard stream: which shards this rank/worker reads, in what order, and how samples become batches.

Two modes:

* **exact** (default): each epoch the shard list is shuffled with a seed of (seed, epoch), identical on every rank;
  rank ``r`` of ``R`` takes every R-th shard, its worker ``w`` of ``W`` every W-th of those. Every sample is read
  exactly once per epoch across all ranks and workers. Ranks can end up with different numbers of batches (shards
  differ in size), which DDP cannot tolerate in training: use it on one device, for validation, or with shards
  of equal size.
* **resampled**: every worker draws shards with replacement (weighted by their sample counts, so every sample is
  equally likely) from its own RNG seeded with (seed, epoch, rank, worker). Infinite, or ``epoch_length`` samples
  per rank (rounded up to whole batches, spread over the workers) so every rank runs the same number of steps:
  the mode for multi-node training and uneven shard counts.

In both modes samples pass a shuffle buffer seeded with (seed, epoch, rank, worker) (training only), are decoded
(undecodable ones are skipped and counted), and batched inside the worker. Each batch carries ``skipped`` (this
worker's running count this epoch) and ``worker``. Everything is a function of (seed, epoch, rank, world size,
number of workers), so a run is reproducible.
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

from mgen.data.seeding import np_rng, py_rng
from mgen.data.skips import SampleError, SkipCounter, skipped_tensor


class ShardStream(IterableDataset):
    """Batches from WebDataset shards for one rank; see the module docstring for the modes."""

    def __init__(self, urls: list[str], decoder: Callable[..., dict], collate: Callable[[list[dict]], dict],
                 batch_size: int, *, weights: list[float] | None = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1, train: bool = True, resampled: bool = False, epoch_length: int | None = None,
                 shuffle_buffer: int = 256, drop_last: bool = False) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if epoch_length is not None and epoch_length < 1:
            raise ValueError(f"epoch_length must be >= 1 samples per rank, got {epoch_length}")
        if resampled and not urls:
            raise ValueError("resampled mode needs at least one shard")
        self.urls = list(urls)
        self.weights = list(weights) if weights is not None else [1.0] * len(self.urls)
        self.decoder, self.collate, self.batch_size = decoder, collate, int(batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.train, self.resampled, self.epoch_length = train, resampled, epoch_length
        self.shuffle_buffer, self.drop_last = int(shuffle_buffer), drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # ------------------------------------------------------------------------------------------------ planning
    def shard_order(self) -> list[str]:
        """All shards in this epoch's order (same on every rank)."""
        order = list(self.urls)
        if self.train:
            py_rng(self.seed, self.epoch, "shards").shuffle(order)
        return order

    def shards_for(self, worker: int, num_workers: int) -> list[str]:
        """Exact mode: the shards one worker of this rank reads this epoch."""
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

    def __len__(self) -> int:
        """Batches per epoch on this rank; only known in resampled mode with ``epoch_length``."""
        total = self.batches_per_rank()
        if total is None:
            raise TypeError("the number of batches is only known in resampled mode with epoch_length")
        return total

    # ------------------------------------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        coords = (self.seed, self.epoch, self.rank, worker)
        counter = SkipCounter(worker)
        progress = {"raw": 0}
        stages: list[Any] = [self._source(worker, num_workers, progress, counter),
                             wds.tarfile_to_samples(handler=counter.handler), _counting(progress)]
        if self.train and self.shuffle_buffer > 1:
            stages.append(wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=py_rng(*coords, "shuffle")))
        stages.append(_decoding(self.decoder, counter, np_rng(*coords, "crop"), py_rng(*coords, "text")))
        quota = self.batches_for(worker, num_workers)
        if quota is not None:
            stages.append(lambda src, n=quota * self.batch_size: itertools.islice(src, n))
        partial = not (self.drop_last or self.resampled)
        stages.append(wds.batched(self.batch_size, collation_fn=self.collate, partial=partial))
        stages.append(_tagging(counter))
        return iter(wds.DataPipeline(*stages))

    def _source(self, worker: int, num_workers: int, progress: dict[str, int],
                counter: SkipCounter) -> Callable[[], Iterator[dict]]:
        if not self.resampled:
            return lambda: _listed_shards(self.shards_for(worker, num_workers), counter)
        rng = py_rng(self.seed, self.epoch, self.rank, worker, "resample")
        return lambda: _draw_shards(self.urls, self.weights, rng, progress, counter)


def _listed_shards(urls: list[str], counter: SkipCounter) -> Iterator[dict[str, str]]:
    for draw, url in enumerate(urls):
        counter.reading(draw, url)
        yield {"url": url}


def _draw_shards(urls: list[str], weights: list[float], rng: random.Random, progress: dict[str, int],
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


def _counting(progress: dict[str, int]) -> Callable[[Iterator[dict]], Iterator[dict]]:
    def stage(src: Iterator[dict]) -> Iterator[dict]:
        for sample in src:
            progress["raw"] += 1
            yield sample
    return stage


def _decoding(decoder: Callable[..., dict], counter: SkipCounter, crop_rng: Any,
              text_rng: random.Random) -> Callable[[Iterator[dict]], Iterator[dict]]:
    def stage(src: Iterator[dict]) -> Iterator[dict]:
        for sample in src:
            key = str(sample.get("__key__", "?"))
            try:
                yield decoder(sample, crop_rng, text_rng)
            except SampleError as err:
                counter.skip(err.reason, key, str(err))
            except Exception as err:  # a decoder bug on one odd sample must not stop training either
                counter.skip("error", key, f"{type(err).__name__}: {str(err)[:200]}")
    return stage


def _tagging(counter: SkipCounter) -> Callable[[Iterator[dict]], Iterator[dict]]:
    def stage(src: Iterator[dict]) -> Iterator[dict]:
        for batch in src:
            batch["skipped"] = skipped_tensor(counter)
            batch["worker"] = torch.tensor(counter.worker, dtype=torch.long)
            yield batch
    return stage
