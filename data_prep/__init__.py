"""Dataset preparation: a real-music corpus builder and the WebDataset sharding pipeline.

Public entry points are imported lazily, so `import data_prep` (and `mgen --help`) stays fast.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "build_synth_corpus": "data_prep.synth_corpus",
    "ShardConfig": "data_prep.shards",
    "write_shards": "data_prep.shards",
    "merge_indexes": "data_prep.shards",
    "tokenize_shards": "data_prep.tokenize",
    "run_shard_bench": "data_prep.bench",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'data_prep' has no attribute {name!r}")
