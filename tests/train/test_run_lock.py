"""The run lock (mgen.train.run_lock): one job per run directory; requeues of the same Slurm job and starts after a
dead holder take it over, anything else is refused with the holder named. Races are released by a barrier."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from mgen.train.run_lock import HEARTBEAT_ENV, LOCK_NAME, RunLock, RunLocked


@pytest.fixture(autouse=True)
def fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HEARTBEAT_ENV, "0.2")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)


def _holder(run: Path) -> dict:
    return json.loads((run / LOCK_NAME).read_text())


def test_acquire_heartbeat_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    lock = RunLock(run).acquire()
    holder = _holder(run)
    assert holder["pid"] == os.getpid() and holder["slurm_job_id"] == "4242" and holder["host"] and holder["started"]
    (run / LOCK_NAME).touch()
    os.utime(run / LOCK_NAME, (time.time() - 100, time.time() - 100))
    time.sleep(0.7)  # the heartbeat thread refreshes the modification time
    assert time.time() - (run / LOCK_NAME).stat().st_mtime < 0.6
    lock.release()
    assert not (run / LOCK_NAME).exists()
    assert os.listdir(run) == []


def test_a_live_holder_is_refused_with_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "100")
    first = RunLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "200")  # another job
    with pytest.raises(RunLocked, match=rf"in use by another mgen fit \(host .+, pid {os.getpid()}, Slurm job 100, "
                                        r"started .+, heartbeat \d+ s ago\).*remove .*\.lock") as info:
        RunLock(tmp_path).acquire()
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)  # one line, exit code 2 in `mgen`
    monkeypatch.delenv("SLURM_JOB_ID")
    with pytest.raises(RunLocked):  # no job at all: refused too
        RunLock(tmp_path).acquire()
    assert first.is_ours()
    first.release()


def test_the_same_slurm_job_takes_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    """A requeued job (possibly on another node) finds the lock its killed previous run left, heartbeat fresh."""
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    old = RunLock(tmp_path).acquire()
    old._stop.set()  # the previous run was killed: no release, no more heartbeat
    requeued = RunLock(tmp_path).acquire()
    assert "taking over the run lock" in capsys.readouterr().out
    assert _holder(tmp_path)["token"] == requeued.token and not old.is_ours()
    old.release()  # a late release of the old holder must not remove the new lock
    assert requeued.is_ours()
    requeued.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_stale_heartbeat_is_taken_over(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dead = {"host": "node7", "pid": 999999, "slurm_job_id": None, "started": "2026-01-01T00:00:00", "token": "x"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(dead))
    with pytest.raises(RunLocked, match="host node7, pid 999999"):  # heartbeat fresh: refused
        RunLock(tmp_path).acquire()
    old = time.time() - 1.0  # more than 2 x 0.2 s ago
    os.utime(tmp_path / LOCK_NAME, (old, old))
    lock = RunLock(tmp_path).acquire()
    out = capsys.readouterr().out
    assert out.count("taking over the run lock of host node7, pid 999999") == 1 and "heartbeat is" in out
    assert lock.is_ours()
    lock.release()
    (tmp_path / LOCK_NAME).write_text("garbage, not JSON")  # an unreadable lock counts by its age too
    os.utime(tmp_path / LOCK_NAME, (old, old))
    RunLock(tmp_path).acquire().release()


def test_a_killed_holder_on_this_host_is_taken_over_at_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`kill -9` of a fit leaves its lock with a fresh heartbeat: a start on the same host sees its pid is gone."""
    import socket
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    holder = {"host": socket.gethostname(), "pid": child.pid, "slurm_job_id": None, "started": "now", "token": "x"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(holder))
    with pytest.raises(RunLocked, match=f"pid {child.pid}"):  # alive: refused
        RunLock(tmp_path).acquire()
    child.kill()
    child.wait()
    lock = RunLock(tmp_path).acquire()  # heartbeat still fresh, but the process is gone
    assert f"its process {child.pid} no longer runs on this host" in capsys.readouterr().out
    assert lock.is_ours()
    lock.release()


def test_a_lost_lock_is_noticed(tmp_path: Path) -> None:
    lock = RunLock(tmp_path).acquire()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"token": "someone else"}))
    time.sleep(0.7)
    assert lock.lost
    lock.release()
    assert (tmp_path / LOCK_NAME).exists()  # not ours: left alone


def _contend(run: str, job: str | None, barrier, results) -> None:
    if job:
        os.environ["SLURM_JOB_ID"] = job
    else:
        os.environ.pop("SLURM_JOB_ID", None)
    barrier.wait()
    try:
        lock = RunLock(run).acquire()
    except RunLocked as err:
        results.put(("refused", str(err)))
        return
    results.put(("won", lock.token))
    time.sleep(1.0)  # hold it while the others try
    lock.release()


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale-lock"])
def test_contenders_started_together_exactly_one_wins(tmp_path: Path, stale: bool) -> None:
    """Four starts released by a barrier on a free lock, or on a dead holder's lock that all of them may take over:
    exactly one holds it, the others are refused naming it."""
    if stale:
        (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "gone", "pid": 1, "token": "dead"}))
        os.utime(tmp_path / LOCK_NAME, (time.time() - 60, time.time() - 60))
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(str(tmp_path), None, barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    outcomes = [results.get(timeout=5) for _ in procs]
    assert sorted(kind for kind, _ in outcomes) == ["refused", "refused", "refused", "won"], outcomes
    assert all("in use by another mgen fit" in msg for kind, msg in outcomes if kind == "refused")
    assert not (tmp_path / LOCK_NAME).exists()  # released by the winner
    assert os.listdir(tmp_path) == []  # no temporaries left by anyone


def test_a_taker_never_moves_a_lock_newer_than_the_one_it_judged(tmp_path: Path, capsys) -> None:
    """The race behind two winners: contender B judges the stale lock, A takes it over and creates a fresh one, then
    B's takeover must leave A's lock alone (it moves the lock only while it is the one judged, under the takeover
    mutex); while another taker holds the mutex, nothing moves."""
    from mgen.train.run_lock import TAKEOVER_NAME

    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"host": "a", "pid": 1, "token": "fresh"}))
    late = RunLock(run)
    late._take_over({"host": "gone", "pid": 1, "token": "dead"}, "took over")
    assert _holder(run)["token"] == "fresh" and "took over" not in capsys.readouterr().out
    assert not (run / TAKEOVER_NAME).exists()
    (run / TAKEOVER_NAME).mkdir()  # another taker is at work
    late._take_over({"host": "a", "pid": 1, "token": "fresh"}, "took over")
    assert _holder(run)["token"] == "fresh"
    (run / TAKEOVER_NAME).rmdir()
    late._take_over({"host": "a", "pid": 1, "token": "fresh"}, "took over")  # the judged lock itself: moved
    assert not (run / LOCK_NAME).exists() and "took over" in capsys.readouterr().out
