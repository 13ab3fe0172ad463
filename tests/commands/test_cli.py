"""The `mgen` command: help, info, and the benchmarks' smoke mode (real runs, tiny sizes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mgen.cli import main
from mgen.lm.model import LMConfig, count_parameters


def run_mgen(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mgen.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_help_lists_subcommands() -> None:
    out = run_mgen("--help")
    assert out.returncode == 0
    for command in ("info", "bench"):
        assert command in out.stdout


def test_info_reports_parameters_and_memory(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "--preset", "large", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == count_parameters(LMConfig.preset("large"))
    fp32, bf16 = info["memory"]["fp32"], info["memory"]["bf16"]
    assert fp32["weights_gib"] == pytest.approx(info["parameters"] * 4 / 2**30)
    assert bf16["total_gib"] == pytest.approx(fp32["total_gib"] / 2)
    assert main(["info", "--preset", "small"]) == 0
    assert "parameters:" in capsys.readouterr().out


def test_unknown_preset_is_rejected() -> None:
    out = run_mgen("info", "--preset", "gigantic")
    assert out.returncode != 0 and "invalid choice" in out.stderr


@pytest.mark.parametrize("bench,key", [("lm-train", "tokens_per_s"), ("generate", "frames_per_s")])
def test_bench_smoke_vs_transformers_prints_one_json_line(bench: str, key: str) -> None:
    out = run_mgen("bench", bench, "--smoke", "--vs", "transformers", "--repeats", "1")
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["bench"] == bench
    assert result[f"mgen_{key}"] > 0 and result[f"transformers_{key}"] > 0
    assert result["speedup_vs_transformers"] > 0


def test_fit_refuses_a_file_as_run_directory(tmp_path, capsys: pytest.CaptureFixture) -> None:
    """Was a NotADirectoryError traceback from mkdir."""
    taken = tmp_path / "taken"
    taken.write_text("mine")
    recipe = str(Path(__file__).resolve().parents[2] / "recipes" / "quickstart" / "lm.yaml")
    for out in (taken, taken / "run"):
        assert main(["fit", recipe, "--out", str(out), "--data", str(tmp_path / "tokens")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("mgen fit: error: -o/--out") and f"{taken} is a file" in err[0]
    assert taken.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
