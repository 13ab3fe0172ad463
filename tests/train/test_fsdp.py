"""Sharded (FSDP2) LM training on CPU with gloo, two real processes: same maths as one process, really sharded
parameters, single-file checkpoints that resume under FSDP (and on one device), and an export that loads
without Lightning.

Multi-process training runs as a separate program in a subprocess with a timeout (Lightning's launcher re-runs
the command line of its parent for the other ranks, which must not be pytest): this file is that program too
(`python tests/train/test_fsdp.py parity OUT`), and `mgen fit --devices 2` is the other one.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lm_fixtures import recipe as lm_recipe
from rank_launch import launch

from mgen.train.fit import fit

HERE = Path(__file__).resolve().parent
LAUNCH_TIMEOUT_S = 300

# The parity run: a tiny text + melody LM, a fixed global batch of 8 per optimiser step, 2 micro-batches
# (gradient accumulation), clipping that bites, no dropout of any kind (the ranks would draw other coins).
PARITY_STEPS = 4
PARITY_GLOBAL_BATCH = 8
PARITY_ACCUMULATE = 2
PARITY_FRAMES = 40
PARITY_LM = {"dim": 32, "num_heads": 2, "num_layers": 2, "n_q": 4, "card": 64, "cross_attention": True}
PARITY_CONDITIONING = {"text": True, "word_dropout": 0.0, "melody": True, "cfg_dropout": 0.0,
                       "attribute_dropout": {"self_wav": 0.0}}
PARITY_OPTIM = {"lr": 3e-3, "warmup_steps": 2, "max_grad_norm": 0.05}
CAPTIONS = ["a calm chorale for strings", "a fast folk reel on fiddle", "solo piano, slow and soft",
            "a brass fanfare", "a jazz trio with brushes", "an organ hymn", "a cheerful accordion waltz",
            "plucked harp arpeggios"]


# ------------------------------------------------------------------------------------ the parity program
def parity_batches() -> list[dict[str, Any]]:
    """Samples of all steps, in order: step s uses samples [8s, 8s + 8)."""
    gen = torch.Generator().manual_seed(1234)
    n = PARITY_STEPS * PARITY_GLOBAL_BATCH
    codes = torch.randint(0, PARITY_LM["card"], (n, PARITY_LM["n_q"], PARITY_FRAMES), generator=gen)
    chroma = torch.rand(n, 12, PARITY_FRAMES, generator=gen)
    return [{"codes": codes[i], "padding_mask": torch.ones(PARITY_FRAMES, dtype=torch.bool), "chroma": chroma[i],
             "text": CAPTIONS[i % len(CAPTIONS)]} for i in range(n)]


def run_parity(out: Path, devices: int) -> dict[str, Any]:
    """Train the parity LM for PARITY_STEPS optimiser steps on `devices` CPU processes (FSDP with activation
    checkpointing when > 1, plain single-device training otherwise); every rank writes what it saw."""
    import lightning as L
    from torch.distributed.tensor import DTensor
    from torch.utils.data import DataLoader

    from mgen.conditioning.provider import ConditioningConfig
    from mgen.lm.model import LMConfig
    from mgen.train.lm_module import LMModule, LMTrainConfig
    from mgen.train.parallel import FSDPPlan, lm_strategy_options

    class Record(L.Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []
            self.shards: dict[str, list[int]] = {}
            self.norms: list[float] = []

        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            for name, p in pl_module.named_parameters():
                if isinstance(p, DTensor):
                    self.shards[name] = [p.to_local().numel(), p.numel(), str(p.placements[0])]
                else:
                    self.shards[name] = [p.numel(), p.numel(), "plain"]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.losses.append(float(outputs["loss"]))

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            if devices == 1:  # the norm before clipping, to show that clipping bites
                grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
                self.norms.append(float(torch.nn.utils.get_total_norm(grads)))

    class Batches(L.LightningDataModule):
        """Rank r of w takes samples r, r + w, ... in order (Lightning's own distributed sampler would shuffle
        training data), so that each optimiser step covers the same 8 samples on 1 or 2 processes."""

        def train_dataloader(self) -> DataLoader:
            rank, world = self.trainer.global_rank, self.trainer.world_size
            per_device = PARITY_GLOBAL_BATCH // world // PARITY_ACCUMULATE
            return DataLoader(parity_batches()[rank::world], batch_size=per_device, shuffle=False)

    L.seed_everything(0)
    plan = FSDPPlan(activation_checkpointing=True) if devices > 1 else None
    module = LMModule(LMConfig(**PARITY_LM), ConditioningConfig(**PARITY_CONDITIONING),
                      LMTrainConfig(**PARITY_OPTIM), max_steps=PARITY_STEPS, fsdp_plan=plan)
    record = Record()
    trainer = L.Trainer(accelerator="cpu", devices=devices, max_steps=PARITY_STEPS, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, accumulate_grad_batches=PARITY_ACCUMULATE,
                        gradient_clip_val=PARITY_OPTIM["max_grad_norm"], callbacks=[record],
                        use_distributed_sampler=False,
                        **lm_strategy_options("fsdp" if devices > 1 else "auto", devices))
    trainer.fit(module, datamodule=Batches())
    rank = trainer.global_rank
    result = {"rank": rank, "world_size": trainer.world_size, "losses": record.losses, "shards": record.shards,
              "norms": record.norms, "global_step": trainer.global_step,
              "strategy": type(trainer.strategy).__name__}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    if rank == 0:  # after fit, rank 0 holds the gathered, plain LM (LMModule.on_fit_end)
        state = {f"lm.{k}": v for k, v in module.lm.state_dict().items()}
        state.update({f"conditioner.{k}": v for k, v in module.conditioner.state_dict().items()})
        assert not any(isinstance(v, DTensor) for v in state.values())
        torch.save(state, out / "weights.pt")
    return result


# ------------------------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def parity_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The parity LM trained once with FSDP on 2 processes (subprocess) and once on one device (here)."""
    root = tmp_path_factory.mktemp("fsdp_parity")
    (root / "fsdp").mkdir()
    (root / "single").mkdir()
    _, seconds = launch([sys.executable, str(HERE / "test_fsdp.py"), "parity", str(root / "fsdp"), "2"],
                        "FSDP parity run (2 processes)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run_parity(root / "single", devices=1)
    finally:
        torch.set_num_threads(threads)
    ranks = [json.loads((root / "fsdp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    print(f"\n[fsdp] 2-process parity run: {seconds:.1f} s")
    return {"root": root, "single": single, "ranks": ranks}


def test_fsdp_training_matches_single_process_training(parity_runs: dict[str, Any]) -> None:
    """Sharding must not change the maths: with the same global batches, 2-rank FSDP (with activation
    checkpointing, gradient accumulation and clipping) follows the single-process loss trajectory and ends at
    the same weights, conditioner projections (replicated, averaged by hand) included."""
    single, ranks = parity_runs["single"], parity_runs["ranks"]
    assert [r["strategy"] for r in ranks] == ["ModelParallelStrategy"] * 2
    assert single["strategy"] == "SingleDeviceStrategy"
    assert single["global_step"] == ranks[0]["global_step"] == PARITY_STEPS
    assert min(single["norms"]) > 4 * PARITY_OPTIM["max_grad_norm"]  # clipping acts on every step
    micro = PARITY_STEPS * PARITY_ACCUMULATE
    assert len(single["losses"]) == len(ranks[0]["losses"]) == micro
    # micro-batch i: the single process sees samples 4i..4i+3, FSDP rank r sees 4i+r and 4i+r+2 (equal lengths,
    # so the mean of the two rank losses is the loss of the 4 samples)
    single_losses = torch.tensor(single["losses"])
    fsdp_losses = torch.tensor([r["losses"] for r in ranks]).mean(0)
    torch.testing.assert_close(fsdp_losses, single_losses, rtol=1e-5, atol=1e-6)
    assert single_losses[-2:].mean() < single_losses[:2].mean()  # it trained

    reference = torch.load(parity_runs["root"] / "single" / "weights.pt", weights_only=True)
    sharded = torch.load(parity_runs["root"] / "fsdp" / "weights.pt", weights_only=True)
    assert set(reference) == set(sharded) and any(k.startswith("conditioner.") for k in reference)
    initial = _initial_weights()
    for name, value in reference.items():
        assert not torch.equal(value, initial[name]), f"{name} did not train"
        torch.testing.assert_close(sharded[name], value, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def _initial_weights() -> dict[str, torch.Tensor]:
    import lightning as L

    from mgen.conditioning.provider import ConditioningConfig
    from mgen.lm.model import LMConfig
    from mgen.train.lm_module import LMModule, LMTrainConfig

    L.seed_everything(0)
    module = LMModule(LMConfig(**PARITY_LM), ConditioningConfig(**PARITY_CONDITIONING),
                      LMTrainConfig(**PARITY_OPTIM), max_steps=PARITY_STEPS)
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_fsdp_parameters_are_sharded(parity_runs: dict[str, Any]) -> None:
    """Every LM parameter is a DTensor sharded on dim 0 and each rank holds its half (the two halves make the
    whole; FSDP pads uneven dim-0 sizes, so rank 0 holds the rounded-up half); the conditioner's projections
    stay plain and whole on every rank."""
    ranks = parity_runs["ranks"]
    shards = [r["shards"] for r in ranks]
    assert shards[0].keys() == shards[1].keys()
    lm_names = [n for n in shards[0] if n.startswith("lm.")]
    assert len(lm_names) > 10
    for name in lm_names:
        (local0, full, placement0), (local1, full1, placement1) = shards[0][name], shards[1][name]
        assert placement0 == placement1 == "S(0)", name
        assert full == full1 and local0 + local1 == full, (name, local0, local1, full)
        assert local0 >= local1 and local0 - local1 <= full // 2, name
    sharded_elements = sum(shards[0][n][0] for n in lm_names)
    total_elements = sum(shards[0][n][1] for n in lm_names)
    assert abs(sharded_elements / total_elements - 0.5) < 0.02
    for name in shards[0]:
        if name.startswith("conditioner."):
            assert shards[0][name][2] == "plain" and shards[0][name][0] == shards[0][name][1], name


# ------------------------------------------------------------------------------- through `mgen fit`
def fit_recipe(shards: Path, steps: int) -> dict[str, Any]:
    r = lm_recipe(shards, steps)
    r["data"].update(global_batch_size=4, epoch_length=40)
    # bf16 weights in forward / backward (what GPUs get by default), fp32 master weights, optimiser and checkpoints
    r["trainer"].update(strategy="fsdp", fsdp={"param_dtype": "bf16"}, val_every_n_steps=4, limit_val_batches=1,
                        checkpoint_every_n_steps=4, log_every_n_steps=1)
    r["samples"] = {"count": 1, "seconds": 0.2, "top_k": 20}  # generation on every rank through sharded forwards
    return r


def mgen_fit(recipe_path: Path, run: Path, what: str) -> tuple[str, float]:
    res, seconds = launch([sys.executable, "-m", "mgen.cli", "fit", str(recipe_path), "--out", str(run),
                           "--devices", "2", "--accelerator", "cpu"], what)
    return res.stdout + res.stderr, seconds


def test_fsdp_fit_checkpoint_resume_and_export(token_shards: Path, tmp_path: Path) -> None:
    """`mgen fit` with trainer.strategy: fsdp (bf16 mixed precision) on 2 processes: last.ckpt is one file with
    full (gathered) fp32 weights that torch.load(weights_only=True) reads; running again resumes from it under
    FSDP and continues at the right step with the restored optimiser and schedule; validation samples are
    generated through the sharded model; the export holds the final weights, loads with MusicGen.load and
    generates."""
    from mgen.musicgen import MusicGen

    run = tmp_path / "run"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(fit_recipe(token_shards, 4)))
    out, first = mgen_fit(path, run, "mgen fit (FSDP, 4 steps)")
    assert "resuming from" not in out
    ckpt_path = run / "checkpoints" / "last.ckpt"
    assert ckpt_path.is_file()  # one file, not a distributed-checkpoint folder
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    state = ckpt["state_dict"]
    from mgen.lm.model import LM, LMConfig
    reference = LM(LMConfig.from_dict(ckpt["hyper_parameters"]["lm"])).state_dict()
    for name, value in reference.items():  # full shapes, not shards; fp32 master weights
        assert state[f"lm.{name}"].shape == value.shape and state[f"lm.{name}"].dtype == torch.float32, name
    assert any(k.startswith("conditioner.") for k in state)
    assert sorted(os.listdir(run / "logs" / "media")), "no validation samples were written"
    step4 = {k: v.clone() for k, v in state.items()}

    path.write_text(yaml.safe_dump(fit_recipe(token_shards, 8)))
    out, second = mgen_fit(path, run, "mgen fit (FSDP, resume to 8 steps)")
    assert f"resuming from {ckpt_path}" in out
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 8
    steps = [int(r["step"]) for r in csv.DictReader((run / "logs" / "metrics.csv").open()) if r.get("train/ce")]
    # one history: steps 0..3 from the first run, 4..7 from the resumed one, each once
    assert steps == list(range(8)), steps
    adam_steps = {float(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert adam_steps == {8.0}  # AdamW state restored at 4 and continued, not restarted
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 8
    assert any(not torch.equal(ckpt["state_dict"][k], v) for k, v in step4.items())

    model = MusicGen.load(run / "export")
    from safetensors.torch import load_file
    exported = load_file(str(run / "export" / "model.safetensors"))
    for name, value in exported.items():  # the export holds the final, full weights
        torch.testing.assert_close(value, ckpt["state_dict"][name], rtol=0, atol=0)
    audio = model.generate(["a cheerful folk tune"], duration=0.3, top_k=20, seed=0)
    assert audio.shape[0] == 1 and torch.isfinite(audio).all()

    # the single-file checkpoint also resumes on one device without FSDP (here, in-process)
    single = fit_recipe(token_shards, 10)
    single["trainer"].update(strategy="auto")
    del single["trainer"]["fsdp"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = fit(single, run)
    finally:
        torch.set_num_threads(threads)
    assert summary["global_step"] == 10
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert {float(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()} == {10.0}
    print(f"\n[fsdp] mgen fit 2 processes: 4 steps {first:.1f} s, resume to 8 steps {second:.1f} s")


def test_fsdp_recipe_errors() -> None:
    from mgen.train.parallel import FSDPPlan, lm_strategy_options
    from mgen.train.recipe import parse_recipe

    def fails(trainer: dict, match: str, **sections: dict) -> None:
        with pytest.raises(ValueError, match=match):
            parse_recipe({"task": "lm", "trainer": trainer, **sections})

    fails({"strategy": "fsdp"}, "does not support `ema:`", ema={"decay": 0.99})
    fails({"strategy": "deepspeed"}, "trainer.strategy: Input should be 'auto', 'ddp' or 'fsdp'")
    fails({"strategy": "fsdp", "precision": "bf16-mixed"}, "keeps trainer.precision at 32-true")
    fails({"strategy": "fsdp", "fsdp": {"activation_ckpt": True}}, "unknown key trainer.fsdp.activation_ckpt")
    fails({"strategy": "ddp", "fsdp": {}}, "trainer.fsdp is set but trainer.strategy is 'ddp'")
    with pytest.raises(ValueError, match="param_dtype must be one of"):
        FSDPPlan(param_dtype="fp16")
    with pytest.raises(ValueError, match="trainer.strategy must be one of"):
        lm_strategy_options("deepspeed", 2)
    assert lm_strategy_options("auto", 1) == {}
    assert lm_strategy_options("auto", 4) == {"strategy": "ddp"}
    assert type(lm_strategy_options("fsdp", 2)["strategy"]).__name__ == "ModelParallelStrategy"
    recipe = parse_recipe({"task": "lm", "trainer": {"strategy": "fsdp", "fsdp": {"param_dtype": "bf16"}}})
    assert recipe.trainer.fsdp.mixed_precision("cpu").param_dtype == torch.bfloat16
    assert FSDPPlan().mixed_precision("cpu").param_dtype == torch.float32
    assert FSDPPlan().mixed_precision("cuda").param_dtype == torch.bfloat16


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "parity":
        sys.exit(f"usage: {sys.argv[0]} parity OUT_DIR DEVICES")
    run_parity(Path(sys.argv[2]), int(sys.argv[3]))
