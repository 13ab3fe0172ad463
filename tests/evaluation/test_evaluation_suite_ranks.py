"""The evaluation's metric suite under torch.distributed: every rank scores its share of the clips, the results
(values, frame and clip counts) are those of one process scoring them all (what training's eval: relies on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rank_launch import free_port

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("single_thread")  # the ranks run one thread each: the same float32 sums

_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch, torch.distributed as dist
    import torch.multiprocessing as mp
    sys.path[:0] = [sys.argv[1], os.path.join(sys.argv[1], "tests"), os.path.join(sys.argv[1], "tests", "evaluation")]
    from test_evaluation_suite_ranks import items, reference_stats, suite

    def worker(rank, port, out):
        torch.set_num_threads(1)
        reference = reference_stats()  # before the process group: built from this rank's audio alone
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=2)
        s = suite()
        s.load_references([reference])
        mine = items()[:3] if rank == 0 else items()[3:]  # uneven shares
        s.add_generated(mine)
        results, _ = s.results(bootstrap=True, seed=0)
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(results, f)
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.start_processes(worker, args=(int(sys.argv[2]), sys.argv[3]), nprocs=2, start_method="fork")
    """
)


def suite():
    from metric_fixtures import FrameEmbedder, ToyClap, ToyClassifier

    from mgen.evaluation import MetricSuite

    return MetricSuite(["fad", "kad", "kl", "clap", "chroma"], {"toy": FrameEmbedder(dim=8)},
                       kl_classifier=ToyClassifier(window_seconds=0.25), clap=ToyClap())


def clip(seed: int, freq: float):
    """A tone in noise: well-conditioned embedding statistics (pure tones give near-singular ones)."""
    import torch
    from metric_fixtures import sine

    noise = 0.05 * torch.randn(8000, generator=torch.Generator().manual_seed(seed))
    return (sine(freq, 0.5, 16000) + noise)[None]


def items():
    from mgen.evaluation.suite import GeneratedItem

    return [GeneratedItem(f"g{i}", clip(i, 300 + 37 * i), 16000, f"tone {i}", clip(50 + i, 310 + 37 * i), 16000)
            for i in range(5)]


def reference_stats():
    from metric_fixtures import FrameEmbedder

    from mgen.metrics import FrechetAudioDistance

    fad = FrechetAudioDistance(FrameEmbedder(dim=8), keep_frames=True)
    fad.update([clip(100 + i, 250 + 40 * i) for i in range(4)], 16000, reference=True)
    return fad.reference_stats()


def test_two_gloo_ranks_score_like_one_process(tmp_path: Path) -> None:
    port = free_port()
    script = tmp_path / "ranks.py"
    script.write_text(_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(REPO), str(port), str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = suite()
    single.load_references([reference_stats()])
    single.add_generated(items())
    expected, _ = single.results(bootstrap=True, seed=0)
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert set(result) == {"fad_toy", "kad_toy", "kld", "clap_score", "chroma_cosine"}
        for key, record in expected.items():
            # float32 model outputs batched differently (3 + 2 clips vs 5) round differently: KL and CLAP to ~1e-5
            tolerance = 1e-4 if key in ("kld", "clap_score") else 1e-9
            assert result[key]["value"] == pytest.approx(record["value"], rel=tolerance), key
        assert result["fad_toy"]["frames"] == expected["fad_toy"]["frames"] == {"generated": 195, "reference": 156}
        assert result["fad_toy"]["clips"]["generated"] == 5
        assert result["kld"]["pairs"] == 5 and result["clap_score"]["clips"] == 5
        assert result["kld"]["ci"]["n_boot"] == expected["kld"]["ci"]["n_boot"]
