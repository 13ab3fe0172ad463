"""W&B for real: a run logged offline is read back from its files (tests/wandb_records.py) and checked value by value,
and no credential from the environment lands anywhere a run writes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import wandb
import yaml
from PIL import Image
from lm_fixtures import recipe
from wandb_records import WandbRun, read_records

from mgen.train.loggers import RunWandbLogger, finish_loggers, make_loggers
from mgen.train.recipe import parse_recipe

REPO = Path(__file__).resolve().parents[2]
# Dummy credentials put in the environment of the run: none may appear in any file it writes or in its output.
SECRETS = {
    "WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567",
    "HF_TOKEN": "hf_mgenTestDummyTokenNeverWritten0001",
    "AWS_SECRET_ACCESS_KEY": "mgenDummyAwsSecretNeverWritten/0002",
}
# what Slurm puts in a job's environment for `sbatch --export=ALL,HF_TOKEN=...` (W&B records all SLURM_*)
SECRETS["SLURM_EXPORT_ENV"] = f"ALL,HF_TOKEN={SECRETS['HF_TOKEN']}"
GIT_TOKEN = "ghp_mgenDummyGitTokenNeverWritten0003"  # in the git remote URL of the working directory


def wandb_env(tmp_path: Path) -> dict[str, str]:
    """Offline W&B with its cache/data/config folders inside the test's tmp (so they are searched too)."""
    home = tmp_path / "wandb-home"
    return {"WANDB_MODE": "offline", "WANDB_CACHE_DIR": str(home / "cache"), "WANDB_DATA_DIR": str(home / "data"),
            "WANDB_CONFIG_DIR": str(home / "config"), "WANDB_SILENT": "true"}


def test_reader_returns_config_metrics_and_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through mgen's W&B logger: the recipe as config, scalars against the global step, a table's cells (the
    evaluation table's shape), a corrupt record refused; Slurm's `--export` values kept from W&B; each `fit` gets
    its own W&B run, and a run the caller opened stays open."""
    for name, value in {**wandb_env(tmp_path), "SLURM_JOB_ID": "4242", **SECRETS}.items():
        monkeypatch.setenv(name, value)
    recipe_dict = {"task": "lm", "seed": 3, "optim": {"lr": 1e-3}, "logger": {"project": "mgen-test"}}
    loggers = make_loggers(tmp_path / "first", parse_recipe(recipe_dict), wandb=True, config=recipe_dict)
    wandb_logger = loggers[1]
    assert isinstance(wandb_logger, RunWandbLogger)
    wandb_logger.log_hyperparams({"lm": {"dim": 64}})
    wandb_logger.log_metrics({"train/ce": 5.5}, step=4)
    wandb_logger.log_metrics({"train/ce": 4.25, "val/ce": 6.0}, step=8)
    wandb_logger.log_table("val/eval", columns=["metric", "value", "n"],
                           data=[["fad_codec", 1.5, 16], ["kad_codec", 0.25, 16]], step=8)
    wandb_logger.log_table("val/eval", columns=["metric", "value", "n"], data=[["fad_codec", 1.0, 16]], step=12)
    finish_loggers(loggers)

    run = WandbRun.load(tmp_path / "first" / "logs")
    assert run.config["recipe"] == recipe_dict and run.config["lm"] == {"dim": 64}
    # W&B records Slurm's job variables, but never sees the one that repeats `sbatch --export` values
    recorded = [dict(e.slurm) for e in run.of_type("environment") if e.slurm]
    assert recorded and all(r["job_id"] == "4242" and "export_env" not in r for r in recorded)
    assert os.environ["SLURM_EXPORT_ENV"] == SECRETS["SLURM_EXPORT_ENV"]  # put back for the rest of the job
    assert run.of_type("run")[0].project == "mgen-test" and run.of_type("run")[0].display_name == "first"
    assert run.series("train/ce") == [(4, 5.5), (8, 4.25)] and run.series("val/ce") == [(8, 6.0)]
    assert run.table("val/eval") == [(8, ["metric", "value", "n"], [["fad_codec", 1.5, 16], ["kad_codec", 0.25, 16]]),
                                     (12, ["metric", "value", "n"], [["fad_codec", 1.0, 16]])]

    # a second fit in the same process starts its own run (Lightning alone would reuse the first, still open)
    assert wandb.run is None
    second = make_loggers(tmp_path / "second", parse_recipe({"task": "lm"}), wandb=True)
    second[1].log_metrics({"train/ce": 3.0}, step=1)
    finish_loggers(second)
    assert WandbRun.load(tmp_path / "second" / "logs").series("train/ce") == [(1, 3.0)]
    assert WandbRun.load(tmp_path / "first" / "logs").series("train/ce") == [(4, 5.5), (8, 4.25)]
    assert _files_holding([tmp_path / "first", tmp_path / "second"], [v.encode() for v in SECRETS.values()]) == []
    # a run the caller opened is logged into and left open for the caller
    outer = wandb.init(project="outer", dir=str(tmp_path / "outer"))
    inside = make_loggers(tmp_path / "third", parse_recipe({"task": "lm"}), wandb=True)
    with pytest.warns(UserWarning, match="wandb run already in progress"):  # Lightning says so
        inside[1].log_metrics({"train/ce": 2.0}, step=1)
    finish_loggers(inside)
    assert wandb.run is outer
    outer.finish()
    wandb.teardown()

    log = next((tmp_path / "first" / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))
    data = bytearray(log.read_bytes())
    data[len(data) // 2] ^= 0xFF
    log.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt record"):
        read_records(log)


def csv_series(run_dir: Path, name: str) -> list[tuple[int, float]]:
    """(step, value) of one metric in mgen's own `metrics.csv`."""
    rows = csv.DictReader((run_dir / "logs" / "metrics.csv").open())
    return [(int(row["step"]), float(row[name])) for row in rows if row.get(name)]


def _texts_of(shards: Path, split: str) -> set[str]:
    texts = set()
    for tar_path in shards.glob(f"{split}-*.tar"):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    texts.add(json.loads(tar.extractfile(member).read())["caption"])
    return texts


def _files_holding(roots: list[Path], needles: list[bytes]) -> list[str]:
    """Every file under `roots` (binary ones included) that contains one of `needles`."""
    found = []
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                found += [f"{path}: {needle.decode()}" for needle in needles if needle in data]
    return found


@pytest.mark.slow  # ~25 s on an idle 2-core machine: one `mgen fit` subprocess (imports, 6 steps, 2 validations)
def test_fit_logs_metrics_samples_and_config_to_wandb_and_no_secret(token_shards: Path,
                                                                     tmp_path: Path) -> None:
    """`mgen fit --wandb` offline, with dummy credentials in its environment and in its git remote: the run file
    holds train/ce and val/ce at the steps metrics.csv has them, the validation samples with their captions as
    WAVs equal to mgen's own, their spectrograms as the same PNGs, the resolved recipe as config; no credential
    appears in the run directory (checkpoints, export, CSV, W&B files and logs), W&B's folders or the output."""
    r = recipe(token_shards, 6)
    r["samples"] = {"count": 2, "seconds": 0.5, "top_k": 20}
    r["trainer"].update(val_every_n_steps=3, log_every_n_steps=2, limit_val_batches=1, checkpoint_every_n_steps=6)
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(r))
    workdir = tmp_path / "project"  # W&B records the git remote of the working directory
    workdir.mkdir()
    for args in (["init", "-q"], ["remote", "add", "origin", f"https://{GIT_TOKEN}@github.com/example/music.git"],
                 ["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", *args], cwd=workdir, check=True, capture_output=True)
    run_dir = tmp_path / "run"
    env = {**os.environ, **wandb_env(tmp_path), **SECRETS,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "mgen.cli", "fit", str(recipe_path), "--out", str(run_dir),
                           "--wandb"], cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    run = WandbRun.load(run_dir / "logs")
    assert run.config["recipe"] == yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert run.config["lm"]["card"] == 256  # the module's resolved hyper-parameters beside it
    # Lightning's steps: a training metric at its batch (0-based), a validation at the batch before it; the
    # validation media at trainer.global_step (3 and 6, after 3 and 6 updates)
    from_csv = {name: csv_series(run_dir, name) for name in ("train/ce", "val/ce")}
    assert [s for s, _ in from_csv["train/ce"]] == [1, 3, 5] and [s for s, _ in from_csv["val/ce"]] == [2, 5]
    for name, expected in from_csv.items():
        got = run.series(name)
        assert [s for s, _ in got] == [s for s, _ in expected], name
        assert np.allclose([v for _, v in got], [v for _, v in expected], rtol=1e-6), name

    captions = _texts_of(token_shards, "valid")
    for key, prefix in (("val/samples", "val_samples"), ("val/samples_reference", "val_samples_reference")):
        logged_audio = run.audio(key)
        assert [step for step, _ in logged_audio] == [3, 6], key
        for step, clips in logged_audio:
            assert len(clips) == 2
            for i, (path, caption) in enumerate(clips):
                assert caption in captions, caption
                clip, rate = sf.read(path)
                mine, my_rate = sf.read(run_dir / "logs" / "media" / f"{prefix}_step{step}_{i}.wav")
                assert rate == my_rate == 32000 and clip.shape == mine.shape == (16000,)
                assert np.abs(clip - mine).max() <= 2 / 32768 and np.abs(clip).max() > 0
        spectrograms = run.images(f"{key}/spectrogram")
        assert [step for step, _ in spectrograms] == [3, 6]
        for (step, images), (_, clips) in zip(spectrograms, logged_audio):
            assert [c for _, c in images] == [c for _, c in clips]  # the same captions as the audio
            for i, (path, _) in enumerate(images):
                mine = np.asarray(Image.open(run_dir / "logs" / "media" / f"{prefix}_step{step}_{i}.png"))
                assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), mine)

    environment = run.of_type("environment")
    assert any(e.git.remote_url for e in environment)  # the remote was read, and its credential dropped
    needles = [v.encode() for v in [*SECRETS.values(), GIT_TOKEN]]
    assert _files_holding([run_dir, tmp_path / "wandb-home"], needles) == []
    assert not [n for n in needles if n.decode() in proc.stdout + proc.stderr]
