from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from descentlab.scaling import fit_chinchilla, replication_points, start_grid

DATA = Path(__file__).resolve().parents[1] / "data" / "chinchilla_svg_extracted.csv"
# A reduced grid (243 of the 4,500 starts) keeps the tests fast; the benchmark runs the full grid.
SMALL_GRID = dict(alpha=(0.0, 1.0, 2.0), beta=(0.0, 1.0, 2.0), e=(-1.0, 0.0, 1.0), a=(0.0, 10.0, 20.0), b=(0.0, 10.0, 20.0))


@pytest.fixture(scope="session")
def replication_data():
    return replication_points(pd.read_csv(DATA))


@pytest.fixture(scope="session")
def small_grid():
    return start_grid(**SMALL_GRID)


@pytest.fixture(scope="session")
def replication_fit(replication_data, small_grid):
    return fit_chinchilla(*replication_data, starts=small_grid)


@pytest.fixture(scope="session")
def synthetic_chinchilla():
    return _synthetic_chinchilla


def _synthetic_chinchilla(rng, n_points, *, E=1.8, A=480.0, B=2100.0, alpha=0.35, beta=0.37, noise=0.01):
    """Runs spread over N in [1e7, 1e10] and D in [1e9, 1e12], log-normal loss noise."""
    N = np.exp(rng.uniform(np.log(1e7), np.log(1e10), n_points))
    D = np.exp(rng.uniform(np.log(1e9), np.log(1e12), n_points))
    L = (E + A / N**alpha + B / D**beta) * np.exp(rng.normal(0.0, noise, n_points))
    return N, D, L
