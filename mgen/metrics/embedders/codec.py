"""mgen's own codec encoder as an embedder: always available offline, never comparable to published numbers.

Frames are the encoder's continuous latent (before quantisation), ``[ceil(L / hop), dimension]`` at the codec's
frame rate. Any codec loads: an export directory, a CodecModule ``.ckpt``, or an LM export (its ``codec/``). The
id carries the weights' checksum (``codec-encoder-<sha256[:12]>``), so statistics from two codecs never mix, and
the label is always ``mgen-codec``: reports print it so nobody reads these FADs as VGGish FADs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from mgen.checksum import file_sha256
from mgen.codec.checkpoint import KIND as CODEC_KIND
from mgen.codec.checkpoint import load_codec
from mgen.codec.model import Codec
from mgen.export_dir import CONFIG_NAME, WEIGHTS_NAME, read_export_config
from mgen.metrics.embedders.base import OWN_MODEL, AudioEmbedder, EmbedderInfo

PROTOCOL = "codec-latent-v1"


class CodecEncoderEmbedder(AudioEmbedder):
    """Mono audio ``[L]`` at the codec's rate -> pre-quantisation latent frames ``[ceil(L / hop), dim]``."""

    def __init__(self, codec: Codec, info: EmbedderInfo) -> None:
        super().__init__()
        self.codec = codec.eval()
        self.info = info

    @torch.no_grad()
    def embed(self, wav: Tensor) -> Tensor:
        if wav.dim() != 1:
            raise ValueError(f"the codec embedder takes mono audio [L], got shape {tuple(wav.shape)}")
        if not bool(torch.isfinite(wav).all()):
            raise ValueError("audio contains NaN or infinite samples")
        weight = next(self.codec.encoder.parameters())
        latent = self.codec.encoder(wav.to(device=weight.device, dtype=weight.dtype)[None, None])  # [1, D, T]
        return latent[0].transpose(0, 1).float()


def _codec_location(path: Path) -> Path:
    """The codec inside `path`: itself, or the ``codec/`` of an LM export."""
    if path.is_dir() and (path / "codec" / CONFIG_NAME).is_file():
        kind = read_export_config(path)[1] if (path / CONFIG_NAME).is_file() else None
        if kind != CODEC_KIND:
            return path / "codec"
    return path


def load_codec_embedder(weights: str | Path | None) -> CodecEncoderEmbedder:
    """The encoder of the codec at `weights` (export directory, CodecModule ``.ckpt``, or an LM export)."""
    if weights is None:
        raise ValueError("the codec embedder needs weights: a codec export directory, a CodecModule .ckpt, "
                         "or an LM export (its codec/ is used)")
    path = _codec_location(Path(weights).expanduser())
    codec = load_codec(path)
    weights_file = path / WEIGHTS_NAME if path.is_dir() else path
    sha = file_sha256(weights_file)
    info = EmbedderInfo(id=f"codec-encoder-{sha[:12]}", sample_rate=codec.sample_rate,
                        dim=codec.config.seanet.dimension, protocol=PROTOCOL, weights=str(weights_file),
                        weights_sha256=sha, weights_label=OWN_MODEL)
    return CodecEncoderEmbedder(codec, info)
