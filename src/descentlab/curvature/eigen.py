"""Extreme eigenvalues of a symmetric curvature operator.

Lanczos via ``scipy.sparse.linalg.eigsh`` (implicitly restarted, with
reorthogonalisation) for the top (``which='LA'``: mid-training Hessians are
indefinite, so 'LM' could return a negative one) and bottom eigenvalues, or
(``method="lanczos"``) a plain Lanczos with full reorthogonalisation that
checks the Ritz residual estimates after every step and stops as soon as they
pass, which saves the products of ARPACK's first restart cycle (ncv >= 20 for
k = 1) when the tolerance is loose; power iteration with a residual stopping test. Every result carries the residual
norms ||H v - lambda v|| and the number of operator products (HVPs), including
those spent on the residual check. Without convergence every method returns its
best estimates with ``converged=False`` (for ARPACK, from a thick-restart record
of its products kept when ``maxiter`` is given, since ARPACK itself returns only
converged pairs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import eigh_tridiagonal
from scipy.sparse.linalg import ArpackNoConvergence, eigsh

from ._linop import CountingOperator, orthogonalise, single_threaded_blas, work_dtype

__all__ = ["EigenResult", "top_eigenvalues", "bottom_eigenvalues", "power_iteration"]


@dataclass
class EigenResult:
    """Eigenpairs (``eigenvectors[:, i]`` belongs to ``eigenvalues[i]``) with their residuals."""

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    residuals: np.ndarray  # ||H v_i - lambda_i v_i|| for unit v_i
    n_hvps: int
    converged: bool
    method: str

    @property
    def relative_residuals(self) -> np.ndarray:
        return self.residuals / np.maximum(np.abs(self.eigenvalues), np.finfo(float).tiny)

    def as_dict(self, prefix: str = "eig") -> dict[str, float]:
        out = {}
        for i, (lam, r) in enumerate(zip(self.eigenvalues, self.residuals), start=1):
            out[f"{prefix}{i}"] = float(lam)
            out[f"{prefix}{i}_residual"] = float(r)
        out[f"{prefix}_hvps"] = float(self.n_hvps)
        return out


def _residuals(op, vals, vecs) -> np.ndarray:
    hv = op.matmat(vecs)
    return np.linalg.norm(hv - vecs * vals[None, :], axis=0)


def _rayleigh_ritz(X, AX, which, count):
    """The ``count`` wanted Ritz pairs of the span of the rows of X, given the rows of AX
    (one product per row): (values, row coefficients), no products.

    Directions that X spans only to rounding (Gram eigenvalues below 1e-10 of the
    largest) are dropped, so nearly dependent rows do no harm.
    """
    X64 = X.astype(np.float64, copy=False)
    gram = X64 @ X64.T
    s, U = np.linalg.eigh(0.5 * (gram + gram.T))
    keep = s > 1e-10 * max(s.max(), np.finfo(float).tiny)
    C = U[:, keep] / np.sqrt(s[keep])  # the rows of C^T X are orthonormal and span the rows of X
    T = C.T @ (X64 @ AX.astype(np.float64, copy=False).T) @ C
    theta, S = np.linalg.eigh(0.5 * (T + T.T))
    idx = np.argsort(theta)[::-1][:count] if which == "LA" else np.argsort(theta)[:count]
    return theta[idx], C @ S[:, idx]


class _KrylovRecorder(CountingOperator):
    """Counts products and keeps a compressed record of them for a fallback Rayleigh-Ritz.

    ARPACK returns nothing when no Ritz pair has converged. This keeps every
    input x and product H x until ``window`` of them are stored, then replaces
    them by the ``keep`` wanted Ritz vectors of their span and their products
    (by linearity, no new products): a thick restart beside ARPACK's own. The
    subspace at the end holds the best Ritz vectors of every earlier window, so
    its wanted Ritz values are at least as good as those of any of them
    (Courant-Fischer). Memory: 2 x window vectors; cost: two copies per product
    and one compression (two n x window^2 products) per window - keep products.
    """

    def __init__(self, op, which, window, keep):
        super().__init__(op)
        self.which, self.keep, self.window = which, int(keep), int(window)
        self.X = self.AX = None  # (window, n) rows, allocated at the first product in its dtype
        self.rows = 0

    def _record(self, x, ax):
        if self.X is None:
            dtype = np.result_type(x, ax)
            self.X, self.AX = (np.empty((self.window, self.shape[0]), dtype) for _ in range(2))
        self.X[self.rows] = np.reshape(x, -1)
        self.AX[self.rows] = np.reshape(ax, -1)
        self.rows += 1
        if self.rows == self.window:
            _, coef = _rayleigh_ritz(self.X, self.AX, self.which, self.keep)
            m = coef.shape[1]
            self.X[:m] = coef.T.astype(self.X.dtype) @ self.X
            self.AX[:m] = coef.T.astype(self.AX.dtype) @ self.AX
            self.rows = m

    def _matvec(self, v):
        out = super()._matvec(v)
        self._record(v, out)
        return out

    def _matmat(self, V):
        V = np.asarray(V)
        out = super()._matmat(V)
        for j in range(V.shape[1]):
            self._record(V[:, j], out[:, j])
        return out

    def best(self, k):
        """The k wanted Ritz values and unit Ritz vectors (columns) of the recorded subspace, no products."""
        X, AX = self.X[:self.rows], self.AX[:self.rows]
        theta, coef = _rayleigh_ritz(X, AX, self.which, k)
        vecs = X.astype(np.float64).T @ coef
        return theta, vecs / np.linalg.norm(vecs, axis=0, keepdims=True)


def _lanczos(op, k, which, tol, maxiter, v0, ncv, seed) -> EigenResult:
    if not 1 <= int(k) < op.shape[0]:
        raise ValueError(f"k must be in [1, {op.shape[0] - 1}] (eigsh needs k < n), got {k!r}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    k = int(k)
    if maxiter is None:  # ARPACK's limit, 10 n restarts; no record (2 copies + compression per product)
        counted = CountingOperator(op)
    else:
        window = min(op.shape[0], ncv if ncv is not None else max(2 * k + 1, 20))  # ARPACK's ncv
        counted = _KrylovRecorder(op, which, window=2 * window, keep=max(k, window // 2))
    dtype = work_dtype(op)
    if v0 is None:
        v0 = np.random.default_rng(seed).standard_normal(op.shape[0]).astype(dtype)
    else:
        v0 = np.asarray(v0, dtype=dtype).reshape(-1)
    converged = True
    try:
        vals, vecs = eigsh(counted, k=k, which=which, tol=tol, maxiter=maxiter, v0=v0, ncv=ncv)
    except ArpackNoConvergence as err:
        found = np.asarray(err.eigenvectors).reshape(op.shape[0], -1)
        if found.shape[1] >= k:  # ARPACK can run out of restarts just as all k pairs converge
            vals, vecs = np.asarray(err.eigenvalues)[:k], found[:, :k]
        elif not isinstance(counted, _KrylovRecorder):
            raise RuntimeError(f"ARPACK found {found.shape[1]} of k={k} eigenpairs within its default limit of "
                               f"10 n restarts ({counted.count} products); pass maxiter to get the best "
                               "estimates with converged=False instead") from err
        else:
            # Fewer than k pairs converged (maybe none): the k best Ritz pairs of all the products
            # spent (ARPACK's converged vectors included), flagged, as method="lanczos" reports.
            converged = False
            if found.shape[1]:
                counted.matmat(found.astype(dtype))
            vals, vecs = counted.best(k)
            vecs = vecs.astype(dtype)
    order = np.argsort(vals)[::-1] if which == "LA" else np.argsort(vals)
    vals, vecs = vals[order], vecs[:, order]
    res = _residuals(counted, vals, vecs)
    return EigenResult(vals, vecs, res, counted.count, converged, f"lanczos-{which}")


def _lanczos_early_stop(op, k, which, tol, maxiter, v0, seed) -> EigenResult:
    """Lanczos with full reorthogonalisation, stopping when every wanted Ritz pair has
    estimated residual beta_m |s_{m,i}| <= tol * |theta_i| (the test ARPACK applies at the
    end of each restart cycle, here after every product).

    The basis is kept in the operator's dtype (a float32 operator's products carry
    float32 rounding anyway; it halves the memory traffic of reorthogonalisation).
    Every coefficient removed from H v_j is recorded, so H V_m = V_m C + w e_m^T
    holds up to rounding and the residuals of the returned pairs are evaluated from
    it without another product."""
    n = op.shape[0]
    if not 1 <= int(k) <= n:
        raise ValueError(f"k must be in [1, {n}], got {k!r}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    counted = CountingOperator(op)
    dtype = work_dtype(op)
    m_max = min(n, int(maxiter) if maxiter is not None else max(300, 4 * int(k)))
    if m_max < int(k):
        raise ValueError(f"maxiter must be >= k, got maxiter={maxiter!r}, k={k!r}")
    v = np.random.default_rng(seed).standard_normal(n) if v0 is None else np.asarray(v0, dtype=np.float64).reshape(-1)
    v = (v / np.linalg.norm(v)).astype(dtype)
    size = min(m_max, 32)  # grown by doubling: memory follows the steps taken
    basis = np.empty((size, n), dtype=dtype)
    coef = np.zeros((size + 1, size + 1))  # H v_j = sum_i coef[i, j] v_i (+ w for the last j)
    alpha, beta = [], []
    converged = False
    for j in range(m_max):
        if j == basis.shape[0]:
            grow = min(m_max, 2 * j) - j
            basis = np.concatenate([basis, np.empty((grow, n), dtype=dtype)])
            coef = np.pad(coef, ((0, grow), (0, grow)))
        basis[j] = v
        w = np.asarray(counted.matvec(v), dtype=dtype).reshape(-1)
        a = float(np.dot(v.astype(np.float64), w.astype(np.float64)))
        alpha.append(a)
        w -= dtype.type(a) * v  # local three-term recurrence first, then one global pass
        coef[j, j] = a
        if j > 0:
            w -= dtype.type(beta[-1]) * basis[j - 1]
            coef[j - 1, j] = beta[-1]
        w, removed = orthogonalise(basis[: j + 1], w)
        coef[: j + 1, j] += removed
        b = float(np.linalg.norm(w.astype(np.float64)))
        m = j + 1
        invariant = b <= 1e-12 * max(1.0, max(abs(a) for a in alpha))
        if m >= k:
            theta, S = eigh_tridiagonal(np.array(alpha), np.array(beta)) if m > 1 else (np.array(alpha), np.ones((1, 1)))
            idx = np.argsort(theta)[::-1][:k] if which == "LA" else np.argsort(theta)[:k]
            estimates = b * np.abs(S[-1, idx])
            if invariant or np.all(estimates <= tol * np.abs(theta[idx])):
                converged = True
                break
        elif invariant:
            raise ValueError(f"the start vector lies in an invariant subspace of dimension {m} < k={k}; "
                             "use method='eigsh' or another v0")
        if m == m_max:
            break
        beta.append(b)
        coef[j + 1, j] = b
        v = (w / b).astype(dtype)
    vals = theta[idx]
    s = S[:, idx]
    V = basis[:m]
    vecs = (V.T @ s.astype(dtype)).astype(dtype)
    # H y - theta y = V (C s - theta s) + w s_m for y = V s: no further product needed
    inside = (coef[:m, :m] @ s - s * vals[None, :]).astype(dtype)
    res_vecs = V.T @ inside + w[:, None] * s[-1][None, :].astype(dtype)
    res = np.linalg.norm(res_vecs.astype(np.float64), axis=0)
    return EigenResult(vals, vecs, res, counted.count, converged, f"lanczos-early-stop-{which}")


def _extreme(op, k, which, tol, maxiter, v0, ncv, seed, method) -> EigenResult:
    if method not in ("eigsh", "lanczos"):
        raise ValueError(f"method must be 'eigsh' or 'lanczos', got {method!r}")
    with single_threaded_blas():
        if method == "eigsh":
            return _lanczos(op, k, which, tol, maxiter, v0, ncv, seed)
        return _lanczos_early_stop(op, k, which, tol, maxiter, v0, seed)


def top_eigenvalues(op, k: int = 1, tol: float = 1e-6, maxiter: int | None = None, v0=None,
                    ncv: int | None = None, seed: int = 0, method: str = "eigsh") -> EigenResult:
    """The k algebraically largest eigenvalues, descending (Lanczos, ``which='LA'``).

    Stopping rule: a Ritz pair (theta, v) is accepted when its residual estimate
    (ARPACK's for ``eigsh``, beta_m |s_m| for ``lanczos``; both equal ||H v - theta v||
    in exact arithmetic) is <= tol * |theta|. What that guarantees for a symmetric
    operator: some eigenvalue lambda of H has |lambda - theta| <= ||H v - theta v||,
    so a converged theta is within about tol * |theta| of an eigenvalue (relative
    error <= tol, not tol^2; exactly: within its returned residual; float32
    products cannot bring the residual below ~1e-7 ||H||, whatever tol). The returned
    ``residuals`` are the true norms ||H y - theta y|| (``method="eigsh"``:
    recomputed with one product each; ``method="lanczos"``: from the recorded
    recurrence, at no extra product), and are the error bars to report. The error is often much smaller (<= residual^2 / gap
    when the rest of the spectrum is at least ``gap`` away), but near-degenerate
    top eigenvalues (the C - 1 class outliers) leave only the residual bound, so
    ask for tol = the relative accuracy you need. That the nearest eigenvalue is
    the i-th largest is likely but not guaranteed: Lanczos can miss members of a
    tight cluster until the residuals are well below the cluster's width (seen:
    with k=3 at tol 1e-2, the third Ritz value of a 1, 0.998, 0.996 cluster 6% low,
    next to a bulk eigenvalue), or an eigenvector the start vector nearly misses.
    When the rule is not met within ``maxiter``, both methods return
    ``converged=False`` with the k best Ritz pairs found and their true residuals
    (for ``eigsh`` this needs ``maxiter``: only then is the record of its products
    kept that those pairs come from; with ``maxiter=None`` ARPACK's own limit of
    10 n restarts applies, far beyond any practical run, and a RuntimeError says so).
    ``v0`` warm-starts (e.g. with the previous top eigenvector during training).
    ``method``: ``"eigsh"`` (ARPACK, implicit restarts, ``ncv`` vectors, plus a
    record of 4 ncv vectors when ``maxiter`` is given; ``maxiter`` counts restarts) or ``"lanczos"`` (no restarts, early stop, memory ``maxiter`` x P with
    ``maxiter`` = products, default max(300, 4k)).
    """
    return _extreme(op, k, "LA", tol, maxiter, v0, ncv, seed, method)


def bottom_eigenvalues(op, k: int = 1, tol: float = 1e-6, maxiter: int | None = None, v0=None,
                       ncv: int | None = None, seed: int = 0, method: str = "eigsh") -> EigenResult:
    """The k algebraically smallest eigenvalues, ascending (``which='SA'``).

    Convergence is slow when the bottom of the spectrum is a dense cluster near
    0 (the usual bulk of a network Hessian); check ``residuals``. ``tol``, the
    guarantee and the result without convergence are as in :func:`top_eigenvalues`.
    """
    return _extreme(op, k, "SA", tol, maxiter, v0, ncv, seed, method)


def power_iteration(op, tol: float = 1e-3, maxiter: int = 1000, v0=None, seed: int = 0) -> EigenResult:
    """The eigenvalue of largest magnitude by power iteration.

    Stops when ||H v - lambda v|| <= tol * |lambda| (lambda the Rayleigh quotient),
    a residual test: stopping on the relative change of lambda stops early
    when lambda_2/lambda_1 is close to 1 (measured 1.1% low at tol 1e-3 for a
    ratio of 0.97, REFERENCES.md 5.2). Convergence is linear in |lambda_2/lambda_1|.
    """
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol!r}")
    if int(maxiter) < 1:
        raise ValueError(f"maxiter must be >= 1, got {maxiter!r}")
    counted = CountingOperator(op)
    dtype = work_dtype(op)
    v = np.random.default_rng(seed).standard_normal(op.shape[0]) if v0 is None else np.asarray(v0, float)
    v = (v / np.linalg.norm(v)).astype(dtype)
    with single_threaded_blas():
        lam, res, converged, v = _power_loop(counted, v, tol, maxiter, dtype)
    return EigenResult(np.array([lam]), v.reshape(-1, 1), np.array([res]), counted.count, converged, "power")


def _power_loop(counted, v, tol, maxiter, dtype):
    lam, res, converged = 0.0, np.inf, False
    for _ in range(int(maxiter)):
        hv = counted.matvec(v).reshape(-1)
        lam = float(v @ hv)
        res = float(np.linalg.norm(hv - lam * v))
        if res <= tol * abs(lam):
            converged = True
            break
        norm = np.linalg.norm(hv)
        if norm == 0:  # v in the null space: lambda = 0 exactly
            converged = True
            break
        v = (hv / norm).astype(dtype)
    return lam, res, converged, v
