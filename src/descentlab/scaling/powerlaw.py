"""One-variable power law with an offset, L = E + A x^-alpha (Kaplan et al. 2020's L(N), L(D), L(C)).

Fitted like the Chinchilla law (same objective with one term): Huber on log
residuals, summed, L-BFGS from a grid of starts with tight tolerances.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._checks import as_array, at_least, positive_scalar, same_length, starts_array
from .chinchilla import MAXITER, TIGHT_FTOL, TIGHT_GTOL
from .multistart import Convergence
from .objective import fit_log_sum_exp

PARAMS = ("a", "e", "alpha")  # A = exp(a), E = exp(e)


def power_law_start_grid(
    a=(0.0, 5.0, 10.0, 15.0, 20.0, 25.0), e=(-1.0, -0.5, 0.0, 0.5, 1.0), alpha=(0.0, 0.5, 1.0, 1.5, 2.0)
) -> np.ndarray:
    """Starting points, rows ``(a, e, alpha)`` (150 by default)."""
    return np.array([(ai, ei, al) for ai, ei, al in itertools.product(a, e, alpha)], dtype=np.float64)


@dataclass(frozen=True)
class PowerLawFit:
    E: float
    A: float
    alpha: float
    theta: np.ndarray  # (a, e, alpha)
    convergence: Convergence
    n_points: int
    delta: float
    reduction: str

    @classmethod
    def from_theta(cls, theta, convergence, n_points, delta, reduction) -> "PowerLawFit":
        a, e, alpha = (float(v) for v in theta)
        return cls(E=float(np.exp(e)), A=float(np.exp(a)), alpha=alpha, theta=np.asarray(theta, dtype=np.float64),
                   convergence=convergence, n_points=n_points, delta=delta, reduction=reduction)

    def predict(self, x) -> np.ndarray:
        return self.E + self.A * as_array("x", x) ** -self.alpha

    def to_table(self) -> pd.DataFrame:
        row = {"E": self.E, "A": self.A, "alpha": self.alpha, "n_points": self.n_points, "delta": self.delta,
               "reduction": self.reduction}
        return pd.DataFrame([{**row, **self.convergence.to_table().iloc[0].to_dict()}])


def power_law_arrays(x, loss) -> tuple[np.ndarray, np.ndarray]:
    xs, ls = as_array("x", x), as_array("loss", loss)
    count = same_length(x=xs, loss=ls)
    at_least("loss", count, 4, "3 parameters")
    return xs, ls


def fit_power_law(
    x,
    loss,
    *,
    starts=None,
    delta: float = 1e-3,
    reduction: str = "sum",
    ftol: float = TIGHT_FTOL,
    gtol: float = TIGHT_GTOL,
    maxiter: int = MAXITER,
    rtol_best: float = 1e-6,
) -> PowerLawFit:
    """Fit L = E + A x^-alpha from every start (default :func:`power_law_start_grid`); the best wins."""
    xs, ls = power_law_arrays(x, loss)
    positive_scalar("delta", delta)
    starts = power_law_start_grid() if starts is None else starts_array(starts, 3, PARAMS)
    thetas, conv, _ = fit_log_sum_exp(np.log(xs)[None], np.log(ls), starts, delta=delta, reduction=reduction,
                                      ftol=ftol, gtol=gtol, maxiter=maxiter, rtol_best=rtol_best)
    return PowerLawFit.from_theta(thetas[0], conv[0], len(ls), delta, reduction)
