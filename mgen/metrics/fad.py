"""Fréchet Audio Distance as a torchmetrics Metric, with FAD∞ and per-song FAD (fadtk's protocols).

- **FAD**: Gaussian statistics of all generated frames against the reference's; running float64 sums (Σx, Σxxᵀ,
  n) that add across batches and ranks, ddof 1, distance by `frechet_distance`.
- **FAD∞** (Gui et al., ICASSP 2024; fadtk `score_inf`): FAD is biased upward by ~1/n, so FAD_n is computed for
  25 n's from `min_n` to N (frames drawn with replacement, *seeded* here) and fitted as a + b/n; the intercept a is
  FAD∞, reported with the slope b and the fit's R². fadtk's n's run from 500 to N; mgen starts at
  ``min(min_n, N // 2)`` so the fitted range of n always spans at least a factor of two (fadtk's range is
  degenerate when N is near 500); with N ≥ 1000 frames that is exactly fadtk's 500..N.
- **Per-song FAD** (fadtk `score_individual`): each generated clip's own statistics (≥ 2 frames) against the
  reference; clips with fewer frames are listed as too short.

FAD∞, per-song FAD and the song-level bootstrap need the frames themselves: they are kept only with
``keep_frames=True``, as a "cat" list state, flattened and in the metric's dtype (float32, what embedders produce;
every rank must send the same dtype, and torchmetrics fills an empty rank's list with that dtype).

n ≤ dim frames give a singular covariance (rank ≤ n − 1): allowed, since the distance is still defined, but
warned about, because FAD is then dominated by its small-sample bias. Fewer than 2 frames is an error that says how
many there are.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from mgen.metrics.bootstrap import ConfidenceInterval, bootstrap_statistic
from mgen.metrics.clips import SilencePolicy
from mgen.metrics.embedding_metric import GENERATED, REFERENCE, EmbeddingMetric
from mgen.metrics.states import cat_state
from mgen.metrics.frechet import FrechetReference, GaussianStats
from mgen.metrics.reference import ReferenceStats

FAD_INF_STEPS = 25
FAD_INF_MIN_N = 500


@dataclass(frozen=True)
class FadInf:
    """FAD∞ = intercept of FAD_n ≈ a + b/n; `points` are the (n, FAD_n) it was fitted to."""

    score: float
    slope: float
    r2: float
    points: list[tuple[int, float]]
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "slope": self.slope, "r2": self.r2, "seed": self.seed,
                "points": [list(p) for p in self.points]}


@dataclass(frozen=True)
class PerSongFad:
    """(name, FAD) per generated clip with at least 2 frames, in the order clips were added (rank-major under
    DDP); `too_short` names the others."""

    scores: list[tuple[str, float]]
    too_short: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, float]:
        return dict(self.scores)


def fit_inverse_n(ns: Sequence[int], values: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares fit of values ≈ a + b/n -> (a, b, R²) (fadtk: ``np.polyfit(1/n, values, 1)``)."""
    x = 1.0 / torch.as_tensor(ns, dtype=torch.float64)
    y = torch.as_tensor(values, dtype=torch.float64)
    if x.numel() < 2 or bool((x == x[0]).all()):
        raise ValueError("fitting a + b/n needs at least two different n")
    dx, dy = x - x.mean(), y - y.mean()
    slope = (dx @ dy) / (dx @ dx)
    intercept = y.mean() - slope * x.mean()
    residual = ((y - intercept - slope * x) ** 2).sum()
    total = (dy ** 2).sum()
    r2 = 1.0 - residual / total if total > 0 else torch.tensor(1.0, dtype=torch.float64)
    return float(intercept), float(slope), float(r2)


def fad_inf_ns(num_frames: int, steps: int = FAD_INF_STEPS, min_n: int = FAD_INF_MIN_N) -> list[int]:
    """The n's FAD∞ evaluates: ``linspace(min(min_n, N // 2), N, steps)`` as integers, duplicates removed."""
    start = max(2, min(min_n, num_frames // 2))
    ns = sorted({int(n) for n in np.linspace(start, num_frames, steps)})
    if len(ns) < 3:
        raise ValueError(f"FAD∞ needs at least 6 generated frames (three different n to fit), got {num_frames}")
    return ns


class FrechetAudioDistance(EmbeddingMetric):
    """FAD between generated audio and a reference, on any embedder (see `EmbeddingMetric` for the contract).

    ``compute()`` -> FAD (float64 scalar tensor). ``compute_inf()``, ``per_song()`` and ``bootstrap()`` need
    ``keep_frames=True``. `reference` is a ``.npz`` path or `ReferenceStats` (else add reference audio with
    ``update(..., reference=True)``); `reference_source` says whether reference audio is "real" or
    "reconstructed" and is written into saved statistics.
    """

    higher_is_better = False
    reference_states = EmbeddingMetric.reference_states + ("ref_sum", "ref_outer", "ref_n", "ref_frames",
                                                           "ref_counts")

    def __init__(self, embedder: Any, reference: str | Path | ReferenceStats | None = None, *,
                 keep_frames: bool = False, silence: SilencePolicy = "error", reference_source: str = "real",
                 **kwargs: Any) -> None:
        super().__init__(embedder, silence=silence, reference_source=reference_source, **kwargs)
        dim = self.info.dim
        for side in ("gen", "ref"):
            self.add_state(f"{side}_sum", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_n", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
            # flattened frames and frames-per-clip (1-D, so an empty rank gathers like the others)
            self.add_state(f"{side}_frames", [], dist_reduce_fx="cat")
            self.add_state(f"{side}_counts", [], dist_reduce_fx="cat")
        self.keep_frames = keep_frames
        self._gen_names: list[str] = []
        self._reference_root: tuple[ReferenceStats, FrechetReference] | None = None
        if reference is not None:
            self.load_reference(reference)

    def _add_frames(self, frames: list[Tensor], names: list[str | None], reference: bool) -> None:
        side = "ref" if reference else "gen"
        x = torch.cat(frames).to(torch.float64) if frames else torch.zeros(0, self.info.dim, dtype=torch.float64,
                                                                          device=self.device)
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + x.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + x.T @ x)
        setattr(self, f"{side}_n", getattr(self, f"{side}_n") + x.shape[0])
        if self.keep_frames:
            for f in frames:  # in the metric's dtype (float32), as torchmetrics makes an empty rank's list
                getattr(self, f"{side}_frames").append(f.flatten().to(self.dtype))
                getattr(self, f"{side}_counts").append(torch.tensor([f.shape[0]], dtype=self.dtype,
                                                                    device=self.device))
            if not reference:
                start = len(self._gen_names)
                self._gen_names += [n if n is not None else f"clip{start + i}" for i, n in enumerate(names)]

    def reset(self) -> None:
        super().reset()
        self._gen_names = []

    def reset_reference(self) -> None:
        super().reset_reference()
        self._gen_names = []

    # --------------------------------------------------------------------------------------------- results
    def compute(self) -> Tensor:
        """FAD of everything added so far (all ranks) against the reference."""
        ref = self._reference()
        gen = self._stats(GENERATED, self.gen_sum, self.gen_outer, self.gen_n, self.gen_clips)
        return torch.tensor(self._root(ref).distance(gen.mu, gen.cov), dtype=torch.float64)

    def generated_stats(self) -> GaussianStats:
        """Mean and covariance of the generated frames of all ranks."""
        with self.synced():
            return self._stats(GENERATED, self.gen_sum, self.gen_outer, self.gen_n, self.gen_clips)

    def compute_inf(self, steps: int = FAD_INF_STEPS, min_n: int = FAD_INF_MIN_N, seed: int = 0) -> FadInf:
        """FAD∞ (module docstring): FAD_n for the n's of `fad_inf_ns`, frames drawn with replacement by
        ``np.random.RandomState(seed)``, fitted as a + b/n."""
        with self.synced():
            root = self._root(self._reference())
            frames = self._frames(GENERATED)
        ns = fad_inf_ns(frames.shape[0], steps, min_n)
        if frames.shape[0] < min_n:
            warnings.warn(f"FAD∞ from {frames.shape[0]} generated frames: fewer than fadtk's smallest n "
                          f"({min_n}), so n runs from {ns[0]} to {ns[-1]}", RuntimeWarning, stacklevel=2)
        # numpy's legacy generator, as fadtk draws (np.random.choice): with np.random.seed(seed), fadtk's score_inf
        # makes exactly these draws
        rng = np.random.RandomState(int(seed))
        points = []
        for n in ns:
            index = torch.from_numpy(rng.choice(frames.shape[0], size=n, replace=True)).to(frames.device)
            stats = GaussianStats.from_frames(frames[index])
            points.append((n, root.distance(stats.mu, stats.cov)))
        score, slope, r2 = fit_inverse_n(*zip(*points))
        return FadInf(score, slope, r2, points, int(seed))

    def per_song(self) -> PerSongFad:
        """Each generated clip's FAD against the reference (fadtk `score_individual`)."""
        with self.synced():
            root = self._root(self._reference())
            frames = self._frames(GENERATED)
            counts = cat_state(self.gen_counts, torch.int64).tolist()
            names = self._all_names()
        scores, too_short = [], []
        for name, clip in zip(names, torch.split(frames, counts)):
            if clip.shape[0] < 2:
                too_short.append(name)
                continue
            stats = GaussianStats.from_frames(clip)
            scores.append((name, root.distance(stats.mu, stats.cov)))
        if too_short:
            warnings.warn(f"per-song FAD: {len(too_short)} clip(s) gave fewer than 2 frames and have no score: "
                          f"{', '.join(too_short[:5])}{' ...' if len(too_short) > 5 else ''}", RuntimeWarning,
                          stacklevel=2)
        return PerSongFad(scores, too_short)

    def bootstrap(self, n_boot: int = 200, confidence: float = 0.95, seed: int = 0) -> ConfidenceInterval:
        """Song-level percentile bootstrap of FAD: generated clips drawn with replacement (their frames weighted
        by the multiplicity), the reference held fixed. Costs n_boot × (N·D² + one D×D eigh). Duplicated songs
        lower the effective number of frames and FAD is biased upward by ~1/n, so the interval tends to sit above
        the value: read it as the spread due to the choice of songs."""
        with self.synced():
            root = self._root(self._reference())
            frames = self._frames(GENERATED).to(torch.float64)
            counts = cat_state(self.gen_counts, torch.int64).to(frames.device)
            gen = self._stats(GENERATED, self.gen_sum, self.gen_outer, self.gen_n, self.gen_clips)
        clip_of_frame = torch.repeat_interleave(torch.arange(counts.numel(), device=frames.device), counts)

        def replicate(multiplicity: Tensor) -> float | None:
            weight = multiplicity.to(frames.device, torch.float64)[clip_of_frame]
            if float(weight.sum()) < 2:
                return None
            stats = GaussianStats.from_sums(weight @ frames, (frames * weight[:, None]).T @ frames, int(weight.sum()))
            return root.distance(stats.mu, stats.cov)

        value = root.distance(gen.mu, gen.cov)
        return bootstrap_statistic(counts.numel(), replicate, value, n_boot, confidence, seed, unit="songs")

    # ------------------------------------------------------------------------------------------- internals
    def _num_frames(self, reference: bool) -> int:
        return int(self.ref_n if reference else self.gen_n)

    def _stats(self, side: str, total: Tensor, outer: Tensor, n: Tensor, clips: Tensor) -> GaussianStats:
        n, dim = int(n), self.info.dim
        if n < 2:
            raise ValueError(f"FAD needs at least 2 {side} embedding frames, got {n} from {int(clips)} clip(s) "
                             f"({self.info.id}: clips shorter than its first window give none)")
        if n <= dim:
            warnings.warn(f"FAD from only {n} {side} frames of {dim}-d {self.info.id} embeddings: the covariance is "
                          f"singular (rank ≤ {n - 1}) and the score is dominated by small-sample bias; use more "
                          f"than {dim} frames (more or longer clips), or FAD∞", RuntimeWarning, stacklevel=3)
        return GaussianStats.from_sums(total, outer, n)

    def _reference_from_states(self) -> ReferenceStats:
        stats = self._stats(REFERENCE, self.ref_sum, self.ref_outer, self.ref_n, self.ref_clips)
        frames = self._frames(REFERENCE) if self.keep_frames else None
        return ReferenceStats(stats, self.info, self.reference_source, frames, int(self.ref_clips))

    def _check_loaded(self, ref: ReferenceStats) -> None:
        if ref.stats.n <= ref.stats.dim:
            warnings.warn(f"reference statistics {ref.origin} come from only {ref.stats.n} frames of "
                          f"{ref.stats.dim}-d embeddings: singular covariance", RuntimeWarning, stacklevel=3)

    def _root(self, ref: ReferenceStats) -> FrechetReference:
        """The reference's square root, computed once for a loaded reference."""
        if self._reference_root is not None and self._reference_root[0] is ref:
            return self._reference_root[1]
        root = FrechetReference(ref.stats.mu.to(self.device), ref.stats.cov.to(self.device))
        if ref is self._loaded:
            self._reference_root = (ref, root)
        return root

    def _frames(self, side: str) -> Tensor:
        if not self.keep_frames:
            raise ValueError("FAD∞, per-song FAD and the bootstrap need the frames: build the metric with "
                             "keep_frames=True")
        prefix = "ref" if side == REFERENCE else "gen"
        frames = cat_state(getattr(self, f"{prefix}_frames")).view(-1, self.info.dim)
        if frames.shape[0] < 2:
            raise ValueError(f"need at least 2 {side} frames, got {frames.shape[0]}")
        return frames

    def _all_names(self) -> list[str]:
        """Clip names of all ranks, in the order their frames were gathered."""
        group = self.process_group
        if self._is_synced and dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
            gathered: list[list[str] | None] = [None] * dist.get_world_size(group)
            dist.all_gather_object(gathered, self._gen_names, group=group)
            return [name for names in gathered for name in (names or [])]
        return list(self._gen_names)
