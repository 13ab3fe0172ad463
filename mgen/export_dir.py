"""The directory format of every mgen model (codec and LM): `config.json` naming its `kind`, `model.safetensors`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def read_export_config(path: str | Path) -> tuple[dict[str, Any], str]:
    """(config, kind) of the export directory `path`; clear errors for a missing or unreadable config."""
    config_path = Path(path) / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{path}: not an mgen export (no {CONFIG_NAME})")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: not an mgen model config (a JSON {type(config).__name__})")
    return config, str(config.get("kind", "unknown"))
