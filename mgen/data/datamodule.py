"""LightningDataModules over shard folders: raw audio (codec training, or LM training with on-the-fly encoding)
and pre-computed tokens (LM training).

Both read ``shards.json`` for the train/valid shard lists and hand a :class:`~mgen.data.stream.ShardStream` per
split to a DataLoader. Rank and world size are resolved at ``setup`` (explicit arguments, the trainer,
torch.distributed, RANK/WORLD_SIZE); so is the batch plan: ``global_batch_size`` is the recipe's global batch,
``per_device_batch_size`` and ``accumulate_grad_batches`` are derived from it and printed on rank 0.

Epochs: the DataLoader is an :class:`EpochDataLoader` that stamps the current epoch (``trainer.current_epoch``
when attached to a trainer, else the value from :meth:`ShardDataModule.set_epoch`) onto the dataset each time it
is iterated. Lightning iterates the train loader once per epoch after updating ``current_epoch``, and workers are
not persistent, so every epoch's workers start from a copy of the dataset that carries the right epoch. This
needs no ``reload_dataloaders_every_n_epochs`` and no shared memory. A run resumed mid-epoch restarts that epoch's
stream from its beginning.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from data_prep.shards import load_index
from mgen.data.batching import BatchPlan, batch_plan
from mgen.data.captions import CaptionConfig
from mgen.data.ranks import resolve_rank
from mgen.data.samples import AudioDecoder, TokenDecoder
from mgen.data.stream import ShardStream

KIND_AUDIO = "audio"
KIND_TOKENS = "tokens"


def index_kind(index: dict[str, Any]) -> str:
    """``"audio"`` (audio indexes written before kinds existed have none) or ``"tokens"``."""
    return index.get("kind") or KIND_AUDIO


class EpochDataLoader(DataLoader):
    """A DataLoader that sets its dataset's epoch from ``epoch_fn()`` every time an epoch's iteration starts."""

    def __init__(self, dataset: ShardStream, epoch_fn: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        self.epoch_fn = epoch_fn  # named like the argument, so Lightning could re-create the loader if it had to

    def __iter__(self):  # type: ignore[override]
        self.dataset.set_epoch(self.epoch_fn())
        return super().__iter__()


class ShardDataModule(L.LightningDataModule):
    """What the audio and token DataModules share: index, ranks, batch plan, streams, loaders.

    ``global_batch_size``: samples per optimiser update over all devices; with ``max_batch_per_device`` the device
    share is split into micro-batches (see :func:`~mgen.data.batching.derive_batch`). ``resampled`` /
    ``epoch_length``: see :mod:`mgen.data.stream` (``epoch_length`` counts samples per rank). ``shuffle_buffer``:
    samples per worker held for shuffling, as compressed bytes (buffer x sample size x workers of RAM).
    ``caption``: training text augmentation (validation uses plain descriptions). ``rank``/``world_size``:
    override the detected ones (tests, custom launchers). In exact mode each worker's last batch may be partial
    unless ``drop_last``. Validation always reads exactly once, unshuffled, with crops from the start.
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
        if self.verbose and self.rank == 0 and self.world_size > 1 and not self.resampled:
            print("[data] warning: exact epochs with several ranks can give ranks different numbers of batches, "
                  "which stalls DDP training; use resampled=True with epoch_length for multi-device training")
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
                weights=[float(e.get("samples", 1)) for e in entries], seed=self.seed, rank=self.rank,
                world_size=self.world_size, train=train, resampled=self.resampled and train,
                epoch_length=self.epoch_length if train else None, shuffle_buffer=self.shuffle_buffer,
                drop_last=self.drop_last and train)
        return self._streams[split]

    def loader(self, split: str) -> EpochDataLoader:
        extra: dict[str, Any] = {}
        if self.num_workers > 0:
            extra = {"prefetch_factor": self.prefetch_factor, "persistent_workers": False}
        return EpochDataLoader(self.stream(split), self.current_epoch, num_workers=self.num_workers,
                               pin_memory=self.pin_memory, **extra)

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
        self.num_codebooks = int(config["num_codebooks"])
        self.cardinality = int(config["cardinality"])
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
        return TokenDecoder(self.num_codebooks, self.cardinality, self.segment_frames, self.caption, train,
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
