"""The codec's one checkpoint format, and loading from training checkpoints.

An exported codec is a directory with `config.json` (CodecConfig) and `model.safetensors` (weights):
loadable with plain torch, no Lightning, no pickle. Lightning checkpoints of `CodecModule` (`.ckpt`) load
too, with `torch.load(weights_only=True)`, so nothing in a downloaded file is executed; they give the EMA
weights (`codec_ema.*`) when the run kept an EMA, as validation and `export_codec` do.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mgen.atomic import atomic_directory
from mgen.codec.model import Codec, CodecConfig
from mgen.errors import first_line
from mgen.export_dir import CONFIG_NAME, WEIGHTS_NAME, read_export_config

KIND = "mgen-codec"


def save_codec(codec: Codec, directory: str | Path) -> Path:
    """Write `codec` to `directory` atomically (a temporary sibling directory renamed into place)."""
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps({"kind": KIND, "codec": codec.config.to_dict()}, indent=2))
        state = {k: v.detach().cpu().contiguous() for k, v in codec.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME))
    return directory


def _from_lightning(path: Path) -> Codec:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, or one that needs pickled code
        raise ValueError(f"{path}: cannot be read as a checkpoint with weights_only=True ({first_line(err)})") from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a codec checkpoint (holds a {type(ckpt).__name__}, not a training checkpoint)")
    hparams = ckpt.get("hyper_parameters") or {}
    state_dict = ckpt.get("state_dict")
    if not isinstance(hparams, dict) or "codec" not in hparams or not isinstance(state_dict, dict):
        raise ValueError(f"{path}: not a codec training checkpoint (no codec hyper-parameters); "
                         f"is it an LM checkpoint or a plain state dict?")
    try:
        codec = Codec(CodecConfig.from_dict(hparams["codec"]))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: bad codec hyper-parameters: {err}") from err
    # The EMA weights are what a run validates on and exports; a run without EMA (ema.decay 0) has only the live ones.
    prefix = "codec_ema." if any(k.startswith("codec_ema.") for k in state_dict) else "codec."
    state = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    try:
        codec.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: codec weights do not match its config: {first_line(err)}") from err
    return codec


def load_codec(path: str | Path, device: str | torch.device = "cpu") -> Codec:
    """A codec in eval mode from an export directory or a CodecModule `.ckpt`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"codec checkpoint not found: {path}")
    if path.is_dir():
        config_path = path / CONFIG_NAME
        if not config_path.is_file() or not (path / WEIGHTS_NAME).is_file():
            raise ValueError(f"{path}: an exported codec needs {CONFIG_NAME} and {WEIGHTS_NAME}")
        meta, kind = read_export_config(path)
        if kind != KIND:
            raise ValueError(f"{path}: {CONFIG_NAME} describes a {kind!r} model, not a codec")
        codec = Codec(CodecConfig.from_dict(meta["codec"]))
        try:
            codec.load_state_dict(load_file(str(path / WEIGHTS_NAME)))
        except Exception as err:  # safetensors errors (truncated file) and shape mismatches
            raise ValueError(f"{path}: cannot load {WEIGHTS_NAME}: {first_line(err)}") from err
    else:
        codec = _from_lightning(path)
    return codec.to(device).eval()
