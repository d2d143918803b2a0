"""Chinchilla L(N, D) on synthetic data with known constants, the allocation, and bad input."""

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from descentlab.scaling import (
    bootstrap_chinchilla,
    compute_optimal_allocation,
    fit_chinchilla,
    start_grid,
)

TRUE = dict(E=1.8, A=480.0, B=2100.0, alpha=0.35, beta=0.37)
TINY_GRID = start_grid(alpha=(0.5, 1.5), beta=(0.5, 1.5), e=(0.0,), a=(5.0, 15.0), b=(5.0, 15.0))
# With 1% noise a Huber delta of 1e-3 is nearly an L1 loss and L-BFGS needs ~3x the iterations;
# the coverage and shrinkage tests are about the bootstrap, so they use delta = 1e-2 to stay fast.
DELTA = 1e-2


def test_start_grid_is_the_replications_4500_starts():
    grid = start_grid()
    assert grid.shape == (4500, 5)
    assert sorted(set(grid[:, 0])) == [0, 5, 10, 15, 20, 25] and sorted(set(grid[:, 3])) == [0, 0.5, 1, 1.5, 2]
    assert sorted(set(grid[:, 2])) == [-1, -0.5, 0, 0.5, 1]
    assert len({tuple(r) for r in grid}) == 4500


@pytest.mark.parametrize("constants", [TRUE, dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)])
def test_compute_optimal_allocation_matches_brute_force_along_the_isoflop(constants):
    E, A, B, alpha, beta = (constants[k] for k in ("E", "A", "B", "alpha", "beta"))
    for C in (1e18, 5.76e23, 1e26):
        def loss(log_n):
            n = np.exp(log_n)
            return E + A / n**alpha + B / (C / (6 * n)) ** beta

        best = minimize_scalar(loss, bounds=(np.log(1e3), np.log(C / 6 / 1e3)), method="bounded", options=dict(xatol=1e-10))
        n_opt, d_opt = compute_optimal_allocation(C, A=A, B=B, alpha=alpha, beta=beta)
        assert n_opt[0] == pytest.approx(np.exp(best.x), rel=1e-6)
        assert 6 * n_opt[0] * d_opt[0] == pytest.approx(C, rel=1e-12)


def test_fit_recovers_known_constants_from_noiseless_data(synthetic_chinchilla):
    N, D, L = synthetic_chinchilla(np.random.default_rng(0), 80, noise=0.0, **TRUE)
    fit = fit_chinchilla(N, D, L, starts=TINY_GRID)
    for name, value in TRUE.items():
        assert getattr(fit, name) == pytest.approx(value, rel=1e-4), name
    a, b = fit.exponents
    assert a == pytest.approx(TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"]), rel=1e-4) and a + b == pytest.approx(1.0)
    np.testing.assert_allclose(fit.predict(N, D), L, rtol=1e-6)


def test_bootstrap_intervals_cover_the_truth_at_about_the_stated_rate(synthetic_chinchilla):
    # 20 noisy datasets; the 90% interval of alpha (and of beta) should cover the truth
    # about 18 times; a binomial(20, 0.9) falls in 14..20 with probability > 0.99.
    rng = np.random.default_rng(12)
    covered = {"alpha": 0, "beta": 0, "E": 0}
    for _ in range(20):
        N, D, L = synthetic_chinchilla(rng, 60, noise=0.01, **TRUE)
        fit = fit_chinchilla(N, D, L, starts=TINY_GRID, delta=DELTA)
        boot = bootstrap_chinchilla(N, D, L, fit=fit, n_resamples=40, confidence=0.9, n_grid_starts=1,
                                    grid=TINY_GRID, seed=int(rng.integers(1 << 31)))
        for name in covered:
            lo, hi = boot.interval(name)
            covered[name] += lo <= TRUE[name] <= hi
    for name, count in covered.items():
        assert 14 <= count <= 20, (name, covered)


def test_bootstrap_intervals_shrink_with_more_data(synthetic_chinchilla):
    widths = []
    for n in (40, 640):
        N, D, L = synthetic_chinchilla(np.random.default_rng(n), n, noise=0.01, **TRUE)
        fit = fit_chinchilla(N, D, L, starts=TINY_GRID, delta=DELTA)
        boot = bootstrap_chinchilla(N, D, L, fit=fit, n_resamples=60, confidence=0.9, n_grid_starts=2, grid=TINY_GRID)
        widths.append(np.diff(boot.interval("alpha"))[0])
    assert widths[0] / widths[1] > 2.0  # sqrt(16) = 4 expected


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(N=[1e8, -1e9, 1e9, 1e9, 1e9, 1e9]), r"N must be positive: N\[1\] = -1000000000.0"),
        (dict(loss=[2.0, 2.1, np.nan, 2.0, 2.0, 2.0]), r"loss must be finite: loss\[2\] = nan"),
        (dict(D=[1e10] * 5), "mismatched lengths"),
        (dict(N=[1e8] * 5, D=[1e10] * 5, loss=[2.0] * 5), "at least 6"),
        (dict(starts=np.zeros((3, 4))), r"starts must have shape \(n_starts, 5\)"),
        (dict(reduction="average"), "reduction must be 'sum' or 'mean'"),
        (dict(delta=0.0), "delta must be a positive"),
    ],
)
def test_bad_input_is_named(change, message):
    args = dict(N=[1e8, 2e8, 4e8, 8e8, 1.6e9, 3.2e9], D=[1e10] * 6, loss=[3.0, 2.9, 2.8, 2.7, 2.6, 2.5])
    args.update(change)
    with pytest.raises(ValueError, match=message):
        fit_chinchilla(args.pop("N"), args.pop("D"), args.pop("loss"), **args)
