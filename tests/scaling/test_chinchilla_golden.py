"""Golden test: the public data of Besiroglu et al. (2024)'s Chinchilla replication.

The data (tests/data/chinchilla_svg_extracted.csv, see the README there) are
their extraction of Hoffmann et al. (2022) Fig. 4; the replication reports
E = 1.8172, A = 482.01, B = 2085.43, alpha = 0.3478, beta = 0.3658 with
standard errors 0.03, 124.58, 1293.23, 0.02, 0.02 (4,000 bootstrap resamples).
"""

import numpy as np
import pytest

from descentlab.scaling import BESIROGLU_2024, HOFFMANN_2022, bootstrap_chinchilla, fit_chinchilla, theta_from_constants
from descentlab.scaling.objective import LogSumExpHuber

REPLICATION_SE = {"E": 0.03, "A": 124.58, "B": 1293.23, "alpha": 0.02, "beta": 0.02}
SCIPY_DEFAULT_FTOL, SCIPY_DEFAULT_GTOL = 2.220446049250313e-09, 1e-05


def test_fit_reproduces_the_replication_constants(replication_fit):
    fit = replication_fit
    for name in ("E", "alpha", "beta"):
        assert getattr(fit, name) == pytest.approx(BESIROGLU_2024[name], rel=0.01), name
    for name in ("A", "B"):
        assert getattr(fit, name) == pytest.approx(BESIROGLU_2024[name], rel=0.05), name
    assert fit.n_points == 240


def test_fit_reports_its_convergence(replication_fit, replication_data):
    conv = replication_fit.convergence
    N, D, L = replication_data
    objective = LogSumExpHuber(np.stack([np.log(N), np.log(D)]), np.log(L), 1e-3, np.ones((1, 240)), np.zeros(1, dtype=int))
    f, g = objective(replication_fit.theta[None], np.zeros(1, dtype=int))
    assert conv.objective == pytest.approx(f[0], rel=1e-12)
    assert conv.grad_norm == pytest.approx(np.abs(g).max(), rel=1e-9) and conv.grad_norm < 1e-5
    assert conv.n_starts == 243 and 2 <= conv.n_at_best <= conv.n_starts
    # The best value is no worse than the replication's published constants (rounded) give.
    f_published, _ = objective(theta_from_constants(**BESIROGLU_2024)[None], np.zeros(1, dtype=int))
    assert conv.objective <= f_published[0]
    assert replication_fit.to_table().loc[0, "n_at_best"] == conv.n_at_best


def test_summed_huber_reproduces_the_replication_and_averaged_stops_at_hoffmann(replication_data):
    hoffmann = theta_from_constants(**HOFFMANN_2022)
    kwargs = dict(starts=hoffmann, ftol=1e-15, gtol=SCIPY_DEFAULT_GTOL)  # the same tolerances for both
    summed = fit_chinchilla(*replication_data, reduction="sum", **kwargs)
    averaged = fit_chinchilla(*replication_data, reduction="mean", **kwargs)
    # Averaged: the gradient is 240x smaller and passes gtol within a few steps of Hoffmann's values.
    assert averaged.convergence.stopped_because == "gradient <= gtol"
    for name in ("E", "alpha", "beta"):
        assert getattr(averaged, name) == pytest.approx(HOFFMANN_2022[name], rel=0.03), name
    # Summed: the same start and tolerances reach the replication's optimum.
    assert summed.beta == pytest.approx(BESIROGLU_2024["beta"], rel=0.01)
    assert summed.E == pytest.approx(BESIROGLU_2024["E"], rel=0.01)
    assert abs(summed.beta - averaged.beta) > 0.05


def test_bootstrap_intervals_have_the_replications_width_not_a_collapsed_one(replication_fit, replication_data):
    boot = bootstrap_chinchilla(*replication_data, fit=replication_fit, n_resamples=150, confidence=0.95, seed=0)
    table = boot.to_table().set_index("parameter")
    for name, se in REPLICATION_SE.items():
        assert se / 1.5 <= table.loc[name, "std"] <= 1.5 * se, (name, table.loc[name, "std"], se)
    lo, hi = boot.interval("alpha")
    assert lo < replication_fit.alpha < hi
    assert hi - lo > 0.03  # the collapsed interval is ~0.002 wide


def test_refits_from_the_estimate_with_default_tolerances_collapse(replication_data):
    # The failure mode the defaults avoid: averaged loss, scipy's default tolerances, only the point estimate.
    averaged = fit_chinchilla(*replication_data, reduction="mean", starts=theta_from_constants(**BESIROGLU_2024),
                              ftol=SCIPY_DEFAULT_FTOL, gtol=SCIPY_DEFAULT_GTOL)
    boot = bootstrap_chinchilla(*replication_data, fit=averaged, n_resamples=50, n_grid_starts=0, seed=0,
                                ftol=SCIPY_DEFAULT_FTOL, gtol=SCIPY_DEFAULT_GTOL)
    lo, hi = boot.interval("alpha")
    assert hi - lo < 0.01
