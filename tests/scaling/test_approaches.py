"""Approaches 1 and 2 on losses from a known L(N, D): they must find its compute-optimal frontier."""

import numpy as np
import pytest

from descentlab.scaling import approach1_envelope, approach2_isoflop, compute_optimal_allocation

E, A, B, ALPHA, BETA = 1.8, 480.0, 2100.0, 0.35, 0.37
A_TRUE = BETA / (ALPHA + BETA)


def _loss(n, d):
    return E + A / n**ALPHA + B / d**BETA


def _isoflop_runs(budgets, offset=0.2, width=1.0, per_budget=15, noise=0.0, rng=None):
    N, D = [], []
    for C in budgets:
        n_star = compute_optimal_allocation(C, A=A, B=B, alpha=ALPHA, beta=BETA)[0][0]
        n = np.exp(np.log(n_star) + offset + np.linspace(-width, width, per_budget))  # not centred on the optimum
        N.append(n)
        D.append(C / (6 * n))
    N, D = np.concatenate(N), np.concatenate(D)
    L = _loss(N, D) * (np.exp(rng.normal(0, noise, N.size)) if noise else 1.0)
    return N, D, L


def test_approach2_finds_the_known_optimum_and_exponent():
    budgets = np.geomspace(1e18, 1e22, 5)
    frontier = approach2_isoflop(*_isoflop_runs(budgets))
    n_star, d_star = compute_optimal_allocation(frontier.points["C"].to_numpy(), A=A, B=B, alpha=ALPHA, beta=BETA)
    np.testing.assert_allclose(frontier.points["N_opt"], n_star, rtol=0.01)
    np.testing.assert_allclose(frontier.points["D_opt"], d_star, rtol=0.01)
    assert frontier.a == pytest.approx(A_TRUE, abs=0.003) and frontier.a + frontier.b == pytest.approx(1.0)
    np.testing.assert_allclose(frontier.n_opt(1e21), compute_optimal_allocation(1e21, A=A, B=B, alpha=ALPHA, beta=BETA)[0], rtol=0.02)


def test_approach2_with_noise_stays_close():
    frontier = approach2_isoflop(*_isoflop_runs(np.geomspace(1e18, 1e22, 5), noise=0.002, rng=np.random.default_rng(0)))
    assert frontier.a == pytest.approx(A_TRUE, abs=0.03)


def test_approach2_rejects_a_grid_that_misses_the_minimum():
    with pytest.raises(ValueError, match="outside the sampled sizes"):
        approach2_isoflop(*_isoflop_runs([1e20], offset=2.0, width=0.5))
    N, D, L = _isoflop_runs([1e20], per_budget=2)
    with pytest.raises(ValueError, match="at least 3"):
        approach2_isoflop(N, D, L)
    N, D, L = _isoflop_runs([1e19, 1e20])
    with pytest.raises(ValueError, match="not convex"):
        approach2_isoflop(N, D, -L + 10)


def test_approach1_envelope_follows_the_known_frontier():
    # Training curves of 60 model sizes: each run's loss at 200 token counts.
    n = np.repeat(np.geomspace(1e7, 1e11, 60), 200)
    d = np.tile(np.geomspace(1e8, 1e13, 200), 60)
    frontier = approach1_envelope(n, d, _loss(n, d), compute_range=(1e19, 1e22))
    assert frontier.a == pytest.approx(A_TRUE, abs=0.01)
    n_star, _ = compute_optimal_allocation(frontier.points["C"].to_numpy(), A=A, B=B, alpha=ALPHA, beta=BETA)
    assert np.all(np.abs(np.log(frontier.points["N_opt"] / n_star)) < np.log(1.3))  # model sizes are 1.17x apart


def test_approaches_name_bad_input():
    with pytest.raises(ValueError, match=r"loss must be positive"):
        approach1_envelope([1e8, 1e9], [1e9, 1e9], [2.0, -1.0])
    with pytest.raises(ValueError, match="mismatched lengths"):
        approach2_isoflop([1e8, 1e9, 1e10], [1e9, 1e9], [2.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="one label per run"):
        approach2_isoflop([1e8, 1e9, 1e10], [1e9, 1e9, 1e9], [2.0, 2.0, 2.0], budget=[0, 0])
