"""The LM export format: one writer for `mgen fit` and `mgen export`, and one reader for what can be exported.

An export is `config.json` (kind "mgen-lm", LM / conditioning / training settings) + `model.safetensors` (the
`lm.*` and `conditioner.*` weights) + `codec/` (the codec export) + `text_encoder/` when the text encoder is
not the packaged MiniLM: a frozen encoder is not in the state dict, so without this copy the export would only
load where the original encoder folder (or HF cache) exists. `mgen.musicgen.MusicGen.load` reads it.

Sources are a run directory (its `checkpoints/last.ckpt`), an `LMModule` checkpoint or an export. Lightning
checkpoints load with `torch.load(weights_only=True)`: nothing in them is executed. Their "state_dict" is what
gets exported; with `EMAWeightAveraging` it already holds the averaged weights. No Lightning import is needed.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from mgen.atomic import atomic_directory
from mgen.codec.checkpoint import KIND as CODEC_KIND
from mgen.codec.checkpoint import load_codec, save_codec
from mgen.codec.model import Codec
from mgen.errors import first_line
from mgen.export_dir import CONFIG_NAME, WEIGHTS_NAME, read_export_config
from mgen.conditioning import TEXT, ConditionProvider, TextConditioner
from mgen.conditioning.text import packaged_minilm_path, resolve_encoder
from mgen.interop.transformers_musicgen import T5_FAMILY
from mgen.musicgen import EXPORT_KIND, MusicGen

CODEC_DIR = "codec"
TEXT_ENCODER_DIR = "text_encoder"
DEFAULT_CKPT = "last.ckpt"


def _is_packaged_minilm(name: str) -> bool:
    return Path(resolve_encoder(name)).resolve() == packaged_minilm_path().resolve()


def bundle_text_encoder(text: TextConditioner, directory: Path) -> bool:
    """Save the frozen encoder + tokenizer under `directory`; False (nothing written) when there is no need
    (the packaged MiniLM ships with mgen) or no faithful way (an encoder cut out of a non-T5 encoder-decoder
    model would reload as the whole model with its weights misplaced)."""
    if _is_packaged_minilm(text.encoder_name):
        return False
    config = text.encoder.config
    if getattr(config, "is_encoder_decoder", False) and config.model_type not in T5_FAMILY:
        warnings.warn(f"the text encoder {text.encoder_name!r} is the encoder of a {config.model_type!r} "
                      f"encoder-decoder model, which cannot be saved on its own: the export refers to it by "
                      f"name and loads only where it exists", stacklevel=2)
        return False
    text.encoder.save_pretrained(directory)
    text.tokenizer.save_pretrained(directory)
    return True


def write_lm_export(target: str | Path, config: Mapping[str, Any], lm: nn.Module, conditioner: ConditionProvider,
                    codec: Codec | None) -> Path:
    """Write the export atomically: readers see the previous `target` or the complete new one.

    `config` holds `lm`, `conditioning`, `train`, `train_segment_seconds` (an LMModule's hparams); its
    `codec_path` is dropped (the codec travels as `codec/`). `codec` None writes no `codec/`."""
    target = Path(target)
    config = copy.deepcopy({k: v for k, v in config.items() if k not in ("kind", "codec_path")})
    config = {"kind": EXPORT_KIND, **config}
    state = {f"lm.{k}": v for k, v in lm.state_dict().items()}
    state.update({f"conditioner.{k}": v for k, v in conditioner.state_dict().items()})
    with atomic_directory(target) as tmp:
        text = conditioner.conditioners[TEXT] if TEXT in conditioner.conditioners else None
        if text is not None and bundle_text_encoder(text, tmp / TEXT_ENCODER_DIR):
            config["conditioning"] = {**config.get("conditioning", {}), "text_encoder": TEXT_ENCODER_DIR}
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp / WEIGHTS_NAME))
        if codec is not None:
            save_codec(codec, tmp / CODEC_DIR)
    return target


def _read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(hyper-parameters, state dict) of an LMModule checkpoint, with a clear error for anything else."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated / corrupt files, or files that need pickled code
        raise ValueError(f"{path}: cannot be read as a checkpoint with weights_only=True (corrupt, truncated or "
                         f"not a torch checkpoint: {first_line(err)})") from err
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or not isinstance(state, dict):
        raise ValueError(f"{path}: not a Lightning training checkpoint (no hyper_parameters / state_dict)")
    if "lm" not in hparams:
        what = "a codec training checkpoint" if "codec" in hparams else "not an LM training checkpoint"
        raise ValueError(f"{path}: {what}, not an LMModule checkpoint (no 'lm' hyper-parameters)")
    return hparams, state


def _codec_for_checkpoint(path: Path, hparams: Mapping[str, Any], codec: str | Path | None) -> Codec:
    if codec is not None:
        return load_codec(codec)
    recorded = hparams.get("codec_path")
    if not recorded:
        raise ValueError(f"{path}: the checkpoint records no codec; pass --codec PATH (a codec export or "
                         f"CodecModule .ckpt)")
    if not Path(recorded).exists():
        raise FileNotFoundError(f"{path}: the codec this LM was trained with, {recorded}, no longer exists; pass "
                                f"--codec PATH (a codec export or CodecModule .ckpt)")
    return load_codec(recorded)


def _from_export(path: Path, codec: str | Path | None) -> tuple[MusicGen, dict[str, Any]]:
    config, kind = read_export_config(path)
    if kind == CODEC_KIND:
        raise ValueError(f"{path}: is a codec export, not an LM: mgen export converts LM runs, checkpoints and "
                         f"exports")
    if kind != EXPORT_KIND:
        raise ValueError(f"{path}: {CONFIG_NAME} describes a {kind!r} model, not an mgen LM export")
    if codec is None and not (path / CODEC_DIR).is_dir():
        raise FileNotFoundError(f"{path}: the export has no {CODEC_DIR}/ folder; pass --codec PATH (a codec export "
                                f"or CodecModule .ckpt)")
    return MusicGen.load(path, codec=codec), config


def load_trained_lm(source: str | Path, ckpt_name: str = DEFAULT_CKPT,
                    codec: str | Path | None = None) -> tuple[MusicGen, dict[str, Any]]:
    """(model, export config) from a run directory, an LMModule `.ckpt` or an export directory.

    `codec` overrides the codec the checkpoint records (or the export's `codec/`)."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"not found: {path}")
    if path.is_dir():
        if (path / CONFIG_NAME).is_file():
            return _from_export(path, codec)
        ckpt = path / "checkpoints" / ckpt_name
        if not ckpt.is_file():
            raise FileNotFoundError(f"{path}: neither an mgen export (no {CONFIG_NAME}) nor a run directory with "
                                    f"checkpoints/{ckpt_name}")
        path = ckpt
    hparams, state = _read_checkpoint(path)
    model_codec = _codec_for_checkpoint(path, hparams, codec)
    config = {"kind": EXPORT_KIND, **{k: v for k, v in hparams.items() if k != "codec_path"}}
    return MusicGen.from_config(config, state, model_codec, where=path), config
