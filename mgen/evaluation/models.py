"""The models an evaluation runs, named the same way on the command line and in recipes.

- FAD/KAD embedders: ``NAME[=WEIGHTS]`` (``vggish``, ``passt``, ``passt-10s|20s|30s``, ``clap``, ``codec``,
  ``module:pkg.mod:Class``); several at once, each giving its own ``fad_<label>`` / ``kad_<label>``. Without
  weights an embedder loads its published file from the torch hub cache (``$TORCH_HOME/hub/checkpoints``);
  ``codec`` without weights is the evaluated model's own codec encoder (always available offline, labelled
  ``mgen-codec``). The label is the embedder's id (``vggish``, ``passt-20s``, ``clap``), ``codec-encoder`` for
  any codec (its checksum is in the report), ``module-<pkg.mod>-<Class>`` for user modules.
- The KL classifier: PaSST-20s (audiocraft's KL window), published file by default.
- The CLAP model of the CLAP score: the music checkpoint, published file name in the torch hub cache by default.

Nothing is downloaded: a missing file is an error naming it and where the published one comes from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mgen.metrics.embedders import load_embedder
from mgen.metrics.embedders.base import AudioEmbedder, EmbedderInfo
from mgen.metrics.embedders.weights import resolve_weights

DEFAULT_FAD_EMBEDDER = "vggish"
KL_CLASSIFIER = "passt-20s"
CLAP_SOURCE = "https://huggingface.co/lukewys/laion_clap"


@dataclass(frozen=True)
class EmbedderSpec:
    """An embedder as named by the user: ``name`` and optional ``weights`` (a path) and loader options."""

    name: str
    weights: str | None = None
    options: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def parse(text: str | dict[str, Any] | EmbedderSpec) -> EmbedderSpec:
        """``"vggish"``, ``"vggish=/w/vggish.pth"``, or a mapping ``{name, weights, options}`` (recipes)."""
        if isinstance(text, EmbedderSpec):
            return text
        if isinstance(text, dict):
            unknown = set(text) - {"name", "weights", "options"}
            if unknown or not isinstance(text.get("name"), str):
                raise ValueError(f"an embedder is NAME[=WEIGHTS] or {{name, weights, options}}, got {text}")
            options = text.get("options") or {}
            if not isinstance(options, dict):
                raise ValueError(f"embedder {text['name']}: options must be a mapping, got {options!r}")
            weights = text.get("weights")
            return EmbedderSpec(text["name"], None if weights is None else str(weights), tuple(sorted(options.items())))
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"an embedder is NAME[=WEIGHTS], got {text!r}")
        name, _, weights = text.strip().partition("=")
        return EmbedderSpec(name.strip(), weights.strip() or None)

    def load(self, device: torch.device | str, model_export: str | Path | None = None) -> AudioEmbedder:
        weights = self.weights
        if self.name == "codec" and weights is None:
            if model_export is None:
                raise ValueError("the codec embedder needs a codec: codec=EXPORT (a codec export, a CodecModule .ckpt "
                                 "or an LM export), or evaluate a model with --model")
            weights = str(model_export)
        return load_embedder(self.name, weights, device=device, **dict(self.options))


def embedder_label(info: EmbedderInfo) -> str:
    """The short name in metric keys (``fad_<label>``): the id, without a codec's checksum suffix, made safe for
    logger keys."""
    ident = "codec-encoder" if info.id.startswith("codec-encoder") else info.id
    return re.sub(r"[^A-Za-z0-9._-]+", "-", ident).strip("-")


def load_embedders(specs: list[EmbedderSpec], device: torch.device | str,
                   model_export: str | Path | None = None) -> dict[str, AudioEmbedder]:
    """Label -> loaded embedder; two embedders with one label (e.g. two codecs) are refused."""
    out: dict[str, AudioEmbedder] = {}
    for spec in specs:
        embedder = spec.load(device, model_export)
        label = embedder_label(embedder.info)
        if label in out:
            raise ValueError(f"two embedders are labelled {label!r} ({out[label].info.weights} and "
                             f"{embedder.info.weights}): evaluate them in separate runs")
        out[label] = embedder
    return out


def load_kl_classifier(weights: str | Path | None, device: torch.device | str) -> AudioEmbedder:
    """PaSST for the KL metric: a 20 s model unless the weights file holds another variant."""
    return load_embedder("passt" if weights is not None else KL_CLASSIFIER, weights, device=device)


def load_clap(weights: str | Path | None, device: torch.device | str) -> AudioEmbedder:
    """The CLAP model of the CLAP score: `weights` (a laion-clap checkpoint or a transformers CLAP folder), or
    the published music checkpoint in the torch hub cache."""
    from mgen.metrics.embedders.clap import PUBLISHED_FILE  # transformers, only when asked

    path = resolve_weights(weights, PUBLISHED_FILE, CLAP_SOURCE, "CLAP")
    return load_embedder("clap", path, device=device)


def describe(info: EmbedderInfo) -> dict[str, Any]:
    """What a report records about a model: its identity, weights, checksum and how far to trust them."""
    return {"id": info.id, "protocol": info.protocol, "sample_rate": info.sample_rate, "dim": info.dim,
            "weights": info.weights, "sha256": info.weights_sha256, "label": info.weights_label}
