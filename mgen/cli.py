"""The `mgen` command. Each subcommand lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that define `register(subparsers)`; imported lazily so `mgen --help` stays fast.
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
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as err:  # bad input or paths
        print(f"mgen {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
