"""Per-example gradients, gradient noise scale, NTK and sharpness against brute force and closed forms."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from descentlab.curvature import (
    HessianOperator,
    adaptive_sharpness,
    empirical_ntk,
    hessian_sharpness,
    jacobian,
    noise_scale_from_per_example,
    noise_scale_two_batch,
    noise_scale_hessian,
    ntk_eigenvalues,
    per_example_gradients,
    two_batch_estimates,
)
from descentlab.losses import MSE, CrossEntropy


def test_per_example_gradients_against_a_loop(tiny, state_tools):
    model_state, assert_unchanged = state_tools
    before = model_state(tiny.model)
    G = per_example_gradients(tiny.model, CrossEntropy(), tiny.x, tiny.y, chunk_size=6)
    flat = tiny.flat().requires_grad_(True)
    rows = []
    for i in range(len(tiny.x)):
        loss = F.cross_entropy(tiny.outputs(flat, tiny.x[i : i + 1]), tiny.y[i : i + 1])
        rows.append(torch.autograd.grad(loss, flat)[0])
    torch.testing.assert_close(G, torch.stack(rows))
    assert_unchanged(tiny.model, before)


def test_per_example_gradients_refuse_dropout_and_use_eval_batchnorm():
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
    drop = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).double().train()
    with pytest.raises(ValueError, match="not deterministic"):
        per_example_gradients(drop, CrossEntropy(), x, y)
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double().train()
    G = per_example_gradients(bn, CrossEntropy(), x, y)
    assert bn.training and bn[1].training
    bn.eval()
    loss = CrossEntropy()(bn(x[:1]), y[:1])
    g0 = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(bn.parameters()))])
    torch.testing.assert_close(G[0], g0)


def test_noise_scale_closed_forms():
    # Feeding the expected squared norms E|G_B|^2 = |G|^2 + tr(Sigma)/B recovers both exactly.
    g2, tr = 2.0, 30.0
    est = two_batch_estimates(g2 + tr / 8, 8, g2 + tr / 64, 64)
    assert est["grad_sq_norm"] == pytest.approx(g2) and est["trace_sigma"] == pytest.approx(tr)
    assert est["b_simple"] == pytest.approx(15.0)
    with pytest.raises(ValueError):
        two_batch_estimates(1.0, 64, 1.0, 8)


def test_noise_scale_from_known_gaussian_gradients():
    rng = np.random.default_rng(0)
    P, N = 20, 20000
    G = rng.standard_normal(P) * 0.3
    scales = rng.uniform(0.5, 2.0, P)
    per_example = torch.from_numpy(G + rng.standard_normal((N, P)) * scales)
    true_b = (scales**2).sum() / (G @ G)
    est = noise_scale_from_per_example(per_example)
    assert est["b_simple"] == pytest.approx(true_b, rel=0.05)
    assert est["trace_sigma"] == pytest.approx((scales**2).sum(), rel=0.03)


def test_noise_scale_from_blocks_matches_numpy_on_the_whole_matrix():
    """Row blocks of unequal sizes (as an instrument reduces chunks of examples) give
    numpy's trace of the unbiased covariance and squared mean of the whole matrix."""
    rng = np.random.default_rng(3)
    g = rng.standard_normal((103, 7)) * rng.uniform(0.1, 3.0, 7) + rng.standard_normal(7)
    mean = g.mean(0)
    trace_sigma = float(np.trace(np.cov(g, rowvar=False)))
    expected_g2 = float(mean @ mean) - trace_sigma / len(g)
    blocks = [torch.from_numpy(g[a:b]) for a, b in ((0, 1), (1, 40), (40, 41), (41, 103))]
    for got in (noise_scale_from_per_example(blocks), noise_scale_from_per_example(torch.from_numpy(g))):
        assert got["trace_sigma"] == pytest.approx(trace_sigma, rel=1e-12)
        assert got["grad_sq_norm"] == pytest.approx(expected_g2, rel=1e-12)
        assert got["b_simple"] == pytest.approx(trace_sigma / expected_g2, rel=1e-12)
        assert got["n"] == 103.0
    with pytest.raises(ValueError, match="at least 2"):
        noise_scale_from_per_example([torch.from_numpy(g[:1]), torch.zeros(0, 7, dtype=torch.float64)])


def test_two_batch_estimate_is_unbiased_for_the_finite_population():
    rng = np.random.default_rng(1)
    g = torch.from_numpy(rng.standard_normal((200, 5)) + np.array([1.0, -0.5, 0.2, 0.0, 0.3]))
    mean = g.mean(0)
    pop_trace = float(((g - mean) ** 2).sum() / len(g))  # with-replacement sampling: divide by N
    est = noise_scale_two_batch(g, b_small=4, b_big=32, n_draws=20000, seed=2)
    assert est["trace_sigma"] == pytest.approx(pop_trace, rel=0.05)
    assert est["grad_sq_norm"] == pytest.approx(float(mean @ mean), rel=0.1)


def test_ntk_equals_explicit_jacobian_gram(tiny, state_tools):
    model_state, assert_unchanged = state_tools
    before = model_state(tiny.model)
    J = tiny.jacobian()  # (N*C, P), one autograd.grad per output
    torch.testing.assert_close(jacobian(tiny.model, tiny.x, chunk_size=5), J)
    torch.testing.assert_close(empirical_ntk(tiny.model, tiny.x, chunk_size=7), J @ J.T)
    x2 = tiny.x[:4] * 2
    flat = tiny.flat().requires_grad_(True)
    out2 = tiny.outputs(flat, x2).reshape(-1)
    J2 = torch.stack([torch.autograd.grad(o, flat, retain_graph=True)[0] for o in out2])
    torch.testing.assert_close(empirical_ntk(tiny.model, tiny.x, x2), J @ J2.T)
    ref = np.sort(np.linalg.eigvalsh((J @ J.T).numpy()))[::-1]
    np.testing.assert_allclose(ntk_eigenvalues(tiny.model, tiny.x).numpy(), ref, atol=1e-9)
    # the non-zero NTK eigenvalues are those of J^T J (the Gauss-Newton of 0.5 * squared error, summed)
    jtj = np.sort(np.linalg.eigvalsh((J.T @ J).numpy()))[::-1]
    k = min(J.shape)
    np.testing.assert_allclose(ref[:k][ref[:k] > 1e-8], jtj[:k][ref[:k] > 1e-8], rtol=1e-8)
    assert_unchanged(tiny.model, before)


def test_hessian_sharpness(tiny):
    lam = np.linalg.eigvalsh(tiny.dense_hessian().numpy()).max()
    out = hessian_sharpness(tiny.model, CrossEntropy(), tiny.x, tiny.y, tol=1e-10)
    assert out["sharpness"] == pytest.approx(lam, rel=1e-8)
    assert out["sharpness_residual"] < 1e-7


def _least_squares_problem():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(40, 6, generator=g, dtype=torch.float64)
    y = torch.randn(40, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(6, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(X, y).solution.T)  # exact minimum
    return model, X, y


def test_sam_sharpness_at_a_quadratic_minimum():
    """At the minimum of a quadratic, max_{|eps|<=rho} L(w+eps) - L(w) = rho^2 lambda_max / 2."""
    model, X, y = _least_squares_problem()
    H = 2.0 / 40 * X.T @ X
    rho = 0.3
    out = adaptive_sharpness(model, MSE(), X, y, rho=rho, n_steps=200, adaptive=False)
    bound = 0.5 * rho**2 * torch.linalg.eigvalsh(H).max().item()
    # ascent iterates are feasible points: a lower bound that approaches the maximum
    assert bound * (1 - 2e-3) < out["sharpness"] <= bound * (1 + 1e-12)
    assert out["scaled_eps_norm"] == pytest.approx(rho)


def test_asam_first_step_matches_the_official_perturbation(tiny):
    """One step: eps = rho T^2 g / ||T g||, T = |w| + eta on 'weight' parameters and 1 on biases."""
    rho, eta = 0.2, 0.01
    out = adaptive_sharpness(tiny.model, CrossEntropy(), tiny.x, tiny.y, rho=rho, eta=eta, n_steps=1)
    flat = tiny.flat().requires_grad_(True)
    (g,) = torch.autograd.grad(tiny.loss(flat), flat)
    w1, b1, w2, b2 = tiny.unpack(tiny.flat())
    T = torch.cat([w1.abs().reshape(-1) + eta, torch.ones_like(b1), w2.abs().reshape(-1) + eta, torch.ones_like(b2)])
    eps = rho * T**2 * g / (T * g).norm()
    with torch.no_grad():
        expected = (tiny.loss(tiny.flat() + eps) - tiny.loss(tiny.flat())).item()
    assert out["sharpness"] == pytest.approx(expected, rel=1e-10)
    assert out["eps_norm"] == pytest.approx(eps.norm().item(), rel=1e-10)


def test_adaptive_sharpness_is_invariant_to_relu_rescaling():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False)).double()
    x, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 3, (30,))
    scaled = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False)).double()
    with torch.no_grad():
        scaled[0].weight.copy_(model[0].weight * 4.0)
        scaled[2].weight.copy_(model[2].weight / 4.0)
    torch.testing.assert_close(scaled(x), model(x))
    kw = dict(rho=0.5, eta=0.0, n_steps=5)
    a = adaptive_sharpness(model, CrossEntropy(), x, y, **kw)["sharpness"]
    b = adaptive_sharpness(scaled, CrossEntropy(), x, y, **kw)["sharpness"]
    assert a == pytest.approx(b, rel=1e-8) and a > 0
    kw["adaptive"] = False
    plain_a = adaptive_sharpness(model, CrossEntropy(), x, y, **kw)["sharpness"]
    plain_b = adaptive_sharpness(scaled, CrossEntropy(), x, y, **kw)["sharpness"]
    assert abs(plain_a - plain_b) > 0.05 * abs(plain_a)
    with pytest.raises(ValueError, match="rho"):
        adaptive_sharpness(model, CrossEntropy(), x, y, rho=0.0)


def test_hessian_noise_scale_against_dense_matrices(tiny):
    """B_noise = tr(H Sigma) / G^T H G with dense H (autograd.functional) and numpy's covariance."""
    H = tiny.dense_hessian().numpy()
    G = per_example_gradients(tiny.model, CrossEntropy(), tiny.x, tiny.y).numpy()
    sigma = np.cov(G, rowvar=False)  # (N - 1) normalisation
    mean = G.mean(0)
    op = HessianOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y)
    out = noise_scale_hessian(op, torch.from_numpy(G))
    assert out["trace_h_sigma"] == pytest.approx(np.trace(H @ sigma), rel=1e-10)
    assert out["g_h_g"] == pytest.approx(mean @ H @ mean, rel=1e-10)
    assert out["b_noise"] == pytest.approx(np.trace(H @ sigma) / (mean @ H @ mean), rel=1e-10)
    assert out["b_simple"] == pytest.approx(np.trace(sigma) / (mean @ mean - np.trace(sigma) / len(G)), rel=1e-10)
    sub = noise_scale_hessian(op, torch.from_numpy(G), max_examples=10)
    assert sub["n_hvps"] == 11
