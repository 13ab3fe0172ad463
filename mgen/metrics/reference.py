"""Reference statistics on disk: what FAD and KAD compare generated audio against, computed once.

A ``.npz`` file (no pickle) with ``mu`` [D] and ``cov`` [D, D] (float64), ``n`` (frames), optionally ``frames``
[n, D] (KAD needs them), and ``meta``, a JSON string: the embedder's `EmbedderInfo` (id, sample rate, dim,
protocol, weights file, sha256, label), mgen's FAD protocol version, whether the reference audio was real or
reconstructed (a codec's output: every report says which), and the number of clips. Loading checks all of it
against the metric's embedder and refuses statistics made by another model, protocol or weights file, naming both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mgen.atomic import write_atomic
from mgen.metrics.embedders.base import EmbedderInfo
from mgen.metrics.frechet import GaussianStats

# Bump when anything that changes reference statistics changes in mgen itself (not in an embedder, whose own
# `protocol` covers windows and normalisation): v1 = frames from `embed_audio` (channel mean, then libsoxr HQ
# resampling to the embedder's rate), clips with no frames contribute nothing, float64 sums, ddof 1.
FAD_PROTOCOL = "mgen-fad-v1"
FILE_FORMAT = "mgen-reference-stats"
FILE_VERSION = 1
SOURCES = ("real", "reconstructed")


def check_source(source: str) -> str:
    if source not in SOURCES:
        raise ValueError(f"reference source must be one of {SOURCES} (real audio, or audio a codec reconstructed), "
                         f"got {source!r}")
    return source


def _describe(info: EmbedderInfo) -> str:
    checksum = info.weights_sha256[:12] or f"no checksum, weights {info.weights or '?'}"
    return f"{info.id} (protocol {info.protocol}, {info.dim}-d at {info.sample_rate} Hz, sha256 {checksum})"


def same_embedder(a: EmbedderInfo, b: EmbedderInfo) -> bool:
    """Statistics are comparable only from the same model, protocol and weights (by checksum; by path when
    neither has one, e.g. an export directory)."""
    same = (a.id, a.protocol, a.dim, a.sample_rate, a.weights_sha256) == (
        b.id, b.protocol, b.dim, b.sample_rate, b.weights_sha256)
    return same and (bool(a.weights_sha256) or a.weights == b.weights)


@dataclass
class ReferenceStats:
    """Gaussian statistics (and optionally the frames) of a reference set, with their provenance."""

    stats: GaussianStats
    embedder: EmbedderInfo
    source: str = "real"
    frames: Tensor | None = None
    clips: int = 0
    fad_protocol: str = FAD_PROTOCOL
    origin: str = field(default="", compare=False)  # the file it was loaded from, for messages

    def __post_init__(self) -> None:
        check_source(self.source)
        if self.stats.dim != self.embedder.dim:
            raise ValueError(f"reference statistics are {self.stats.dim}-d but the embedder {self.embedder.id} "
                             f"gives {self.embedder.dim}-d frames")

    @staticmethod
    def from_frames(frames: Tensor, embedder: EmbedderInfo, source: str = "real", clips: int = 0,
                    keep_frames: bool = True) -> ReferenceStats:
        return ReferenceStats(GaussianStats.from_frames(frames), embedder, source,
                              frames.detach().cpu() if keep_frames else None, clips)

    def meta(self) -> dict[str, Any]:
        return {"format": FILE_FORMAT, "format_version": FILE_VERSION, "fad_protocol": self.fad_protocol,
                "embedder": self.embedder.to_dict(), "source": self.source, "clips": self.clips,
                "frames": self.stats.n}

    def save(self, path: str | Path) -> Path:
        """Write atomically to `path` (a ``.npz``; the name is kept as given)."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {
            "mu": self.stats.mu.cpu().numpy(), "cov": self.stats.cov.cpu().numpy(),
            "n": np.asarray(self.stats.n, dtype=np.int64), "meta": np.asarray(json.dumps(self.meta()))}
        if self.frames is not None:
            arrays["frames"] = self.frames.cpu().numpy()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda f: np.savez(f, **arrays))
        return path

    @staticmethod
    def load(path: str | Path) -> ReferenceStats:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: reference statistics not found (make them with "
                                    "`mgen evaluate --ref DIR -o OUT.npz`)")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: not a readable .npz file ({err})") from err
        missing = [key for key in ("mu", "cov", "n", "meta") if key not in arrays]
        if missing:
            raise ValueError(f"{path}: not mgen reference statistics (missing {', '.join(missing)})")
        try:
            meta = json.loads(str(arrays["meta"]))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: unreadable 'meta' ({err})") from err
        if meta.get("format") != FILE_FORMAT or meta.get("format_version") != FILE_VERSION:
            raise ValueError(f"{path}: unsupported reference format {meta.get('format')} "
                             f"v{meta.get('format_version')} (this mgen reads {FILE_FORMAT} v{FILE_VERSION})")
        try:
            embedder = EmbedderInfo(**meta["embedder"])
            source, protocol = meta["source"], meta["fad_protocol"]
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path}: incomplete or unknown provenance in 'meta' ({err})") from err
        stats = GaussianStats(torch.from_numpy(arrays["mu"]), torch.from_numpy(arrays["cov"]), int(arrays["n"]))
        frames = torch.from_numpy(arrays["frames"]) if "frames" in arrays else None
        return ReferenceStats(stats, embedder, source, frames, int(meta.get("clips", 0)), protocol, origin=str(path))

    def check_compatible(self, embedder: EmbedderInfo) -> None:
        """Refuse statistics from another embedder, weights file or protocol version, naming both sides."""
        where = self.origin or "reference statistics"
        if self.fad_protocol != FAD_PROTOCOL:
            raise ValueError(f"{where}: made with FAD protocol {self.fad_protocol}, this mgen uses {FAD_PROTOCOL}; "
                             "recompute them")
        if not same_embedder(self.embedder, embedder):
            raise ValueError(f"{where}: made with embedder {_describe(self.embedder)}, but this metric uses "
                             f"{_describe(embedder)}; recompute them with this embedder")
