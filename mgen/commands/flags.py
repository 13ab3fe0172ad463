"""The flag conventions of every `mgen` command, in one place, so that a flag means the same thing everywhere:

- every output (file or folder) is `-o/--out`;
- `--codec` names a codec (an export directory or a CodecModule .ckpt), `--model` an LM export (RUN/export);
- a command gets only the flags it acts on;
- a renamed flag fails with one line naming its new name (exit code 2): no silent alias, so old scripts stop
  instead of quietly meaning something else.

This module must stay free of torch: every `--help` imports it.
"""

from __future__ import annotations

import argparse
from typing import Any

from mgen.errors import UsageError

OUTPUT_MOVED = "the output is now given with -o/--out"


class _Renamed(argparse.Action):
    """A hidden flag (or positional) that only exists to fail with `message` when someone still uses it."""

    def __init__(self, option_strings: list[str], dest: str, message: str, **_: Any) -> None:
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        self.message = message

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        raise UsageError(self.message, prog=parser.prog)


def add_renamed(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Make `old` (say ``--ckpt``) fail with "--ckpt was renamed to NEW" (with or without a value)."""
    parser.add_argument(old, nargs="?", action=_Renamed, message=f"{old} was renamed to {new}")


def add_output(parser: argparse.ArgumentParser, help: str, *, default: str | None = None,
               was_positional: bool = False) -> None:
    """Add ``-o/--out`` (required unless it has a `default`). `was_positional`: the command used to take its output
    as a positional argument after its inputs, which now fails with a one-line hint instead of "unrecognized"."""
    parser.add_argument("-o", "--out", required=default is None, default=default, help=help)
    if was_positional:
        parser.add_argument("moved_output", nargs="?", action=_Renamed, message=OUTPUT_MOVED)


def add_codec(parser: argparse.ArgumentParser, help: str = "codec export directory or CodecModule .ckpt", *,
              required: bool = True, was: str | None = None) -> None:
    """Add ``--codec`` (a codec); `was` names the flag it replaces, which then fails naming ``--codec``."""
    parser.add_argument("--codec", required=required, help=help)
    if was:
        add_renamed(parser, was, "--codec")


def add_model(parser: argparse.ArgumentParser, help: str = "an LM export directory (RUN/export)", *,
              required: bool = True, was: str | None = None) -> None:
    """Add ``--model`` (an LM export); `was` names the flag it replaces, which then fails naming ``--model``."""
    parser.add_argument("--model", required=required, help=help)
    if was:
        add_renamed(parser, was, "--model")
