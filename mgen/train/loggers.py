"""The loggers of a run: CSV always (`RUN/logs/metrics.csv`), W&B when asked (offline works without network).

Lightning's CSV writer deletes an existing `metrics.csv` when it starts, so every resume (a re-run, a
requeued Slurm job) would lose the history of the run. `ResumableCSVLogger` keeps it: it drops only the rows
logged after the step the run resumes from (they are logged again) and appends.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _ResumableWriter(ExperimentWriter):
    def __init__(self, log_dir: str, resumed_at: int | None):
        self.resumed_at = resumed_at
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        """Keep the history up to the resumed step (a fresh run starts a fresh file)."""
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        if self.resumed_at is None:
            path.unlink()
            return
        with path.open(newline="") as file:
            reader = csv.DictReader(file)
            keys = list(reader.fieldnames or [])
            rows = [row for row in reader if not row.get("step") or int(float(row["step"])) < self.resumed_at]
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        self.metrics_keys = sorted(keys)


class ResumableCSVLogger(CSVLogger):
    """CSVLogger that continues `metrics.csv` when the run resumes from a checkpoint at `resumed_at`."""

    def __init__(self, save_dir: str, resumed_at: int | None = None):
        super().__init__(save_dir, name="", version="")
        self.resumed_at = resumed_at

    @property
    @rank_zero_experiment  # as in CSVLogger: only rank 0 touches the file
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumableWriter(self.log_dir, self.resumed_at)
        return self._experiment


def make_loggers(run_dir: Path, recipe: dict[str, Any], wandb: bool, resumed_at: int | None = None) -> list[Logger]:
    loggers: list[Logger] = [ResumableCSVLogger(str(run_dir / "logs"), resumed_at)]
    if wandb or recipe.get("logger", {}).get("wandb"):
        project = recipe.get("logger", {}).get("project", "mgen")
        loggers.append(WandbLogger(project=project, name=run_dir.name, save_dir=str(run_dir / "logs"),
                                   offline=os.environ.get("WANDB_MODE") == "offline"))
    return loggers
