"""Stable seeds from tuples like (seed, epoch, rank, worker, purpose).

Python's ``hash`` of strings changes per process, and ``seed + epoch`` style sums collide ((0, 1) == (1, 0)), so
every random stream in the data pipeline is seeded from a SHA-256 of its full coordinates instead.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np


def seed_of(*parts: object) -> int:
    """A 63-bit seed determined only by ``parts`` (their ``repr``), identical across processes and machines."""
    digest = hashlib.sha256(repr(tuple(parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def py_rng(*parts: object) -> random.Random:
    return random.Random(seed_of(*parts))


def np_rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(seed_of(*parts))
