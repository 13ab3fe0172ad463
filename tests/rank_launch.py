"""Start the ranks of a CPU (gloo) job by hand, as a launcher (torchrun, srun) would: one process per rank with
MASTER_ADDR/PORT, NODE_RANK, LOCAL_RANK and WORLD_SIZE set, so Lightning joins them instead of spawning its own.

Unlike Lightning's launcher (which re-runs the command line of rank 0 once, for the first Trainer), ranks started
this way can run several Trainers one after the other in the same process group.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_fsdp import clean_env

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_ranks(argv: list[str], devices: int, log: Path, timeout_s: float) -> None:
    """Run ``python argv...`` as ``devices`` ranks (one plain process when 1); their output goes to
    ``log.rankN.log``. Fails the test when a rank fails or the job outlives ``timeout_s``."""
    env = clean_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    if devices > 1:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), NODE_RANK="0", WORLD_SIZE=str(devices))
    logs = [log.with_suffix(f".rank{r}.log") for r in range(devices)]
    procs = []
    for rank, path in enumerate(logs):
        rank_env = {**env, "LOCAL_RANK": str(rank)} if devices > 1 else env
        with path.open("w") as out:
            procs.append(subprocess.Popen([sys.executable, *argv], stdout=out, stderr=subprocess.STDOUT, env=rank_env,
                                          cwd=REPO))
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"{argv} did not finish in {timeout_s:.0f} s:\n{logs[0].read_text()[-4000:]}")
    failed = [(rank, p.returncode) for rank, p in enumerate(procs) if p.returncode != 0]
    assert not failed, f"{argv}: ranks failed {failed}\n{logs[failed[0][0]].read_text()[-6000:]}"
