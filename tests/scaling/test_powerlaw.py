"""One-variable power law L = E + A x^-alpha."""

import numpy as np
import pytest

from descentlab.scaling import bootstrap_power_law, fit_power_law, power_law_start_grid


def _data(rng, n, noise, E=1.9, A=40.0, alpha=0.3):
    x = np.geomspace(1e5, 1e9, n)
    return x, (E + A * x**-alpha) * np.exp(rng.normal(0.0, noise, n))


def test_recovers_known_constants_from_noiseless_data():
    x, L = _data(np.random.default_rng(0), 30, 0.0)
    fit = fit_power_law(x, L)
    assert (fit.E, fit.A, fit.alpha) == pytest.approx((1.9, 40.0, 0.3), rel=1e-5)
    assert fit.convergence.n_starts == len(power_law_start_grid()) == 150
    assert fit.convergence.n_at_best >= 2
    np.testing.assert_allclose(fit.predict(x), L, rtol=1e-7)


def test_noisy_fit_lies_within_its_bootstrap_interval_and_the_interval_shrinks():
    widths = []
    for n in (20, 320):
        x, L = _data(np.random.default_rng(n), n, 0.005)
        fit = fit_power_law(x, L, delta=1e-2)
        boot = bootstrap_power_law(x, L, fit=fit, n_resamples=80, confidence=0.95)
        lo, hi = boot.interval("alpha")
        assert lo <= 0.3 <= hi and lo <= fit.alpha <= hi
        widths.append(hi - lo)
    assert widths[0] / widths[1] > 2.0  # sqrt(16) = 4 expected


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="at least 4"):
        fit_power_law([1.0, 2.0, 3.0], [3.0, 2.0, 1.5])
    with pytest.raises(ValueError, match=r"x must be positive: x\[0\] = 0.0"):
        fit_power_law([0.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.5, 1.4])
    with pytest.raises(ValueError, match="mismatched lengths"):
        fit_power_law([1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.5])
