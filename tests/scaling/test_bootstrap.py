"""The bootstrap's reduced starts reach what the full start grid reaches, resample by resample."""

import numpy as np
import pytest

from descentlab.scaling import bootstrap_chinchilla, fit_chinchilla
from descentlab.scaling.bootstrap import _counts





def test_refits_from_the_estimate_and_a_few_grid_starts_match_refits_from_the_grid(replication_data, replication_fit, small_grid):
    boot = bootstrap_chinchilla(*replication_data, fit=replication_fit, n_resamples=2, seed=7)
    counts = _counts(240, 2, np.random.default_rng(7)).astype(int)
    N, D, L = replication_data
    for r in range(2):
        rows = np.repeat(np.arange(240), counts[r])  # the resample as repeated runs
        full = fit_chinchilla(N[rows], D[rows], L[rows], starts=small_grid)
        for name in ("E", "alpha", "beta"):
            assert boot.samples[name][r] == pytest.approx(getattr(full, name), rel=1e-4), (r, name)
    assert boot.starts_per_resample == 8 and (boot.n_at_best >= 1).all()


def test_bootstrap_names_bad_input(replication_data, replication_fit):
    with pytest.raises(ValueError, match="n_resamples must be at least 2"):
        bootstrap_chinchilla(*replication_data, fit=replication_fit, n_resamples=1)
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\)"):
        bootstrap_chinchilla(*replication_data, fit=replication_fit, confidence=1.5)
