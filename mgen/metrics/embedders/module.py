"""User-named embedders: ``module:pkg.mod:Class`` + a weights path, so MERT, EnCodec or any ``nn.Module`` plugs in.

The class comes from an installed Python module (importing it runs that module's code, as any import does; the
weights never run code). It is built as ``Class(**kwargs)`` (no arguments by default) and its weights are loaded
strictly from a file (``.safetensors``, or a torch file read with ``weights_only=True``). A directory of weights is
given to ``Class.from_pretrained(directory, local_files_only=True)`` when the class has one (transformers style);
a Hugging Face folder whose ``config.json`` has ``auto_map`` needs ``trust_remote_code`` and is refused.

The class either subclasses `AudioEmbedder` (sets ``info``, implements ``embed``), or its objects are wrapped by
`ModuleEmbedder`, which calls ``module(wav[None])`` on mono audio and expects ``[1, frames, dim]``, ``[frames,
dim]`` or ``[1, dim]`` (one frame) back. The wrapper needs the sample rate and the dimension: from the options
``sample_rate=`` / ``dim=`` or from the module's attributes of the same names (``embedding_dim`` works too).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mgen.checksum import file_sha256
from mgen.errors import first_line
from mgen.metrics.embedders.base import UNVERIFIED, AudioEmbedder, EmbedderInfo
from mgen.metrics.embedders.weights import directory_sha256, load_state_dict_file, weights_label

PREFIX = "module:"
PROTOCOL = "module-v1"


class ModuleEmbedder(AudioEmbedder):
    """Thin adapter: any ``nn.Module`` whose forward maps mono audio ``[1, L]`` to ``[1, frames, dim]``."""

    def __init__(self, module: nn.Module, info: EmbedderInfo) -> None:
        super().__init__()
        self.module = module.eval()
        self.info = info

    @torch.no_grad()
    def embed(self, wav: Tensor) -> Tensor:
        if wav.dim() != 1:
            raise ValueError(f"{self.info.id} embeds mono audio [L], got shape {tuple(wav.shape)}")
        param = next(self.module.parameters(), None)
        if param is not None:
            wav = wav.to(device=param.device, dtype=param.dtype)
        out = self.module(wav[None])
        if not isinstance(out, Tensor):
            raise ValueError(f"{self.info.id}: forward returned a {type(out).__name__}, not a tensor; wrap the model "
                             f"in a class whose forward returns [1, frames, dim]")
        if out.dim() == 3 and out.shape[0] == 1:
            out = out[0]
        if out.dim() != 2 or out.shape[-1] != self.info.dim:
            raise ValueError(f"{self.info.id}: forward returned shape {tuple(out.shape)}, expected [1, frames, "
                             f"{self.info.dim}] or [frames, {self.info.dim}]")
        return out.float()


def parse_name(name: str) -> tuple[str, str]:
    """``module:pkg.mod:Class`` -> (``pkg.mod``, ``Class``)."""
    parts = name[len(PREFIX):].split(":") if name.startswith(PREFIX) else []
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"a user embedder is named module:<python module>:<class>, e.g. module:mypkg.mert:Embedder; "
                         f"got {name!r}")
    return parts[0], parts[1]


def _import_class(module_name: str, class_name: str) -> type:
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import {module_name!r} for the embedder module:{module_name}:{class_name} "
                         f"(is it installed?): {first_line(err)}") from err
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise ValueError(f"{module_name}.{class_name} is not an nn.Module class")
    return cls


def refuse_remote_code(directory: Path) -> None:
    """A Hugging Face folder whose config needs ``trust_remote_code`` (an ``auto_map``) is refused."""
    config = directory / "config.json"
    if not config.is_file():
        return
    try:
        data = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{config}: not valid JSON ({err})") from err
    if isinstance(data, dict) and "auto_map" in data:
        raise ValueError(f"{directory}: its config.json has auto_map, i.e. the model's code comes with the weights "
                         f"and needs trust_remote_code, which mgen never enables; install that code as a Python "
                         f"module and name it as module:<module>:<class>")


def _build(cls: type, weights: Path | None, kwargs: dict[str, Any], name: str) -> nn.Module:
    if weights is not None and weights.is_dir():
        refuse_remote_code(weights)
        if not hasattr(cls, "from_pretrained"):
            raise ValueError(f"{weights}: a directory of weights needs a class with from_pretrained; {name} has none "
                             f"(pass a .safetensors or .pt state dict file instead)")
        return cls.from_pretrained(str(weights), local_files_only=True, **kwargs)
    try:
        module = cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"cannot build {name} with arguments {sorted(kwargs)}: {first_line(err)}") from err
    if weights is not None:
        state = load_state_dict_file(weights, name)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{weights}: does not fit {name}: {first_line(err)}") from err
    return module


def load_module_embedder(name: str, weights: str | Path | None = None, kwargs: dict[str, Any] | None = None,
                         sample_rate: int | None = None, dim: int | None = None) -> AudioEmbedder:
    """The embedder ``module:pkg.mod:Class`` built with `kwargs`, with `weights` (a file or a directory) loaded;
    `sample_rate` / `dim` are needed only when the class does not follow the `AudioEmbedder` contract itself."""
    module_name, class_name = parse_name(name)
    cls = _import_class(module_name, class_name)
    path = None if weights is None else Path(weights).expanduser()
    if path is not None and not path.exists():
        raise FileNotFoundError(f"weights for {name} not found: {path}")
    module = _build(cls, path, dict(kwargs or {}), name)
    if path is None:
        sha, label = "", UNVERIFIED
    else:
        sha = directory_sha256(path) if path.is_dir() else file_sha256(path)
        label = weights_label(path, sha)
    # The id names the class and its arguments: two configurations of one class never share statistics.
    ident = name + ("(" + ", ".join(f"{k}={v!r}" for k, v in sorted((kwargs or {}).items())) + ")" if kwargs else "")
    where = {"id": ident, "weights": "" if path is None else str(path), "weights_sha256": sha, "weights_label": label}
    if isinstance(module, AudioEmbedder):
        module.info = dataclasses.replace(module.info, **where)
        return module
    sample_rate = sample_rate or getattr(module, "sample_rate", None)
    dim = dim or getattr(module, "dim", None) or getattr(module, "embedding_dim", None)
    if not isinstance(sample_rate, int) or not isinstance(dim, int):
        raise ValueError(f"{name} is not an AudioEmbedder (info + embed); to wrap its forward, "
                         f"give sample_rate= and dim= (got sample_rate={sample_rate!r}, dim={dim!r})")
    info = EmbedderInfo(sample_rate=sample_rate, dim=dim, protocol=PROTOCOL, **where)
    return ModuleEmbedder(module, info)
