"""mgen's error for input the user must fix, and how it quotes a library's exception inside its own, clearer
error: the first line, bounded."""

from __future__ import annotations


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first line of `err`'s message (at most `limit` characters), or its type name when it has none."""
    lines = str(err).strip().splitlines()
    return lines[0][:limit] if lines else type(err).__name__


class UsageError(ValueError):
    """A command line or input the user must fix. `mgen` prints it as one line, ``PROG: error: MESSAGE``, and exits
    with code 2 instead of a traceback. A ValueError, so library callers that catch ValueError still catch it.

    `prog` names the (sub)command when the error is raised while parsing, before `mgen` knows which one runs.
    """

    def __init__(self, message: str, prog: str | None = None) -> None:
        super().__init__(message)
        self.prog = prog
