"""Counting products of any linear operator (the number of HVPs every result reports)."""

from __future__ import annotations

import contextlib

import numpy as np
from scipy.sparse.linalg import LinearOperator, aslinearoperator


class CountingOperator(LinearOperator):
    """Wrap a square symmetric operator (array, sparse matrix or LinearOperator); count columns applied."""

    def __init__(self, op):
        self.inner = op if isinstance(op, LinearOperator) else aslinearoperator(op)
        if self.inner.shape[0] != self.inner.shape[1]:
            raise ValueError(f"operator must be square, got shape {self.inner.shape}")
        self.count = 0
        super().__init__(dtype=self.inner.dtype, shape=self.inner.shape)

    def _matvec(self, v):
        self.count += 1
        return self.inner.matvec(v)

    def _rmatvec(self, v):
        return self._matvec(v)

    def _matmat(self, V):
        V = np.asarray(V)
        self.count += V.shape[1]
        return self.inner.matmat(V)

    def _adjoint(self):
        return self


def rademacher(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    # random bits as int8 (2.4x faster than rng.choice of floats for a 99k x 80 block)
    return (rng.integers(0, 2, size=shape, dtype=np.int8) * np.int8(2) - np.int8(1)).astype(dtype)


def apply_rows(op, rows: np.ndarray) -> np.ndarray:
    """``op`` applied to each row of a (k, n) block, one product per row.

    Probes are kept as contiguous rows: a column of an (n, k) array is a strided
    view that every product had to copy first.
    """
    out = np.empty_like(rows)
    for i, r in enumerate(rows):
        out[i] = np.asarray(op.matvec(r)).reshape(-1)
    return out


def orthonormal_rows(rows: np.ndarray) -> np.ndarray:
    """An orthonormal basis (as rows) of the span of the rows (Householder QR in torch).

    numpy's ``linalg.qr`` took 3.2 s for a 99k x 80 float32 block (one thread),
    torch's 0.4 s.
    """
    import torch

    q, _ = torch.linalg.qr(torch.from_numpy(np.ascontiguousarray(rows)).T)
    return np.ascontiguousarray(q.T.numpy())


def work_dtype(op) -> np.dtype:
    return np.dtype(op.dtype) if np.dtype(op.dtype) in (np.float32, np.float64) else np.dtype(np.float64)


def single_threaded_blas():
    """Limit numpy/scipy BLAS to one thread inside the iterative solvers.

    The operator products run in torch's thread pool; OpenBLAS's own threads,
    spinning beside them, made ARPACK's bookkeeping cost more than the products:
    22 products of a 99k-parameter Hessian took 1.62 s in ``eigsh`` vs 0.41 s with
    one BLAS thread (2-core machine). The solvers' own vector work is memory-bound.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it, BLAS keeps its default threads
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def orthogonalise(basis: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove from ``w`` (in place) its components along the orthonormal rows of ``basis``.

    One classical Gram-Schmidt pass, and a second only when the first removed
    more than 1 - 1/sqrt(2) of the norm (the DGKS criterion: after that
    test one more pass is enough for orthogonality to working precision,
    Daniel, Gragg, Kaufman, Stewart 1976). Lanczos first subtracts the two local
    recurrence terms, so the second pass is rarely needed; always making it
    doubled the cost of the bookkeeping. Returns ``(w, coefficients removed)``.
    """
    if basis.shape[0] == 0:
        return w, np.zeros(0, dtype=w.dtype)
    before = np.linalg.norm(w)
    coef = basis @ w
    w -= basis.T @ coef
    if np.linalg.norm(w) < before / np.sqrt(2.0):
        again = basis @ w
        w -= basis.T @ again
        coef = coef + again
    return w, coef
