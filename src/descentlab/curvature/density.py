"""Spectral density by stochastic Lanczos quadrature (SLQ).

For a unit random start v, m Lanczos steps with **full reorthogonalisation**
give a tridiagonal T = U diag(theta) U^T; the nodes theta_k with weights
U[0, k]^2 are a Gauss quadrature of the spectral measure v^T delta(H - t) v,
whose expectation is (1/P) sum_i delta(t - lambda_i). Runs are averaged and
smoothed with Gaussians (Ghorbani, Krishnan, Xiao, arXiv 1901.10159; Papyan
2020; Yao et al. PyHessian, arXiv 1912.07145). Memory: m vectors of size P.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.linalg import eigh_tridiagonal

from ._linop import CountingOperator, orthogonalise, single_threaded_blas, work_dtype

__all__ = ["lanczos_tridiagonal", "SpectralDensity", "spectral_density"]


def lanczos_tridiagonal(op, n_iter: int, v0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal ``alpha`` and off-diagonal ``beta`` of the Lanczos tridiagonal matrix.

    Full reorthogonalisation keeps the basis orthogonal, so no ghost copies of
    converged eigenvalues appear: after the three-term recurrence, one
    Gram-Schmidt pass against every previous vector, and a second only when
    the DGKS test asks for it (``_linop.orthogonalise``). The basis is kept in the
    operator's dtype (float32 operator: float32 basis; the products carry that
    rounding anyway), inner products and norms are accumulated in float64. Stops
    early on an invariant subspace (beta ~ 0).
    """
    n = op.shape[0]
    m = min(int(n_iter), n)
    dtype = work_dtype(op)
    V = np.empty((m, n), dtype=dtype)
    alpha, beta = [], []
    v = np.asarray(v0, dtype=np.float64).reshape(-1)
    v = (v / np.linalg.norm(v)).astype(dtype)
    for j in range(m):
        V[j] = v
        w = np.asarray(op.matvec(v), dtype=dtype).reshape(-1)
        a = float(np.dot(v.astype(np.float64), w.astype(np.float64)))
        alpha.append(a)
        w -= dtype.type(a) * v
        if j > 0:
            w -= dtype.type(beta[-1]) * V[j - 1]
        w, _ = orthogonalise(V[: j + 1], w)
        b = float(np.linalg.norm(w.astype(np.float64)))
        if j == m - 1 or b <= 1e-10 * max(1.0, abs(a)):
            break
        beta.append(b)
        v = (w / b).astype(dtype)
    return np.array(alpha), np.array(beta)


@dataclass
class SpectralDensity:
    """SLQ result: per-run quadrature nodes and weights, and the smoothed density on a grid."""

    nodes: list[np.ndarray]
    weights: list[np.ndarray]
    grid: np.ndarray
    density: np.ndarray
    sigma: float
    n_hvps: int

    def cdf(self, t) -> np.ndarray:
        """Fraction of eigenvalues <= t, from the (unsmoothed) averaged quadrature."""
        t = np.atleast_1d(np.asarray(t, dtype=float))
        return np.mean([(w[None, :] * (nd[None, :] <= t[:, None])).sum(1) for nd, w in zip(self.nodes, self.weights)], 0)

    def moment(self, power: int) -> float:
        """Estimate of (1/P) tr(H^power); exact in expectation for power < 2 * n_iter."""
        return float(np.mean([(w * nd**power).sum() for nd, w in zip(self.nodes, self.weights)]))

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"eigenvalue": self.grid, "density": self.density})


def spectral_density(op, n_iter: int = 80, n_runs: int = 10, n_grid: int = 10_000,
                     sigma: float | None = None, seed: int = 0) -> SpectralDensity:
    """SLQ density with ``n_runs`` Gaussian starts of ``n_iter`` Lanczos steps each.

    ``sigma`` is the standard deviation of the smoothing Gaussians; the default
    follows PyHessian, variance 1e-5 * max(1, lambda_max - lambda_min).
    """
    if int(n_iter) < 1 or int(n_runs) < 1 or int(n_grid) < 2:
        raise ValueError(f"need n_iter >= 1, n_runs >= 1, n_grid >= 2; got {n_iter}, {n_runs}, {n_grid}")
    if sigma is not None and not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    counted = CountingOperator(op)
    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    for _ in range(int(n_runs)):
        with single_threaded_blas():
            alpha, beta = lanczos_tridiagonal(counted, n_iter, rng.standard_normal(op.shape[0]))
        theta, U = eigh_tridiagonal(alpha, beta) if len(alpha) > 1 else (alpha, np.ones((1, 1)))
        nodes.append(theta)
        weights.append(U[0] ** 2)
    lo = min(nd.min() for nd in nodes)
    hi = max(nd.max() for nd in nodes)
    if sigma is None:
        sigma = float(np.sqrt(1e-5 * max(1.0, hi - lo)))
    pad = 5 * sigma + 0.01 * (hi - lo)
    grid = np.linspace(lo - pad, hi + pad, int(n_grid))
    all_nodes = np.concatenate(nodes)
    all_weights = np.concatenate(weights) / len(nodes)
    density = np.zeros_like(grid)
    for start in range(0, len(all_nodes), 256):  # bounded memory: grid x 256 at a time
        nd, w = all_nodes[start : start + 256], all_weights[start : start + 256]
        z = (grid[:, None] - nd[None, :]) / sigma
        density += (np.exp(-0.5 * z**2) * w[None, :]).sum(1) / (sigma * np.sqrt(2 * np.pi))
    return SpectralDensity(nodes, weights, grid, density, float(sigma), counted.count)
