"""Weight averages: the recipes' `ema:` section, and the LM's average as a callback.

The codec keeps its own average inside `CodecModule` (see its docstring); the LM uses Lightning's
`EMAWeightAveraging`, with the hand-over moved to the end of fit.

Validation (and its samples) runs on the average, checkpoints keep the average as `state_dict` and the live
weights as `current_model_state`, so resuming continues both. Lightning copies the average into the module in
`on_train_end`, which runs before `ModelCheckpoint` writes its final `last.ckpt`: that checkpoint would then
hold the average twice and a resumed run would continue from the average instead of the live weights. Here
the copy happens in `teardown`, after every `on_train_end`, so the module holds the average for the export
and the final checkpoint is right.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging


@dataclass
class EMAConfig:
    """The `ema:` section. decay: None or 0 trains without an average (the codec recipes default to 0.99, the
    published value); every_n_steps: optimiser steps (codec: generator updates) between updates; start_step: the
    LM's first averaged step (None: from the start)."""

    decay: float | None = None
    every_n_steps: int = 1
    start_step: int | None = None

    def __post_init__(self) -> None:
        if self.decay is not None and not 0.0 <= self.decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1) or null, got {self.decay}")
        if self.every_n_steps < 1:
            raise ValueError(f"ema.every_n_steps must be >= 1, got {self.every_n_steps}")
        if self.start_step is not None and self.start_step < 0:
            raise ValueError(f"ema.start_step must be >= 0 or null, got {self.start_step}")


class LMWeightAverage(EMAWeightAveraging):
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing yet: `teardown` hands the average over once the final checkpoint is written."""

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self._average_model is not None:
            self._copy_average_to_current(pl_module)
