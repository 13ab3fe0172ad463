"""FrechetAudioDistance: streaming float64 statistics equal np.cov (also merged over 2 gloo ranks), reference files
round-trip bit-exactly and are refused when another embedder made them, reset keeps the reference, FAD∞ and per-song
FAD agree with fadtk's code, and bad input gets a clear error (eval notes §7 (b), (f))."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from metric_fixtures import FrameEmbedder, load_fadtk, sine
from mgen.metrics import FrechetAudioDistance, KernelAudioDistance, ReferenceStats, fit_inverse_n, frechet_distance
from mgen.metrics.embedders import EmbedderInfo
from mgen.metrics.fad import fad_inf_ns
from rank_launch import free_port

REPO = Path(__file__).resolve().parents[2]
INFO = EmbedderInfo("toy", 16_000, 8, "toy-v1", weights="toy.pt", weights_sha256="a" * 64)

pytestmark = pytest.mark.usefixtures("single_thread")


def frames(n: int, seed: int, shift: float = 0.0, dim: int = 8, offset: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=g) / dim ** 0.5 + torch.eye(dim)
    return (torch.randn(n, dim, generator=g) @ mix + shift + offset).float()


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_streaming_statistics_equal_np_cov_and_accumulate_float32_in_float64() -> None:
    # means 3 standard deviations from 0 make float32 sums lose digits: the states must be float64 (raw sums lose
    # ~(mean/std)² · 1e-16 to cancellation; 30 std would still give ~3e-12)
    batches = [frames(n, seed, offset=3.0) for seed, n in enumerate([3000, 1, 2500, 4500])]
    metric = FrechetAudioDistance(INFO)
    for batch in batches:
        metric.update_embeddings(list(batch.split(700)))
    assert metric.gen_sum.dtype == metric.gen_outer.dtype == torch.float64
    stats = metric.generated_stats()
    x = torch.cat(batches).double().numpy()
    assert stats.n == x.shape[0]
    assert relative_error(stats.mu.numpy(), x.mean(0)) <= 1e-12
    assert relative_error(stats.cov.numpy(), np.cov(x, rowvar=False, ddof=1)) <= 1e-12
    # what float32 accumulation would have given: visibly worse, so the check above has teeth
    x32 = torch.cat(batches)
    mu32 = x32.sum(0) / len(x32)
    cov32 = (x32.T @ x32 - len(x32) * torch.outer(mu32, mu32)) / (len(x32) - 1)
    assert relative_error(cov32.double().numpy(), np.cov(x, rowvar=False)) > 1e-6


def test_fad_equals_frechet_distance_of_np_statistics() -> None:
    ref, gen = frames(900, 0), frames(700, 1, shift=0.4)
    metric = FrechetAudioDistance(INFO)
    metric.update_embeddings(ref, reference=True)
    metric.update_embeddings(gen)
    r, g = ref.double().numpy(), gen.double().numpy()
    expected = frechet_distance(r.mean(0), np.cov(r, rowvar=False), g.mean(0), np.cov(g, rowvar=False))
    value = metric.compute()
    assert value.dtype == torch.float64 and float(value) == pytest.approx(expected, rel=1e-12)
    assert expected > 1.0


def test_reference_file_round_trips_bit_exactly_and_survives_reset(tmp_path: Path) -> None:
    metric = FrechetAudioDistance(INFO, keep_frames=True, reference_source="reconstructed")
    metric.update_embeddings([frames(300, 0), frames(200, 1)], reference=True)
    saved = metric.save_reference(tmp_path / "ref.npz")
    original = metric.reference_stats()
    loaded = ReferenceStats.load(saved)
    assert torch.equal(loaded.stats.mu, original.stats.mu) and torch.equal(loaded.stats.cov, original.stats.cov)
    assert loaded.stats.n == 500 and loaded.clips == 2 and loaded.source == "reconstructed"
    assert torch.equal(loaded.frames, original.frames) and loaded.embedder == INFO
    assert json.loads(str(np.load(saved)["meta"]))["fad_protocol"] == "mgen-fad-v1"
    assert [p.name for p in tmp_path.iterdir()] == ["ref.npz"]  # written atomically, no temporary left

    # the accumulated reference survives reset(); the generated side does not
    metric.update_embeddings(frames(400, 2, shift=1.0))
    first = float(metric.compute())
    metric.reset()
    assert int(metric.gen_n) == 0 and int(metric.ref_n) == 500
    metric.update_embeddings(frames(400, 2, shift=1.0))
    assert float(metric.compute()) == first

    # a loaded reference gives the same value and survives reset() too
    from_file = FrechetAudioDistance(INFO, reference=saved)
    from_file.update_embeddings(frames(400, 2, shift=1.0))
    assert float(from_file.compute()) == first
    described = from_file.describe()
    assert described["reference"] == {"source": "reconstructed", "file": str(saved), "clips": 2, "frames": 500}
    assert described["generated"]["frames"] == 400 and described["embedder"]["weights_sha256"] == "a" * 64
    assert metric.describe()["reference"]["source"] == "reconstructed" and json.dumps(described)
    from_file.reset()
    from_file.update_embeddings(frames(400, 2, shift=1.0))
    assert float(from_file.compute()) == first
    from_file.reset_reference()
    with pytest.raises(ValueError, match="has no reference"):
        from_file.update_embeddings(frames(400, 2))
        from_file.compute()


def test_reference_from_another_embedder_or_protocol_is_refused(tmp_path: Path) -> None:
    path = ReferenceStats.from_frames(frames(100, 0), INFO).save(tmp_path / "ref.npz")
    other_weights = replace(INFO, weights_sha256="b" * 64)
    with pytest.raises(ValueError, match=r"made with embedder toy .*sha256 aaaaaaaaaaaa.* this metric uses toy "
                                         r".*sha256 bbbbbbbbbbbb"):
        FrechetAudioDistance(other_weights, reference=path)
    with pytest.raises(ValueError, match="made with embedder toy .*this metric uses vggish"):
        FrechetAudioDistance(replace(INFO, id="vggish"), reference=path)
    with pytest.raises(ValueError, match="protocol toy-v2"):
        FrechetAudioDistance(replace(INFO, protocol="toy-v2"), reference=path)
    # an older mgen FAD protocol
    data = dict(np.load(path))
    meta = json.loads(str(data["meta"]))
    meta["fad_protocol"] = "mgen-fad-v0"
    np.savez(tmp_path / "old.npz", **{**data, "meta": np.asarray(json.dumps(meta))})
    with pytest.raises(ValueError, match="old.npz: made with FAD protocol mgen-fad-v0, this mgen uses mgen-fad-v1"):
        FrechetAudioDistance(INFO, reference=tmp_path / "old.npz")
    np.savez(tmp_path / "foreign.npz", mu=np.zeros(8), cov=np.eye(8))
    with pytest.raises(ValueError, match="foreign.npz: not mgen reference statistics .missing n, meta"):
        FrechetAudioDistance(INFO, reference=tmp_path / "foreign.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz: reference statistics not found"):
        FrechetAudioDistance(INFO, reference=tmp_path / "missing.npz")
    # a loaded reference cannot be mixed with reference audio
    metric = FrechetAudioDistance(INFO, reference=path)
    with pytest.raises(ValueError, match="reference audio cannot be added"):
        metric.update_embeddings(frames(10, 1), reference=True)


def test_too_few_frames_error_and_singular_covariance_warning() -> None:
    metric = FrechetAudioDistance(INFO)
    metric.update_embeddings(frames(50, 0), reference=True)
    metric.update_embeddings(frames(1, 1))
    with pytest.raises(ValueError, match="FAD needs at least 2 generated embedding frames, got 1 from 1 clip"):
        metric.compute()
    metric.update_embeddings(frames(4, 2))  # 5 frames, 8 dimensions: singular, allowed, warned
    with pytest.warns(RuntimeWarning, match="only 5 generated frames of 8-d toy embeddings: the covariance is "
                                            "singular"):
        assert np.isfinite(float(metric.compute()))
    metric.update_embeddings(frames(20, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric.compute()  # 25 > 8 frames: no warning
    with pytest.raises(ValueError, match=r"expected frames \[n, 8\] for toy, got \(3, 7\)"):
        metric.update_embeddings(torch.zeros(3, 7))
    bad = frames(5, 4)
    bad[2, 3] = float("nan")
    with pytest.raises(ValueError, match="generated clip 'x.wav': frames contain NaN"):
        metric.update_embeddings([bad], names=["x.wav"])


def test_audio_input_padding_resampling_silence_and_nan() -> None:
    embedder = FrameEmbedder()
    clips = [sine(440, 0.5, 32_000)[None], sine(660, 0.3, 32_000)[None].repeat(2, 1)]
    batch = torch.zeros(2, 2, 16_000)
    batch[0, :, :16_000] = clips[0]
    batch[1, :, :9600] = clips[1]
    listed, batched = FrechetAudioDistance(embedder), FrechetAudioDistance(embedder)
    listed.update(clips, 32_000)
    batched.update(batch, 32_000, lengths=[16_000, 9600])  # padding is cut off, never embedded
    assert torch.equal(listed.gen_sum, batched.gen_sum) and int(listed.gen_n) == int(batched.gen_n) == 39 + 23
    assert embedder.calls[-2:] == [8000, 4800]  # resampled to the embedder's 16 kHz

    silent = [torch.zeros(1, 8000), sine(330, 0.5, 16_000)[None]]
    with pytest.raises(ValueError, match="generated clip 'quiet' is silent .* silence='keep'"):
        FrechetAudioDistance(embedder).update(silent, 16_000, names=["quiet", "tone"])
    keep, skip = FrechetAudioDistance(embedder, silence="keep"), FrechetAudioDistance(embedder, silence="skip")
    keep.update(silent, 16_000)
    skip.update(silent, 16_000)
    assert int(keep.silent_clips) == int(skip.silent_clips) == 1
    assert int(keep.gen_n) == 2 * 39 and int(skip.gen_n) == 39 and int(skip.gen_clips) == 1
    with pytest.raises(ValueError, match="reference clip 0 of the batch is silent .*remove it from the reference"):
        FrechetAudioDistance(embedder, silence="keep").update(silent, 16_000, reference=True)  # whatever the policy
    noisy = sine(330, 0.5, 16_000)[None].clone()
    noisy[0, 10] = float("nan")
    with pytest.raises(ValueError, match="generated clip 0 of the batch contains NaN or infinite samples"):
        keep.update([noisy], 16_000)
    with pytest.raises(ValueError, match=r"a batch tensor must be \[B, C, L\]"):
        keep.update(torch.zeros(2, 100), 16_000)
    with pytest.raises(ValueError, match="length 20000 outside 1..16000"):
        keep.update(batch, 32_000, lengths=[20_000, 10])
    with pytest.raises(ValueError, match="sample_rate must be a positive integer"):
        keep.update(clips, 0)
    info_only = FrechetAudioDistance(embedder.info)
    with pytest.raises(ValueError, match="has no embedder"):
        info_only.update(clips, 32_000)


def test_fit_inverse_n_recovers_a_plus_b_over_n() -> None:
    ns = [500, 700, 1100, 2000, 5000]
    a, b = 3.25, 410.0
    intercept, slope, r2 = fit_inverse_n(ns, [a + b / n for n in ns])
    assert abs(intercept - a) <= 1e-6 and abs(slope - b) <= 1e-6 * b and r2 == pytest.approx(1.0, abs=1e-12)
    assert fad_inf_ns(5000)[:2] == [500, 687] and fad_inf_ns(5000)[-1] == 5000 and len(fad_inf_ns(5000)) == 25
    assert fad_inf_ns(600)[0] == 300  # fewer than 2 × 500 frames: n from N // 2
    with pytest.raises(ValueError, match="at least 6 generated frames"):
        fad_inf_ns(3)


def test_fad_inf_matches_fadtk_score_inf_with_the_same_seed(tmp_path: Path) -> None:
    fadtk = load_fadtk()
    ref, gen = frames(3000, 0), frames(1500, 1, shift=0.3)
    mu, cov = ref.double().mean(0).numpy(), np.cov(ref.double().numpy(), rowvar=False)
    metric = FrechetAudioDistance(INFO, reference=ReferenceStats.from_frames(ref, INFO), keep_frames=True)
    metric.update_embeddings(list(gen.split(100)))
    ours = metric.compute_inf(seed=3)
    assert ours.to_dict()["seed"] == 3 and ours == metric.compute_inf(seed=3)  # seeded: reproducible
    assert ours.points != metric.compute_inf(seed=4).points

    np.save(tmp_path / "gen.npy", gen.double().numpy())
    scorer = object.__new__(fadtk.FrechetAudioDistance)
    scorer.ml = type("ML", (), {"name": "toy"})()
    scorer.load_stats = lambda baseline: (mu, cov)
    np.random.seed(3)
    theirs = scorer.score_inf("ref", [tmp_path / "gen.npy"])
    assert [n for n, _ in ours.points] == [n for n, _ in theirs.points]
    for (_, a), (_, b) in zip(ours.points, theirs.points):
        assert a == pytest.approx(b, rel=1e-8)
    assert ours.score == pytest.approx(theirs.score, rel=1e-6)
    assert ours.slope == pytest.approx(theirs.slope, rel=1e-6) and ours.r2 == pytest.approx(theirs.r2, rel=1e-6)


def test_per_song_fad_matches_fadtk_and_bootstrap_is_seeded() -> None:
    fadtk = load_fadtk()
    ref = frames(2000, 0)
    songs = [frames(n, 10 + i, shift=0.1 * i) for i, n in enumerate([40, 1, 90, 60])]
    metric = FrechetAudioDistance(INFO, reference=ReferenceStats.from_frames(ref, INFO), keep_frames=True)
    metric.update_embeddings(songs[:2], names=["a", "b"])
    metric.update_embeddings(songs[2:])
    with pytest.warns(RuntimeWarning, match="1 clip.s. gave fewer than 2 frames and have no score: b"):
        result = metric.per_song()
    assert [name for name, _ in result.scores] == ["a", "clip2", "clip3"] and result.too_short == ["b"]
    mu, cov = fadtk.calc_embd_statistics(ref.double().numpy())
    for (_, value), song in zip(result.scores, [songs[0], songs[2], songs[3]]):
        mu_song, cov_song = fadtk.calc_embd_statistics(song.double().numpy())
        assert value == pytest.approx(fadtk.calc_frechet_distance(mu, cov, mu_song, cov_song), rel=1e-8)

    interval = metric.bootstrap(n_boot=100, seed=1)
    assert interval == metric.bootstrap(n_boot=100, seed=1) and interval.unit == "songs"
    assert interval.value == pytest.approx(float(metric.compute()), rel=1e-12)
    assert interval.low < interval.high and interval.n_boot == 100
    with pytest.raises(ValueError, match="keep_frames=True"):
        FrechetAudioDistance(INFO, reference=ReferenceStats.from_frames(ref, INFO)).compute_inf()


_DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch, torch.distributed as dist
    import torch.multiprocessing as mp
    sys.path[:0] = [sys.argv[1], os.path.join(sys.argv[1], "tests"), os.path.join(sys.argv[1], "tests", "metrics")]
    from test_metrics_fad import INFO, frames
    from mgen.metrics import FrechetAudioDistance, KernelAudioDistance

    def worker(rank, port, out):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=2)
        torch.set_num_threads(1)
        fad = FrechetAudioDistance(INFO, keep_frames=True)
        kad = KernelAudioDistance(INFO)
        # uneven shares: rank 0 has 3 generated clips, rank 1 one; rank 1 holds all the reference audio
        gen = [frames(n, 10 + i + 3 * rank, shift=0.2) for i, n in enumerate([50, 70, 30] if rank == 0 else [90])]
        names = [f"r{rank}c{i}" for i in range(len(gen))]
        for metric in (fad, kad):
            metric.update_embeddings(gen, names=names)
            if rank == 1:
                metric.update_embeddings([frames(400, 1), frames(300, 2)], reference=True)
        stats = fad.generated_stats()
        result = dict(fad=float(fad.compute()), kad=float(kad.compute()), mu=stats.mu.tolist(),
                      cov=stats.cov.tolist(), n=stats.n, inf=fad.compute_inf(seed=0).to_dict(),
                      per_song=fad.per_song().scores, local_n=int(fad.gen_n))
        fad.save_reference(out + "/ref.npz")
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(result, f)
        dist.destroy_process_group()

    if __name__ == "__main__":  # fork: the workers inherit the imports (torchmetrics alone takes seconds)
        mp.start_processes(worker, args=(int(sys.argv[2]), sys.argv[3]), nprocs=2, start_method="fork")
    """
)


def test_two_gloo_ranks_equal_one_process(tmp_path: Path) -> None:
    port = free_port()
    script = tmp_path / "ddp_fad.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(REPO), str(port), str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    gen = [frames(n, 10 + i, shift=0.2) for i, n in enumerate([50, 70, 30])] + [frames(90, 13, shift=0.2)]
    ref = [frames(400, 1), frames(300, 2)]
    x = torch.cat(gen).double().numpy()
    single = FrechetAudioDistance(INFO, keep_frames=True)
    single_kad = KernelAudioDistance(INFO)
    for metric in (single, single_kad):
        metric.update_embeddings(ref, reference=True)
        metric.update_embeddings(gen, names=["r0c0", "r0c1", "r0c2", "r1c0"])
    with pytest.warns(RuntimeWarning, match="FAD∞ from 240 generated frames"):
        expected_inf = single.compute_inf(seed=0)
    for result in ranks:  # both ranks see the synced result
        assert result["n"] == 240
        assert relative_error(np.array(result["mu"]), x.mean(0)) <= 1e-12
        assert relative_error(np.array(result["cov"]), np.cov(x, rowvar=False, ddof=1)) <= 1e-12
        assert result["fad"] == pytest.approx(float(single.compute()), rel=1e-12)
        assert result["kad"] == pytest.approx(float(single_kad.compute()), rel=1e-12)
        assert [n for n, _ in result["inf"]["points"]] == [n for n, _ in expected_inf.points]
        assert [v for _, v in result["inf"]["points"]] == pytest.approx([v for _, v in expected_inf.points],
                                                                        rel=1e-12)
        assert [name for name, _ in result["per_song"]] == ["r0c0", "r0c1", "r0c2", "r1c0"]
        assert [v for _, v in result["per_song"]] == pytest.approx([v for _, v in single.per_song().scores],
                                                                   rel=1e-12)
    assert [r["local_n"] for r in ranks] == [150, 90]  # the states are local again after compute
    saved = ReferenceStats.load(tmp_path / "ref.npz")  # written once, by rank 0, from both ranks' states
    assert saved.stats.n == 700 and torch.allclose(saved.stats.cov, single.reference_stats().stats.cov,
                                                   rtol=1e-12, atol=1e-14)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp_fad.py", "rank0.json", "rank1.json", "ref.npz"]
