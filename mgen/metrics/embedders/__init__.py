"""Audio embedders for the metrics: each turns mono audio at its own sample rate into frames of embeddings and
says which weights made them (`EmbedderInfo`), so every report can name its model and checksum.

`load_embedder(name, weights, **options)` is the one entry point (see `registry` for the names);
`write_random_weights(kind, path, seed)` writes random weights in the published layouts for CI and tests.
"""

from mgen.metrics.embedders.base import AudioEmbedder, EmbedderInfo, embed_audio, file_sha256
from mgen.metrics.embedders.random_weights import write_random_weights
from mgen.metrics.embedders.registry import load_embedder

__all__ = ["AudioEmbedder", "EmbedderInfo", "embed_audio", "file_sha256", "load_embedder", "write_random_weights"]
