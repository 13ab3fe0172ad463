"""slurm/train.sbatch on a real (local) Slurm cluster: a 2-node FSDP LM job is pre-empted with SIGUSR1, saves a
checkpoint from both ranks at the same step, requeues itself, and the requeued job resumes from that checkpoint
(not from the older last.ckpt, not from step 0) and finishes at max_steps with an export.

The cluster comes from ``slurm_fixtures.slurm_cluster`` (started as root when none answers, skipped otherwise,
never skipped with CI=true). How the run directory chooses its resume checkpoint is tested without Slurm too.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from data_fixtures import synth_corpus  # noqa: F401  (session fixture)
from slurm_fixtures import REPO, SlurmCluster, slurm_cluster  # noqa: F401
from test_lm_training import recipe as lm_recipe
from test_lm_training import token_shards  # noqa: F401  (module fixture: token shards + the codec)

from mgen.train.preemption import resume_path as _resume_path

TRAIN_SBATCH = REPO / "slurm" / "train.sbatch"
MAX_STEPS = 60
CHECKPOINT_EVERY = 5


def _checkpoint_step(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except Exception:  # noqa: BLE001 - being written right now
        return None


def test_resume_picks_the_most_advanced_readable_checkpoint(tmp_path: Path) -> None:
    """last.ckpt vs hpc_ckpt_*.ckpt: the highest global step wins, whichever kind it is; a file cut short by a
    kill is skipped with a warning; a fresh run directory resumes from nothing."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert _resume_path(run) is None
    torch.save({"global_step": 20}, run / "checkpoints" / "last.ckpt")
    assert _resume_path(run) == (str(run / "checkpoints" / "last.ckpt"), 20)
    torch.save({"global_step": 23}, run / "hpc_ckpt_1.ckpt")  # pre-empted 3 steps after the last checkpoint
    assert _resume_path(run) == (str(run / "hpc_ckpt_1.ckpt"), 23)
    torch.save({"global_step": 40}, run / "checkpoints" / "last.ckpt")  # the requeued run went further
    assert _resume_path(run) == (str(run / "checkpoints" / "last.ckpt"), 40)
    (run / "hpc_ckpt_2.ckpt").write_bytes((run / "hpc_ckpt_1.ckpt").read_bytes()[:50])  # killed while saving
    with pytest.warns(UserWarning, match="hpc_ckpt_2.ckpt: not a readable checkpoint"):
        assert _resume_path(run) == (str(run / "checkpoints" / "last.ckpt"), 40)


def test_train_sbatch_preempted_requeued_and_resumed(slurm_cluster: SlurmCluster,  # noqa: F811
                                                    token_shards: Path, tmp_path: Path) -> None:  # noqa: F811
    """2 emulated nodes x 1 CPU task, trainer.strategy: fsdp. Once last.ckpt exists (step 5) the test sends
    SIGUSR1 to the job's tasks (`scancel --signal=USR1`, what `#SBATCH --signal` does before the time limit).
    Expected: both ranks stop after the same optimiser step S > 5 and save hpc_ckpt_1.ckpt at S; rank 0
    requeues the job; the second run (SLURM_RESTART_COUNT=1) resumes from hpc_ckpt_1.ckpt at step S (newer
    than last.ckpt), logs steps from S on, and ends at MAX_STEPS with an export."""
    slurm_cluster.require(nodes=2)
    t0 = time.monotonic()
    run, work = tmp_path / "run", tmp_path / "work"
    work.mkdir()
    r = lm_recipe(token_shards, MAX_STEPS)
    r["data"].update(global_batch_size=4, epoch_length=40)
    r["trainer"].update(strategy="fsdp", val_every_n_batches=1000, limit_val_batches=1,
                        checkpoint_every_n_steps=CHECKPOINT_EVERY, log_every_n_steps=1)
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(r))
    export = {"RECIPE": str(recipe_path), "RUN": str(run), "PYTHON": sys.executable, "ACCELERATOR": "cpu",
              "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # The template asks for 2 nodes x 8 GPUs for 24 h; the command line overrides it to fit the local cluster.
    # --time=10: the template's own SIGUSR1 (120 s before the limit) must not fire during the test.
    job = slurm_cluster.sbatch("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1",
                               "--mem=1500M", "--time=10", f"--chdir={REPO}", f"--output={work}/%x-%j.out",
                               TRAIN_SBATCH, export=export)

    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not (last.is_file() and (_checkpoint_step(last) or 0) >= CHECKPOINT_EVERY):
        state = slurm_cluster.job_records(job)[0]["JobState"]
        assert state in ("PENDING", "RUNNING", "CONFIGURING"), (
            f"job {job} is {state} before its first checkpoint\n{slurm_cluster.diagnostics(job)}")
        assert time.monotonic() < deadline, f"no checkpoint after 120 s\n{slurm_cluster.diagnostics(job)}"
        time.sleep(0.2)
    last_step_at_signal = _checkpoint_step(last)
    res = subprocess.run(["scancel", "--signal=USR1", job], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    t_signal = time.monotonic() - t0

    records = slurm_cluster.wait(job, timeout=180)
    slurm_cluster.assert_completed(job, records)
    assert records[0].get("Restarts") == "1", slurm_cluster.diagnostics(job)
    out = next(work.glob("*.out")).read_text()

    runs = out.split("[mgen-train] job ")[1:]
    assert len(runs) == 2 and "(restart 0)" in runs[0] and "(restart 1)" in runs[1], out[-4000:]
    preempted = [int(s) for s in re.findall(r"pre-empted at global step (\d+)", runs[0])]
    assert len(preempted) == 2 and len(set(preempted)) == 1, out[-4000:]  # both ranks, at the same step
    step = preempted[0]
    assert CHECKPOINT_EVERY <= last_step_at_signal < step < MAX_STEPS
    assert f"requeued Slurm job {job}" in runs[0]
    hpc = run / "hpc_ckpt_1.ckpt"
    assert _checkpoint_step(hpc) == step and not (run / "hpc_ckpt_2.ckpt").exists()
    # the requeued run resumed from the pre-emption checkpoint (the most advanced one), on both ranks
    resumed = re.findall(r"resuming from (\S+) \(global step (\d+)\)", runs[1])
    assert resumed == [(str(hpc), str(step))] * 2, out[-4000:]
    assert "resuming from" not in runs[0]

    assert _checkpoint_step(last) == MAX_STEPS
    assert (run / "export" / "config.json").is_file() and (run / "export" / "model.safetensors").is_file()
    logged = [int(row["step"]) for row in csv.DictReader((run / "logs" / "metrics.csv").open()) if row.get("train/ce")]
    # one history across the requeue: the first segment's rows are kept, each step is logged once, and the
    # second segment continued from the checkpoint's step instead of restarting from 0
    assert logged == sorted(set(logged)) and logged[0] == 0 and logged[-1] == MAX_STEPS - 1, logged
    assert any(s < step for s in logged) and any(s >= step for s in logged), logged
    print(f"\n[slurm] train.sbatch: SIGUSR1 after {t_signal:.1f} s (last.ckpt at step {last_step_at_signal}), "
          f"pre-empted at step {step}, requeued, finished at {MAX_STEPS} after {time.monotonic() - t0:.1f} s")
