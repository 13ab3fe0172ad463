"""Where embedder weights come from and how far they can be trusted.

Weights load only from a path the user names or from the torch hub cache (``$TORCH_HOME/hub/checkpoints``, where
torch.hub would have put the published file); nothing is ever downloaded. A missing file is an error naming the
file expected and the URL of the published one, as text. Files are read with ``torch.load(weights_only=True)`` or
safetensors, so no pickled code runs.

The label a report prints (`EmbedderInfo.weights_label`) is decided here from the file's sha256:
``published`` when it matches a checksum the source publishes, ``random-weights`` when mgen's own random-weights
writer made the file (a ``<file>.random-weights.json`` sidecar recording the same sha256), else ``unverified``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from mgen.checksum import file_sha256
from mgen.errors import first_line
from mgen.metrics.embedders.base import PUBLISHED, RANDOM_WEIGHTS, UNVERIFIED

RANDOM_SIDECAR_SUFFIX = ".random-weights.json"


def hub_checkpoint(filename: str) -> Path:
    """Where torch.hub keeps a downloaded `filename` (honours ``$TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def resolve_weights(weights: str | Path | None, filename: str, url: str, what: str) -> Path:
    """`weights` when given (it must exist), else the published `filename` in the torch hub cache."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{what} weights not found: {path} (the published file is {filename}, from {url})")
        return path
    path = hub_checkpoint(filename)
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} weights not found: expected {path} (or pass a weights path). mgen never downloads: fetch the "
            f"published {filename} from {url} and put it there")
    return path


def sidecar_path(path: str | Path) -> Path:
    return Path(str(path) + RANDOM_SIDECAR_SUFFIX)


def weights_label(path: str | Path, sha256: str, published_sha256_prefix: str | None = None) -> str:
    """`published` | `random-weights` | `unverified` for the file at `path` whose digest is `sha256`.

    `published_sha256_prefix` is the checksum the source publishes (torch hub file names carry the first 8+ hex
    digits of the sha256, e.g. ``vggish-10086976.pth``); None when the source publishes none.
    """
    if published_sha256_prefix and sha256.startswith(published_sha256_prefix):
        return PUBLISHED
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        try:
            record = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError):
            record = {}
        if isinstance(record, dict) and record.get("sha256") == sha256:
            return RANDOM_WEIGHTS
    return UNVERIFIED


def directory_sha256(directory: str | Path) -> str:
    """One digest for a directory of weights: sha256 over the sorted (relative path, file sha256) of its files."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(directory).as_posix()}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def load_state_dict_file(path: str | Path, what: str) -> dict[str, Tensor]:
    """A flat tensor state dict from a safetensors file or a torch file read with ``weights_only=True``; a
    ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory; {what} weights are one state dict file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated files, pickles that need code, not a weights file at all
        raise ValueError(f"{path}: cannot read {what} weights with weights_only=True ({first_line(err)})") from err
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a {what} state dict (expected a mapping of parameter names to tensors)")
    return dict(state)


def check_state_dict(state: Mapping[str, Tensor], expected: Mapping[str, Tensor], path: str | Path,
                     what: str) -> None:
    """Strict layout check: the same keys with the same shapes, or a one-line error naming the first differences."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(f"{path}: not the {what} layout: missing {missing[:4]} ({len(missing)} in all), "
                         f"unexpected {unexpected[:4]} ({len(unexpected)} in all)")
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise ValueError(f"{path}: {what} weight {key} has shape {tuple(state[key].shape)}, "
                             f"expected {tuple(ref.shape)}")
