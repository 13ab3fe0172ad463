"""Timing helpers shared by the benchmarks: alternate contenders so drift in machine load hits both."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from mgen.bench.cpu import cpu_flags


def machine_info() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "cuda": torch.cuda.is_available(), "cpu": cpu_flags()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(contenders: dict[str, Callable[[], float | None]], repeats: int) -> dict[str, list[float]]:
    """Run each contender `repeats` times, interleaved (a, b, a, b, ...), after one untimed warm-up each.

    A contender returns the seconds to count, or None to count its whole wall time.
    """
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            counted = fn()
            times[name].append(counted if counted is not None else time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)
