"""The Huber loss on log residuals of a sum of power laws, for many parameter vectors at once.

The model is written as a log-sum-exp so that every term stays positive and
the fit is well scaled (Hoffmann et al. 2022, Besiroglu et al. 2024):

    log L_hat = LSE(a_1 - alpha_1 log x_1, ..., a_K - alpha_K log x_K, e)
    i.e. L_hat = E + sum_k A_k x_k^-alpha_k,  A_k = exp(a_k), E = exp(e).

A parameter vector is ``(a_1..a_K, e, alpha_1..alpha_K)``; Chinchilla's is
``(a, b, e, alpha, beta)``. The objective of one problem is
``sum_i w_i Huber_delta(log L_hat_i - log L_i)`` with weights ``w`` (1 for a
summed fit, 1/n for an averaged one, resampling counts for a bootstrap
resample), and its gradient is analytic. The log-sum-exp is shifted by e
(one exp per point fewer than shifting by the largest term); rows where a term
overflows that way are recomputed with the largest-term shift.
"""

from __future__ import annotations

import numpy as np

from .multistart import Convergence, minimize_batched

CHUNK_ELEMENTS = 2_000_000  # problems x points per vectorised evaluation: bounds the memory


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


class LogSumExpHuber:
    """Objective and gradient for rows of parameters; ``weights`` has one row per weight set.

    ``features`` is (K, n) of log x_k, ``log_loss`` (n,), ``weights`` (W, n);
    ``problem_weight_row`` maps each problem to its weight row.
    """

    def __init__(self, features: np.ndarray, log_loss: np.ndarray, delta: float, weights: np.ndarray, problem_weight_row: np.ndarray):
        self.features = np.asarray(features, dtype=np.float64)
        self.log_loss = np.asarray(log_loss, dtype=np.float64)
        self.delta = float(delta)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.problem_weight_row = np.asarray(problem_weight_row)
        self.n_terms = self.features.shape[0]

    @property
    def n_params(self) -> int:
        return 2 * self.n_terms + 1

    def log_prediction(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log L_hat (k, n) and the softmax weights of the terms (K+1, k, n)."""
        K = self.n_terms
        u = np.empty((K + 1, theta.shape[0], self.features.shape[1]))
        for j in range(K):
            u[j] = theta[:, j, None] - theta[:, K + 1 + j, None] * self.features[j]
        u[K] = theta[:, K, None]
        top = u.max(axis=0)
        np.subtract(u, top, out=u)
        np.exp(u, out=u)
        total = u.sum(axis=0)
        u /= total
        return top + np.log(total), u

    def __call__(self, theta: np.ndarray, problems: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        theta = np.asarray(theta, dtype=np.float64)
        f = np.empty(theta.shape[0])
        g = np.empty_like(theta)
        step = max(1, CHUNK_ELEMENTS // max(1, self.features.shape[1]))
        for lo in range(0, theta.shape[0], step):
            sl = slice(lo, lo + step)
            f[sl], g[sl] = self._chunk(theta[sl], problems[sl])
        return f, g

    def _chunk(self, theta: np.ndarray, problems: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shifted by e rather than by the largest term: one exp per point fewer and no max.

        Rows where a term overflows are recomputed by :meth:`_chunk_stable`."""
        K = self.n_terms
        w = self._weights(problems)
        e = theta[:, K, None]
        ex = np.empty((K, theta.shape[0], self.features.shape[1]))
        for j in range(K):
            np.subtract(theta[:, j, None] - e, theta[:, K + 1 + j, None] * self.features[j], out=ex[j])
        with np.errstate(over="ignore", invalid="ignore"):
            return self._shifted_by_e(theta, problems, w, e, ex)

    def _shifted_by_e(self, theta, problems, w, e, ex):
        K = self.n_terms
        np.exp(ex, out=ex)
        total = ex.sum(axis=0)
        total += 1.0  # the E term: exp(e - e)
        r = np.log(total)
        r += e
        r -= self.log_loss
        psi = np.clip(r, -self.delta, self.delta)  # Huber'(r)
        h = 0.5 * psi
        np.subtract(r, h, out=h)
        h *= psi  # Huber(r) = psi (r - psi / 2)
        f = h @ w if w.ndim == 1 else np.einsum("kn,kn->k", h, w)
        psi *= w
        psi /= total  # Huber' times the weight, over the sum of the terms
        g = np.empty_like(theta)
        for j in range(K):
            ex[j] *= psi
            g[:, j] = ex[j].sum(axis=1)
            g[:, K + 1 + j] = -(ex[j] @ self.features[j])
        g[:, K] = psi.sum(axis=1)
        bad = ~(np.isfinite(f) & np.isfinite(g).all(axis=1))
        if bad.any():
            f[bad], g[bad] = self._chunk_stable(theta[bad], problems[bad])
        return f, g

    def _weights(self, problems: np.ndarray) -> np.ndarray:
        return self.weights[0] if self.weights.shape[0] == 1 else self.weights[self.problem_weight_row[problems]]

    def _chunk_stable(self, theta: np.ndarray, problems: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shifted by the largest term: no overflow anywhere."""
        K = self.n_terms
        w = self._weights(problems)
        pred, soft = self.log_prediction(theta)
        r = pred - self.log_loss
        f = (w * huber(r, self.delta)).sum(axis=1)
        psi = w * np.clip(r, -self.delta, self.delta)  # Huber'(r), weighted
        g = np.empty_like(theta)
        for j in range(K):
            pj = psi * soft[j]
            g[:, j] = pj.sum(axis=1)
            g[:, K + 1 + j] = -(pj @ self.features[j])
        g[:, K] = (psi * soft[K]).sum(axis=1)
        return f, g


def fit_log_sum_exp(
    features: np.ndarray,
    log_loss: np.ndarray,
    starts: np.ndarray,
    *,
    delta: float,
    reduction: str,
    ftol: float,
    gtol: float,
    maxiter: int,
    rtol_best: float,
    counts: np.ndarray | None = None,
):
    """Fit from every start, for every weight set at once; the best start wins per weight set.

    ``counts`` (R, n): how often each point is drawn in each of R resamples
    (None: the data once). Returns ``(thetas (R, P), [Convergence] * R, minima)``.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    n = log_loss.shape[0]
    counts = np.ones((1, n)) if counts is None else np.asarray(counts, dtype=np.float64)
    weights = counts / n if reduction == "mean" else counts
    n_sets, n_starts = counts.shape[0], starts.shape[0]
    objective = LogSumExpHuber(features, log_loss, delta, weights, np.repeat(np.arange(n_sets), n_starts))
    minima = minimize_batched(objective, np.tile(starts, (n_sets, 1)), ftol=ftol, gtol=gtol, maxiter=maxiter)
    thetas = np.empty((n_sets, starts.shape[1]))
    convergence = []
    for r in range(n_sets):
        rows = np.arange(r * n_starts, (r + 1) * n_starts)
        conv = Convergence.from_minima(minima, starts, rtol_best, rows)
        thetas[r] = minima.x[rows[conv.best_start_index]]
        convergence.append(conv)
    return thetas, convergence, minima
