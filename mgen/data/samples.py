"""Turn one raw shard sample (``{"__key__", "flac" | "codes.npy", "json", ...}`` bytes) into a training example,
and a list of examples into a batch dict.

A decoder raises :class:`~mgen.data.skips.SampleError` for anything unusable; the stream counts and skips it.
Decoders are small picklable objects because they travel to every DataLoader worker.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mgen.data.captions import CaptionConfig, select_caption
from mgen.data.crops import crop_start, pad_to, read_audio_crop
from mgen.data.skips import SampleError
from mgen.dsp import N_CHROMA


def _stack(arrays: list[np.ndarray]) -> torch.Tensor:
    """Batch numpy arrays into a tensor. numpy, not torch.stack: in the main process (num_workers=0) torch's
    intra-op threads make small stacks 10-50x slower on a busy CPU, and workers gain nothing from them either."""
    return torch.from_numpy(np.stack(arrays))


def parse_json(sample: dict[str, Any]) -> dict[str, Any]:
    raw = sample.get("json")
    if raw is None:
        raise SampleError("json", "sample has no json member")
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise SampleError("json", f"invalid json: {str(err)[:200]}") from err
    if not isinstance(meta, dict):
        raise SampleError("json", f"json is a {type(meta).__name__}, not an object")
    return meta


def load_npy(sample: dict[str, Any], name: str) -> np.ndarray:
    raw = sample.get(name)
    if raw is None:
        raise SampleError(name.split(".")[0], f"sample has no {name} member")
    try:
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as err:  # truncated header, wrong magic, pickled object arrays
        raise SampleError(name.split(".")[0], f"cannot read {name}: {str(err)[:200]}") from err


@dataclass(frozen=True)
class AudioDecoder:
    """Audio shards -> ``{"audio" [C, L], "padding_mask" [L], "text", "meta", "key"}`` (numpy until collated)."""

    sample_rate: int
    channels: int
    segment: int  # samples
    caption: CaptionConfig | None
    train: bool

    def __call__(self, sample: dict[str, Any], crop_rng: np.random.Generator | None,
                 text_rng: random.Random | None) -> dict:
        meta = parse_json(sample)
        if "flac" not in sample:
            raise SampleError("audio", "sample has no flac member")
        audio, mask = read_audio_crop(sample["flac"], self.sample_rate, self.channels, self.segment,
                                      crop_rng if self.train else None)
        return {"audio": audio, "padding_mask": mask, "text": select_caption(meta, self.caption, text_rng, self.train),
                "meta": meta, "key": sample["__key__"]}

    def padding_example(self) -> dict:
        """Silence with no real sample in it (validation padding, see :meth:`ShardStream.padding_batch`)."""
        return {"audio": np.zeros((self.channels, self.segment), dtype=np.float32),
                "padding_mask": np.zeros(self.segment, dtype=bool), "text": "", "meta": {}, "key": ""}

    @staticmethod
    def collate(examples: list[dict]) -> dict[str, Any]:
        return {"audio": _stack([e["audio"] for e in examples]),
                "padding_mask": _stack([e["padding_mask"] for e in examples]),
                "text": [e["text"] for e in examples], "meta": [e["meta"] for e in examples],
                "key": [e["key"] for e in examples]}


@dataclass(frozen=True)
class TokenDecoder:
    """Token shards -> ``{"codes" [K, S] int64, "padding_mask" [S], ["chroma" [12, S]], "text", "meta", "key"}``.

    Padded frames hold code 0 (and zero chroma); only ``padding_mask`` says they are not real.
    """

    n_q: int
    card: int
    segment: int  # frames
    caption: CaptionConfig | None
    train: bool
    chroma: bool = False

    def __call__(self, sample: dict[str, Any], crop_rng: np.random.Generator | None,
                 text_rng: random.Random | None) -> dict:
        meta = parse_json(sample)
        codes = load_npy(sample, "codes.npy")
        if codes.ndim != 2 or codes.shape[0] != self.n_q or codes.shape[1] == 0:
            raise SampleError("codes", f"codes have shape {codes.shape}, expected [{self.n_q}, T > 0]")
        if not np.issubdtype(codes.dtype, np.integer):
            raise SampleError("codes", f"codes have dtype {codes.dtype}, expected integers")
        if codes.min() < 0 or codes.max() >= self.card:
            raise SampleError("codes", f"codes outside [0, {self.card}): {codes.min()}..{codes.max()}")
        start = crop_start(codes.shape[1], self.segment, crop_rng if self.train else None)
        window, mask = pad_to(codes[:, start:start + self.segment].astype(np.int64), self.segment)
        out = {"codes": window, "padding_mask": mask,
               "text": select_caption(meta, self.caption, text_rng, self.train), "meta": meta,
               "key": sample["__key__"]}
        if self.chroma:
            chroma = load_npy(sample, "chroma.npy")
            if chroma.ndim != 2 or chroma.shape[0] != N_CHROMA or chroma.shape[1] != codes.shape[1]:
                raise SampleError("chroma", f"chroma has shape {chroma.shape}, expected [12, {codes.shape[1]}]")
            if not np.isfinite(chroma).all():
                raise SampleError("chroma", "chroma contains NaN or Inf")
            part, _ = pad_to(chroma[:, start:start + self.segment].astype(np.float32), self.segment)
            out["chroma"] = part
        return out

    def padding_example(self) -> dict:
        """Codes 0 with no real frame (validation padding, see :meth:`ShardStream.padding_batch`)."""
        out = {"codes": np.zeros((self.n_q, self.segment), dtype=np.int64),
               "padding_mask": np.zeros(self.segment, dtype=bool), "text": "", "meta": {}, "key": ""}
        if self.chroma:
            out["chroma"] = np.zeros((N_CHROMA, self.segment), dtype=np.float32)
        return out

    def collate(self, examples: list[dict]) -> dict[str, Any]:
        batch = {"codes": _stack([e["codes"] for e in examples]),
                 "padding_mask": _stack([e["padding_mask"] for e in examples]),
                 "text": [e["text"] for e in examples], "meta": [e["meta"] for e in examples],
                 "key": [e["key"] for e in examples]}
        if self.chroma:
            batch["chroma"] = _stack([e["chroma"] for e in examples])
        return batch
