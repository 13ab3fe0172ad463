"""frechet_distance in float64 (symmetric eigh form) against SciPy's sqrtm, closed forms, invariances and the real,
ill-conditioned reference statistics fadtk ships (eval notes §7 (a): tolerances relative to the FD)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

import mgen.metrics.frechet as frechet_module
from metric_fixtures import fma_pop
from mgen.metrics import GaussianStats, frechet_distance


def scipy_fd(mu1, s1, mu2, s2) -> float:
    """The textbook formula with scipy.linalg.sqrtm (tests only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = scipy.linalg.sqrtm(s1 @ s2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real)


def gaussian(n: int, d: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    x = rng.standard_normal((n, d)) @ mix + shift + rng.standard_normal(d)
    return x.mean(0), np.cov(x, rowvar=False)


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("d", [128])
def test_matches_scipy_well_conditioned(d: int) -> None:
    mu1, s1 = gaussian(4 * d, d, 0)
    mu2, s2 = gaussian(4 * d, d, 1, shift=0.3)
    assert rel(frechet_distance(mu1, s1, mu2, s2), scipy_fd(mu1, s1, mu2, s2)) <= 1e-9


def test_matches_scipy_rank_deficient() -> None:
    mu1, s1 = gaussian(100, 128, 2)  # n < d: rank 99
    mu2, s2 = gaussian(1000, 128, 3, shift=0.1)
    assert np.linalg.matrix_rank(s1) < 128
    assert rel(frechet_distance(mu1, s1, mu2, s2), scipy_fd(mu1, s1, mu2, s2)) <= 1e-6


def test_diagonal_closed_form() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.uniform(0.1, 3.0, 64), rng.uniform(0.1, 3.0, 64)
    mu1, mu2 = rng.standard_normal(64), rng.standard_normal(64)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert rel(frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), expected) <= 1e-12


def test_identity_symmetry_and_orthogonal_invariance() -> None:
    mu1, s1 = gaussian(600, 128, 5)
    mu2, s2 = gaussian(600, 128, 6, shift=0.2)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) <= 1e-9 * np.trace(s1)
    forward, backward = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert rel(backward, forward) <= 1e-9
    q, _ = np.linalg.qr(np.random.default_rng(7).standard_normal((128, 128)))
    rotated = frechet_distance(q @ mu1, q @ s1 @ q.T, q @ mu2, q @ s2 @ q.T)
    assert rel(rotated, forward) <= 1e-9


@pytest.mark.parametrize("pair", [("encodec-emb", "encodec-emb-48k"), ("clap-laion-audio", "clap-laion-music")])
def test_real_ill_conditioned_statistics(pair: tuple[str, str]) -> None:
    stats = fma_pop()
    (mu1, s1), (mu2, s2) = [(stats[f"{name}.mu"], stats[f"{name}.cov"]) for name in pair]
    conditions = [np.ptp(np.log10(np.abs(np.linalg.eigvalsh(s)))) for s in (s1, s2)]
    assert max(conditions) > 4  # really ill-conditioned: condition numbers from 5e4 to 2e8
    assert rel(frechet_distance(mu1, s1, mu2, s2), scipy_fd(mu1, s1, mu2, s2)) <= 1e-8
    # the same statistics rounded to float32 (as Google's FAD stores them) still give a finite, close value
    f32 = frechet_distance(mu1.astype(np.float32), s1.astype(np.float32), mu2.astype(np.float32),
                           s2.astype(np.float32))
    assert rel(f32, scipy_fd(mu1, s1, mu2, s2)) <= 1e-4


def test_accepts_tensors_and_float32() -> None:
    mu1, s1 = gaussian(300, 16, 8)
    mu2, s2 = gaussian(300, 16, 9, shift=0.5)
    from_numpy = frechet_distance(mu1, s1, mu2, s2)
    from_torch = frechet_distance(*(torch.from_numpy(a) for a in (mu1, s1, mu2, s2)))
    assert from_torch == from_numpy
    assert GaussianStats.from_frames(np.random.default_rng(0).standard_normal((5, 3))).cov.dtype == torch.float64


def test_retries_with_eps_when_the_square_root_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    mu1, s1 = gaussian(300, 16, 10)
    mu2, s2 = gaussian(300, 16, 11, shift=0.5)
    real_sqrt, calls = frechet_module._psd_sqrt, []

    def failing_once(sigma: torch.Tensor) -> torch.Tensor:
        calls.append(sigma.clone())
        if len(calls) == 1:
            raise torch.linalg.LinAlgError("failed to converge")
        return real_sqrt(sigma)

    monkeypatch.setattr(frechet_module, "_psd_sqrt", failing_once)
    with pytest.warns(RuntimeWarning, match="retrying with 1e-06"):
        value = frechet_distance(mu1, s1, mu2, s2)
    eye = 1e-6 * np.eye(16)
    monkeypatch.setattr(frechet_module, "_psd_sqrt", real_sqrt)
    assert value == pytest.approx(frechet_distance(mu1, s1 + eye, mu2, s2 + eye), rel=1e-12)
    assert torch.allclose(calls[1], torch.from_numpy(s1 + eye))


def test_bad_statistics_are_refused() -> None:
    mu, s = gaussian(50, 4, 12)
    with pytest.raises(ValueError, match="dimension 3 cannot be compared with a reference of dimension 4"):
        frechet_distance(mu, s, mu[:3], s[:3, :3])
    with pytest.raises(ValueError, match=r"expected a mean \[D\] and a covariance \[D, D\]"):
        frechet_distance(mu, s[:3], mu, s)
    bad = s.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="covariance contains NaN"):
        frechet_distance(mu, s, mu, bad)
    with pytest.raises(ValueError, match="at least 2 frames, got 1"):
        GaussianStats.from_frames(np.ones((1, 4)))
