"""The run directory of `mgen fit` under real processes: ranks started together, two jobs on one directory, SIGKILL
at random moments (also while a checkpoint or the export is being written, with $TMPDIR on another filesystem),
a corrupt last.ckpt, and checkpoint retention. After each scenario EVERY file of the run directory is checked.

Multi-process runs are separate programs (`torchrun ... -m mgen.cli fit`, `python -m mgen.cli fit`) in
subprocesses with a timeout, as in tests/train/test_fsdp.py.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from PIL import Image
from rank_launch import REPO, clean_env
from lm_fixtures import recipe as lm_recipe

from mgen.atomic import is_temporary
from mgen.train.checkpoints import LAST, is_intact, periodic_count
from mgen.train.fit import fit
from mgen.train.recipe import apply_overrides
from mgen.train.run_lock import HEARTBEAT_ENV, LOCK_NAME

TIMEOUT_S = 300


def run_recipe(shards: Path, steps: int, every: int = 2, keep_last: int = 2, keep_every: int = 0) -> dict[str, Any]:
    """The tiny LM of tests/lm_fixtures.py, checkpointing every `every` steps, logging every step."""
    r = lm_recipe(shards, steps)
    r["trainer"].update(checkpoint_every_n_steps=every, val_every_n_steps=1000, limit_val_batches=1,
                        log_every_n_steps=1, checkpoints={"keep_last": keep_last, "keep_every": keep_every})
    return r


def step_of_name(name: str) -> int | None:
    return periodic_count(Path(name))


def readable_step(path: Path) -> int:
    """The checkpoint's global step, after loading it whole (weights_only) and checking every zip record's CRC."""
    assert is_intact(path), f"{path}: damaged zip record"
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def expected_kept(steps: list[int], keep_last: int, keep_every: int) -> set[int]:
    kept = set(sorted(steps)[-keep_last:])
    return kept | ({s for s in steps if s % keep_every == 0} if keep_every else set())


def audit_run_dir(run: Path, recipe: dict[str, Any], max_steps: int, every: int, keep_last: int, keep_every: int,
                  media: bool = False, wandb: bool = False, complete_log: bool = True) -> dict[str, int]:
    """Check every file of a finished run directory; returns {checkpoint name: global step}. `complete_log`: every
    training step is in metrics.csv (after a SIGKILL, rows logged after the last checkpoint are logged again by the
    resumed run, but the row of a checkpoint's own step can be lost when the kill lands between the two)."""
    files = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    checked: set[str] = set()
    assert not [f for f in files if is_temporary(Path(f))], files
    assert LOCK_NAME not in files  # released
    assert not [f for f in files if "-v1" in f or ".corrupt-" in f], files

    assert yaml.safe_load((run / "recipe.yaml").read_text()) == recipe
    checked.add("recipe.yaml")

    ckpts = {f: readable_step(run / f) for f in files if f.startswith("checkpoints/") and f.endswith(".ckpt")}
    checked |= set(ckpts)
    assert ckpts.pop(f"checkpoints/{LAST}") == max_steps
    periodic = {f: s for f, s in ckpts.items() if step_of_name(Path(f).name) is not None}
    assert periodic == ckpts, ckpts  # no other kind here (no pre-emption)
    for name, step in periodic.items():
        assert step_of_name(Path(name).name) == step, name
    all_steps = list(range(every, max_steps + 1, every))
    assert sorted(periodic.values()) == sorted(expected_kept(all_steps, keep_last, keep_every)), periodic

    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    trained = [int(r["step"]) for r in rows if r.get("train/ce")]
    assert trained == sorted(set(trained)) and set(trained) <= set(range(max_steps)), trained  # once each, in order
    if complete_log:
        assert trained == list(range(max_steps)), trained
    hparams = yaml.load((run / "logs" / "hparams.yaml").read_text(), Loader=yaml.FullLoader)  # has tuples
    assert hparams["lm"]["card"] == recipe["model"]["card"]
    checked |= {"logs/metrics.csv", "logs/hparams.yaml"}

    from mgen.musicgen import MusicGen

    export = {"export/config.json", "export/model.safetensors", "export/codec/config.json",
              "export/codec/model.safetensors"}
    assert export <= files, files
    MusicGen.load(run / "export")
    checked |= export

    if media:
        wavs = {f for f in files if f.startswith("logs/media/") and f.endswith(".wav")}
        pngs = {f for f in files if f.startswith("logs/media/") and f.endswith(".png")}
        assert wavs and {w[:-4] for w in wavs} == {p[:-4] for p in pngs}
        for wav in wavs:
            audio, rate = sf.read(run / wav)
            assert rate == 32000 and audio.size > 0 and np.isfinite(audio).all()
        for png in pngs:
            with Image.open(run / png) as image:
                image.verify()
        checked |= wavs | pngs
    if wandb:
        runs = {Path(f).parts[2] for f in files if f.startswith("logs/wandb/") and "offline-run-" in f}
        assert len(runs) == 1, runs  # one W&B run: rank 0's
        checked |= {f for f in files if f.startswith("logs/wandb/")}
    assert files == checked, f"unchecked files: {sorted(files - checked)}"
    return {Path(f).name: s for f, s in periodic.items()}


def launch(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env=env or clean_env(), start_new_session=True)


def finish(proc: subprocess.Popen, what: str, timeout: float = TIMEOUT_S) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{what} did not finish in {timeout} s\n{out[-6000:]}")
    return proc.returncode, out


def fit_cmd(recipe_path: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mgen.cli", "fit", str(recipe_path), "--out", str(run), "--accelerator", "cpu",
            *extra]


# ------------------------------------------------------------------------------------- ranks started together
@pytest.mark.slow
@pytest.mark.parametrize("ranks, strategy", [(2, "fsdp"), (4, "ddp")])
def test_ranks_started_together_share_the_run_directory(token_shards: Path, tmp_path: Path, ranks: int,
                                                        strategy: str) -> None:
    """torchrun starts every rank at the same moment on one run directory (as Slurm does): only global rank 0
    writes recipe.yaml, logs, media, W&B, checkpoints and the export, each committed whole. 2 ranks: FSDP with
    validation samples and W&B offline; 4 ranks: DDP. Every file is checked afterwards."""
    steps, every = 6, 2
    run = tmp_path / "run"
    recipe = run_recipe(token_shards, steps, every=every, keep_last=2, keep_every=4)
    recipe["data"]["global_batch_size"] = 2 * ranks
    sets = [f"trainer.strategy={strategy}"]
    if ranks == 2:
        sets += ["trainer.val_every_n_steps=3", "samples.count=1", "samples.seconds=0.2", "samples.top_k=20"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    args = [a for s in sets for a in ("--set", s)] + (["--wandb"] if ranks == 2 else [])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m",
           "mgen.cli", "fit", str(path), "--out", str(run), "--accelerator", "cpu", "--devices", str(ranks), *args]
    t0 = time.monotonic()
    code, out = finish(launch(cmd, dict(clean_env(), WANDB_MODE="offline")), f"{ranks}-rank fit")
    assert code == 0, out[-6000:]
    assert out.count("[mgen fit] run directory:") == ranks and out.count(f"exported model: {run}/export") == 1
    audit_run_dir(run, apply_overrides(recipe, sets), steps, every, keep_last=2, keep_every=4, media=ranks == 2,
                  wandb=ranks == 2)
    print(f"\n[run dir] {ranks} ranks ({strategy}) started together: {time.monotonic() - t0:.1f} s")


# ------------------------------------------------------------------------------------------- two jobs, one run
@pytest.mark.slow
def test_two_fits_started_together_one_trains(token_shards: Path, tmp_path: Path) -> None:
    """Two independent `mgen fit` on one run directory, released together (each waits for a start file after its
    imports): exactly one trains; the other exits 2 with one line naming the holder and writes nothing."""
    steps, every = 6, 2
    run, go = tmp_path / "run", tmp_path / "go"
    recipe = run_recipe(token_shards, steps, every=every, keep_last=3)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    waiter = ("import sys, time, pathlib; import mgen.train.fit; from mgen.cli import main\n"
              "while not pathlib.Path(sys.argv[1]).exists(): time.sleep(0.005)\n"
              "sys.exit(main(sys.argv[2:]))")
    procs = [launch([sys.executable, "-c", waiter, str(go), *fit_cmd(path, run)[3:]]) for _ in range(2)]
    time.sleep(1.0)
    go.touch()
    results = [finish(p, "mgen fit") for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], [out[-3000:] for _, out in results]
    refused = next(out for code, out in results if code == 2)
    winner = next(p for p, (code, _) in zip(procs, results) if code == 0)
    errors = [line for line in refused.splitlines() if line.startswith("mgen fit: error:")]
    assert len(errors) == 1 and "is in use by another mgen fit" in errors[0], refused[-3000:]
    assert f"pid {winner.pid}," in errors[0], errors[0]  # names the job that trains
    assert "resuming from" not in refused and "taking over" not in refused
    audit_run_dir(run, recipe, steps, every, keep_last=3, keep_every=0)


def test_a_locked_run_is_refused_before_anything_is_written(token_shards: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """A run directory held by a live job (fresh heartbeat): `mgen fit` exits with code 2 and one line naming the
    holder, and the directory still holds nothing but the lock."""
    from mgen.cli import main

    run = tmp_path / "run"
    run.mkdir()
    holder = {"host": "gpu-node-17", "pid": 4242, "slurm_job_id": "9001", "started": "2026-11-29T08:00:00",
              "token": "theirs"}
    (run / LOCK_NAME).write_text(json.dumps(holder))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(run_recipe(token_shards, 4)))
    assert main(["fit", str(path), "--out", str(run), "--accelerator", "cpu"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mgen fit: error: ")]
    assert len(err) == 1, err
    assert re.search(r"in use by another mgen fit \(host gpu-node-17, pid 4242, Slurm job 9001, started "
                     r"2026-11-29T08:00:00, heartbeat \d+ s ago\)", err[0]), err
    assert os.listdir(run) == [LOCK_NAME] and json.loads((run / LOCK_NAME).read_text()) == holder


# ---------------------------------------------------------------------------------------------- SIGKILL
KILL_STEPS, KILL_EVERY, KILL_KEEP_LAST, KILL_KEEP_EVERY = 16, 2, 2, 8


def _checkpoint_states(run: Path) -> dict[str, int]:
    """After a kill: every file in checkpoints/ is a whole, readable checkpoint (temporaries aside)."""
    states = {}
    for path in sorted((run / "checkpoints").iterdir()):
        if is_temporary(path):
            continue
        assert path.suffix == ".ckpt", path
        states[path.name] = readable_step(path)
    return states


def _wait_for(condition, proc: subprocess.Popen, what: str, poll: float = 0.001) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"mgen fit ended ({proc.returncode}) before {what}:\n{proc.stdout.read()[-4000:]}")
        assert time.monotonic() < deadline, f"no {what} after {TIMEOUT_S} s"
        time.sleep(poll)


def _latest_step(run: Path) -> int:
    """The highest step among the periodic checkpoints' names, 0 when there is none."""
    return max((s for p in (run / "checkpoints").glob("*.ckpt") if (s := step_of_name(p.name)) is not None),
               default=0)


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if is_temporary(p)] if folder.is_dir() else []


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(token_shards: Path, tmp_path: Path) -> None:
    """`mgen fit` (one process) is killed with SIGKILL: while a checkpoint is being written, at a random moment of
    training, and while the export is being written; $TMPDIR is a tmpfs, the run on disk. After each kill every
    file in checkpoints/ is a readable checkpoint and $TMPDIR holds no leftovers; each next start takes the dead
    job's lock over, removes the temporaries, resumes from the most advanced checkpoint; the run completes with
    exactly the checkpoints the retention keeps, and its weights and optimiser state are bit-identical to those of
    an uninterrupted run of the same recipe."""
    seed = int(os.environ.get("MGEN_TEST_KILL_SEED", "0"))
    print(f"\n[kill] seed {seed} (set MGEN_TEST_KILL_SEED to replay another)")
    rng = random.Random(seed)
    run = tmp_path / "run"
    recipe = run_recipe(token_shards, KILL_STEPS, every=KILL_EVERY, keep_last=KILL_KEEP_LAST,
                        keep_every=KILL_KEEP_EVERY)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    scratch = Path(tempfile.mkdtemp(prefix="mgen-kill-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        if scratch.stat().st_dev == tmp_path.stat().st_dev:  # e.g. --basetemp on /dev/shm: still a valid kill test
            print(f"[kill] note: $TMPDIR {scratch} and the run share a filesystem")
        env = dict(clean_env(), TMPDIR=str(scratch), **{HEARTBEAT_ENV: "0.5"})
        modes = ["checkpoint write", "random moment", "export"]
        killed_during = []
        for mode in modes:
            before = _checkpoint_states(run) if (run / "checkpoints").is_dir() else {}
            last = run / "checkpoints" / LAST
            last_before = last.stat().st_mtime_ns if last.is_file() else None
            proc = launch(fit_cmd(path, run), env)
            if mode == "checkpoint write":
                _wait_for(lambda: bool(_temporaries(run / "checkpoints")), proc, "a checkpoint write")
            elif mode == "random moment":  # once this start trains (it wrote a checkpoint), somewhere in 2 s,
                # but while it still trains (before the checkpoint of step KILL_STEPS - KILL_EVERY): a fast machine
                # would otherwise finish the run inside the window and the kill would hit nothing
                _wait_for(lambda: last.is_file() and last.stat().st_mtime_ns != last_before, proc, "training",
                          poll=0.01)
                deadline = time.monotonic() + rng.uniform(0.0, 2.0)
                while time.monotonic() < deadline and _latest_step(run) < KILL_STEPS - KILL_EVERY:
                    time.sleep(0.005)
            else:
                _wait_for(lambda: any(p.name.startswith(".export.tmp-") for p in run.iterdir()), proc, "the export")
            assert proc.poll() is None, f"mgen fit ended ({proc.returncode}) before the {mode} kill"
            os.killpg(proc.pid, signal.SIGKILL)
            out = proc.communicate()[0]
            left = [p.name for p in _temporaries(run / "checkpoints") + _temporaries(run)]
            killed_during.append((mode, left))
            states = _checkpoint_states(run)
            assert not [p for p in scratch.rglob("*") if p.is_file()], "files leaked into $TMPDIR"
            resumed = re.findall(r"resuming from (\S+) \(global step (\d+)\)", out)
            if before:
                assert resumed and int(resumed[0][1]) == max(before.values()), (before, out[-3000:])
                assert "taking over the run lock" in out
            print(f"[kill] {mode}: killed with {left or 'no'} temporaries; checkpoints {states}")
        assert killed_during[0][1] and killed_during[2][1], killed_during  # really inside those writes

        last_states = _checkpoint_states(run)
        code, out = finish(launch(fit_cmd(path, run), env), "the final mgen fit")
        assert code == 0, out[-6000:]
        resumed = re.findall(r"resuming from (\S+) \(global step (\d+)\)", out)
        assert resumed and int(resumed[0][1]) == max(last_states.values()) == KILL_STEPS, (last_states, out[-3000:])
        audit_run_dir(run, recipe, KILL_STEPS, KILL_EVERY, KILL_KEEP_LAST, KILL_KEEP_EVERY, complete_log=False)
        assert not [p for p in scratch.rglob("*") if p.is_file()]
        # exact resume: the killed-and-resumed run ends bit-identical to one uninterrupted run in the same setting
        reference = tmp_path / "uninterrupted"
        code, out = finish(launch(fit_cmd(path, reference), env), "the uninterrupted mgen fit")
        assert code == 0, out[-6000:]
        final, expected = (torch.load(r / "checkpoints" / LAST, map_location="cpu", weights_only=True)
                           for r in (run, reference))
        assert final["global_step"] == expected["global_step"] == KILL_STEPS
        different = [k for k, v in expected["state_dict"].items() if not torch.equal(final["state_dict"][k], v)]
        assert not different, f"{len(different)} tensors differ after the kills, e.g. {different[0]}"
        for mine, theirs in zip(final["optimizer_states"], expected["optimizer_states"]):
            for key, state in theirs["state"].items():
                assert all(torch.equal(mine["state"][key][name], value) for name, value in state.items()), key
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ------------------------------------------------------------------------------------ corrupt last, retention
def test_corrupt_last_checkpoint_resumes_from_the_newest_intact_one(token_shards: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """last.ckpt cut short (and, separately, damaged inside a tensor with its zip directory intact): the start
    resumes from the most advanced intact periodic checkpoint, the damaged file is moved aside (not deleted, not
    left as a trap: no last-v1.ckpt), and the start after that resumes from the new last.ckpt; the retention
    keeps exactly keep_last + keep_every + last.ckpt."""
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(run_recipe(token_shards, 8, every=2, keep_last=2, keep_every=4), run)
        names = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert sorted(step_of_name(n) for n in names if n != LAST) == [4, 6, 8] and LAST in names, names
        last = run / "checkpoints" / LAST
        with open(last, "r+b") as f:
            f.truncate(last.stat().st_size // 2)
        capsys.readouterr()
        summary = fit(run_recipe(token_shards, 10, every=2, keep_last=2, keep_every=4), run)
        out = capsys.readouterr().out
        assert summary["global_step"] == 10
        assert re.search(r"last\.ckpt is not a readable checkpoint: moved aside to last\.ckpt\.corrupt-", out), out
        assert re.search(r"resuming from \S+/epoch=\d+-step=8\.ckpt \(global step 8\)", out), out
        names = sorted(p.name for p in (run / "checkpoints").iterdir())
        corrupt = [n for n in names if ".corrupt-" in n]
        assert len(corrupt) == 1 and (run / "checkpoints" / corrupt[0]).stat().st_size > 0
        assert not [n for n in names if "-v1" in n]
        assert sorted(step_of_name(n) for n in names if n.endswith(".ckpt") and n != LAST) == [4, 8, 10]
        assert readable_step(last) == 10

        # damage inside a tensor: header and zip directory intact, a memory-mapped load does not notice
        data = bytearray(last.read_bytes())
        data[len(data) // 2] ^= 0xFF
        last.write_bytes(bytes(data))
        assert int(torch.load(last, map_location="cpu", weights_only=True, mmap=True)["global_step"]) == 10
        capsys.readouterr()
        fit(run_recipe(token_shards, 12, every=2, keep_last=2, keep_every=4), run)
        out = capsys.readouterr().out
        assert re.search(r"resuming from \S+/epoch=\d+-step=10\.ckpt \(global step 10\)", out), out
        assert len([p for p in (run / "checkpoints").iterdir() if ".corrupt-" in p.name]) == 2

        capsys.readouterr()
        fit(run_recipe(token_shards, 12, every=2, keep_last=2, keep_every=4), run)  # the next start loses nothing
        assert f"resuming from {last} (global step 12)" in capsys.readouterr().out
        names = [p.name for p in (run / "checkpoints").iterdir() if ".corrupt-" not in p.name and p.name != LAST]
        assert sorted(step_of_name(n) for n in names) == [4, 8, 10, 12], names
    finally:
        torch.set_num_threads(threads)

