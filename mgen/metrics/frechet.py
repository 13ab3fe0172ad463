"""The Fréchet distance between two Gaussians, and the Gaussian statistics of embedding frames.

    FD = ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr √(Σ1 Σ2)

computed in float64 with the symmetric form tr √(Σ1 Σ2) = Σ √eig(Σ1^½ Σ2 Σ1^½): two `eigh` of symmetric matrices,
eigenvalues clamped at 0 (covariances are positive semi-definite; rounding makes tiny ones negative). No
`scipy.linalg.sqrtm` (it has regressed, and its `disp=` argument is gone in SciPy 1.18) and no general `eig`,
whose eigenvectors of a non-symmetric product are ill-conditioned. float32 is not enough: the same FD in float32
is off by ~1e-6 relative.

Statistics are kept as running float64 sums (Σx, Σxxᵀ, n) so that they merge across batches and ranks by
addition; the covariance has ddof 1 (``np.cov`` / Google's FAD).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray

DEFAULT_EPS = 1e-6  # added to both diagonals when the square root fails (fadtk / pytorch-fid use 1e-6)


def _float64(x: ArrayLike, name: str, device: torch.device | None = None) -> Tensor:
    t = torch.as_tensor(x).to(dtype=torch.float64, device=device)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _check_pair(mu: Tensor, sigma: Tensor, name: str) -> None:
    if mu.dim() != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{name}: expected a mean [D] and a covariance [D, D], got {tuple(mu.shape)} and "
                         f"{tuple(sigma.shape)}")


def _psd_sqrt(sigma: Tensor) -> Tensor:
    """Σ^½ of a symmetric positive semi-definite matrix (negative rounding-error eigenvalues clamped to 0)."""
    values, vectors = torch.linalg.eigh(sigma)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


class FrechetReference:
    """One side of the distance with its square root computed once: FAD∞, per-song FAD and bootstraps compare
    many statistics against the same reference."""

    def __init__(self, mu: ArrayLike, sigma: ArrayLike, eps: float = DEFAULT_EPS) -> None:
        self.mu = _float64(mu, "reference mean")
        self.sigma = _float64(sigma, "reference covariance", self.mu.device)
        _check_pair(self.mu, self.sigma, "reference statistics")
        self.eps = eps
        self._root: Tensor | None = None

    @property
    def dim(self) -> int:
        return self.mu.shape[0]

    def distance(self, mu: ArrayLike, sigma: ArrayLike) -> float:
        """FD between this reference and N(mu, sigma)."""
        mu2 = _float64(mu, "mean", self.mu.device)
        sigma2 = _float64(sigma, "covariance", self.mu.device)
        _check_pair(mu2, sigma2, "statistics")
        if mu2.shape != self.mu.shape:
            raise ValueError(f"statistics of dimension {mu2.shape[0]} cannot be compared with a reference of "
                             f"dimension {self.dim}")
        try:
            if self._root is None:
                self._root = _psd_sqrt(self.sigma)
            value = self._value(self._root, self.sigma, mu2, sigma2)
        except torch.linalg.LinAlgError:
            value = float("nan")
        if np.isfinite(value):
            return value
        warnings.warn(f"Fréchet distance: the matrix square root failed; retrying with {self.eps:g}·I added to both "
                      "covariances", RuntimeWarning, stacklevel=2)
        offset = self.eps * torch.eye(self.dim, dtype=torch.float64, device=self.mu.device)
        value = self._value(_psd_sqrt(self.sigma + offset), self.sigma + offset, mu2, sigma2 + offset)
        if not np.isfinite(value):
            raise ValueError("Fréchet distance is not finite even with a regularised covariance")
        return value

    def _value(self, root: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
        product = root @ sigma2 @ root
        product = (product + product.T) / 2
        trace_sqrt = torch.linalg.eigvalsh(product).clamp(min=0).sqrt().sum()
        diff = self.mu - mu2
        return float(diff @ diff + torch.trace(sigma1) + torch.trace(sigma2) - 2 * trace_sqrt)


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike,
                     eps: float = DEFAULT_EPS) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), float64, symmetric `eigh` form; when the square
    root fails (not finite), ``eps·I`` is added to both covariances and it is computed again, with a warning."""
    return FrechetReference(mu1, sigma1, eps).distance(mu2, sigma2)


@dataclass(frozen=True)
class GaussianStats:
    """Mean [D] and covariance [D, D] (float64, ddof 1) of `n` frames."""

    mu: Tensor
    cov: Tensor
    n: int

    @property
    def dim(self) -> int:
        return self.mu.shape[0]

    @staticmethod
    def from_sums(total: Tensor, outer: Tensor, n: int) -> GaussianStats:
        """From Σx [D], Σxxᵀ [D, D] and n ≥ 2: μ = Σx/n, Σ = (Σxxᵀ − n·μμᵀ)/(n − 1)."""
        n = int(n)
        if n < 2:
            raise ValueError(f"a covariance needs at least 2 frames, got {n}")
        total, outer = total.to(torch.float64), outer.to(torch.float64)
        mu = total / n
        cov = (outer - n * torch.outer(mu, mu)) / (n - 1)
        return GaussianStats(mu, cov, n)

    @staticmethod
    def from_frames(frames: ArrayLike) -> GaussianStats:
        """Statistics of frames [N, D] (any float dtype; accumulated in float64)."""
        x = _float64(frames, "frames")
        if x.dim() != 2:
            raise ValueError(f"frames must be [N, D], got shape {tuple(x.shape)}")
        return GaussianStats.from_sums(x.sum(0), x.T @ x, x.shape[0])

    def distance(self, other: GaussianStats) -> float:
        return frechet_distance(self.mu, self.cov, other.mu, other.cov)
