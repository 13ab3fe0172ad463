"""Kernel Audio Distance: equal to a naive double loop and to kadtk's kad.py (explicit bandwidth, float64), the
blocked sums and the blocked exact median equal the unblocked ones, 12k frames stay within a bounded memory, and
the metric keeps its reference (eval notes §7 (f))."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import mgen.metrics.kad as kad_module
from metric_fixtures import load_kadtk
from mgen.metrics import KernelAudioDistance, ReferenceStats, kernel_audio_distance, median_pairwise_distance
from mgen.metrics.embedders import EmbedderInfo

REPO = Path(__file__).resolve().parents[2]
INFO = EmbedderInfo("toy", 16_000, 5, "toy-v1", weights="toy.pt", weights_sha256="c" * 64)

pytestmark = pytest.mark.usefixtures("single_thread")


def sets(m: int, n: int, dim: int = 5, shift: float = 0.3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, dim, generator=g, dtype=torch.float64),
            torch.randn(n, dim, generator=g, dtype=torch.float64) * 1.2 + shift)


def naive_kad(x: torch.Tensor, y: torch.Tensor, sigma: float, kernel: str) -> float:
    gamma = 1 / (2 * sigma ** 2 + 1e-8)
    k = {"gaussian": lambda d2: math.exp(-gamma * d2), "iq": lambda d2: 1 / (1 + gamma * d2),
         "imq": lambda d2: 1 / math.sqrt(1 + gamma * d2)}[kernel]
    xs, ys = x.tolist(), y.tolist()

    def d2(a: list[float], b: list[float]) -> float:
        return sum((p - q) ** 2 for p, q in zip(a, b))

    m, n = len(xs), len(ys)
    kxx = sum(k(d2(a, b)) for i, a in enumerate(xs) for j, b in enumerate(xs) if i != j) / (m * (m - 1))
    kyy = sum(k(d2(a, b)) for i, a in enumerate(ys) for j, b in enumerate(ys) if i != j) / (n * (n - 1))
    kxy = sum(k(d2(a, b)) for a in xs for b in ys) / (m * n)
    return 100 * (kxx + kyy - 2 * kxy)


@pytest.mark.parametrize("kernel", ["gaussian", "iq", "imq"])
def test_matches_a_naive_double_loop(kernel: str) -> None:
    x, y = sets(40, 31)
    ours = kernel_audio_distance(x, y, bandwidth=1.7, kernel=kernel, chunk=8)
    expected = naive_kad(x, y, 1.7, kernel)
    assert abs(ours - expected) <= 1e-10 * max(1.0, abs(expected))
    assert expected > 0.5  # different sets: a clearly positive distance


@pytest.mark.filterwarnings("ignore:To copy construct from a tensor")  # inside kadtk
def test_matches_kadtk_with_explicit_bandwidth_and_float64() -> None:
    kadtk = load_kadtk()
    x, y = sets(300, 200)
    for bandwidth in (0.8, 3.0):
        theirs = float(kadtk.calc_kernel_audio_distance(x, y, (None, None), "cpu", bandwidth=bandwidth,
                                                        precision=torch.float64))
        assert kernel_audio_distance(x, y, bandwidth=bandwidth, chunk=64) == pytest.approx(theirs, rel=1e-12)
    # 'eval' is what kadtk's code does when no bandwidth is given (it takes that median in float32)
    theirs = float(kadtk.calc_kernel_audio_distance(x, y, (None, None), "cpu", precision=torch.float64))
    assert kernel_audio_distance(x, y, bandwidth="eval") == pytest.approx(theirs, rel=1e-5)
    assert median_pairwise_distance(x) == pytest.approx(kadtk.median_pairwise_distance(x), rel=1e-6)
    # two samples of one distribution: about zero (unbiased, so it may be negative)
    same = torch.randn(300, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    assert abs(kernel_audio_distance(x, same)) < 0.05 * kernel_audio_distance(x, y)


def test_blocked_sums_and_median_equal_unblocked() -> None:
    x, y = sets(301, 157, seed=1)
    assert kernel_audio_distance(x, y, chunk=7) == pytest.approx(kernel_audio_distance(x, y, chunk=4096), rel=1e-12)
    for m in (300, 301):  # odd and even numbers of pairs
        exact = float(torch.median(torch.pdist(x[:m])))
        assert median_pairwise_distance(x[:m], chunk=16) == pytest.approx(exact, rel=1e-14)  # blocked selection
        assert median_pairwise_distance(x[:m], chunk=4096) == exact                          # one pdist


def test_median_when_the_sampled_bracket_misses(monkeypatch: pytest.MonkeyPatch) -> None:
    x, _ = sets(120, 2, seed=2)
    monkeypatch.setattr(kad_module, "_sample_distances", lambda x, samples, seed: torch.zeros(samples,
                                                                                             dtype=x.dtype))
    assert median_pairwise_distance(x, chunk=10) == float(torch.median(torch.pdist(x)))


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys, time
    import torch
    sys.path.insert(0, sys.argv[1])
    from mgen.metrics import kernel_audio_distance
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12_000, 8, generator=g, dtype=torch.float64)
    y = torch.randn(2_000, 8, generator=g, dtype=torch.float64) + 0.1
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.time()
    value = kernel_audio_distance(x, y, chunk=1024)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"{value} {grown} {time.time() - start}")
    # this process imported mgen.metrics (all of it) and nothing else of mgen: the house rules say plain torch
    print(" ".join(sorted({m.split(".")[0] for m in sys.modules} & {"lightning", "pytorch_lightning", "webdataset",
                                                                  "data_prep"})) or "-")
    """
)


def test_twelve_thousand_frames_stay_within_bounded_memory(tmp_path: Path) -> None:
    """(In a fresh process, which also checks that mgen.metrics imports no Lightning, webdataset or data_prep.)"""
    script = tmp_path / "kad_memory.py"
    script.write_text(_MEMORY_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(REPO)], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    numbers, forbidden_imports = proc.stdout.splitlines()
    value, grown_mb, _ = (float(v) for v in numbers.split())
    assert forbidden_imports == "-", f"importing mgen.metrics pulled in {forbidden_imports}"
    # one 12k × 12k float64 kernel matrix alone is 1100 MB; 1024² blocks need a few 8 MB temporaries, the median
    # keeps ~2 % of the distances (11 MB), and the allocator's fragmentation adds some (~100 MB measured)
    assert grown_mb < 300, f"peak memory grew by {grown_mb:.0f} MB"
    assert 0 < value < 100


def test_metric_reference_file_reset_and_errors(tmp_path: Path) -> None:
    x, y = sets(120, 90)
    metric = KernelAudioDistance(INFO, bandwidth=2.0)
    metric.update_embeddings(list(x.float().split(40)), reference=True)
    metric.update_embeddings(list(y.float().split(30)))
    expected = kernel_audio_distance(x.float(), y.float(), bandwidth=2.0)
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-12)
    path = metric.save_reference(tmp_path / "ref.npz")
    metric.reset()
    assert metric.gen_frames == [] and len(metric.ref_frames) == 3
    metric.update_embeddings(y.float())
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-12)

    loaded = KernelAudioDistance(INFO, reference=path)  # default bandwidth: the reference's median, cached
    loaded.update_embeddings(y.float())
    assert float(loaded.compute()) == pytest.approx(kernel_audio_distance(x.float(), y.float()), rel=1e-12)
    assert loaded._loaded_bandwidth[1] == pytest.approx(median_pairwise_distance(x.float().double()), rel=1e-15)

    stats_only = ReferenceStats.from_frames(x.float(), INFO, keep_frames=False).save(tmp_path / "stats.npz")
    with pytest.raises(ValueError, match="stats.npz: no frames in it, and KAD needs them"):
        KernelAudioDistance(INFO, reference=stats_only)
    with pytest.raises(ValueError, match="bandwidth must be 'reference', 'eval' or a positive number, got 'median'"):
        KernelAudioDistance(INFO, bandwidth="median")
    with pytest.raises(ValueError, match="bandwidth must be .* got -1"):
        kernel_audio_distance(x, y, bandwidth=-1)
    with pytest.raises(ValueError, match="kernel must be one of"):
        KernelAudioDistance(INFO, kernel="laplace")
    lonely = KernelAudioDistance(INFO, reference=path)
    lonely.update_embeddings(y[:1].float())
    with pytest.raises(ValueError, match="KAD needs at least 2 generated embedding frames, got 1 from 1 clip"):
        lonely.compute()
    with pytest.raises(ValueError, match="reference frames are 5-d but generated frames 4-d"):
        kernel_audio_distance(x, y[:, :4])
