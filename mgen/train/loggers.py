"""The loggers of a run: CSV always (`RUN/logs/metrics.csv`), W&B when asked (offline works without network).

W&B gets the resolved recipe as the run's config (under `recipe`, once, from rank 0 when the run starts; the
LightningModule's hyper-parameters land beside it), the metrics against `trainer/global_step`, and the media of
`mgen.train.media`. `RunWandbLogger.finish` closes the W&B run at the end of `fit`: Lightning leaves it open,
so a second `fit` in the same process would otherwise log into the first run. No credential is ever passed to
W&B or written by mgen: W&B reads its key from its own login or `WANDB_API_KEY`. W&B's service records every
`SLURM_*` variable of its environment, and `SLURM_EXPORT_ENV` holds `sbatch --export=ALL,KEY=VALUE,...`
verbatim (tokens included), so the service is started without it (tests/train/test_wandb_logging.py checks that no
credential lands in a run directory).

Lightning's CSV writer deletes an existing `metrics.csv` when it starts, so every resume (a re-run, a
requeued Slurm job) would lose the history of the run. `ResumableCSVLogger` keeps it: it drops only the rows
logged after the step the run resumes from (they are logged again) and appends.

Only global rank 0 writes (Lightning's `rank_zero_experiment`). Rows are appended; whenever the file is rewritten
(a resume, new columns) and for `hparams.yaml`, the new version is committed with `mgen.atomic`, so a kill never
loses the history. Buffered rows are written with every checkpoint; a kill during an append can leave a partial
last row, which the next start drops.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only

from mgen.atomic import atomic_path


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
        text = path.read_text()
        if not text.endswith("\n"):  # a kill in the middle of an append: drop the partial row
            text = text[: text.rfind("\n") + 1]
        reader = csv.DictReader(io.StringIO(text, newline=""))
        keys = list(reader.fieldnames or [])
        rows = [row for row in reader if not row.get("step") or int(float(row["step"])) < self.resumed_at]
        self._write(keys, rows)
        self.metrics_keys = sorted(keys)

    def _write(self, keys: list[str], rows: list[dict[str, Any]]) -> None:
        with atomic_path(self.metrics_file_path) as tmp, tmp.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as file:
            rows = list(csv.DictReader(file))
        self._write(fieldnames, rows)

    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)
        with atomic_path(Path(self.log_dir) / self.NAME_HPARAMS_FILE) as tmp:
            save_hparams_to_yaml(tmp, self.hparams)


class ResumableCSVLogger(CSVLogger):
    """CSVLogger that continues `metrics.csv` when the run resumes from a checkpoint at `resumed_at`."""

    def __init__(self, save_dir: str, resumed_at: int | None = None):
        super().__init__(save_dir, name="", version="")
        self.resumed_at = resumed_at

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Write the buffered rows with every checkpoint (Lightning buffers 100 steps): a killed run then loses only
        rows logged after its last checkpoint, which the resumed run logs again."""
        self.save()

    @property
    @rank_zero_experiment  # as in CSVLogger: only rank 0 touches the file
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumableWriter(self.log_dir, self.resumed_at)
        return self._experiment


# environment variables W&B would record (it keeps all SLURM_*) that can hold credentials
HIDDEN_FROM_WANDB = ("SLURM_EXPORT_ENV",)


@contextlib.contextmanager
def hidden_from_wandb() -> Iterator[None]:
    """Leave `HIDDEN_FROM_WANDB` out of the environment while W&B starts its service (which copies it)."""
    saved = {name: os.environ.pop(name) for name in HIDDEN_FROM_WANDB if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


class RunWandbLogger(WandbLogger):
    """Lightning's WandbLogger, plus the resolved recipe as config and a `finish` for the run it started."""

    def __init__(self, run_dir: Path, recipe: dict[str, Any], project: str):
        import wandb  # only runs that log to W&B import it

        super().__init__(project=project, name=run_dir.name, save_dir=str(run_dir / "logs"),
                         offline=os.environ.get("WANDB_MODE") == "offline", config={"recipe": recipe})
        self._outer_run = wandb.run  # a run the caller opened is reused by Lightning, and left open

    @property
    def experiment(self):  # W&B's Run, or Lightning's dummy on ranks other than 0
        if self._experiment is None and rank_zero_only.rank == 0:
            with hidden_from_wandb():
                return super().experiment
        return super().experiment

    def finish(self, failed: bool = False) -> None:
        """Close the W&B run this logger started (rank 0; other ranks never start one). W&B's service writes the
        offline run file in the background; with no other run open it is shut down too, so that the file is
        complete when `fit` returns (a later run starts a new service)."""
        import wandb

        if self._experiment is not None and self._experiment is not self._outer_run:
            self._experiment.finish(exit_code=1 if failed else 0)
            self._experiment = None
            if wandb.run is None:
                wandb.teardown()


def make_loggers(run_dir: Path, recipe: Any, wandb: bool, config: dict[str, Any] | None = None,
                 resumed_at: int | None = None) -> list[Logger]:
    """CSV always; W&B with `--wandb` or the typed recipe's `logger.wandb`. The W&B run's config is `config` (the
    recipe as written, = RUN/recipe.yaml) or else the typed recipe with its defaults."""
    loggers: list[Logger] = [ResumableCSVLogger(str(run_dir / "logs"), resumed_at)]
    if wandb or recipe.logger.wandb:
        config = config if config is not None else recipe.model_dump(mode="json")
        loggers.append(RunWandbLogger(run_dir, config, project=recipe.logger.project))
    return loggers


def finish_loggers(loggers: list[Logger], failed: bool = False) -> None:
    """End what the loggers started in this process (the W&B run); CSV needs nothing."""
    for logger in loggers:
        if isinstance(logger, RunWandbLogger):
            logger.finish(failed)
