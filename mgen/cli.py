"""The `mgen` command. Each subcommand lives in its own module (mgen/commands/) and registers itself here; the
flag conventions they share are in mgen/commands/flags.py.

Building the parser imports every command module, so those import only argparse-level things at module level
(torch, Lightning and transformers load inside the run functions): `mgen --help` stays fast, and
tests/commands/test_cli_help.py checks it for every sub-command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mgen.errors import UsageError

# A user's mistake, not a bug: one line `mgen CMD: error: ...` and exit code 2. UsageError is a ValueError; the
# others are what deeper code raises for bad input and paths.
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError)

# Modules that define `register(subparsers)`; their module level stays free of torch (see the docstring).
COMMAND_MODULES: list[str] = [
    "mgen.commands.info",
    "mgen.commands.demo",
    "mgen.commands.fit",
    "mgen.commands.codec",
    "mgen.commands.generate",
    "mgen.commands.evaluate",
    "mgen.commands.export",
    "mgen.commands.bench",
    "mgen.commands.prep",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mgen", description="Train and run MusicGen-style music generation models.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:  # a renamed flag (mgen/commands/flags.py); argparse's own errors exit 2 themselves
        return _error(err.prog or parser.prog, err)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        return _error(getattr(err, "prog", None) or f"mgen {args.command}", err)


def _error(prog: str, err: BaseException) -> int:
    """Print `err` as one line and return exit code 2."""
    print(f"{prog}: error: {err}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
