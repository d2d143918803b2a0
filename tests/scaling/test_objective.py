"""The vectorised objective against direct formulas and finite differences."""

import numpy as np

from descentlab.scaling.objective import LogSumExpHuber, huber


def _objective(N, D, L, weights=None, delta=1e-3):
    w = np.ones((1, len(L))) if weights is None else weights
    return LogSumExpHuber(np.stack([np.log(N), np.log(D)]), np.log(L), delta, w, np.zeros(64, dtype=int))


def test_huber_matches_its_definition():
    r = np.array([-0.1, -1e-3, -5e-4, 0.0, 2e-4, 1e-3, 0.3])
    expected = [0.5 * x * x if abs(x) <= 1e-3 else 1e-3 * (abs(x) - 0.5e-3) for x in r]
    np.testing.assert_allclose(huber(r, 1e-3), expected, rtol=1e-15, atol=0)


def test_objective_is_huber_of_log_of_the_law_and_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    N, D = np.exp(rng.uniform(16, 23, 40)), np.exp(rng.uniform(20, 27, 40))
    L = 2.0 + 300 / N**0.3 + 900 / D**0.3 + rng.uniform(0, 0.05, 40)
    obj = _objective(N, D, L)
    theta = np.array([[np.log(400.0), np.log(1500.0), np.log(1.7), 0.33, 0.31], [3.0, 8.0, 0.2, 0.5, 0.4]])
    f, g = obj(theta, np.zeros(2, dtype=int))
    for row, value in zip(theta, f):
        a, b, e, alpha, beta = row
        direct = np.exp(e) + np.exp(a) / N**alpha + np.exp(b) / D**beta
        assert np.isclose(value, huber(np.log(direct) - np.log(L), 1e-3).sum(), rtol=1e-12)
    eps = 1e-6
    for k in range(5):
        step = np.zeros(5)
        step[k] = eps
        fd = (obj(theta + step, np.zeros(2, dtype=int))[0] - obj(theta - step, np.zeros(2, dtype=int))[0]) / (2 * eps)
        np.testing.assert_allclose(g[:, k], fd, rtol=1e-5, atol=1e-10)


def test_resampling_counts_equal_repeating_the_rows():
    rng = np.random.default_rng(1)
    N, D = np.exp(rng.uniform(16, 23, 30)), np.exp(rng.uniform(20, 27, 30))
    L = 2.0 + 300 / N**0.3 + 900 / D**0.3
    draw = rng.integers(0, 30, 30)
    counts = np.bincount(draw, minlength=30)[None].astype(float)
    theta = np.array([[6.0, 7.0, 0.6, 0.35, 0.36]])
    f_w, g_w = _objective(N, D, L, weights=counts)(theta, np.zeros(1, dtype=int))
    f_r, g_r = _objective(N[draw], D[draw], L[draw])(theta, np.zeros(1, dtype=int))
    np.testing.assert_allclose(f_w, f_r, rtol=1e-12)
    np.testing.assert_allclose(g_w, g_r, rtol=1e-10)


def test_rows_that_overflow_fall_back_to_the_max_shifted_evaluation():
    rng = np.random.default_rng(2)
    N, D = np.exp(rng.uniform(16, 23, 20)), np.exp(rng.uniform(20, 27, 20))
    L = 2.0 + 300 / N**0.3 + 900 / D**0.3
    obj = _objective(N, D, L)
    theta = np.array([[800.0, 1.0, 0.0, 0.2, 0.3], [25.0, 0.0, -30.0, -40.0, 0.3], [6.0, 7.0, 0.6, 0.35, 0.36]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no overflow warning escapes
        f, g = obj(theta, np.zeros(3, dtype=int))
    f_ref, g_ref = obj._chunk_stable(theta, np.zeros(3, dtype=int))
    assert np.isfinite(f).all() and np.isfinite(g).all()
    np.testing.assert_allclose(f, f_ref, rtol=1e-12)
    np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-300)
