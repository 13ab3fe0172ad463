"""A real Slurm cluster for tests: the session fixture ``slurm_cluster`` and helpers to submit and wait for jobs.

Import the fixture explicitly in a test module (``from slurm_fixtures import slurm_cluster  # noqa: F401``).

How the cluster is chosen, once per session:
  1. ``sbatch`` is on PATH and ``sinfo`` answers: that cluster is used as it is and never stopped (a cluster started
     beforehand with slurm/local/start_local_slurm.sh, or a real one; on a real cluster, put pytest's --basetemp on
     a filesystem the compute nodes share).
  2. Otherwise, as root: slurm/local/start_local_slurm.sh starts a local cluster (slurmctld + emulated nodes +
     munged on loopback; it installs the Debian packages if missing), SLURM_CONF is set for the session, and
     slurm/local/stop_local_slurm.sh --purge stops it at the end.
  3. Otherwise (not root): the tests are skipped with the reason.
With CI=true (or 1/yes) nothing is skipped: any failure to get a working cluster fails the tests loudly.

Settings: MGEN_TEST_SLURM_NODES / MGEN_TEST_SLURM_CPUS / MGEN_TEST_SLURM_MEM_MB (size of the local cluster:
default 2 nodes x 2 CPUs x 2048 MB; CPUs may exceed the machine's), MGEN_TEST_SLURM_KEEP=1 (leave the local
cluster running after the session, e.g. to read its logs), and the LOCAL_SLURM_* settings of the start script
(LOCAL_SLURM_DIR, LOCAL_SLURM_PORT_BASE, ...), which are passed through.

Tests that need more (``cluster.require(nodes=4, cpus=4)``) restart a local cluster at that size; on a cluster the
session did not start they skip (fail in CI) when it is too small.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
START_SCRIPT = REPO / "slurm" / "local" / "start_local_slurm.sh"
STOP_SCRIPT = REPO / "slurm" / "local" / "stop_local_slurm.sh"

# Job states after which a job never runs again (scontrol's JobState values).
TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                   "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT"}
START_TIMEOUT_S = 240          # generous: includes apt-get install of the packages on a fresh machine
COMMAND_TIMEOUT_S = 30         # any single Slurm client command


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _skip_or_fail(reason: str) -> None:
    """Skip locally; in CI a missing cluster is an error, never a silent skip."""
    if in_ci():
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def _run(cmd: list[str], timeout: float = COMMAND_TIMEOUT_S, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def parse_scontrol_records(text: str) -> list[dict[str, str]]:
    """Records of ``scontrol show ... -o`` (one line each, Key=Value pairs; values never contain spaces for the
    keys we read)."""
    records = []
    for line in text.splitlines():
        if line.strip():
            records.append(dict(re.findall(r"(\S+?)=(\S*)", line)))
    return records


@dataclass
class SlurmCluster:
    """A working Slurm cluster reachable with the client commands and ``SLURM_CONF`` (if set)."""

    conf: Path | None                 # SLURM_CONF used by the session (None: the system default)
    local_dir: Path | None            # LOCAL_SLURM_DIR when it is a local cluster (logs under local_dir/log)
    managed: bool                     # True when this session started it (and stops it)
    start_seconds: float = 0.0        # how long start_local_slurm.sh took (0 for a cluster that was running)
    start_env: dict[str, str] = field(default_factory=dict)

    # ---- cluster shape -------------------------------------------------------------------------------------------
    def nodes(self) -> list[dict[str, str]]:
        """``scontrol show node -o`` records (NodeName, CPUTot, RealMemory, State, ...)."""
        res = _run(["scontrol", "show", "node", "-o"])
        assert res.returncode == 0, f"scontrol show node failed: {res.stderr}"
        return parse_scontrol_records(res.stdout)

    def require(self, nodes: int = 1, cpus: int = 1) -> None:
        """Make sure ``nodes`` usable nodes with ``cpus`` CPUs each exist; restarts a local cluster at that size
        (running jobs are cancelled), otherwise skips (fails in CI)."""
        usable = [n for n in self.nodes() if not re.search(r"DOWN|DRAIN|FAIL|INVAL|NOT_RESPONDING", n["State"])]
        if len(usable) >= nodes and all(int(n["CPUTot"]) >= cpus for n in usable[:nodes]):
            return
        if self.local_dir is None or os.geteuid() != 0:
            _skip_or_fail(f"the Slurm cluster has {len(usable)} usable node(s) and this test needs {nodes} with "
                          f"{cpus} CPUs; start it with LOCAL_SLURM_NODES={nodes} LOCAL_SLURM_CPUS={cpus}")
        # Grow, never shrink: keep the current CPUs and memory per node unless more is asked for.
        current = self.nodes()
        env = dict(self.start_env, LOCAL_SLURM_NODES=str(max(nodes, len(current))),
                   LOCAL_SLURM_CPUS=str(max([cpus] + [int(n["CPUTot"]) for n in current])),
                   LOCAL_SLURM_MEM_MB=str(max([1024] + [int(n["RealMemory"]) for n in current])))
        print(f"\n[slurm] restarting the local cluster with {env['LOCAL_SLURM_NODES']} node(s) x "
              f"{env['LOCAL_SLURM_CPUS']} CPUs for this test")
        self.start_env = env
        _start_local(env)

    # ---- jobs ----------------------------------------------------------------------------------------------------
    def sbatch(self, *args: str | Path, export: dict[str, str] | None = None, cwd: Path | None = None) -> str:
        """Submit with ``sbatch --parsable``; ``export`` becomes ``--export=ALL,K=V,...``. Returns the job id."""
        cmd = ["sbatch", "--parsable"]
        if export is not None:
            for key, value in export.items():
                assert "," not in value, f"--export cannot carry commas ({key}={value!r}); use the environment"
            cmd.append("--export=" + ",".join(["ALL"] + [f"{k}={v}" for k, v in export.items()]))
        cmd += [str(a) for a in args]
        res = _run(cmd, cwd=cwd)
        assert res.returncode == 0, f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr}{res.stdout}"
        return res.stdout.strip().split(";")[0]      # "JOBID" or "JOBID;CLUSTER"

    def job_records(self, job_id: str) -> list[dict[str, str]]:
        """One record per job (per array task, once they are split off; a pending remainder has ArrayTaskId=a-b)."""
        res = _run(["scontrol", "show", "job", "-o", job_id])
        if res.returncode != 0:
            raise AssertionError(f"scontrol show job {job_id} failed: {res.stderr}")
        return parse_scontrol_records(res.stdout)

    def wait(self, job_id: str, timeout: float = 90.0, poll: float = 0.5,
             expect_tasks: int | None = None) -> list[dict[str, str]]:
        """Poll until every record of ``job_id`` is in a terminal state; returns the records. Fails with the job's
        output and the daemons' logs on timeout, or when a dependency can never be satisfied."""
        deadline = time.monotonic() + timeout
        records: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            records = self.job_records(job_id)
            pending_range = any("-" in r.get("ArrayTaskId", "") for r in records)
            if any(r.get("Reason") == "DependencyNeverSatisfied" for r in records):
                raise AssertionError(f"job {job_id}: dependency can never be satisfied\n{self.diagnostics(job_id)}")
            done = records and not pending_range and all(r["JobState"] in TERMINAL_STATES for r in records)
            if done and (expect_tasks is None or len(records) >= expect_tasks):
                return records
            time.sleep(poll)
        states = [(r.get("JobId"), r.get("JobState"), r.get("Reason")) for r in records]
        raise AssertionError(f"job {job_id} not finished after {timeout:.0f} s: {states}\n{self.diagnostics(job_id)}")

    def assert_completed(self, job_id: str, records: list[dict[str, str]]) -> None:
        bad = [r for r in records if r["JobState"] != "COMPLETED" or r.get("ExitCode") != "0:0"]
        assert not bad, (f"job {job_id}: {[(r['JobId'], r['JobState'], r.get('ExitCode')) for r in bad]}\n"
                         f"{self.diagnostics(job_id)}")

    def diagnostics(self, job_id: str, log_lines: int = 30) -> str:
        """Everything useful when a job misbehaves: its records, its output files, the daemons' log tails."""
        parts = []
        try:
            records = self.job_records(job_id)
        except Exception as exc:  # diagnostics must never raise
            records = []
            parts.append(f"(scontrol show job {job_id}: {exc})")
        for r in records:
            parts.append("scontrol: " + " ".join(f"{k}={r.get(k, '')}" for k in (
                "JobId", "ArrayJobId", "ArrayTaskId", "JobState", "Reason", "ExitCode", "NodeList", "Dependency",
                "RunTime", "StdOut")))
            for key in ("StdOut", "StdErr"):
                path = Path(r.get(key, "") or "/nonexistent")
                if path.is_file():
                    parts.append(f"----- {key} {path} -----\n{path.read_text(errors='replace')[-4000:]}")
        if self.local_dir is not None:
            for log in sorted((self.local_dir / "log").glob("*.log")):
                lines = log.read_text(errors="replace").splitlines()[-log_lines:]
                parts.append(f"----- tail {log} -----\n" + "\n".join(lines))
        return "\n".join(parts)


def _cluster_answers() -> bool:
    """True when the Slurm clients are installed and a controller answers (with the current SLURM_CONF)."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        return _run(["sinfo", "-h", "-o", "%P"], timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _local_dir_of_running_cluster() -> Path | None:
    """LOCAL_SLURM_DIR of a running cluster made by start_local_slurm.sh (ClusterName=mgen-local), else None."""
    res = _run(["scontrol", "show", "config"])
    if res.returncode != 0 or not re.search(r"^ClusterName\s*=\s*mgen-local$", res.stdout, re.M):
        return None
    match = re.search(r"^SlurmctldLogFile\s*=\s*(\S+)/log/slurmctld\.log$", res.stdout, re.M)
    return Path(match.group(1)) if match else None


def _start_local(env: dict[str, str]) -> tuple[Path, float]:
    """Run start_local_slurm.sh; returns (SLURM_CONF, seconds). Fails with its full output on error."""
    t0 = time.monotonic()
    try:
        res = subprocess.run(["bash", str(START_SCRIPT)], capture_output=True, text=True, env=env,
                             timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{START_SCRIPT} did not finish in {START_TIMEOUT_S} s\n{exc.stderr or ''}", pytrace=False)
    seconds = time.monotonic() - t0
    match = re.search(r"^export SLURM_CONF=(\S+)$", res.stdout, re.M)
    if res.returncode != 0 or not match:
        pytest.fail(f"could not start the local Slurm cluster ({START_SCRIPT}, exit {res.returncode}):\n"
                    f"{res.stderr}{res.stdout}", pytrace=False)
    conf = Path(match.group(1))
    os.environ["SLURM_CONF"] = str(conf)
    return conf, seconds


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A working Slurm cluster for the whole session (see the module docstring)."""
    saved_conf = os.environ.get("SLURM_CONF")
    if _cluster_answers():
        local_dir = _local_dir_of_running_cluster()
        conf = Path(saved_conf) if saved_conf else None
        print(f"\n[slurm] using the running Slurm cluster (SLURM_CONF={conf or 'default'}"
              f"{', local: ' + str(local_dir) if local_dir else ''}); it is left running")
        yield SlurmCluster(conf=conf, local_dir=local_dir, managed=False,
                           start_env=dict(os.environ, LOCAL_SLURM_DIR=str(local_dir)) if local_dir else {})
        return

    if os.geteuid() != 0:
        _skip_or_fail("no working Slurm cluster (sbatch/sinfo) and not root, so the local one cannot be started; "
                      "run the tests as root, or start one first: sudo slurm/local/start_local_slurm.sh")

    env = dict(os.environ)
    env.setdefault("LOCAL_SLURM_NODES", os.environ.get("MGEN_TEST_SLURM_NODES", "2"))
    env.setdefault("LOCAL_SLURM_CPUS", os.environ.get("MGEN_TEST_SLURM_CPUS", "2"))
    env.setdefault("LOCAL_SLURM_MEM_MB", os.environ.get("MGEN_TEST_SLURM_MEM_MB", "2048"))
    env.setdefault("LOCAL_SLURM_DIR", "/tmp/mgen-local-slurm")
    conf, seconds = _start_local(env)
    print(f"\n[slurm] local cluster started in {seconds:.1f} s ({env['LOCAL_SLURM_NODES']} node(s) x "
          f"{env['LOCAL_SLURM_CPUS']} CPUs, SLURM_CONF={conf})")
    cluster = SlurmCluster(conf=conf, local_dir=Path(env["LOCAL_SLURM_DIR"]), managed=True, start_seconds=seconds,
                           start_env=env)
    try:
        yield cluster
    finally:
        if os.environ.get("MGEN_TEST_SLURM_KEEP", "") not in ("", "0"):
            print(f"\n[slurm] MGEN_TEST_SLURM_KEEP set: the local cluster keeps running (SLURM_CONF={conf}); "
                  f"stop it with {STOP_SCRIPT}")
        else:
            t0 = time.monotonic()
            res = subprocess.run(["bash", str(STOP_SCRIPT), "--purge"], capture_output=True, text=True,
                                 env=cluster.start_env, timeout=120)
            print(f"\n[slurm] local cluster stopped in {time.monotonic() - t0:.1f} s (exit {res.returncode})")
            if res.returncode != 0:
                print(res.stderr + res.stdout)
            if saved_conf is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = saved_conf
