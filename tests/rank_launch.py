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

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
LAUNCH_TIMEOUT_S = 300


def clean_env() -> dict[str, str]:
    """The environment of a launched training: one thread per rank (2 cores, 2 ranks), no Slurm variables from
    an outer allocation (Lightning would take the job's ranks for its own), offline; mgen and the test helpers
    (tests/) importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")])
    env.pop("MASTER_PORT", None)
    return env


def launch(cmd: list[str], what: str, timeout_s: float = LAUNCH_TIMEOUT_S) -> tuple[subprocess.CompletedProcess, float]:
    """Run `cmd` in the clean environment from the repository root; fails the test when it fails or times out."""
    t0 = time.monotonic()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=clean_env(), cwd=REPO)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{what} did not finish in {timeout_s} s\n{exc.stdout or ''}\n{exc.stderr or ''}")
    seconds = time.monotonic() - t0
    assert res.returncode == 0, f"{what} failed ({res.returncode}):\n{res.stdout[-6000:]}\n{res.stderr[-6000:]}"
    return res, seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_ranks(argv: list[str], devices: int, log: Path, timeout_s: float) -> None:
    """Run ``python argv...`` as ``devices`` ranks (one plain process when 1); their output goes to
    ``log.rankN.log``. Fails the test when a rank fails or the job outlives ``timeout_s``."""
    env = clean_env()
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
