"""The commit step (mgen.atomic): files and directories appear complete or not at all, with the usual permissions,
under names no two writers share; temporaries of killed writers are cleaned, those of live ones never."""

from __future__ import annotations

import multiprocessing
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mgen.train.fit import write_resolved_recipe
from mgen.atomic import (atomic_directory, atomic_path, atomic_write, is_temporary, remove_stale_temporaries,
                         remove_temporaries_of, temporary_name, write_text_atomic)


def test_failed_write_keeps_the_old_directory(tmp_path: Path) -> None:
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
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # the replaced version is gone too


def test_files_commit_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.bin"
    with atomic_write(target) as file:
        file.write(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(OSError):
        with atomic_write(target) as file:
            file.write(b"half")
            raise OSError("disk full")
    assert target.read_bytes() == b"new" and os.listdir(target.parent) == ["x.bin"]
    with atomic_path(tmp_path / "y.txt") as tmp:
        tmp.write_text("by name")
    assert (tmp_path / "y.txt").read_text() == "by name"


def test_permissions_follow_the_umask(tmp_path: Path) -> None:
    """Exports must be readable by a cluster group: no 0700 / 0600 from mkdtemp / mkstemp."""
    previous = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "export") as tmp:
            (tmp / "model.bin").write_bytes(b"w")
        write_text_atomic(tmp_path / "recipe.yaml", "a: 1\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "export").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "recipe.yaml").stat().st_mode) == 0o644


def test_temporary_names_are_unique_and_recognised(tmp_path: Path) -> None:
    target = tmp_path / "epoch=1-step=20.ckpt"
    names = {temporary_name(target) for _ in range(200)}
    assert len(names) == 200
    for name in names:
        assert name.parent == tmp_path and name.name.startswith(".epoch=1-step=20.ckpt.tmp-") and is_temporary(name)
        assert name.suffix != ".ckpt"  # never taken for a checkpoint by a glob
    assert not is_temporary(target) and not is_temporary(tmp_path / "metrics.csv")


def test_only_stale_temporaries_are_removed(tmp_path: Path) -> None:
    """Without ownership only temporaries of dead processes of this host go; a live writer's stays, so does one
    of another host. With ownership (the run lock) all of them go, files and directories."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    live = temporary_name(tmp_path / "last.ckpt")  # this process: alive
    live.write_bytes(b"being written")
    host = live.name.split(".tmp-")[1].rsplit("-", 2)[0]
    gone = tmp_path / f".last.ckpt.tmp-{host}-{dead_pid}-0123abcd"
    gone.write_bytes(b"left by a SIGKILL")
    elsewhere = tmp_path / f".last.ckpt.tmp-othernode-{dead_pid}-0123abcd"
    elsewhere.write_bytes(b"on another node")
    export = tmp_path / f".export.tmp-{host}-{dead_pid}-89abcdef"
    export.mkdir()
    (export / "model.safetensors").write_bytes(b"half")
    keep = tmp_path / "last.ckpt"
    keep.write_bytes(b"a checkpoint")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([gone, export])
    assert live.exists() and elsewhere.exists()
    assert sorted(remove_stale_temporaries(tmp_path, owned=True)) == sorted([live, elsewhere])
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_new_write_removes_what_a_dead_writer_left_of_its_target(tmp_path: Path) -> None:
    """A killed `mgen export` left `.export.tmp-...`: the next export to the same place removes it (a live writer's
    and another target's are kept)."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = temporary_name(tmp_path / "x").name.split(".tmp-")[1].rsplit("-", 2)[0]
    killed = tmp_path / f".export.tmp-{host}-{int(dead.stdout)}-0123abcd"
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"half")
    live = temporary_name(tmp_path / "export")
    live.mkdir()
    other = tmp_path / f".export2.tmp-{host}-{int(dead.stdout)}-0123abcd"
    other.mkdir()
    with atomic_directory(tmp_path / "export") as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["export", live.name, other.name])


def test_remove_temporaries_of_a_target(tmp_path: Path) -> None:
    target = tmp_path / "train-000001.tar"
    temporary_name(target).write_bytes(b"x")
    (tmp_path / "train-000001.tar.tmp-99999").write_bytes(b"old naming")
    other = temporary_name(tmp_path / "train-000002.tar")
    other.write_bytes(b"another task's")
    remove_temporaries_of(target)
    assert [p for p in tmp_path.iterdir()] == [other]


# ---------------------------------------------------------------------------------------- concurrent writers
RACE_ROUNDS = 100


def _write_recipe_many_times(run_dir: str, rank: int, barrier, errors) -> None:
    recipe = {"task": "lm", "seed": 0, "written_by": "every rank the same", "model": {"preset": "tiny"}}
    barrier.wait()
    for _ in range(RACE_ROUNDS):
        try:
            write_resolved_recipe(Path(run_dir), recipe)
        except Exception as err:  # collected and reported by the test
            errors.put(f"rank {rank}: {type(err).__name__}: {err}")
            return


@pytest.mark.parametrize("writers", [2, 4])
def test_writers_racing_on_the_recipe_never_fail(tmp_path: Path, writers: int) -> None:
    """The requeue crash of issue 9: every rank wrote RUN/recipe.yaml through one shared temporary name, and one
    rank's rename took the file from under another (ENOENT). N processes released together by a barrier write the
    resolved recipe through the function `fit` uses, many times: no error, the file is always whole."""
    ctx = multiprocessing.get_context("fork")
    barrier, errors = ctx.Barrier(writers), ctx.Queue()
    procs = [ctx.Process(target=_write_recipe_many_times, args=(str(tmp_path), r, barrier, errors))
             for r in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not failures, failures
    assert [p.exitcode for p in procs] == [0] * writers
    assert yaml.safe_load((tmp_path / "recipe.yaml").read_text())["written_by"] == "every rank the same"
    assert [p.name for p in tmp_path.iterdir()] == ["recipe.yaml"]  # no temporaries left
