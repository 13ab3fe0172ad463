"""Exact resume: what a checkpoint needs beyond weights, optimiser, schedule and loop counters (which Lightning
saves) for a resumed run to continue bit for bit as if it had never stopped.

* **Random number generators**: torch's global CPU generator (word dropout, model dropout, codebook resets draw
  from it), the current CUDA device's, numpy's and Python's global ones, and every ``torch.Generator`` held by the
  LightningModule or its submodules (the conditioner's CFG / attribute dropout coins). The data never draws from
  these (its randomness is seeded by sample coordinates, and the loaders seed their workers from a generator of
  their own, see :mod:`mgen.data.datamodule`), so the only draws between two training steps are the model's.
  They are restored in ``on_train_start``, after the loaders of the resumed run have started and right before its
  first step, so the resumed draws line up with the uninterrupted run's.
* **The data position**: where each rank's training stream stands inside the epoch (:mod:`mgen.data.position`),
  followed batch by batch in ``on_train_batch_end`` and handed to the DataModule on load, before its loader starts.
  A checkpoint written on an epoch's last batch resumes into the next epoch, and so does the final checkpoint of a
  run that reached ``max_steps`` inside an epoch (Lightning counts that epoch as finished: a run extended from it
  starts the next epoch in both the loop and the data).

Every rank has its own generators and its own stream, but only rank 0 writes the checkpoint: each rank's state is
gathered into it (one collective while the checkpoint is assembled, which Lightning does on all ranks together) and
each rank restores its own on resume. A run resumed with another world size (or another number of data workers)
cannot continue exactly: it keeps fresh generators on the extra ranks and starts the data at the next epoch.

This callback must see each training batch before any callback that may save a checkpoint at that batch (``mgen
fit`` puts it first; Lightning runs ``ModelCheckpoint`` after all other callbacks).
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import lightning as L
import numpy as np
import torch

from mgen.data.position import StreamPosition

NUMPY_GENERATOR = "MT19937"


def module_generators(module: torch.nn.Module) -> dict[str, torch.Generator]:
    """Every ``torch.Generator`` held as an attribute by ``module`` or a submodule, by dotted name (a generator
    shared by several modules is listed once, under its first name)."""
    found: dict[str, torch.Generator] = {}
    seen: set[int] = set()
    for path, sub in module.named_modules():
        for attr, value in vars(sub).items():
            if isinstance(value, torch.Generator) and id(value) not in seen:
                seen.add(id(value))
                found[f"{path}.{attr}" if path else attr] = value
    return found


def capture_rng(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """This process's generator states as CPU tensors (same names and shapes on every rank of a job)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy.keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy.pos": torch.tensor([pos, has_gauss], dtype=torch.int64),
        "numpy.cached": torch.tensor([cached], dtype=torch.float64),
        "python.internal": torch.tensor(internal, dtype=torch.int64),
        "python.gauss": torch.tensor([gauss_next is not None, gauss_next or 0.0], dtype=torch.float64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    for name, generator in module_generators(module).items():
        states[f"generator.{name}"] = generator.get_state()
    return states


def _byte_state(value: torch.Tensor) -> torch.Tensor:
    """A generator state as its own uint8 tensor: torch 2.13 crashes (SIGSEGV) setting a state from a view that
    starts inside a larger storage, such as one rank's row of a gathered checkpoint tensor."""
    return value.to(torch.uint8).clone()


def restore_rng(module: torch.nn.Module, states: dict[str, torch.Tensor]) -> list[str]:
    """Set the generators from ``capture_rng`` states; returns the names that had no generator to go to."""
    torch.set_rng_state(_byte_state(states["torch"]))
    pos, has_gauss = (int(v) for v in states["numpy.pos"])
    np.random.set_state((NUMPY_GENERATOR, states["numpy.keys"].numpy().astype(np.uint32), pos, has_gauss,
                         float(states["numpy.cached"][0])))
    flag, gauss = (float(v) for v in states["python.gauss"])
    random.setstate((3, tuple(int(v) for v in states["python.internal"]), gauss if flag else None))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(_byte_state(states["cuda"]))
    generators = module_generators(module)
    missing = []
    for name, state in states.items():
        if name.startswith("generator."):
            target = generators.get(name.removeprefix("generator."))
            if target is None:
                missing.append(name)
            else:
                target.set_state(_byte_state(state))
    return missing


class ExactResume(L.Callback):
    """Saves every rank's generators and data position in checkpoints and restores them on resume."""

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._module: L.LightningModule | None = None
        self._rng_to_restore: dict[str, torch.Tensor] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer, self._module = trainer, pl_module

    # ------------------------------------------------------------------------------------------------ following
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        record = getattr(trainer.datamodule, "record_train_batch", None)
        if record is not None:
            record(batch, last=bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """At ``max_steps`` Lightning ends the epoch wherever it is; the final checkpoint (written after this hook)
        then resumes into the next epoch, data included."""
        end = getattr(trainer.datamodule, "end_train_pass", None)
        if end is not None:
            end()

    # ----------------------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        trainer, module = self._trainer, self._module
        if trainer is None or module is None:
            return {}
        states = {f"rng.{k}": v for k, v in capture_rng(module).items()}
        position = getattr(trainer.datamodule, "train_position", None)
        if isinstance(position, StreamPosition):
            states["data"] = position.to_tensor()
        return {"world_size": trainer.world_size, "ranks": _gather(trainer, states)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        trainer = self._trainer
        if trainer is None or not state_dict:
            return
        ranks, saved_world = state_dict["ranks"], int(state_dict["world_size"])
        same_world = saved_world == trainer.world_size
        rank = trainer.global_rank
        if not same_world and trainer.is_global_zero:
            print(f"[mgen fit] the checkpoint was written by {saved_world} rank(s), this run has "
                  f"{trainer.world_size}: random generators and data continue from fresh states (not exact)")
        if same_world:
            self._rng_to_restore = {k.removeprefix("rng."): v[rank] for k, v in ranks.items() if k.startswith("rng.")}
        resume_at = getattr(trainer.datamodule, "resume_at", None)
        if "data" in ranks and resume_at is not None:
            position = StreamPosition.from_tensor(ranks["data"][rank if same_world else 0])
            if not same_world:  # another split of the data over ranks: no sample-exact continuation exists
                position = StreamPosition(position.epoch, position.workers, complete=True)
            resume_at(position)
            # Lightning cannot see that the DataModule continues the epoch (its loaders are not `_Stateful`)
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._rng_to_restore is None:
            return
        missing = restore_rng(pl_module, self._rng_to_restore)
        self._rng_to_restore = None
        if missing and trainer.is_global_zero:
            print(f"[mgen fit] random generators in the checkpoint with no generator to restore them to: {missing}")


def _gather(trainer: L.Trainer, states: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{name: [world_size, ...]}``: every rank's tensor of each name, in rank order (a collective)."""
    if trainer.world_size == 1:
        return {name: value[None] for name, value in states.items()}
    device = trainer.strategy.root_device  # NCCL gathers device tensors only
    return {name: trainer.strategy.all_gather(value.to(device)).cpu() for name, value in states.items()}
