"""Training-time input: WebDataset shard streams and the LightningDataModules that feed codec and LM training.

Names are imported lazily so light users (``mgen.data.chroma`` in data preparation) do not pay for Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AudioDataModule": "mgen.data.datamodule", "ShardDataModule": "mgen.data.datamodule",
    "TokenDataModule": "mgen.data.datamodule", "lm_datamodule": "mgen.data.datamodule",
    "BatchPlan": "mgen.data.batching", "derive_batch": "mgen.data.batching", "batch_plan": "mgen.data.batching",
    "CaptionConfig": "mgen.data.captions", "select_caption": "mgen.data.captions",
    "SkipCounter": "mgen.data.skips", "SkippedSamplesMonitor": "mgen.data.skips",
    "chromagram": "mgen.data.chroma",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mgen.data' has no attribute {name!r}")
