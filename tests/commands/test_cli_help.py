"""Every `mgen` command's `--help` works without torch, Lightning or transformers, every command follows the flag
conventions of mgen/commands/flags.py, and renamed flags fail with one line naming the new flag.

The commands are found by walking `build_parser()`, so a new command or sub-command is covered without editing
this file.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from mgen.cli import build_parser, main

HEAVY = ("torch", "lightning", "transformers")

# Runs `mgen ARGS... --help` in a fresh interpreter and prints the heavy modules it imported.
PROBE = """
import sys
from mgen.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
sys.exit(code)
"""


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-commands `parser` dispatches to, by name (none for a leaf command)."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def all_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...],
                                                                                        argparse.ArgumentParser]:
    """Every command path (`()` is `mgen` itself, `("codec", "encode")` is `mgen codec encode`) and its parser."""
    commands = {path: parser}
    for name, sub in subparsers(parser).items():
        commands.update(all_commands(sub, (*path, name)))
    return commands


COMMANDS = all_commands(build_parser())


def test_the_walk_finds_nested_commands() -> None:
    assert {(), ("fit",), ("codec", "encode"), ("bench", "generate"), ("prep", "shards"), ("prep", "tokenize"),
            ("prep", "synth-corpus")} <= set(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda path: " ".join(("mgen", *path)))
def test_help_does_not_import_heavy_modules(path: tuple[str, ...]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *path, "--help"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:") and "mgen" in proc.stdout, proc.stdout[:200]
    assert proc.stderr.strip().splitlines()[-1] == "[]", f"mgen {' '.join(path)} --help imported {proc.stderr}"


def visible_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions if action.help != argparse.SUPPRESS
            for flag in action.option_strings}


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda path: " ".join(("mgen", *path)))
def test_flag_conventions(path: tuple[str, ...]) -> None:
    """Outputs are -o/--out (never positional), codecs --codec and LM exports --model; no --ckpt anywhere."""
    parser = COMMANDS[path]
    options = visible_options(parser)
    assert "--ckpt" not in options
    for action in parser._actions:
        if action.dest in ("out", "output") and action.help != argparse.SUPPRESS:
            assert action.option_strings == ["-o", "--out"], (path, action)
    if "-o" in options:
        assert options["-o"] is options["--out"]


def test_each_benchmark_takes_only_the_flags_it_uses() -> None:
    for name in ("lm-train", "generate", "codec"):
        assert {"--vs", "--smoke", "--repeats", "--device"} <= set(visible_options(COMMANDS[("bench", name)]))
    for name in ("shards", "read"):
        assert set(visible_options(COMMANDS[("bench", name)])) == {"-h", "--help", "--smoke"}


@pytest.mark.parametrize("argv,prog,message", [
    (["codec", "encode", "a.wav", "-o", "c.npy", "--ckpt", "codec"], "mgen codec encode",
     "--ckpt was renamed to --codec"),
    (["codec", "decode", "c.npy", "-o", "a.wav", "--ckpt", "codec"], "mgen codec decode",
     "--ckpt was renamed to --codec"),
    (["generate", "--ckpt", "run/export", "--text", "a tune"], "mgen generate", "--ckpt was renamed to --model"),
    (["generate", "--ckpt"], "mgen generate", "--ckpt was renamed to --model"),
    (["codec", "encode", "a.wav", "c.npy", "--codec", "codec"], "mgen codec encode",
     "the output is now given with -o/--out"),
    (["codec", "decode", "c.npy", "a.wav", "--codec", "codec"], "mgen codec decode",
     "the output is now given with -o/--out"),
    (["export", "run", "out"], "mgen export", "the output is now given with -o/--out"),
    (["prep", "synth-corpus", "corpus", "--clips", "1"], "mgen prep synth-corpus",
     "the output is now given with -o/--out"),
])
def test_renamed_flags_fail_with_one_line(argv: list[str], prog: str, message: str,
                                          capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [f"{prog}: error: {message}"]
    assert captured.out == ""


def test_usage_errors_from_a_command_are_one_line(tmp_path, capsys: pytest.CaptureFixture) -> None:
    """A UsageError raised while a command runs (here: before any model loads) is one line and exit code 2."""
    assert main(["generate", "--model", str(tmp_path), "--text", "a tune", "--duration", "-1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "mgen generate: error: --duration must be a finite number of seconds > 0, got -1.0"]
