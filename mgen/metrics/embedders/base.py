"""The contract between embedders and metrics.

An embedder is an `nn.Module` with an `info` (what a report must say about it) and `embed(wav)`: mono float
audio ``[L]`` at ``info.sample_rate`` -> embeddings ``[frames, info.dim]`` (float32; zero frames for audio too
short for one window). Metrics never resample or mix channels themselves: `embed_audio` does that once, the same
way for every embedder (channel mean, then libsoxr HQ), so protocol differences live in the embedders alone.

Weights come only from explicit local paths; `file_sha256` is what the loaders print and reports record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mgen.audio import resample_tensor
from mgen.checksum import file_sha256  # noqa: F401 - part of the embedder API (loaders record it)

# How trustworthy the weights are, as reports print it.
PUBLISHED = "published"          # the sha256 matches the published file
UNVERIFIED = "unverified"        # a user-supplied file whose checksum is not published (or not known to mgen)
RANDOM_WEIGHTS = "random-weights"  # random values in the published layout (tests, CI): numbers mean nothing
OWN_MODEL = "mgen-codec"         # mgen's own codec encoder: always available, not comparable to published FADs


@dataclass(frozen=True)
class EmbedderInfo:
    """What identifies the embeddings: statistics from two different infos are never compared."""

    id: str                 # "vggish", "passt-20s", "clap-music", "codec-encoder", "module:pkg.mod:Class", ...
    sample_rate: int        # rate `embed` expects
    dim: int                # embedding size
    protocol: str           # versioned description of windows / normalisation, e.g. "google-fad-v1"
    weights: str = ""       # the weights file (or export directory) it was loaded from
    weights_sha256: str = ""  # sha256 of that file ("" for a directory: see `weights`)
    weights_label: str = UNVERIFIED

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AudioEmbedder(nn.Module):
    """Base class: subclasses set `self.info` and implement `embed`."""

    info: EmbedderInfo
    # The shortest input (samples at info.sample_rate) that gives at least one frame, so metrics can say how long
    # audio must be instead of failing on an empty statistic.
    min_samples: int = 1

    def embed(self, wav: Tensor) -> Tensor:
        """Mono audio ``[L]`` at ``info.sample_rate`` -> ``[frames, dim]``."""
        raise NotImplementedError


@torch.no_grad()
def embed_audio(embedder: AudioEmbedder, wav: Tensor, sample_rate: int) -> Tensor:
    """Audio ``[C, L]`` or ``[L]`` at `sample_rate` -> ``[frames, dim]``: channel mean, resampling to the
    embedder's rate, then `embedder.embed`."""
    if wav.dim() == 2:
        wav = wav.float().mean(0)
    elif wav.dim() != 1:
        raise ValueError(f"audio must be [C, L] or [L], got shape {tuple(wav.shape)}")
    wav = resample_tensor(wav.float(), int(sample_rate), embedder.info.sample_rate)
    return embedder.embed(wav).float()
