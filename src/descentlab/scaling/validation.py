"""Held-out validation of a scaling law: fit on the smaller runs, predict the largest.

A law is only as good as its extrapolation; :class:`SmallLargeSplit` is a
scikit-learn-style splitter ("train on small, test on large") and
:func:`held_out_validation` reports the prediction error on the held-out runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

from ._checks import as_array, same_length


@dataclass(frozen=True)
class SmallLargeSplit:
    """Hold out the runs with the largest ``size`` (e.g. compute 6ND, or N).

    Exactly one of ``n_test`` (a count) or ``test_fraction`` (rounded up) is given.
    Ties at the boundary go to the test side, so no test run is smaller than a
    training run.
    """

    n_test: int | None = None
    test_fraction: float | None = None

    def __post_init__(self):
        if (self.n_test is None) == (self.test_fraction is None):
            raise ValueError("give exactly one of n_test and test_fraction")
        if self.n_test is not None and self.n_test < 1:
            raise ValueError(f"n_test must be at least 1, got {self.n_test}")
        if self.test_fraction is not None and not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")

    def split(self, size) -> tuple[np.ndarray, np.ndarray]:
        """(train indices, test indices) for runs of the given ``size``."""
        s = as_array("size", size)
        k = self.n_test if self.n_test is not None else int(np.ceil(self.test_fraction * len(s)))
        if k >= len(s):
            raise ValueError(f"holding out {k} of {len(s)} runs leaves nothing to fit")
        threshold = np.sort(s)[len(s) - k]
        test = np.flatnonzero(s >= threshold)
        train = np.flatnonzero(s < threshold)
        if train.size == 0:
            raise ValueError("every run ties with the largest size; nothing left to fit")
        return train, test


@dataclass(frozen=True)
class HeldOutResult:
    fit: Any
    train_index: np.ndarray
    test_index: np.ndarray
    observed: np.ndarray
    predicted: np.ndarray

    @property
    def relative_error(self) -> np.ndarray:
        return (self.predicted - self.observed) / self.observed

    def to_table(self) -> pd.DataFrame:
        """One row per held-out run; the summary is in :meth:`summary`."""
        return pd.DataFrame({"run": self.test_index, "observed": self.observed, "predicted": self.predicted,
                             "relative_error": self.relative_error})

    def summary(self) -> dict[str, float]:
        err = np.abs(self.relative_error)
        return {"n_train": int(self.train_index.size), "n_test": int(self.test_index.size),
                "mean_abs_relative_error": float(err.mean()), "max_abs_relative_error": float(err.max())}


def held_out_validation(
    fit_fn: Callable[..., Any], inputs: dict[str, Any], loss, *, size, split: SmallLargeSplit
) -> HeldOutResult:
    """Fit ``fit_fn(**train_inputs, loss=train_loss)`` on the small runs, ``.predict(**test_inputs)`` the large.

    For Chinchilla: ``held_out_validation(fit_chinchilla, {"N": N, "D": D}, L, size=6*N*D, split=...)``.
    """
    l = as_array("loss", loss)
    arrays = {name: as_array(name, v) for name, v in inputs.items()}
    s = as_array("size", size)
    same_length(loss=l, size=s, **arrays)
    train, test = split.split(s)
    fit = fit_fn(**{k: v[train] for k, v in arrays.items()}, loss=l[train])
    predicted = np.asarray(fit.predict(**{k: v[test] for k, v in arrays.items()}), dtype=np.float64)
    return HeldOutResult(fit, train, test, l[test], predicted)
