"""LightningDataModules over shard folders: raw audio (codec training, or LM training with on-the-fly encoding)
and pre-computed tokens (LM training).

Both read ``shards.json`` for the train/valid shard lists and hand a :class:`~mgen.data.stream.ShardStream` per
split to a DataLoader. Rank and world size are resolved at ``setup`` (explicit arguments, the trainer,
torch.distributed, RANK/WORLD_SIZE); so is the batch plan: ``global_batch_size`` is the recipe's global batch,
``per_device_batch_size`` and ``accumulate_grad_batches`` are derived from it and printed on rank 0.

Epochs and resuming: the DataLoader is an :class:`EpochDataLoader` that asks the DataModule where each pass over
its stream starts (an epoch, and for a resumed run a position inside it) every time it is iterated; workers are not
persistent, so every pass's workers start from a copy of the dataset that carries it. Lightning iterates the train
loader once per epoch. The DataModule follows the training batches it hands out (:meth:`ShardDataModule.
record_train_batch`, called by ``mgen.train.exact_resume.ExactResume``), so a checkpoint knows the sample each
rank's stream stopped at, and a resumed run continues there (:mod:`mgen.data.position`), or with the next epoch
when the checkpoint was written on the last batch of one. Without a trainer (benchmarks, tests, plain loops) the
epoch is the value of :meth:`ShardDataModule.set_epoch`.

Several devices: every rank must run the same number of batches, or the first rank to run out leaves the others
waiting in a collective. Training therefore needs resampled epochs (equal by construction) as soon as there is more
than one rank; validation gives every rank the same number of batches, topped up with padding batches that count
for nothing (see :mod:`mgen.data.stream`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from mgen.data.batching import BatchPlan, batch_plan
from mgen.data.captions import CaptionConfig
from mgen.data.ranks import resolve_rank
from mgen.data.position import StreamPosition, WorkerProgress
from mgen.data.samples import AudioDecoder, TokenDecoder
from mgen.data.seeding import seed_of
from mgen.data.shard_index import KIND_AUDIO, KIND_TOKENS, index_kind, load_index
from mgen.data.stream import ShardStream


class EpochDataLoader(DataLoader):
    """A DataLoader that starts each pass over its :class:`ShardStream` where ``epoch_fn()`` says (an epoch, or a
    position inside one), and gives validation passes exactly ``len(stream)`` batches, topped up with padding.

    The workers' base seed comes from the loader's own generator, seeded by (seed, epoch, rank): iterating the data
    never draws from torch's global RNG, which the model's dropout draws from (a resumed run restores that RNG and
    must not see it moved by the data)."""

    def __init__(self, dataset: ShardStream, epoch_fn: Callable[[], StreamPosition], **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, generator=torch.Generator(), **kwargs)
        self.epoch_fn = epoch_fn  # named like the argument, so Lightning could re-create the loader if it had to

    def __iter__(self):  # type: ignore[override]
        stream: ShardStream = self.dataset
        position = self.epoch_fn()
        stream.start_at(position)
        self.generator.manual_seed(seed_of(stream.seed, position.epoch, stream.rank, "loader"))
        batches = super().__iter__()
        return batches if stream.train else _topped_up(batches, len(stream), stream.padding_batch)


def _topped_up(batches: Any, total: int, padding: Callable[[], dict]) -> Any:
    """Exactly ``total`` batches: the real ones, then padding."""
    count = 0
    for batch in batches:
        if count == total:
            break
        yield batch
        count += 1
    for _ in range(total - count):
        yield padding()


class ShardDataModule(L.LightningDataModule):
    """What the audio and token DataModules share: index, ranks, batch plan, streams, loaders.

    ``global_batch_size``: samples per optimiser update over all devices; with ``max_batch_per_device`` the device
    share is split into micro-batches (see :func:`~mgen.data.batching.derive_batch`). ``resampled`` /
    ``epoch_length``: see :mod:`mgen.data.stream` (``epoch_length`` counts samples per rank). ``shuffle_buffer``:
    samples per worker held for shuffling, as compressed bytes (buffer x sample size x workers of RAM).
    ``caption``: training text augmentation (validation uses plain descriptions). ``rank``/``world_size``:
    override the detected ones (tests, custom launchers). In exact mode each worker's last batch may be partial
    unless ``drop_last``. Validation reads every sample once, split by samples over ranks and workers, unshuffled,
    with crops from the start; every rank gets the same number of batches (padding, see :mod:`mgen.data.stream`).
    """

    kind: str = ""

    def __init__(self, shards_dir: str | Path, global_batch_size: int, *, num_workers: int = 2,
                 shuffle_buffer: int = 256, seed: int = 0, resampled: bool = False, epoch_length: int | None = None,
                 caption: CaptionConfig | None = None, max_batch_per_device: int | None = None,
                 valid_batch_size: int | None = None, drop_last: bool = False, rank: int | None = None,
                 world_size: int | None = None, pin_memory: bool = False, prefetch_factor: int | None = 2,
                 verbose: bool = True) -> None:
        super().__init__()
        self.shards_dir = Path(shards_dir)
        self.index = load_index(self.shards_dir)
        if index_kind(self.index) != self.kind:
            raise ValueError(f"{self.shards_dir} holds {index_kind(self.index)} shards, but {type(self).__name__} "
                             f"reads {self.kind} shards (use lm_datamodule() to pick the right one)")
        self.global_batch_size = int(global_batch_size)
        self.num_workers, self.shuffle_buffer, self.seed = int(num_workers), int(shuffle_buffer), int(seed)
        self.resampled, self.epoch_length = bool(resampled), epoch_length
        self.caption = caption if caption is not None else CaptionConfig()
        self.max_batch_per_device, self.valid_batch_size = max_batch_per_device, valid_batch_size
        self.drop_last, self.pin_memory, self.prefetch_factor = drop_last, pin_memory, prefetch_factor
        self._rank_arg, self._world_arg = rank, world_size
        self.verbose = verbose
        self.rank, self.world_size = 0, 1
        self.plan: BatchPlan | None = None
        self._epoch = 0
        self._streams: dict[str, ShardStream] = {}
        self.train_position: StreamPosition | None = None  # where the consumed training batches end
        self._resume: StreamPosition | None = None

    # ------------------------------------------------------------------------------------------------ shards
    def shard_entries(self, split: str) -> list[dict[str, Any]]:
        return [e for e in self.index["shards"] if e["split"] == split and e.get("samples", 1) > 0]

    def shard_urls(self, split: str) -> list[str]:
        return [str(self.shards_dir / e["name"]) for e in self.shard_entries(split)]

    def num_samples(self, split: str) -> int:
        return sum(int(e.get("samples", 0)) for e in self.shard_entries(split))

    # ------------------------------------------------------------------------------------------------ batch plan
    @property
    def per_device_batch_size(self) -> int:
        return self._plan().per_device_batch

    @property
    def accumulate_grad_batches(self) -> int:
        """Pass to ``Trainer(accumulate_grad_batches=...)`` so one optimiser step sees ``global_batch_size``."""
        return self._plan().accumulate

    def batch_plan(self, world_size: int | None = None) -> BatchPlan:
        """The plan for ``world_size`` devices (default: the resolved world size), e.g. before building a Trainer."""
        return batch_plan(self.global_batch_size, world_size or self._resolve()[1], self.max_batch_per_device)

    def _plan(self) -> BatchPlan:
        if self.plan is None:
            self.plan = self.batch_plan()
        return self.plan

    def _resolve(self) -> tuple[int, int]:
        return resolve_rank(getattr(self, "trainer", None), self._rank_arg, self._world_arg)

    # ------------------------------------------------------------------------------------------------ epochs
    def set_epoch(self, epoch: int) -> None:
        """The epoch used when no trainer is attached (benchmarks, tests, plain loops)."""
        self._epoch = int(epoch)

    def current_epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else self._epoch

    @property
    def worker_streams(self) -> int:
        """Streams one rank's data is read in: its DataLoader workers, or one without workers."""
        return max(1, self.num_workers)

    def _next_train_pass(self) -> StreamPosition:
        """Where the train loader's next pass starts: a resumed position (or the epoch after it, when it was taken
        at an epoch's last batch), else the epoch after the previous pass, else the trainer's epoch."""
        if getattr(self, "trainer", None) is None:
            start = StreamPosition.start_of(self._epoch, self.worker_streams)
        elif self._resume is not None:
            start, self._resume = self._resume.next_pass(), None
        elif self.train_position is not None:
            start = StreamPosition.start_of(self.train_position.epoch + 1, self.worker_streams)
        else:
            start = StreamPosition.start_of(self.current_epoch(), self.worker_streams)
        self.train_position = start
        return start

    def record_train_batch(self, batch: dict[str, Any], last: bool) -> None:
        """Note a training batch as consumed; ``last``: the epoch's last one."""
        stream = batch.get("stream") if isinstance(batch, dict) else None
        if stream is None or self.train_position is None:
            return
        if int(stream["epoch"]) != self.train_position.epoch:
            raise RuntimeError(f"a batch of epoch {stream['epoch']} arrived in epoch {self.train_position.epoch}")
        self.train_position = self.train_position.after(int(stream["worker"]), int(stream["samples"]),
                                                        len(batch["real"]), last)

    def end_train_pass(self) -> None:
        """Training ended (``max_steps``), perhaps inside an epoch: Lightning counts that epoch as finished, so a run
        extended from the final checkpoint starts the next one, and so does its data."""
        if self.train_position is not None:
            self.train_position = replace(self.train_position, complete=True)

    def resume_at(self, position: StreamPosition) -> None:
        """Start the next training pass where ``position`` (this rank's, from a checkpoint) left the stream. A
        position of another number of worker streams cannot be continued: the next epoch starts instead."""
        if len(position.workers) != self.worker_streams:
            if self.rank == 0:
                print(f"[data] the checkpoint's data position is for {len(position.workers)} worker stream(s), this "
                      f"run reads {self.worker_streams}: training continues with the next epoch "
                      f"({position.epoch + 1}), not at the exact sample")
            position = StreamPosition(position.epoch, (WorkerProgress(),) * self.worker_streams, complete=True)
        self._resume = position

    def check_world_size(self, world_size: int) -> None:
        """Several ranks train only on resampled epochs: with exact epochs ranks read different numbers of batches
        and the first to run out leaves the others waiting in a collective."""
        if world_size > 1 and not self.resampled:
            raise ValueError(
                f"data.resampled is false (exact epochs) with {world_size} devices: ranks would read different "
                f"numbers of batches and stall at the first epoch end; set data.resampled: true and "
                f"data.epoch_length (samples per rank per epoch) for multi-device training")

    # ------------------------------------------------------------------------------------------------ Lightning
    def setup(self, stage: str | None = None) -> None:
        self.rank, self.world_size = self._resolve()
        self.plan = self.batch_plan(self.world_size)
        trainer = getattr(self, "trainer", None)
        if self.verbose and self.rank == 0:
            print(f"[data] {self.kind} shards {self.shards_dir}: {self.plan.describe()}; rank {self.rank} of "
                  f"{self.world_size}, {self.num_workers} worker(s), "
                  f"{'resampled' if self.resampled else 'exact'} epochs")
        trainer_accumulate = getattr(trainer, "accumulate_grad_batches", None) if trainer is not None else None
        if self.rank == 0 and trainer_accumulate not in (None, self.plan.accumulate):
            print(f"[data] warning: Trainer(accumulate_grad_batches={trainer_accumulate}) but the "
                  f"global batch needs {self.plan.accumulate}: pass accumulate_grad_batches="
                  f"dm.accumulate_grad_batches (see dm.batch_plan(world_size))")
        if trainer is not None and stage in (None, "fit"):
            self.check_world_size(self.world_size)
            if self.num_samples("valid") == 0 and trainer.limit_val_batches != 0:
                total = sum(int(e.get("samples", 0)) for e in self.index["shards"])
                raise ValueError(f"{self.shards_dir}: the validation split is empty (0 of the {total} samples in "
                                 f"shards.json are 'valid'); shard with a valid fraction > 0, or set "
                                 f"trainer.limit_val_batches: 0 to train without validation")
        self._streams = {}

    def stream(self, split: str) -> ShardStream:
        """The dataset of one split for this rank (built at first use, after ``setup``)."""
        if split not in self._streams:
            if self.plan is None:
                self.setup()
            train = split == "train"
            entries = self.shard_entries(split)
            batch = self.plan.per_device_batch if train else (self.valid_batch_size or self.plan.per_device_batch)
            decoder = self.make_decoder(train)
            self._streams[split] = ShardStream(
                self.shard_urls(split), decoder, decoder.collate, batch,
                counts=[int(e.get("samples", 1)) for e in entries], seed=self.seed, rank=self.rank,
                world_size=self.world_size, num_workers=self.num_workers, train=train,
                resampled=self.resampled and train,
                epoch_length=self.epoch_length if train else None, shuffle_buffer=self.shuffle_buffer,
                drop_last=self.drop_last and train)
        return self._streams[split]

    def loader(self, split: str) -> EpochDataLoader:
        extra: dict[str, Any] = {}
        if self.num_workers > 0:
            extra = {"prefetch_factor": self.prefetch_factor, "persistent_workers": False}
        start = (self._next_train_pass if split == "train"
                 else lambda: StreamPosition.start_of(self.current_epoch(), self.worker_streams))
        return EpochDataLoader(self.stream(split), start, num_workers=self.num_workers, pin_memory=self.pin_memory,
                               **extra)

    def train_dataloader(self) -> EpochDataLoader:
        return self.loader("train")

    def val_dataloader(self) -> EpochDataLoader:
        return self.loader("valid")

    def make_decoder(self, train: bool) -> AudioDecoder | TokenDecoder:
        raise NotImplementedError


class AudioDataModule(ShardDataModule):
    """Batches ``{"audio" [B, C, L] float, "padding_mask" [B, L] bool (True = real audio), "text", "meta", "key",
    "skipped", "worker"}`` of ``segment_seconds`` crops at ``sample_rate`` / ``channels`` (default: the shards')."""

    kind = KIND_AUDIO

    def __init__(self, shards_dir: str | Path, segment_seconds: float, sample_rate: int | None = None,
                 channels: int | None = None, global_batch_size: int = 16, **kwargs: Any) -> None:
        super().__init__(shards_dir, global_batch_size, **kwargs)
        config = self.index.get("config", {})
        self.sample_rate = int(sample_rate or config["sample_rate"])
        self.channels = int(channels or config["channels"])
        if self.channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {self.channels}")
        if not segment_seconds or segment_seconds <= 0:
            raise ValueError(f"segment_seconds must be > 0, got {segment_seconds}")
        self.segment_seconds = float(segment_seconds)
        self.segment_samples = int(round(self.segment_seconds * self.sample_rate))

    def make_decoder(self, train: bool) -> AudioDecoder:
        return AudioDecoder(self.sample_rate, self.channels, self.segment_samples, self.caption, train)


class TokenDataModule(ShardDataModule):
    """Batches ``{"codes" [B, K, S] int64, "padding_mask" [B, S] bool (True = real frames), ["chroma" [B, 12, S]],
    "text", "meta", "key", "skipped", "worker"}`` of ``segment_seconds`` (or ``segment_frames``) crops."""

    kind = KIND_TOKENS

    def __init__(self, shards_dir: str | Path, segment_seconds: float | None = None, global_batch_size: int = 16,
                 *, segment_frames: int | None = None, chroma: bool = False, **kwargs: Any) -> None:
        super().__init__(shards_dir, global_batch_size, **kwargs)
        config = self.index["config"]
        self.frame_rate = float(config["frame_rate"])
        self.n_q = int(config["n_q"])
        self.card = int(config["card"])
        self.codec = self.index.get("codec", {})
        if segment_frames is None:
            if not segment_seconds or segment_seconds <= 0:
                raise ValueError("give segment_seconds > 0 or segment_frames")
            segment_frames = int(round(segment_seconds * self.frame_rate))
        if segment_frames < 1:
            raise ValueError(f"segment_frames must be >= 1, got {segment_frames}")
        self.segment_frames = int(segment_frames)
        self.segment_seconds = self.segment_frames / self.frame_rate
        if chroma and not config.get("chroma"):
            raise ValueError(f"chroma=True but the token shards in {self.shards_dir} were written without chroma "
                             f"(re-run `mgen prep tokenize --chroma`)")
        self.chroma = bool(chroma)

    def make_decoder(self, train: bool) -> TokenDecoder:
        return TokenDecoder(self.n_q, self.card, self.segment_frames, self.caption, train,
                            self.chroma)


def lm_datamodule(shards_dir: str | Path, segment_seconds: float, global_batch_size: int,
                  **kwargs: Any) -> AudioDataModule | TokenDataModule:
    """The LM's DataModule for whatever ``shards_dir`` holds (``dm.kind``): token shards give code batches; audio
    shards give audio batches that the LM module encodes with its frozen codec on the fly (``chroma`` is then
    ignored: the melody conditioner computes it from the audio)."""
    kind = index_kind(load_index(shards_dir))
    if kind == KIND_TOKENS:
        return TokenDataModule(shards_dir, segment_seconds, global_batch_size, **kwargs)
    if kind == KIND_AUDIO:
        kwargs.pop("chroma", None)
        return AudioDataModule(shards_dir, segment_seconds, global_batch_size=global_batch_size, **kwargs)
    raise ValueError(f"{shards_dir}: unknown shard kind {kind!r} in shards.json (expected 'audio' or 'tokens')")
