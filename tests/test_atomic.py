"""Directories written atomically: a failed write leaves the old version and no debris."""

import pytest

from mgen.atomic import atomic_directory


def test_failed_write_keeps_the_old_directory(tmp_path) -> None:
    target = tmp_path / "export"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("killed half-way")
    assert (target / "a.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    with atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("three")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
