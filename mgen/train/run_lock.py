"""The run lock: one `mgen fit` job per run directory, taken before the job writes anything there.

Two jobs on one run directory (started by mistake) would both train and write checkpoints, logs and the export over
each other. Global rank 0 of a job takes `RUN/.lock`, a small JSON file naming its holder (host, pid, Slurm job,
start time); a thread refreshes its modification time every `heartbeat_seconds()` (the heartbeat). A start finds:

- no lock: it creates one (atomically, with the holder already written: `os.link` of a complete temporary file
  fails when the lock exists, so of two jobs started together exactly one wins);
- a lock of the same Slurm job (`SLURM_JOB_ID`): a requeue of this job, possibly on another node, whose previous
  run was killed before it could release the lock; a lock of a process of this host that no longer runs (killed
  with SIGKILL); or a lock whose heartbeat is older than twice the interval (its holder, on any host, is gone).
  It takes the lock over with one message: the old lock is renamed out of the way (one contender's rename
  succeeds) and the new one created as above;
- anything else: it refuses with a one-line error naming the holder (exit code 2 through `mgen`).

No `flock`: it is unreliable on NFS and Lustre; create-exclusive and rename are atomic there. The lock is removed
on exit when it is still ours. The heartbeat interval is `HEARTBEAT_S`, or `MGEN_LOCK_HEARTBEAT_S` (tests).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

from mgen.atomic import pid_alive, temporary_name

LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0
HEARTBEAT_ENV = "MGEN_LOCK_HEARTBEAT_S"
TAKEOVER_NAME = ".lock.takeover"  # the takeover mutex, a directory that exists only during a takeover
TAKEOVER_STALE_S = 30.0
ACQUIRE_TIMEOUT_S = 60.0


def heartbeat_seconds() -> float:
    return float(os.environ.get(HEARTBEAT_ENV, HEARTBEAT_S))


class RunLocked(ValueError):
    """Another job holds the run directory (a ValueError, so that `mgen` exits with code 2 and one line)."""


def _read(path: Path) -> tuple[dict[str, Any], float] | None:
    """(holder, heartbeat age in seconds) of a lock file; None when there is none. An unreadable holder (a lock
    of another program, or damaged) is reported as such, its age still counts."""
    try:
        age = max(0.0, time.time() - path.stat().st_mtime)
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
        if not isinstance(holder, dict):
            raise ValueError
    except ValueError:
        holder = {"unreadable": text[:80]}
    return holder, age


def describe(holder: dict[str, Any], age: float) -> str:
    job = holder.get("slurm_job_id") or "-"
    return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, Slurm job {job}, started "
            f"{holder.get('started', '?')}, heartbeat {age:.0f} s ago")


class RunLock:
    """The lock of one run directory held by this process; `acquire` takes it (or raises RunLocked)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.interval = heartbeat_seconds()
        self.token = secrets.token_hex(8)
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(),
                       "slurm_job_id": os.environ.get("SLURM_JOB_ID") or None,
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": self.token}

    # ---------------------------------------------------------------------------------------- acquiring
    def _create(self) -> bool:
        """Create the lock with our holder in one step; False when a lock exists."""
        tmp = temporary_name(self.path)
        try:
            with open(tmp, "x") as file:
                file.write(json.dumps(self.holder) + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.link(tmp, self.path)
            return True
        except (FileExistsError, FileNotFoundError):  # a lock exists (or the holder just cleaned up our temporary)
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _takeover_reason(self, holder: dict[str, Any], age: float) -> str | None:
        job = self.holder["slurm_job_id"]
        if job and holder.get("slurm_job_id") == job:
            return f"same Slurm job {job}: a requeue"
        pid = holder.get("pid")
        if holder.get("host") == self.holder["host"] and isinstance(pid, int) and not pid_alive(pid):
            return f"its process {pid} no longer runs on this host"
        if age > 2 * self.interval:
            return f"its heartbeat is {age:.0f} s old (> 2 x {self.interval:g} s): its process is gone"
        return None

    def _take_over(self, holder: dict[str, Any], note: str) -> None:
        """Rename the stale lock out of the way, one taker at a time: a takeover mutex (`mkdir`, atomic on NFS and
        Lustre) serialises the contenders that judged it stale, and under it the lock is moved only while it is still
        the one judged (same token), so a taker never moves the lock another contender has just made. Should it
        still move a newer lock (its holder released the stale one and a new one appeared in between), that lock is
        put back."""
        mutex = self.run_dir / TAKEOVER_NAME
        try:
            mutex.mkdir()
        except FileExistsError:  # another taker is at it: judge the lock again once it is done
            try:
                if time.time() - mutex.stat().st_mtime > TAKEOVER_STALE_S:
                    mutex.rmdir()  # left by a taker killed in the middle of a takeover
            except OSError:
                pass
            time.sleep(0.01)
            return
        try:
            found = _read(self.path)
            if found is None or found[0].get("token") != holder.get("token"):
                return  # taken over or released meanwhile
            print(note, flush=True)
            aside = temporary_name(self.path)
            try:
                os.replace(self.path, aside)
            except FileNotFoundError:
                return
            moved = _read(aside)
            if moved is not None and moved[0].get("token") != holder.get("token"):
                try:
                    os.link(aside, self.path)
                except FileExistsError:
                    pass
            aside.unlink(missing_ok=True)
        finally:
            mutex.rmdir()

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + ACQUIRE_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._create():
                self._start_heartbeat()
                return self
            found = _read(self.path)
            if found is None:
                continue  # released meanwhile
            holder, age = found
            reason = self._takeover_reason(holder, age)
            if reason is None:
                raise RunLocked(
                    f"{self.run_dir} is in use by another mgen fit ({describe(holder, age)}): wait for it to finish, "
                    f"or use another --out. If that job is gone, its lock is taken over once the heartbeat is older "
                    f"than {2 * self.interval:g} s, or remove {self.path}")
            self._take_over(holder, f"[mgen fit] taking over the run lock of {describe(holder, age)}: {reason}")
        raise RunLocked(f"{self.path}: could not take the run lock (it keeps changing hands); try again")

    # ---------------------------------------------------------------------------------------- holding
    def is_ours(self) -> bool:
        found = _read(self.path)
        return found is not None and found[0].get("token") == self.token

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="mgen-run-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.is_ours():
                    self.lost = True
                    print(f"[mgen fit] WARNING: the run lock {self.path} was taken over by another job; this job "
                          f"must not keep writing to {self.run_dir}", flush=True)
                    return
                os.utime(self.path)
            except OSError as err:  # a filesystem hiccup: try again at the next beat
                print(f"[mgen fit] could not refresh the run lock {self.path}: {err}", flush=True)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock, if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.is_ours():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
