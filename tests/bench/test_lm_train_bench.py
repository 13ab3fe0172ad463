"""`mgen bench lm-train --vs transformers --smoke`: the JSON line carries the ratio, the CPU flags, the precision,
the transformers peer on its native loss, MFU and peak memory (no timing assertions)."""

from __future__ import annotations

import json

import pytest

from mgen.bench.cpu import cpu_flags, cpu_flags_line
from mgen.cli import main


def _bench(capsys: pytest.CaptureFixture, *extra: str) -> tuple[dict, str]:
    assert main(["bench", "lm-train", "--vs", "transformers", "--smoke", "--repeats", "1", *extra]) == 0
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1
    return json.loads(lines[0]), err


@pytest.mark.parametrize("precision", [None, "bf16-mixed"])
def test_lm_train_bench_smoke_vs_transformers_native_loss(capsys: pytest.CaptureFixture, precision: str | None):
    pytest.importorskip("transformers")
    result, err = _bench(capsys, *(["--precision", precision] if precision else []))
    assert result["bench"] == "lm-train" and result["preset"] == "tiny"
    assert result["precision"] == (precision or "32-true")
    assert result["autocast_dtype"] == ("bfloat16" if precision else None)
    assert result["speedup_vs_transformers"] > 0
    assert result["mgen_tokens_per_s"] > 0 and result["transformers_tokens_per_s"] > 0
    assert result["transformers"]["loss_path"].startswith("native: MusicgenForCausalLM(labels=")
    assert result["mgen"]["loss_path"].startswith("mgen:")
    # same weights, same batch: the first losses (before any update) agree up to the delay pattern's tail
    # (transformers also predicts the last K-1 frames of the delayed codebooks; mgen's valid steps stop earlier)
    assert result["transformers"]["loss_targets_per_example"] == result["n_q"] * result["frames"]
    assert result["mgen"]["loss_targets_per_example"] <= result["n_q"] * result["frames"]
    assert result["first_loss_abs_diff"] < 0.05
    assert result["peak_gflops"]["gflops"] > 0
    assert result["peak_gflops"]["dtype"] == ("bfloat16" if precision else "float32")
    for side in ("mgen", "transformers"):
        assert result[side]["mfu"] > 0 and result[side]["model_gflop_per_step"] > 0
        assert result[side]["peak_memory"]["peak_mib"] > 0
    cpu = result["machine"]["cpu"]
    assert {"model_name", "avx512f", "avx512_bf16", "amx", "amx_bf16", "bf16_matmul_hardware"} <= set(cpu)
    assert result["bf16_matmul_hardware"] == cpu["bf16_matmul_hardware"]
    assert cpu_flags_line(cpu) in err
    if precision and not cpu["bf16_matmul_hardware"]:
        assert "note" in result and "no bf16 matmul hardware" in err


def test_cpu_flags_parse() -> None:
    text = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx512f amx_tile amx_bf16\n" \
           "processor\t: 1\nmodel name\t: Some CPU\nflags\t\t: fpu\n"
    info = cpu_flags(text)
    assert info == {"model_name": "Some CPU", "avx512f": True, "avx512_bf16": False, "amx_bf16": True, "amx": True,
                    "bf16_matmul_hardware": True}
    assert cpu_flags("")["bf16_matmul_hardware"] is False and cpu_flags("")["model_name"] is None
    assert "avx512_bf16: no" in cpu_flags_line(info)
