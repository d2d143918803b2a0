"""Batched L-BFGS: many independent smooth minimisations advanced together.

Each problem (a starting point, or a starting point of one bootstrap resample)
keeps its own L-BFGS history and its own backtracking (Armijo) line search;
the objective is evaluated for all still-active problems in one vectorised
call. A step that satisfies Armijo but not the curvature condition is
lengthened 4x at a time (a crude Wolfe search, which scipy's line search also
approximates by extrapolating). The stopping rules are scipy L-BFGS-B's, so tolerances mean the same
thing as there:

- ``ftol``: stop when ``(f_old - f_new) <= ftol * max(|f_old|, |f_new|, 1)``;
- ``gtol``: stop when ``max_i |grad_i| <= gtol``.

Note the ``max(..., 1)``: an objective whose values are far below 1 (a Huber
loss *averaged* over points) stops early at a fixed ``ftol``; that is how the
original Chinchilla fit stopped short (Besiroglu et al. 2024).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

# Why each problem stopped.
GRADIENT, FTOL, MAXITER, LINE_SEARCH = 0, 1, 2, 3
ATOL_BEST = 1e-12  # see Convergence
STATUS_NAMES = {GRADIENT: "gradient <= gtol", FTOL: "relative reduction <= ftol", MAXITER: "maxiter reached", LINE_SEARCH: "line search failed"}

# fun_grad(x of shape (k, P), problems of shape (k,)) -> (f (k,), grad (k, P))
FunGrad = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class BatchedMinima:
    """Per-problem results of :func:`minimize_batched` (row i = problem i)."""

    x: np.ndarray
    fun: np.ndarray
    grad_norm: np.ndarray  # max |grad component| at x (scipy's projected-gradient norm, unbounded)
    iterations: np.ndarray
    status: np.ndarray  # one of GRADIENT, FTOL, MAXITER, LINE_SEARCH


def _two_loop(g: np.ndarray, S: np.ndarray, Y: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """-H g with each problem's own history; empty slots have rho = 0 and s = y = 0."""
    m = S.shape[1]
    q = g.copy()
    alphas = np.empty((g.shape[0], m))
    for i in range(m - 1, -1, -1):
        alphas[:, i] = rho[:, i] * np.einsum("kp,kp->k", S[:, i], q)
        q -= alphas[:, i, None] * Y[:, i]
    sy = np.einsum("kp,kp->k", S[:, -1], Y[:, -1])
    yy = np.einsum("kp,kp->k", Y[:, -1], Y[:, -1])
    gamma = np.where(yy > 0, sy / np.where(yy > 0, yy, 1.0), 1.0)
    r = gamma[:, None] * q
    for i in range(m):
        beta = rho[:, i] * np.einsum("kp,kp->k", Y[:, i], r)
        r += S[:, i] * (alphas[:, i] - beta)[:, None]
    return -r


def minimize_batched(
    fun_grad: FunGrad,
    x0: np.ndarray,
    *,
    ftol: float,
    gtol: float,
    maxiter: int = 5000,
    history: int = 10,
    max_backtracks: int = 40,
    armijo: float = 1e-4,
    wolfe: float = 0.9,
    max_expansions: int = 30,
) -> BatchedMinima:
    """Minimise every row of ``x0`` as its own problem (see the module docstring)."""
    x_out = np.array(x0, dtype=np.float64, copy=True)
    k, p = x_out.shape
    f_out, g_out = fun_grad(x_out, np.arange(k))
    f_out, g_out = np.array(f_out, dtype=np.float64), np.array(g_out, dtype=np.float64)
    iter_out = np.zeros(k, dtype=np.int64)
    status_out = np.full(k, -1, dtype=np.int64)
    status_out[np.abs(g_out).max(axis=1) <= gtol] = GRADIENT
    # Working state, compacted to the problems still running: ids[i] is row i's problem.
    ids = np.flatnonzero(status_out < 0)
    x, f, g = x_out[ids], f_out[ids], g_out[ids]
    S, Y, rho = np.zeros((ids.size, history, p)), np.zeros((ids.size, history, p)), np.zeros((ids.size, history))
    iters, status = np.zeros(ids.size, dtype=np.int64), np.full(ids.size, -1, dtype=np.int64)
    while ids.size:
        d = _two_loop(g, S, Y, rho)
        slope = np.einsum("kp,kp->k", g, d)
        uphill = slope >= 0  # the history went stale: restart from steepest descent
        if uphill.any():
            S[uphill], Y[uphill], rho[uphill] = 0.0, 0.0, 0.0
            d[uphill] = -g[uphill]
            slope[uphill] = -np.einsum("kp,kp->k", g[uphill], g[uphill])
        fresh = rho[:, -1] == 0  # no curvature yet: a first step of unit length, as scipy
        t = np.where(fresh, np.minimum(1.0, 1.0 / np.maximum(np.linalg.norm(d, axis=1), 1e-300)), 1.0)
        x_new, f_new, g_new = np.empty_like(x), np.empty_like(f), np.empty_like(g)
        accepted = np.zeros(ids.size, dtype=bool)
        pending = np.arange(ids.size)
        for _ in range(max_backtracks):
            xt = x[pending] + t[pending, None] * d[pending]
            ft, gt = fun_grad(xt, ids[pending])
            ok = np.isfinite(ft) & (ft <= f[pending] + armijo * t[pending] * slope[pending])
            done = pending[ok]
            x_new[done], f_new[done], g_new[done] = xt[ok], ft[ok], gt[ok]
            accepted[done] = True
            pending = pending[~ok]
            if pending.size == 0:
                break
            # Quadratic interpolation of the step, kept within [0.1 t, 0.5 t].
            tp, fp = t[pending], ft[~ok]
            denom = 2.0 * (fp - f[pending] - slope[pending] * tp)
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                t_quad = -slope[pending] * tp * tp / denom
            t_quad = np.where(np.isfinite(t_quad), t_quad, 0.5 * tp)
            t[pending] = np.clip(t_quad, 0.1 * tp, 0.5 * tp)
        # Expansion: where the step satisfies Armijo but the slope along d is
        # still steep (the curvature half of Wolfe fails), try 4x longer steps
        # while they keep lowering f. Flat plateaus (a term whose softmax weight
        # has underflowed) are crossed in a few steps instead of thousands.
        grow = np.flatnonzero(accepted)
        grow = grow[np.einsum("kp,kp->k", g_new[grow], d[grow]) < wolfe * slope[grow]]
        for _ in range(max_expansions):
            if grow.size == 0:
                break
            tt = t[grow] * 4.0
            xt = x[grow] + tt[:, None] * d[grow]
            ft, gt = fun_grad(xt, ids[grow])
            better = np.isfinite(ft) & (ft <= f[grow] + armijo * tt * slope[grow]) & (ft < f_new[grow])
            up = grow[better]
            t[up], x_new[up], f_new[up], g_new[up] = tt[better], xt[better], ft[better], gt[better]
            grow = up[np.einsum("kp,kp->k", g_new[up], d[up]) < wolfe * slope[up]]
        iters += 1
        status[~accepted] = LINE_SEARCH
        if accepted.any():
            acc = accepted
            s_, y_ = x_new[acc] - x[acc], g_new[acc] - g[acc]
            sy = np.einsum("kp,kp->k", s_, y_)
            keep = sy > np.finfo(float).eps * np.einsum("kp,kp->k", y_, y_)  # else skip the update (as scipy)
            rows = np.flatnonzero(acc)[keep]
            S[rows] = np.roll(S[rows], -1, axis=1)
            Y[rows] = np.roll(Y[rows], -1, axis=1)
            rho[rows] = np.roll(rho[rows], -1, axis=1)
            S[rows, -1], Y[rows, -1], rho[rows, -1] = s_[keep], y_[keep], 1.0 / sy[keep]
            f_old = f[acc]
            x[acc], f[acc], g[acc] = x_new[acc], f_new[acc], g_new[acc]
            fn = f[acc]
            small_step = (f_old - fn) <= ftol * np.maximum(np.maximum(np.abs(f_old), np.abs(fn)), 1.0)
            acc_rows = np.flatnonzero(acc)
            status[acc_rows[small_step]] = FTOL
            status[acc_rows[np.abs(g[acc]).max(axis=1) <= gtol]] = GRADIENT
        status[(status < 0) & (iters >= maxiter)] = MAXITER
        finished = status >= 0
        if finished.any():
            out = ids[finished]
            x_out[out], f_out[out], g_out[out] = x[finished], f[finished], g[finished]
            iter_out[out], status_out[out] = iters[finished], status[finished]
            live = ~finished
            ids, x, f, g, S, Y, rho, iters, status = (a[live] for a in (ids, x, f, g, S, Y, rho, iters, status))
    return BatchedMinima(x=x_out, fun=f_out, grad_norm=np.abs(g_out).max(axis=1), iterations=iter_out, status=status_out)


@dataclass(frozen=True)
class Convergence:
    """How a multi-start fit converged: which start won and how many agree with it.

    ``n_at_best`` counts the starts whose final objective is within
    ``rtol * |best| + atol`` of the best one (``atol`` for a fit with zero
    residuals): a best value reached from one start only deserves suspicion.
    """

    n_starts: int
    best_start_index: int
    best_start: tuple[float, ...]
    objective: float
    grad_norm: float
    iterations: int
    stopped_because: str
    n_at_best: int
    rtol: float
    atol: float = ATOL_BEST

    @classmethod
    def from_minima(cls, minima: BatchedMinima, starts: np.ndarray, rtol: float, rows: np.ndarray | None = None) -> "Convergence":
        rows = np.arange(len(minima.fun)) if rows is None else rows
        fun = minima.fun[rows]
        i = int(np.nanargmin(fun))
        best = float(fun[i])
        n_at_best = int(np.sum(fun <= best + rtol * abs(best) + ATOL_BEST))
        j = rows[i]
        return cls(
            n_starts=len(rows),
            best_start_index=i,
            best_start=tuple(float(v) for v in starts[i]),
            objective=best,
            grad_norm=float(minima.grad_norm[j]),
            iterations=int(minima.iterations[j]),
            stopped_because=STATUS_NAMES[int(minima.status[j])],
            n_at_best=n_at_best,
            rtol=rtol,
        )

    def to_table(self) -> pd.DataFrame:
        return pd.DataFrame([{k: getattr(self, k) for k in self.__dataclass_fields__}])
