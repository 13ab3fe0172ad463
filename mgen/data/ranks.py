"""Which data-parallel rank this process is, out of how many (nodes x devices).

Looked up in this order: explicit arguments (tests, custom launchers), the Lightning trainer (knows its strategy
before or after the process group exists), ``torch.distributed`` when initialised, the ``RANK``/``WORLD_SIZE``
environment of torchrun / Slurm wrappers, else a single process.
"""

from __future__ import annotations

import os
from typing import Any


def resolve_rank(trainer: Any = None, rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``; raises ValueError when the pair is inconsistent."""
    if rank is None or world_size is None:
        found = _from_trainer(trainer) or _from_torch_distributed() or _from_env() or (0, 1)
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    rank, world_size = int(rank), int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1} (world size {world_size})")
    return rank, world_size


def _from_trainer(trainer: Any) -> tuple[int, int] | None:
    if trainer is None:
        return None
    try:
        return int(trainer.global_rank), int(trainer.world_size)
    except (AttributeError, RuntimeError, TypeError):
        return None


def _from_torch_distributed() -> tuple[int, int] | None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def _from_env() -> tuple[int, int] | None:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None
