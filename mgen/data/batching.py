"""Global batch -> per-device batch and gradient accumulation (recipes state the global batch, DESIGN.md).

A recipe's ``batch_size: 192`` means 192 samples per optimiser update whatever the cluster: on 32 devices that is
6 per device; on 8 devices with at most 4 fitting in memory it is 4 per device x 6 accumulation steps. The
micro-batch is the largest divisor of the per-device share that fits, so the global batch is always exact.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPlan:
    """How one optimiser update's ``global_batch_size`` samples are spread over devices and micro-batches."""

    global_batch_size: int
    world_size: int
    per_device_batch: int  # samples per forward pass on one device (the DataLoader batch)
    accumulate: int  # micro-batches per optimiser update (Trainer(accumulate_grad_batches=...))

    def describe(self) -> str:
        return (f"global batch {self.global_batch_size} = {self.world_size} device(s) x {self.per_device_batch} "
                f"per device x {self.accumulate} accumulation step(s)")


def derive_batch(global_batch_size: int, world_size: int, max_batch_per_device: int | None = None) -> tuple[int, int]:
    """``(per_device_batch, accumulate)`` with ``per_device_batch * accumulate * world_size == global_batch_size``.

    Without ``max_batch_per_device`` there is no accumulation. With it, the device share is split into the fewest
    equal micro-batches of at most that size (24 per device, at most 4 -> 4 x 6; 7 per device, at most 4 -> 1 x 7,
    since 7 has no other divisor: pick a global batch with friendlier factors). Raises ValueError when the global
    batch does not divide by the world size.
    """
    plan = batch_plan(global_batch_size, world_size, max_batch_per_device)
    return plan.per_device_batch, plan.accumulate


def batch_plan(global_batch_size: int, world_size: int, max_batch_per_device: int | None = None) -> BatchPlan:
    """The full :class:`BatchPlan` behind :func:`derive_batch`."""
    if int(global_batch_size) < 1 or int(world_size) < 1:
        raise ValueError(f"global_batch_size and world_size must be >= 1, got {global_batch_size} and {world_size}")
    global_batch_size, world_size = int(global_batch_size), int(world_size)
    if global_batch_size % world_size:
        lower = global_batch_size - global_batch_size % world_size
        raise ValueError(
            f"global batch size {global_batch_size} does not divide evenly over {world_size} devices "
            f"(nodes x devices per node); use a multiple of {world_size}, e.g. {lower or world_size} or "
            f"{lower + world_size}")
    share = global_batch_size // world_size
    if max_batch_per_device is None or share <= int(max_batch_per_device):
        return BatchPlan(global_batch_size, world_size, share, 1)
    cap = int(max_batch_per_device)
    if cap < 1:
        raise ValueError(f"max_batch_per_device must be >= 1, got {max_batch_per_device}")
    for accumulate in range(2, share + 1):
        if share % accumulate == 0 and share // accumulate <= cap:
            return BatchPlan(global_batch_size, world_size, share // accumulate, accumulate)
    raise AssertionError("unreachable: accumulate == share always fits")  # share // share == 1 <= cap
