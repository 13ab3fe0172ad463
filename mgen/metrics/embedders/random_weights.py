"""Weight files with random values in the published layouts, for CI and tests (no real weights exist there).

`write_random_weights` writes what torchvggish / hear21passt would load (same keys, shapes, dtype) and a sidecar
``<file>.random-weights.json`` recording that the values are random, with the file's sha256; the loaders then
label the weights ``random-weights`` so no report passes such numbers off as comparable. The values are seeded
and scaled so activations neither vanish nor explode (He-scaled matrices, LayerNorm gains near 1), which keeps the
embeddings of different audio different.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from mgen.atomic import atomic_path, write_text_atomic
from mgen.checksum import file_sha256
from mgen.metrics.embedders.passt import VARIANTS, PasstNet
from mgen.metrics.embedders.vggish import VGGishNet
from mgen.metrics.embedders.weights import sidecar_path

KINDS = ("vggish", "passt-10s", "passt-20s", "passt-30s")


def _layout(kind: str) -> dict[str, Tensor]:
    """Shapes of the published state dict of `kind` (meta tensors: nothing allocated)."""
    with torch.device("meta"):
        if kind == "vggish":
            return VGGishNet().state_dict()
        return PasstNet(VARIANTS[int(kind.removeprefix("passt-").removesuffix("s"))][0]).state_dict()


def random_state_dict(kind: str, seed: int = 0) -> dict[str, Tensor]:
    """Seeded random values in the published layout of `kind` (one of `KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f"random weights kind must be one of {KINDS}, got {kind!r}")
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, meta in _layout(kind).items():
        noise = torch.randn(meta.shape, generator=generator, dtype=torch.float32)
        if "token" in key or "pos_embed" in key:
            state[key] = 0.1 * noise
        elif meta.dim() >= 2:  # linear and conv weights: He scaling over the fan-in
            state[key] = noise * (2.0 / meta.shape[1:].numel()) ** 0.5
        elif key.endswith("weight"):  # LayerNorm gains
            state[key] = 1.0 + 0.1 * noise
        else:
            state[key] = 0.02 * noise
    return state


def write_random_weights(kind: str, path: str | Path, seed: int = 0) -> Path:
    """Write random `kind` weights ("vggish", "passt-10s", "passt-20s", "passt-30s") to `path` (a torch file),
    with the sidecar that makes loaders label them ``random-weights``. Same kind and seed give the same file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = random_state_dict(kind, seed)

    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        record = {"kind": kind, "seed": seed, "sha256": file_sha256(tmp),
                  "written_by": "mgen.metrics.embedders.write_random_weights",
                  "note": "random values in the published layout: metrics computed with them mean nothing"}
        # The sidecar goes first: once the weights are in place, they are already labelled.
        write_text_atomic(sidecar_path(path), json.dumps(record, indent=1) + "\n")
    return path
