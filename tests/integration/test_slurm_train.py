"""slurm/train.sbatch on a real (local) Slurm cluster.

- Pre-emption, three times in a row in one job: a 2-node FSDP LM job gets SIGUSR1, both ranks save
  hpc_ckpt_N.ckpt at the same step, the job requeues itself, and the requeued job (both ranks starting together on
  one run directory: the race that killed every requeued multi-node run) resumes from that checkpoint; after the
  third requeue it finishes at max_steps with an export, one metrics history, and the retention's checkpoints.
- The run lock: a second, independent job on the same run directory refuses at once (exit code 2, naming the
  holder); the first job, killed hard so that its lock stays behind, is requeued onto the OTHER node, takes the lock
  over as the same Slurm job, and finishes.

The cluster comes from ``slurm_fixtures.slurm_cluster`` (started as root when none answers, skipped otherwise,
never skipped with CI=true).
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from slurm_fixtures import REPO, SlurmCluster
from lm_fixtures import recipe as lm_recipe

from mgen.atomic import is_temporary
from mgen.train.checkpoints import KEEP_LAST_DEFAULT, LAST, periodic_count
from mgen.train.run_lock import LOCK_NAME

TRAIN_SBATCH = REPO / "slurm" / "train.sbatch"
MAX_STEPS = 60
CHECKPOINT_EVERY = 5
PREEMPTIONS = 3


def _checkpoint_step(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except Exception:  # not there yet
        return None


def _submit(cluster: SlurmCluster, recipe: dict, tmp_path: Path, name: str, run: Path, *sbatch_args: str,
            env: dict[str, str] | None = None) -> tuple[str, Path]:
    work = tmp_path / f"work-{name}"
    work.mkdir()
    recipe_path = tmp_path / f"{name}.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    export = {"RECIPE": str(recipe_path), "RUN": str(run), "PYTHON": sys.executable, "ACCELERATOR": "cpu",
              "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    # The template asks for 2 nodes x 8 GPUs for 24 h; the command line overrides it to fit the local cluster.
    # --time=10: the template's own SIGUSR1 (120 s before the limit) must not fire during the test.
    job = cluster.sbatch(*sbatch_args, "--gpus-per-node=0", "--cpus-per-task=1", "--mem=1500M", "--time=10",
                         f"--chdir={REPO}", f"--output={work}/%x-%j.out", TRAIN_SBATCH, export=export)
    return job, work


def _wait_training(cluster: SlurmCluster, job: str, last: Path, beyond: int, timeout: float = 180) -> int:
    """Wait until the job's current run has written last.ckpt at a step > `beyond` (so it trains, its signal
    handler installed); returns that step."""
    deadline = time.monotonic() + timeout
    while (step := _checkpoint_step(last) if last.is_file() else None) is None or step <= beyond:
        state = cluster.job_records(job)[0]["JobState"]
        assert state in ("PENDING", "RUNNING", "CONFIGURING", "REQUEUED"), (
            f"job {job} is {state} while waiting for a checkpoint beyond step {beyond}\n{cluster.diagnostics(job)}")
        assert time.monotonic() < deadline, (f"no checkpoint beyond {beyond} after {timeout} s\n"
                                             f"{cluster.diagnostics(job)}")
        time.sleep(0.2)
    return step


def _runs(work: Path) -> list[str]:
    """The output of each run of the job (--open-mode=append keeps them all in one file)."""
    return next(work.glob("*.out")).read_text().split("[mgen-train] job ")[1:]


def test_train_sbatch_preempted_three_times_requeued_and_resumed(slurm_cluster: SlurmCluster,
                                                                 token_shards: Path,
                                                                 tmp_path: Path) -> None:
    """2 emulated nodes x 1 CPU task, trainer.strategy: fsdp, pre-empted PREEMPTIONS times. Each time, once the
    current run has written a checkpoint, the test sends SIGUSR1 to the job's tasks (`scancel --signal=USR1`, what
    `#SBATCH --signal` does before the time limit). Expected each time: both ranks stop after the same optimiser
    step S_k, save checkpoints/hpc_ckpt_k.ckpt at S_k; rank 0 requeues the job; the next run (both ranks writing
    nothing but what rank 0 owns) resumes from hpc_ckpt_k.ckpt at S_k. The last run ends at MAX_STEPS with an
    export, one metrics history, no temporaries, no lock, and the checkpoints the retention keeps."""
    slurm_cluster.require(nodes=2)
    t0 = time.monotonic()
    run = tmp_path / "run"
    r = lm_recipe(token_shards, MAX_STEPS)
    r["data"].update(global_batch_size=4, epoch_length=40)
    r["trainer"].update(strategy="fsdp", val_every_n_steps=1000, limit_val_batches=1,
                        checkpoint_every_n_steps=CHECKPOINT_EVERY, log_every_n_steps=1)
    job, work = _submit(slurm_cluster, r, tmp_path, "preempt", run, "--nodes=2", "--ntasks-per-node=1")

    last = run / "checkpoints" / LAST
    preempted_at = [0]
    signal_times = []
    for k in range(1, PREEMPTIONS + 1):
        _wait_training(slurm_cluster, job, last, beyond=preempted_at[-1])
        res = subprocess.run(["scancel", "--signal=USR1", job], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        signal_times.append(round(time.monotonic() - t0, 1))
        deadline = time.monotonic() + 120  # the run stops, saves and requeues; its output says at which step
        while len(runs := _runs(work)) < k + 1 or "pre-empted at global step" not in runs[k - 1]:
            assert time.monotonic() < deadline, f"pre-emption {k} not done\n{slurm_cluster.diagnostics(job)}"
            time.sleep(0.5)
        preempted_at.append(int(re.search(r"pre-empted at global step (\d+)", runs[k - 1]).group(1)))

    records = slurm_cluster.wait(job, timeout=240)
    slurm_cluster.assert_completed(job, records)
    assert records[0].get("Restarts") == str(PREEMPTIONS), slurm_cluster.diagnostics(job)
    runs = _runs(work)
    out = "".join(runs)
    assert len(runs) == PREEMPTIONS + 1, out[-4000:]
    steps = preempted_at[1:]
    assert steps == sorted(set(steps)) and CHECKPOINT_EVERY <= steps[0] and steps[-1] < MAX_STEPS, steps
    assert "resuming from" not in runs[0]
    for k, step in enumerate(steps, start=1):
        this, following = runs[k - 1], runs[k]
        assert f"(restart {k - 1})" in this and f"(restart {k})" in following, out[-4000:]
        hpc = run / "checkpoints" / f"hpc_ckpt_{k}.ckpt"
        saved = re.findall(r"pre-empted at global step (\d+): saved (\S+)", this)
        assert saved == [(str(step), str(hpc))] * 2, this[-4000:]  # both ranks, the same step and file
        assert f"requeued Slurm job {job}" in this
        resumed = re.findall(r"resuming from (\S+) \(global step (\d+)\)", following)
        assert resumed == [(str(hpc), str(step))] * 2, following[-4000:]  # the most advanced one, on both ranks
        assert "Error" not in this and "Traceback" not in this, this[-4000:]

    files = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    assert not [f for f in files if is_temporary(Path(f))] and LOCK_NAME not in files, files
    assert _checkpoint_step(last) == MAX_STEPS
    assert (run / "export" / "config.json").is_file() and (run / "export" / "model.safetensors").is_file()
    # the retention counts periodic and pre-emption checkpoints together (the hpc one saved after a periodic one
    # at the same step is the newer)
    pool = [(s, 0, f"step={s}") for s in range(CHECKPOINT_EVERY, MAX_STEPS + 1, CHECKPOINT_EVERY)]
    pool += [(s, 1, f"hpc_ckpt_{k}") for k, s in enumerate(steps, start=1)]
    kept = {name for _, _, name in sorted(pool, reverse=True)[:KEEP_LAST_DEFAULT]}
    names = {Path(f).name for f in files if f.startswith("checkpoints/")} - {LAST}
    found = {f"step={periodic_count(Path(n))}" if periodic_count(Path(n)) is not None else n[:-5] for n in names}
    assert found == kept, (names, kept)
    assert yaml.safe_load((run / "recipe.yaml").read_text())["trainer"]["strategy"] == "fsdp"
    logged = [int(row["step"]) for row in csv.DictReader((run / "logs" / "metrics.csv").open()) if row.get("train/ce")]
    # one history across the requeues: each step logged once, every run continued from its checkpoint's step
    assert logged == list(range(MAX_STEPS)), logged
    print(f"\n[slurm] train.sbatch: SIGUSR1 at {signal_times} s, pre-empted at steps {steps}, requeued "
          f"{PREEMPTIONS} times, finished at {MAX_STEPS} after {time.monotonic() - t0:.1f} s")


def test_run_lock_second_job_refused_requeue_on_the_other_node_takes_over(slurm_cluster: SlurmCluster,
                                                                           token_shards: Path,
                                                                           tmp_path: Path) -> None:
    """Job A (1 task) trains on one run directory. Job B, independent, started on the same directory: refused at
    once, exit code 2, naming A. A's process is killed with SIGKILL (its lock stays, heartbeat fresh: the interval is
    long), A is requeued with the node it ran on excluded, so it lands on the other node: it takes the lock over as
    the same Slurm job, with one message, resumes and finishes; the lock is gone at the end."""
    slurm_cluster.require(nodes=2)
    t0 = time.monotonic()
    run = tmp_path / "run"
    r = lm_recipe(token_shards, 2000)  # long enough to be running while B starts; shortened before the requeue
    r["data"].update(global_batch_size=4, epoch_length=40)
    r["trainer"].update(val_every_n_steps=1000, limit_val_batches=1, checkpoint_every_n_steps=CHECKPOINT_EVERY,
                        log_every_n_steps=1)
    slow_heartbeat = {"MGEN_LOCK_HEARTBEAT_S": "600"}  # a takeover can only come from the job id
    job_a, work_a = _submit(slurm_cluster, r, tmp_path, "a", run, "--nodes=1", "--ntasks-per-node=1",
                            env=slow_heartbeat)
    last = run / "checkpoints" / LAST
    _wait_training(slurm_cluster, job_a, last, beyond=0)
    first_node = slurm_cluster.job_records(job_a)[0]["NodeList"]

    job_b, work_b = _submit(slurm_cluster, r, tmp_path, "b", run, "--nodes=1", "--ntasks-per-node=1",
                            env=slow_heartbeat)
    records_b = slurm_cluster.wait(job_b, timeout=180)
    assert records_b[0]["JobState"] == "FAILED" and records_b[0]["ExitCode"] == "2:0", slurm_cluster.diagnostics(job_b)
    refused = next(work_b.glob("*.out")).read_text()
    errors = [line for line in refused.splitlines() if "mgen fit: error:" in line]
    assert len(errors) == 1 and "is in use by another mgen fit" in errors[0] and f"Slurm job {job_a}," in errors[0], \
        refused[-3000:]
    assert "resuming from" not in refused and "taking over" not in refused

    holder = json.loads((run / LOCK_NAME).read_text())
    assert holder["slurm_job_id"] == job_a
    os.kill(holder["pid"], signal.SIGKILL)  # as a node failure or the OOM killer would (scancel sends SIGTERM first)
    slurm_cluster.wait(job_a, timeout=120)  # ended; its lock is still there
    assert (run / LOCK_NAME).is_file()
    steps = _checkpoint_step(last) + 2 * CHECKPOINT_EVERY
    r["trainer"]["max_steps"] = steps  # the requeued run reads the recipe again: let it finish soon
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(r))
    for cmd in (["scontrol", "requeuehold", job_a],
                ["scontrol", "update", f"JobId={job_a}", f"ExcNodeList={first_node}"],  # the other node
                ["scontrol", "release", job_a]):
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, f"{' '.join(cmd)}: {res.stderr}\n{slurm_cluster.diagnostics(job_a)}"
    records = slurm_cluster.wait(job_a, timeout=240)
    slurm_cluster.assert_completed(job_a, records)
    runs = _runs(work_a)
    assert len(runs) == 2, "".join(runs)[-4000:]
    nodes = [re.search(r"\(restart \d+\) on (\S+):", run_out).group(1) for run_out in runs]
    assert nodes[0] == first_node and nodes[1] != first_node, nodes
    takeovers = re.findall(r"taking over the run lock of .*", runs[1])
    assert len(takeovers) == 1, runs[1][-3000:]
    assert f"Slurm job {job_a}," in takeovers[0] and f"same Slurm job {job_a}: a requeue" in takeovers[0], takeovers
    assert re.search(r"resuming from \S+ \(global step \d+\)", runs[1])
    assert _checkpoint_step(last) == steps and (run / "export" / "config.json").is_file()
    assert not (run / LOCK_NAME).exists()
    print(f"\n[slurm] run lock: B refused, A killed on {nodes[0]}, requeued on {nodes[1]}, took the lock over and "
          f"finished after {time.monotonic() - t0:.1f} s")
