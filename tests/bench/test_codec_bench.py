"""`run_codec_bench` smoke run: the dict is JSON-ready and both implementations agree on the codes."""

from __future__ import annotations

import json

import pytest
import torch

from mgen.bench.codec import run_codec_bench


def test_codec_bench_smoke_vs_transformers():
    pytest.importorskip("transformers")
    threads = torch.get_num_threads()
    result = run_codec_bench("tiny", seconds=0.5, vs_transformers=True, smoke=True, threads=1)
    assert torch.get_num_threads() == threads  # restored
    json.dumps(result)
    assert result["bench"] == "codec" and result["preset"] == "tiny" and result["smoke"] is True
    assert result["frames"] == 25 and result["n_q"] == 4
    for side in ("mgen", "transformers"):
        for op in ("encode", "decode"):
            assert result[side][f"{op}_x_realtime"] > 0
            assert result[side][f"{op}_rtf"] == pytest.approx(1 / result[side][f"{op}_x_realtime"], rel=1e-2)
    assert result["codes_match"] is True


def test_codec_bench_stereo_without_transformers():
    result = run_codec_bench("tiny", seconds=0.2, repeats=1, threads=1)
    assert "transformers" not in result and result["mgen"]["encode_s"] > 0
