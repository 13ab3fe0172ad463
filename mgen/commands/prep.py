"""`mgen prep ...`: the data-preparation pipeline (`data_prep`, built on mgen) under the mgen command. Only
`mgen/commands/` may import `data_prep` (tests/test_architecture.py checks it)."""

from __future__ import annotations

import argparse

from data_prep.cli import register as register_prep


def register(subparsers: argparse._SubParsersAction) -> None:
    register_prep(subparsers)
