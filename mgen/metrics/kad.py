"""Kernel Audio Distance (Chung et al. 2025, arXiv 2502.15602; kadtk): the unbiased MMD² between reference frames
x [m, D] and generated frames y [n, D], times 100:

    KAD = 100 · ( Σ_{i≠j} k(x_i, x_j) / m(m−1) + Σ_{i≠j} k(y_i, y_j) / n(n−1) − 2 Σ_{i,j} k(x_i, y_j) / mn )

with k(a, b) = exp(−γ‖a − b‖²) (or 'iq' 1/(1+γd²), 'imq' 1/√(1+γd²)), γ = 1 / (2σ² + 1e-8). Unbiased, so it can
be slightly negative when the sets match. Unlike FAD it assumes no Gaussian and has no 1/n bias.

Bandwidth σ: ``"reference"`` (default, as kadtk's README says): the median pairwise distance of the reference
frames; ``"eval"``: of the generated frames, which is what kadtk 1.1.0's code does (it also computes that median
in float32; mgen uses the working dtype); or a float. The median is the *lower* median, as ``torch.median``.

Memory: the kernel sums run over chunk × chunk blocks, so 10k+ frames never need the m² matrix (800 MB at 10k
frames in float64); the median is found exactly with a sampled bracket and one blocked counting pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mgen.metrics.clips import SilencePolicy
from mgen.metrics.embedding_metric import EmbeddingMetric
from mgen.metrics.states import cat_state
from mgen.metrics.reference import ReferenceStats

SCALE = 100.0
KERNELS = ("gaussian", "iq", "imq")
DEFAULT_CHUNK = 1024  # an 8 MB float64 block of kernel values
Bandwidth = str | float


def _kernel(name: str, gamma: float) -> Callable[[Tensor], Tensor]:
    if name == "gaussian":
        return lambda d2: torch.exp(-gamma * d2)
    if name == "iq":
        return lambda d2: 1 / (1 + gamma * d2)
    if name == "imq":
        return lambda d2: torch.rsqrt(1 + gamma * d2)
    raise ValueError(f"kernel must be one of {KERNELS}, got {name!r}")


def _blocks(m: int, chunk: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk, m)) for start in range(0, m, chunk)]


def _kernel_sum(a: Tensor, b: Tensor | None, kernel: Callable[[Tensor], Tensor], chunk: int) -> Tensor:
    """Σ_{i,j} k(a_i, b_j) over chunk × chunk blocks; with b None, Σ_{i≠j} k(a_i, a_j) (each block pair once,
    off-diagonal blocks counted twice, the diagonal's own values removed)."""
    same = b is None
    b = a if same else b
    sq_a, sq_b = (a * a).sum(1), (b * b).sum(1)
    total = torch.zeros((), dtype=a.dtype, device=a.device)
    for i0, i1 in _blocks(a.shape[0], chunk):
        for j0, j1 in _blocks(b.shape[0], chunk):
            if same and j0 < i0:
                continue
            d2 = sq_a[i0:i1, None] + sq_b[None, j0:j1] - 2 * a[i0:i1] @ b[j0:j1].T
            k = kernel(d2)
            if not same:
                total += k.sum()
            elif i0 == j0:
                total += k.sum() - k.diagonal().sum()
            else:
                total += 2 * k.sum()
    return total


def _pair_distances(x: Tensor, i0: int, i1: int, j0: int, j1: int) -> Tensor:
    """Distances between rows i0:i1 and j0:j1 (j0 ≥ i0), each unordered pair once, computed as torch.pdist does
    (differences, not the ‖a‖² + ‖b‖² − 2ab expansion)."""
    d = torch.cdist(x[i0:i1], x[j0:j1], compute_mode="donot_use_mm_for_euclid_dist")
    if i0 == j0:
        return d[torch.ones_like(d, dtype=torch.bool).triu(1)]
    return d.flatten()


def _sample_distances(x: Tensor, samples: int, seed: int) -> Tensor:
    """Distances of `samples` random pairs of distinct rows (uniform over pairs), seeded."""
    generator = torch.Generator().manual_seed(seed)
    m = x.shape[0]
    i = torch.randint(m, (samples,), generator=generator).to(x.device)
    j = (i + torch.randint(1, m, (samples,), generator=generator).to(x.device)) % m
    step = 1 << 14  # gathered rows in slices: [samples, D] copies would cost more than the blocks
    return torch.cat([(x[i[s:s + step]] - x[j[s:s + step]]).norm(dim=1) for s in range(0, samples, step)])


def median_pairwise_distance(x: Tensor, chunk: int = DEFAULT_CHUNK, seed: int = 0) -> float:
    """Lower median of the m(m−1)/2 Euclidean distances between the rows of x, equal to
    ``torch.median(torch.pdist(x))``. When there are more than chunk² pairs it is found without holding them all:
    a seeded sample of pairs brackets the median, one blocked pass counts the pairs below the bracket and keeps
    those inside it (~2 % of them), and the median is selected among those."""
    m = x.shape[0]
    if m < 2:
        raise ValueError(f"a median pairwise distance needs at least 2 frames, got {m}")
    pairs = m * (m - 1) // 2
    rank = (pairs - 1) // 2  # 0-based rank of the lower median
    if pairs <= chunk * chunk:
        return float(torch.kthvalue(torch.pdist(x), rank + 1).values)
    samples = min(chunk * chunk, 1 << 18)
    sample = _sample_distances(x, samples, seed)
    quantile = (rank + 0.5) / pairs
    half_width = 5 / math.sqrt(samples)
    while True:
        if half_width >= 1:
            low, high = -math.inf, math.inf
        else:
            q = torch.tensor([max(0.0, quantile - half_width), min(1.0, quantile + half_width)], dtype=x.dtype,
                             device=x.device)
            low, high = (float(v) for v in torch.quantile(sample, q))
        below, inside = 0, []
        for i0, i1 in _blocks(m, chunk):
            for j0, j1 in _blocks(m, chunk):
                if j0 < i0:
                    continue
                d = _pair_distances(x, i0, i1, j0, j1)
                below += int((d < low).sum())
                inside.append(d[(d >= low) & (d <= high)])
        kept = torch.cat(inside)
        if below <= rank < below + kept.numel():
            return float(torch.kthvalue(kept, rank - below + 1).values)
        half_width *= 4  # the sample's bracket missed (rare): widen and count again


def kernel_audio_distance(x: Tensor, y: Tensor, bandwidth: Bandwidth = "reference", kernel: str = "gaussian",
                          chunk: int = DEFAULT_CHUNK, dtype: torch.dtype = torch.float64, eps: float = 1e-8) -> float:
    """KAD (module docstring) between reference frames `x` [m, D] and generated frames `y` [n, D]."""
    x, y = torch.as_tensor(x).to(dtype), torch.as_tensor(y).to(dtype=dtype, device=torch.as_tensor(x).device)
    for name, frames in (("reference", x), ("generated", y)):
        if frames.dim() != 2 or frames.shape[0] < 2:
            raise ValueError(f"KAD needs at least 2 {name} frames [n, D], got shape {tuple(frames.shape)}")
        if not torch.isfinite(frames).all():
            raise ValueError(f"KAD: {name} frames contain NaN or infinite values")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"KAD: reference frames are {x.shape[1]}-d but generated frames {y.shape[1]}-d")
    sigma = resolve_bandwidth(bandwidth, x, y, chunk)
    k = _kernel(kernel, 1 / (2 * sigma ** 2 + eps))
    m, n = x.shape[0], y.shape[0]
    value = (_kernel_sum(x, None, k, chunk) / (m * (m - 1)) + _kernel_sum(y, None, k, chunk) / (n * (n - 1))
             - 2 * _kernel_sum(x, y, k, chunk) / (m * n))
    return float(value) * SCALE


def resolve_bandwidth(bandwidth: Bandwidth, x: Tensor, y: Tensor, chunk: int = DEFAULT_CHUNK) -> float:
    if bandwidth == "reference":
        return median_pairwise_distance(x, chunk)
    if bandwidth == "eval":
        return median_pairwise_distance(y, chunk)
    if isinstance(bandwidth, str) or not float(bandwidth) > 0:
        raise ValueError(f"bandwidth must be 'reference', 'eval' or a positive number, got {bandwidth!r}")
    return float(bandwidth)


class KernelAudioDistance(EmbeddingMetric):
    """KAD between generated audio and a reference, on any embedder (see `EmbeddingMetric` for the contract).

    Keeps the frames of both sides (a "cat" list state, float32 as embedders produce them, the reference's kept
    across `reset()`); ``compute()`` -> KAD (float64 scalar tensor). A loaded reference must contain frames
    (saved by a KernelAudioDistance, or a FrechetAudioDistance with keep_frames=True).
    """

    higher_is_better = False
    reference_states = EmbeddingMetric.reference_states + ("ref_frames",)

    def __init__(self, embedder: Any, reference: str | Path | ReferenceStats | None = None, *,
                 bandwidth: Bandwidth = "reference", kernel: str = "gaussian", chunk: int = DEFAULT_CHUNK,
                 dtype: torch.dtype = torch.float64, silence: SilencePolicy = "error",
                 reference_source: str = "real", **kwargs: Any) -> None:
        super().__init__(embedder, silence=silence, reference_source=reference_source, **kwargs)
        _kernel(kernel, 1.0)
        if not isinstance(bandwidth, str):
            resolve_bandwidth(bandwidth, torch.zeros(0), torch.zeros(0))
        elif bandwidth not in ("reference", "eval"):
            raise ValueError(f"bandwidth must be 'reference', 'eval' or a positive number, got {bandwidth!r}")
        self.bandwidth, self.kernel, self.chunk, self.compute_dtype = bandwidth, kernel, chunk, dtype
        self.add_state("gen_frames", [], dist_reduce_fx="cat")
        self.add_state("ref_frames", [], dist_reduce_fx="cat")
        self._loaded_bandwidth: tuple[ReferenceStats, float] | None = None
        if reference is not None:
            self.load_reference(reference)

    def _add_frames(self, frames: list[torch.Tensor], names: list[str | None], reference: bool) -> None:
        state = self.ref_frames if reference else self.gen_frames
        state.extend(f.flatten().to(self.dtype) for f in frames)

    def compute(self) -> Tensor:
        ref = self._reference()
        x = ref.frames.to(self.device, self.compute_dtype)
        y = cat_state(self.gen_frames).view(-1, self.info.dim).to(self.compute_dtype)
        if y.shape[0] < 2:
            raise ValueError(f"KAD needs at least 2 generated embedding frames, got {y.shape[0]} from "
                             f"{int(self.gen_clips)} clip(s)")
        bandwidth: Bandwidth = self.bandwidth
        if bandwidth == "reference" and ref is self._loaded:  # the reference's median, computed once
            if self._loaded_bandwidth is None or self._loaded_bandwidth[0] is not ref:
                self._loaded_bandwidth = (ref, median_pairwise_distance(x, self.chunk))
            bandwidth = self._loaded_bandwidth[1]
        value = kernel_audio_distance(x, y, bandwidth, self.kernel, self.chunk, self.compute_dtype)
        return torch.tensor(value, dtype=torch.float64)

    def _num_frames(self, reference: bool) -> int:
        return cat_state(self.ref_frames if reference else self.gen_frames).numel() // self.info.dim

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "bandwidth": self.bandwidth, "kernel": self.kernel}

    def _reference_from_states(self) -> ReferenceStats:
        frames = cat_state(self.ref_frames).view(-1, self.info.dim)
        if frames.shape[0] < 2:
            raise ValueError(f"KAD needs at least 2 reference embedding frames, got {frames.shape[0]} from "
                             f"{int(self.ref_clips)} clip(s)")
        return ReferenceStats.from_frames(frames, self.info, self.reference_source, int(self.ref_clips))

    def _check_loaded(self, ref: ReferenceStats) -> None:
        if ref.frames is None:
            raise ValueError(f"{ref.origin or 'reference statistics'}: no frames in it, and KAD needs them; save the "
                             "reference from a KernelAudioDistance or a FrechetAudioDistance(keep_frames=True)")
