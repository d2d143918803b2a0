"""Batched L-BFGS against scipy's L-BFGS-B, problem by problem."""

import numpy as np
from scipy.optimize import minimize, rosen, rosen_der

from descentlab.scaling.multistart import FTOL, GRADIENT, minimize_batched


def _rosen_batch(x, problems):
    return np.array([rosen(r) for r in x]), np.array([rosen_der(r) for r in x])


def test_batched_lbfgs_reaches_scipy_minima_on_rosenbrock():
    starts = np.random.default_rng(0).uniform(-2, 2, size=(8, 4))
    res = minimize_batched(_rosen_batch, starts, ftol=1e-15, gtol=1e-10, maxiter=5000)
    assert set(res.status) <= {FTOL, GRADIENT}
    for start, x, f in zip(starts, res.x, res.fun):
        ref = minimize(rosen, start, jac=rosen_der, method="L-BFGS-B", options=dict(ftol=1e-15, gtol=1e-10, maxiter=5000))
        assert abs(f - ref.fun) < 1e-10
        assert np.allclose(x, ref.x, atol=1e-4)  # both reach the same local minimum (the global one, or (-1, 1, 1, 1))


def test_ftol_is_relative_to_max_of_f_and_one():
    # The same problem scaled down 1e6 times: at ftol=1e-8 it stops far earlier (scipy's rule).
    def scaled(factor):
        return lambda x, p: (factor * np.array([rosen(r) for r in x]), factor * np.array([rosen_der(r) for r in x]))

    start = np.array([[-1.2, 1.0]])
    full = minimize_batched(scaled(1.0), start, ftol=1e-8, gtol=0.0)
    tiny = minimize_batched(scaled(1e-6), start, ftol=1e-8, gtol=0.0)
    assert full.fun[0] < 1e-8
    assert tiny.fun[0] / 1e-6 > 1e-3 and tiny.status[0] == FTOL
