"""One loader for every embedder, by name: what `mgen evaluate`, recipes and the metrics call.

==========================  ================================================  =====================================
name                        weights                                           options
==========================  ================================================  =====================================
``vggish``                  torchvggish file; default ``vggish-10086976.pth``  ``normalization`` ("google" |
                            in the torch hub cache                            "audiocraft"), ``batch_size``
``passt``                   hear21passt ``net`` file (variant read from it);  ``hop_seconds``, ``batch_size``
``passt-10s|20s|30s``       default: that variant's published file in the     (``passt`` alone defaults to 20 s,
                            torch hub cache                                   audiocraft's KL window)
``codec``                   codec export, CodecModule ``.ckpt`` or LM export  none
``clap``                    laion-clap checkpoint or transformers CLAP folder  see `mgen.metrics.embedders.clap`
``module:pkg.mod:Class``    a state dict file, or a folder for                ``kwargs`` (dict), ``sample_rate``,
                            ``from_pretrained``                               ``dim``
==========================  ================================================  =====================================

Nothing is downloaded. The loader prints what it loaded, with its sha256 and label, for logs and reports.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mgen.metrics.embedders.base import AudioEmbedder
from mgen.metrics.embedders.codec import load_codec_embedder
from mgen.metrics.embedders.module import PREFIX as MODULE_PREFIX
from mgen.metrics.embedders.module import load_module_embedder
from mgen.metrics.embedders.passt import load_passt
from mgen.metrics.embedders.vggish import load_vggish

NAMES = ("vggish", "passt", "passt-10s", "passt-20s", "passt-30s", "codec", "clap", "module:<pkg.mod>:<Class>")


def _load_clap(weights: str | Path | None, **options: Any) -> AudioEmbedder:
    if weights is None:
        raise ValueError("the clap embedder needs weights: a laion-clap checkpoint file (the paper's is "
                         "music_audioset_epoch_15_esc_90.14.pt) or a transformers CLAP folder")
    from mgen.metrics.embedders.clap import load_clap_embedder  # optional, heavy dependencies

    _check_options("clap", load_clap_embedder, {}, options)
    return load_clap_embedder(weights, **options)


def _loader(name: str) -> tuple[Callable[..., AudioEmbedder], dict[str, Any]]:
    """The loader function for `name` and the arguments the name itself fixes."""
    if name == "vggish":
        return load_vggish, {}
    if name == "passt":
        return load_passt, {}
    if name in ("passt-10s", "passt-20s", "passt-30s"):
        return load_passt, {"variant": int(name[len("passt-"):-1])}
    if name == "codec":
        return load_codec_embedder, {}
    if name == "clap":
        return _load_clap, {}
    if name.startswith(MODULE_PREFIX):
        return load_module_embedder, {"name": name}
    raise ValueError(f"unknown embedder {name!r}; known: {', '.join(NAMES)}")


def _check_options(name: str, loader: Callable[..., Any], fixed: dict[str, Any], options: dict[str, Any]) -> None:
    params = inspect.signature(loader).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = sorted(set(params) - {"weights"} - set(fixed))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for the {name} embedder; it takes {allowed or 'none'}")


def load_embedder(name: str, weights: str | Path | None = None, *, device: torch.device | str = "cpu",
                  **options: Any) -> AudioEmbedder:
    """The embedder `name` with `weights` (a local path; None: the published file in the torch hub cache where
    the name has one), in eval mode on `device`. Prints its id, weights file, sha256 and label."""
    loader, fixed = _loader(name)
    _check_options(name, loader, fixed, options)
    embedder = loader(weights=weights, **fixed, **options).to(device).eval()
    info = embedder.info
    print(f"[embedders] {info.id}: {info.weights or '(no weights file)'} sha256 {info.weights_sha256 or '-'} "
          f"({info.weights_label})", file=sys.stderr, flush=True)
    return embedder
