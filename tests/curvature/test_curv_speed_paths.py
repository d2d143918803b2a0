"""The speed paths of the curvature machinery against dense float64 answers.

Graph reuse (a fixed dataset in one chunk keeps its first-order graph), the
single-pass (DGKS) reorthogonalisation, Lanczos residuals evaluated from the
recorded recurrence instead of an extra product, and the float32 Lanczos basis.
"""

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import aslinearoperator

from descentlab.curvature import HessianOperator, GGNOperator, lanczos_tridiagonal, top_eigenvalues
from descentlab.curvature._linop import orthogonalise
from descentlab.losses import CrossEntropy


def dense(op):
    return torch.from_numpy(op.matmat(np.eye(op.shape[0])))


def test_reused_graph_ignores_later_model_training(tiny):
    """The graph belongs to the snapshot taken at construction, not to the live model."""
    H_before = tiny.dense_hessian()
    op = HessianOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y)
    assert op.cache_graph
    v = torch.randn(op.num_params, dtype=torch.float64)
    first = op.matvec_torch(v)  # builds and keeps the graph
    with torch.no_grad():  # an optimizer step on the model, in place
        for p in tiny.model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    H_after = tiny.dense_hessian()
    assert (H_after - H_before).abs().max() > 1e-2  # the step does change the Hessian
    torch.testing.assert_close(op.matvec_torch(v), first, rtol=0, atol=0)
    torch.testing.assert_close(dense(op), H_before, rtol=1e-10, atol=1e-12)
    fresh = HessianOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y)
    torch.testing.assert_close(dense(fresh), H_after, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("op_cls", [HessianOperator, GGNOperator])
def test_reused_graph_rebuilt_when_snapshot_changes(tiny, op_cls):
    """An in-place change of the snapshot invalidates the kept graph (no stale products, no autograd error)."""
    op = op_cls(tiny.model, CrossEntropy(), tiny.x, tiny.y)
    v = torch.randn(op.num_params, dtype=torch.float64)
    op.matvec_torch(v)  # graph built at the original point
    delta = {n: 0.3 * torch.randn_like(t) for n, t in op.snapshot.tensors.items()}
    for n, t in op.snapshot.tensors.items():
        t.add_(delta[n])
    with torch.no_grad():  # the oracle at the new point: the same change applied to the model
        for (n, p) in tiny.model.named_parameters():
            p.add_(delta[n])
    reference = op_cls(tiny.model, CrossEntropy(), tiny.x, tiny.y)
    torch.testing.assert_close(op.matvec_torch(v), reference.matvec_torch(v), rtol=1e-12, atol=1e-12)
    if op_cls is HessianOperator:
        torch.testing.assert_close(dense(op), tiny.dense_hessian(), rtol=1e-10, atol=1e-12)


def test_reused_graph_equals_fresh_double_backward(tiny):
    """cache_graph=True and False give the same products (dense float64 Hessian)."""
    H = tiny.dense_hessian()
    kept = HessianOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y, cache_graph=True)
    fresh = HessianOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y, cache_graph=False)
    for op in (kept, fresh):
        for _ in range(2):  # the kept graph survives repeated use
            torch.testing.assert_close(dense(op), H, rtol=1e-10, atol=1e-12)


def test_orthogonalise_single_pass_and_dgks_second_pass():
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((500, 12)))
    basis = basis.T.copy()  # orthonormal rows
    # a generic vector: one pass is enough
    w = rng.standard_normal(500)
    original = w.copy()
    out, coef = orthogonalise(basis, w.copy())
    assert np.abs(basis @ out).max() < 1e-13
    np.testing.assert_allclose(out + basis.T @ coef, original, atol=1e-13)
    # a vector almost inside the span: heavy cancellation, the second pass must run
    w = basis.T @ rng.standard_normal(12) + 1e-9 * rng.standard_normal(500)
    original = w.copy()
    out, coef = orthogonalise(basis, w.copy())
    assert np.abs(basis @ out).max() < 1e-13 * np.linalg.norm(original)
    np.testing.assert_allclose(out + basis.T @ coef, original, atol=1e-13)
    # float32 basis: orthogonal to float32 precision
    b32 = basis.astype(np.float32)
    out32, _ = orthogonalise(b32, (basis.T @ rng.standard_normal(12) + 1e-4 * rng.standard_normal(500)).astype(np.float32))
    assert out32.dtype == np.float32
    assert np.abs(b32 @ out32).max() < 1e-5 * np.linalg.norm(out32)
    # no basis yet
    out, coef = orthogonalise(np.empty((0, 500)), original.copy())
    np.testing.assert_array_equal(out, original)
    assert coef.shape == (0,)


def test_lanczos_residuals_from_recurrence_match_dense_without_extra_products(tiny):
    H = tiny.dense_hessian().numpy()
    exact = np.linalg.eigvalsh(H)
    op = HessianOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y)
    for tol in (1e-2, 1e-6):
        before = op.n_matvecs
        res = top_eigenvalues(op, k=2, tol=tol, method="lanczos")
        assert res.converged and res.n_hvps == op.n_matvecs - before
        # every product went into the Krylov basis (the residual check cost none):
        # one step fewer does not reach the tolerance
        shorter = top_eigenvalues(op, k=2, tol=tol, method="lanczos", maxiter=res.n_hvps - 1)
        assert not shorter.converged
        vecs = res.eigenvectors
        ref = np.linalg.norm(H @ vecs - vecs * res.eigenvalues[None, :], axis=0)
        np.testing.assert_allclose(res.residuals, ref, rtol=1e-6, atol=1e-12)
        for lam, r in zip(res.eigenvalues, res.residuals):  # the residual bounds the distance to the spectrum
            assert np.min(np.abs(exact - lam)) <= r + 1e-12
    np.testing.assert_allclose(res.eigenvalues, exact[::-1][:2], rtol=1e-10)


def test_lanczos_float32_basis_matches_float64(tiny):
    """A float32 operator keeps a float32 basis; eigenvalue and residual stay at float32 accuracy."""
    H = tiny.dense_hessian().numpy()
    exact = np.linalg.eigvalsh(H)[::-1]
    op32 = HessianOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y, dtype=torch.float32)
    res = top_eigenvalues(op32, k=1, tol=1e-5, method="lanczos")
    assert res.eigenvectors.dtype == np.float32
    assert res.eigenvalues[0] == pytest.approx(exact[0], rel=1e-5)
    v = res.eigenvectors[:, 0].astype(np.float64)
    ref = np.linalg.norm(H @ v - res.eigenvalues[0] * v)
    assert res.residuals[0] == pytest.approx(ref, rel=1e-2, abs=1e-5)


def test_slq_tridiagonal_float32_close_to_float64(tiny):
    H = tiny.dense_hessian()
    op64 = HessianOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y)
    op32 = HessianOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y, dtype=torch.float32)
    v0 = np.random.default_rng(3).standard_normal(op64.shape[0])
    a64, b64 = lanczos_tridiagonal(op64, 12, v0)
    a32, b32 = lanczos_tridiagonal(op32, 12, v0)
    np.testing.assert_allclose(a32, a64, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b32, b64, rtol=1e-4, atol=1e-5)
    # the float64 run against an independent dense Lanczos basis: T = V^T H V
    from scipy.linalg import eigh_tridiagonal
    theta = eigh_tridiagonal(a64, b64)[0]
    exact = np.linalg.eigvalsh(H.numpy())
    assert theta.max() <= exact.max() + 1e-10 and theta.min() >= exact.min() - 1e-10


def test_probe_rows_products_and_orthonormal_rows():
    from descentlab.curvature._linop import apply_rows, orthonormal_rows, rademacher

    rng = np.random.default_rng(5)
    z = rademacher(rng, (40, 3000), np.float32)
    assert z.dtype == np.float32 and set(np.unique(z)) == {-1.0, 1.0}
    assert abs(z.mean()) < 0.02  # 120,000 signs: sd of the mean 0.003
    A = rng.standard_normal((60, 60))
    A = A + A.T
    rows = rng.standard_normal((7, 60))
    np.testing.assert_allclose(apply_rows(aslinearoperator(A), rows), rows @ A.T, rtol=1e-12, atol=1e-12)
    Q = orthonormal_rows(rows)
    np.testing.assert_allclose(Q @ Q.T, np.eye(7), atol=1e-12)
    # same row space: projecting the rows onto Q changes nothing
    np.testing.assert_allclose((rows @ Q.T) @ Q, rows, atol=1e-12)
