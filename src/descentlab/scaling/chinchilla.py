"""Chinchilla's L(N, D) = E + A/N^alpha + B/D^beta, fitted as Besiroglu et al. (2024) refit it.

Huber loss (delta = 1e-3) on log residuals, SUMMED over points; L-BFGS from a
grid of starting points with tight tolerances; the best start wins
(arXiv 2404.10102, replicating Hoffmann et al. 2022, Approach 3). Averaging
the Huber loss over points instead (with scipy's default tolerances) stops
near the starting point; that is how Hoffmann et al.'s published constants
came out (see ``multistart`` for why the scale matters).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._checks import as_array, at_least, positive_scalar, same_length, starts_array
from .multistart import Convergence
from .objective import fit_log_sum_exp

PARAMS = ("a", "b", "e", "alpha", "beta")  # the fitted vector; A = exp(a), B = exp(b), E = exp(e)
HOFFMANN_2022 = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
BESIROGLU_2024 = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}
# Tight: scipy L-BFGS-B's stopping rules at (near) machine precision.
TIGHT_FTOL, TIGHT_GTOL, MAXITER = 1e-15, 1e-12, 10_000


def start_grid(
    alpha=(0.0, 0.5, 1.0, 1.5, 2.0),
    beta=(0.0, 0.5, 1.0, 1.5, 2.0),
    e=(-1.0, -0.5, 0.0, 0.5, 1.0),
    a=(0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    b=(0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
) -> np.ndarray:
    """The replication's grid of starting points, rows ``(a, b, e, alpha, beta)`` (4,500 by default)."""
    return np.array([(ai, bi, ei, al, be) for al, be, ei, ai, bi in itertools.product(alpha, beta, e, a, b)], dtype=np.float64)


def theta_from_constants(E: float, A: float, B: float, alpha: float, beta: float) -> np.ndarray:
    return np.array([np.log(A), np.log(B), np.log(E), alpha, beta])


def compute_optimal_allocation(compute, *, A: float, B: float, alpha: float, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """(N*, D*) minimising E + A/N^alpha + B/D^beta subject to 6 N D = C (Hoffmann et al. eq. 4).

    N* = G (C/6)^(beta/(alpha+beta)), D* = G^-1 (C/6)^(alpha/(alpha+beta)),
    G = (alpha A / (beta B))^(1/(alpha+beta)). E does not move the optimum.
    """
    c = as_array("compute", compute)
    for name, v in (("A", A), ("B", B), ("alpha", alpha), ("beta", beta)):
        positive_scalar(name, v)
    G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    n_opt = G * (c / 6.0) ** (beta / (alpha + beta))
    d_opt = (c / 6.0) ** (alpha / (alpha + beta)) / G
    return n_opt, d_opt


@dataclass(frozen=True)
class ChinchillaFit:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    theta: np.ndarray  # (a, b, e, alpha, beta)
    convergence: Convergence
    n_points: int
    delta: float
    reduction: str

    @classmethod
    def from_theta(cls, theta, convergence, n_points, delta, reduction) -> "ChinchillaFit":
        a, b, e, alpha, beta = (float(v) for v in theta)
        return cls(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=alpha, beta=beta,
                   theta=np.asarray(theta, dtype=np.float64), convergence=convergence, n_points=n_points,
                   delta=delta, reduction=reduction)

    def predict(self, N, D) -> np.ndarray:
        n, d = as_array("N", N), as_array("D", D)
        same_length(N=n, D=d)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    @property
    def exponents(self) -> tuple[float, float]:
        """(a, b) with N* proportional to C^a and D* to C^b; a + b = 1."""
        s = self.alpha + self.beta
        return self.beta / s, self.alpha / s

    def compute_optimal(self, compute) -> tuple[np.ndarray, np.ndarray]:
        if self.alpha <= 0 or self.beta <= 0:
            raise ValueError(f"no compute-optimal allocation for alpha={self.alpha}, beta={self.beta}: both must be positive")
        return compute_optimal_allocation(compute, A=self.A, B=self.B, alpha=self.alpha, beta=self.beta)

    def to_table(self) -> pd.DataFrame:
        a, b = self.exponents
        row = {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta, "a": a, "b": b,
               "n_points": self.n_points, "delta": self.delta, "reduction": self.reduction}
        conv = self.convergence.to_table().iloc[0].to_dict()
        return pd.DataFrame([{**row, **conv}])


def chinchilla_arrays(N, D, loss) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, d, l = as_array("N", N), as_array("D", D), as_array("loss", loss)
    count = same_length(N=n, D=d, loss=l)
    at_least("loss", count, 6, "5 parameters")
    return n, d, l


def fit_chinchilla(
    N,
    D,
    loss,
    *,
    starts=None,
    delta: float = 1e-3,
    reduction: str = "sum",
    ftol: float = TIGHT_FTOL,
    gtol: float = TIGHT_GTOL,
    maxiter: int = MAXITER,
    rtol_best: float = 1e-6,
) -> ChinchillaFit:
    """Fit L(N, D) from every start in ``starts`` (default: :func:`start_grid`), the best wins."""
    n, d, l = chinchilla_arrays(N, D, loss)
    positive_scalar("delta", delta)
    starts = start_grid() if starts is None else starts_array(starts, 5, PARAMS)
    thetas, conv, _ = fit_log_sum_exp(np.stack([np.log(n), np.log(d)]), np.log(l), starts, delta=delta,
                                      reduction=reduction, ftol=ftol, gtol=gtol, maxiter=maxiter, rtol_best=rtol_best)
    return ChinchillaFit.from_theta(thetas[0], conv[0], len(l), delta, reduction)


def replication_points(frame: pd.DataFrame, drop_highest_loss: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, D, loss) from Besiroglu et al.'s extraction (columns ``Model Size``, ``Training FLOP``, ``loss``),
    D = C / (6 N), without the ``drop_highest_loss`` highest-loss points (as the replication)."""
    missing = {"Model Size", "Training FLOP", "loss"} - set(frame.columns)
    if missing:
        raise ValueError(f"frame lacks columns {sorted(missing)}")
    kept = frame.sort_values("loss", kind="stable").iloc[: len(frame) - drop_highest_loss]
    n = kept["Model Size"].to_numpy(dtype=np.float64)
    return n, kept["Training FLOP"].to_numpy(dtype=np.float64) / (6.0 * n), kept["loss"].to_numpy(dtype=np.float64)
