"""Atomic file writes for the data pipeline: a killed run must never leave a half-written file under its final name.

This is mgen's one commit step (`mgen.atomic`: a temporary sibling unique to the writer, fsync, rename, fsync of
the folder), under the names the pipeline uses. Each job-array task alone makes its outputs, so at its start it
removes every temporary of them (`remove_stale_tmp`), whichever process or node left it.
"""

from __future__ import annotations

from pathlib import Path

from mgen.atomic import (TMP_MARK, remove_temporaries_of, write_atomic, write_bytes_atomic,  # noqa: F401 - re-exported
                         write_json_atomic)


def remove_stale_tmp(path: Path) -> None:
    """Delete temporaries left for `path` by killed runs (any pid, any host)."""
    remove_temporaries_of(path)
