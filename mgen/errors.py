"""How mgen quotes a library's exception inside its own, clearer error: the first line, bounded."""

from __future__ import annotations


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first line of `err`'s message (at most `limit` characters), or its type name when it has none."""
    lines = str(err).strip().splitlines()
    return lines[0][:limit] if lines else type(err).__name__
