"""Exact resume: a run SIGKILLed at seeded random steps and resumed from its latest checkpoint ends with weights
(and optimiser state) bit-identical to an uninterrupted run of the same recipe, on the deterministic CPU path.

Each case is a chain of runs of `mgen fit` (its `fit()`), each in a process of its own: the run is killed mid-epoch,
resumed and killed again exactly on an epoch boundary (a checkpoint written on an epoch's last batch), then
resumed to the end; an uninterrupted reference run follows. The kill is a callback that SIGKILLs its own process
before the training step after ``kill_at`` (the checkpoint of step ``kill_at`` and its validation are written,
nothing after). Cases: one process with 0 and 2 data workers (resampled epochs, with the weight average, with
gradient accumulation; exact epochs with 2 workers, whose shards give the workers unequal numbers of batches), and
2 gloo ranks with 0 and 2 workers (DDP, with the weight average) and FSDP2 (2 workers).

The kill steps come from a seed printed by the tests; set MGEN_RESUME_SEED to replay one. This file is also the
program that runs the chains (`python tests/train/test_exact_resume.py SPEC.json`, one per rank): it imports everything
once and forks a fresh child process for every run, which is what gets killed; the ranks of the 2-process cases
are started here with a launcher's environment (MASTER_ADDR/PORT, NODE_RANK, LOCAL_RANK).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from rank_launch import free_port, launch_ranks
from lm_fixtures import recipe as lm_recipe

HERE = Path(__file__).resolve().parent
STEPS = 9
LAUNCH_TIMEOUT_S = 420


def resume_recipe(shards: Path, world_size: int = 1, workers: int = 0, resampled: bool = True, ema: bool = False,
                  accumulate: int = 1, strategy: str = "auto") -> dict[str, Any]:
    """The tiny LM of test_lm_training with a checkpoint at every step, word and CFG dropout (the generators the
    checkpoint must carry), validation every 5 steps and epochs of a few batches (resampled: 6 samples per rank, 2
    per batch). `ema`: the weight average (live and averaged weights both continue); `accumulate`: micro-batches
    per step; `strategy`: the LM recipe's trainer.strategy."""
    r = lm_recipe(shards, STEPS)
    r["optim"]["warmup_steps"] = 3
    r["data"].update(global_batch_size=2 * world_size * accumulate, max_batch_per_device=2, num_workers=workers,
                     resampled=resampled)
    if resampled:
        r["data"]["epoch_length"] = 6 * accumulate
    else:
        del r["data"]["epoch_length"]
    r["trainer"].update(val_every_n_steps=5, limit_val_batches=2, checkpoint_every_n_steps=1, log_every_n_steps=1,
                        strategy=strategy)
    if ema:
        r["ema"] = {"decay": 0.9, "every_n_steps": 2}
    return r


# ------------------------------------------------------------------------------------------------- the program
def run_spec(spec: dict[str, Any]) -> dict[str, int]:
    """Every run of `spec["runs"]` in order, each in a forked child: `fit(recipe)` on `dir` with `env` added to the
    environment, SIGKILLed after step `kill_at` (when given). Returns the children's exit statuses by run name
    (negative: killed by that signal)."""
    import lightning as L

    from mgen.train import lm_recipe as builder
    from mgen.train.fit import fit

    class KillAt(L.Callback):
        def __init__(self, step: int) -> None:
            self.step = step

        def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                 batch_idx: int) -> None:
            if trainer.global_step == self.step:
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    make_callbacks = builder.lm_callbacks
    torch.set_num_threads(1)
    statuses = {}
    for run in spec["runs"]:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the run: a fresh copy of this process, nothing trained in it yet
            code = 1
            try:
                os.environ.update(run.get("env", {}))  # e.g. TMPDIR for checkpoint writes
                if run.get("port"):
                    os.environ["MASTER_PORT"] = str(run["port"])
                kill_at = run.get("kill_at")
                builder.lm_callbacks = lambda recipe, run_dir: [*make_callbacks(recipe, run_dir),
                                                                *([KillAt(kill_at)] if kill_at is not None else [])]
                fit(run["recipe"], run["dir"], devices=spec["devices"], accelerator="cpu")
                code = 0
            finally:
                sys.stdout.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        statuses[run["name"]] = os.waitstatus_to_exitcode(status)
        print(f"[exact resume] run {run['name']}: exit status {statuses[run['name']]}", flush=True)
    return statuses


def launch(spec: dict[str, Any], path: Path) -> dict[str, int]:
    """Run the spec in `spec["devices"]` processes (ranks); returns rank 0's exit statuses of the runs."""
    if spec["devices"] > 1:
        for run in spec["runs"]:
            run["port"] = free_port()  # a fresh process group per run
    path.write_text(json.dumps(spec))
    launch_ranks([str(HERE / "test_exact_resume.py"), str(path)], spec["devices"], path, LAUNCH_TIMEOUT_S)
    return json.loads(path.with_suffix(".rank0.json").read_text())


# --------------------------------------------------------------------------------------------------- checks
def final_state(run: Path) -> dict[str, Any]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def assert_identical(resumed: Path, reference: Path) -> None:
    a, b = final_state(resumed), final_state(reference)
    assert a["global_step"] == b["global_step"] == STEPS
    assert a["state_dict"].keys() == b["state_dict"].keys()
    different = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not different, (f"{len(different)} tensors differ, e.g. {different[0]}: max abs difference "
                           f"{(a['state_dict'][different[0]] - b['state_dict'][different[0]]).abs().max():.3g}")
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"]):
        for key, state in opt_a["state"].items():
            for name, value in state.items():
                assert torch.equal(value, opt_b["state"][key][name]), f"optimizer state {key}.{name} differs"


def epoch_steps(recipe: dict[str, Any], world_size: int) -> list[int]:
    """Optimiser steps per epoch on rank 0 for the first epochs (exact epochs differ from epoch to epoch; Lightning
    steps on an epoch's last batch even inside an accumulation)."""
    from mgen.data import lm_datamodule

    data = recipe["data"]
    dm = lm_datamodule(data["shards"], data["segment_seconds"], data["global_batch_size"],
                       num_workers=data["num_workers"], resampled=data["resampled"],
                       epoch_length=data.get("epoch_length"), max_batch_per_device=data["max_batch_per_device"],
                       seed=recipe["seed"], rank=0, world_size=world_size, verbose=False)
    dm.setup("fit")
    counts: list[int] = []
    for epoch in range(STEPS):
        dm.set_epoch(epoch)
        counts.append(math.ceil(sum(1 for _ in dm.train_dataloader()) / dm.accumulate_grad_batches))
        if sum(counts) >= STEPS:
            break
    return counts


def kill_steps(recipe: dict[str, Any], world_size: int, rng: random.Random) -> tuple[int, int]:
    """A mid-epoch step and a later epoch boundary (steps after which the run is killed)."""
    boundaries, total = [], 0
    for count in epoch_steps(recipe, world_size):
        total += count
        boundaries.append(total)
    boundaries = [b for b in boundaries if b < STEPS]
    mid = rng.choice([s for s in range(1, boundaries[-1]) if s not in boundaries])
    boundary = rng.choice([b for b in boundaries if b > mid])
    return mid, boundary


def kill_seed() -> int:
    seed = int(os.environ.get("MGEN_RESUME_SEED", random.SystemRandom().randrange(1 << 30)))
    print(f"\n[exact resume] kill seed {seed} (replay with MGEN_RESUME_SEED={seed})")
    return seed


def run_chains(shards: Path, root: Path, devices: int, cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """For every case (name: resume_recipe options): killed mid-epoch, resumed and killed on an epoch boundary,
    resumed to the end, then the uninterrupted reference; all runs of all cases in one launch."""
    seed = kill_seed()
    runs, kills = [], {}
    for name, options in cases.items():
        recipe = resume_recipe(shards, devices, **options)
        mid, boundary = kills[name] = kill_steps(recipe, devices, random.Random(f"{seed}-{name}"))
        print(f"[exact resume] {devices} process(es), {name}: killed after steps {mid} and {boundary}")
        killed, reference = str(root / name / "killed"), str(root / name / "reference")
        runs += [{"name": f"{name}/kill1", "recipe": recipe, "dir": killed, "kill_at": mid},
                 {"name": f"{name}/kill2", "recipe": recipe, "dir": killed, "kill_at": boundary},
                 {"name": f"{name}/finish", "recipe": recipe, "dir": killed},
                 {"name": f"{name}/reference", "recipe": recipe, "dir": reference}]
    statuses = launch({"devices": devices, "runs": runs}, root / "spec.json")
    return {"root": root, "kills": kills, "statuses": statuses, "log": (root / "spec.rank0.log").read_text()}


def check_case(chains: dict[str, Any], name: str) -> None:
    root, (mid, boundary), statuses = chains["root"], chains["kills"][name], chains["statuses"]
    assert [statuses[f"{name}/{run}"] for run in ("kill1", "kill2", "finish", "reference")] == \
        [-signal.SIGKILL, -signal.SIGKILL, 0, 0], statuses
    killed = root / name / "killed"
    for step in (mid, boundary):
        assert f"resuming from {killed / 'checkpoints' / 'last.ckpt'} (global step {step})" in chains["log"]
    assert_identical(killed, root / name / "reference")


# ---------------------------------------------------------------------------------------------------- tests
ONE_PROCESS = {"resampled-0workers-ema": {"workers": 0, "ema": True},
               "resampled-2workers-accumulate2": {"workers": 2, "accumulate": 2},
               "exact-2workers": {"workers": 2, "resampled": False}}
TWO_RANKS = {"ddp-0workers-ema": {"workers": 0, "ema": True}, "ddp-2workers": {"workers": 2},
             "fsdp-2workers": {"workers": 2, "strategy": "fsdp"}}


@pytest.fixture(scope="module")
def one_process_chains(token_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_chains(token_shards, tmp_path_factory.mktemp("resume_one"), 1, ONE_PROCESS)


@pytest.fixture(scope="module")
def two_rank_chains(token_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_chains(token_shards, tmp_path_factory.mktemp("resume_two"), 2, TWO_RANKS)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(ONE_PROCESS))
def test_resume_is_exact_in_one_process(one_process_chains: dict[str, Any], case: str) -> None:
    check_case(one_process_chains, case)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(TWO_RANKS))
def test_resume_is_exact_on_two_ranks(two_rank_chains: dict[str, Any], case: str) -> None:
    """2 gloo ranks (DDP, FSDP2): every rank's generators and data position come back (rank 0 writes them all)."""
    check_case(two_rank_chains, case)


def test_resume_with_other_data_workers_continues_with_the_next_epoch(token_shards: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """A position read by 1 worker stream cannot continue in 2: the run says so and starts the next epoch."""
    from mgen.train.fit import fit

    recipe = resume_recipe(token_shards)
    recipe["trainer"].update(max_steps=4, checkpoint_every_n_steps=4, val_every_n_steps=100)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(recipe, tmp_path / "run", accelerator="cpu", devices=1)
        assert final_state(tmp_path / "run")["callbacks"]["ExactResume"]["ranks"]["data"][0, 0].tolist() == [1, 0, 0]
        recipe["data"]["num_workers"] = 2
        recipe["trainer"]["max_steps"] = 5
        fit(recipe, tmp_path / "run", accelerator="cpu", devices=1)
    finally:
        torch.set_num_threads(threads)
    assert "data position is for 1 worker stream(s), this run reads 2: training continues with the next epoch (2)" \
        in capsys.readouterr().out
    position = final_state(tmp_path / "run")["callbacks"]["ExactResume"]["ranks"]["data"][0]
    assert position[0, 0] == 2 and position[1:, 1].sum() == 1  # epoch 2, one batch of it


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} SPEC.json")
    spec_path = Path(sys.argv[1])
    results = run_spec(json.loads(spec_path.read_text()))
    spec_path.with_suffix(f".rank{os.environ.get('LOCAL_RANK', '0')}.json").write_text(json.dumps(results))
