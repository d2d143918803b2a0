"""Loss-to-loss prediction: the shifted power law between losses on two distributions.

Brandfonbrener et al. (2024, "Loss-to-Loss Prediction"): across models,
L1 = K (L0 - E0)^kappa + E1, with E0, E1 the irreducible losses. Fitted like
the other laws: Huber (delta) on log residuals of L1, summed, batched L-BFGS
from a grid of starts with tight tolerances. E0 is kept in (0, min L0) by
E0 = min(L0) * sigmoid(z).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._checks import as_array, at_least, positive_scalar, same_length, starts_array
from .chinchilla import MAXITER, TIGHT_FTOL, TIGHT_GTOL
from .multistart import Convergence, minimize_batched
from .objective import huber

PARAMS = ("k", "kappa", "e1", "z")  # K = exp(k), E1 = exp(e1), E0 = min(L0) * sigmoid(z)


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class _ShiftedPowerLawObjective:
    def __init__(self, loss0: np.ndarray, loss1: np.ndarray, delta: float, free: np.ndarray):
        self.l0, self.y, self.delta = loss0, np.log(loss1), delta
        self.m0 = float(loss0.min())
        self.free = free  # 1.0 for fitted parameters, 0.0 for fixed ones (their gradient is zeroed, so L-BFGS never moves them)

    def __call__(self, theta: np.ndarray, problems: np.ndarray):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self._evaluate(theta)

    def _evaluate(self, theta: np.ndarray):
        k, kappa, e1, z = (theta[:, i, None] for i in range(4))
        sig = np.minimum(_sigmoid(z), 1.0 - 1e-9)  # keeps L0 - E0 > 0 at the smallest L0
        gap = self.l0 - self.m0 * sig  # L0 - E0 > 0
        ell = np.log(gap)
        u1, u2 = k + kappa * ell, np.broadcast_to(e1, ell.shape)
        top = np.maximum(u1, u2)
        x1, x2 = np.exp(u1 - top), np.exp(u2 - top)
        total = x1 + x2
        w1, w2 = x1 / total, x2 / total
        r = top + np.log(total) - self.y
        f = huber(r, self.delta).sum(axis=1)
        psi = np.clip(r, -self.delta, self.delta)
        pw1 = psi * w1
        dell_dz = -self.m0 * sig * (1.0 - sig) / gap
        g = np.stack([pw1.sum(1), (pw1 * ell).sum(1), (psi * w2).sum(1), (pw1 * kappa * dell_dz).sum(1)], axis=1)
        g *= self.free
        # A term overflowing (kappa log(L0 - E0) huge) makes the point unusable: the line search rejects it.
        f[~np.isfinite(g).all(axis=1)] = np.inf
        return f, g


def loss_to_loss_start_grid(loss1_min: float) -> np.ndarray:
    """Rows ``(k, kappa, e1, z)``: K in e^{-2..2}, kappa in {0.5..2}, E1 in {0.1, 0.5, 0.9} min(L1), E0 at sigmoid({-2, 0, 2}) min(L0)."""
    e1 = np.log(np.array([0.1, 0.5, 0.9]) * loss1_min)
    return np.array(list(itertools.product((-2.0, -1.0, 0.0, 1.0, 2.0), (0.5, 1.0, 1.5, 2.0), e1, (-2.0, 0.0, 2.0))))


@dataclass(frozen=True)
class LossToLossFit:
    K: float
    kappa: float
    E0: float
    E1: float
    theta: np.ndarray
    convergence: Convergence
    n_points: int
    delta: float

    def predict(self, loss0) -> np.ndarray:
        l0 = as_array("loss0", loss0)
        if (l0 <= self.E0).any():
            i = int(np.flatnonzero(l0 <= self.E0)[0])
            raise ValueError(f"loss0[{i}] = {float(l0[i])!r} is not above the fitted irreducible loss E0 = {self.E0!r}")
        return self.K * (l0 - self.E0) ** self.kappa + self.E1

    def to_table(self) -> pd.DataFrame:
        row = {"K": self.K, "kappa": self.kappa, "E0": self.E0, "E1": self.E1, "n_points": self.n_points, "delta": self.delta}
        return pd.DataFrame([{**row, **self.convergence.to_table().iloc[0].to_dict()}])


def fit_loss_to_loss(
    loss0,
    loss1,
    *,
    E0: float | None = None,
    E1: float | None = None,
    starts=None,
    delta: float = 1e-3,
    ftol: float = TIGHT_FTOL,
    gtol: float = TIGHT_GTOL,
    maxiter: int = MAXITER,
    rtol_best: float = 1e-6,
) -> LossToLossFit:
    """Fit L1 = K (L0 - E0)^kappa + E1 over models (one pair of losses per model).

    ``E0``/``E1`` given: held fixed at those values (0 < E0 < min(loss0), 0 < E1 < min(loss1)).
    """
    l0, l1 = as_array("loss0", loss0), as_array("loss1", loss1)
    n = same_length(loss0=l0, loss1=l1)
    at_least("loss0", n, 5, "4 parameters")
    positive_scalar("delta", delta)
    starts = loss_to_loss_start_grid(float(l1.min())) if starts is None else starts_array(starts, 4, PARAMS)
    starts = starts.copy()
    free = np.ones(4)
    if E0 is not None:
        if not 0 < E0 < l0.min():
            raise ValueError(f"E0 must lie in (0, min(loss0) = {float(l0.min())!r}), got {E0!r}")
        starts[:, 3], free[3] = np.log(E0 / l0.min()) - np.log1p(-E0 / l0.min()), 0.0  # z = logit(E0 / min L0)
    if E1 is not None:
        if not 0 < E1 < l1.min():
            raise ValueError(f"E1 must lie in (0, min(loss1) = {float(l1.min())!r}), got {E1!r}")
        starts[:, 2], free[2] = np.log(E1), 0.0
    if free.sum() < 4:
        starts = np.unique(starts, axis=0)
    minima = minimize_batched(_ShiftedPowerLawObjective(l0, l1, delta, free), starts, ftol=ftol, gtol=gtol, maxiter=maxiter)
    conv = Convergence.from_minima(minima, starts, rtol_best)
    k, kappa, e1, z = minima.x[conv.best_start_index]
    return LossToLossFit(K=float(np.exp(k)), kappa=float(kappa),
                         E0=float(l0.min() * _sigmoid(z)) if E0 is None else float(E0),
                         E1=float(np.exp(e1)) if E1 is None else float(E1),
                         theta=minima.x[conv.best_start_index].copy(), convergence=conv, n_points=n, delta=delta)
