"""EMA of the LM weights: Lightning's `EMAWeightAveraging`, with the hand-over moved to the end of fit.

Validation (and its samples) runs on the average, checkpoints keep the average as `state_dict` and the live
weights as `current_model_state`, so resuming continues both. Lightning copies the average into the module in
`on_train_end`, which runs before `ModelCheckpoint` writes its final `last.ckpt`: that checkpoint would then
hold the average twice and a resumed run would continue from the average instead of the live weights. Here
the copy happens in `teardown`, after every `on_train_end`, so the module holds the average for the export
and the final checkpoint is right.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging


class LMWeightAverage(EMAWeightAveraging):
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing yet: `teardown` hands the average over once the final checkpoint is written."""

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self._average_model is not None:
            self._copy_average_to_current(pl_module)
