"""Bootstrap intervals for the power-law fits, resampling runs (rows of the data).

Every resample is refitted with the same tight tolerances as the point fit,
from several starts (the point estimate and rows of the start grid); all
resamples x starts run as one batch (a resample is the data with each run
weighted by how often it was drawn, which for a summed loss is the same
objective). Refits started only at the point estimate with loose (default)
tolerances barely move and give intervals ~30x too narrow (Besiroglu et al.
2024 on Hoffmann et al. 2022); the result records its tolerances and how
many starts reached each resample's best value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._checks import positive_scalar
from .chinchilla import MAXITER, TIGHT_FTOL, TIGHT_GTOL, ChinchillaFit, chinchilla_arrays, fit_chinchilla, start_grid
from .objective import fit_log_sum_exp
from .powerlaw import PowerLawFit, fit_power_law, power_law_arrays, power_law_start_grid


@dataclass(frozen=True)
class BootstrapResult:
    point: dict[str, float]
    samples: pd.DataFrame  # one row per resample, one column per parameter
    confidence: float
    starts_per_resample: int
    ftol: float
    gtol: float
    n_at_best: np.ndarray  # per resample: starts that reached its best value
    grad_norm: np.ndarray  # per resample, at its best

    @property
    def n_resamples(self) -> int:
        return len(self.samples)

    def interval(self, name: str) -> tuple[float, float]:
        """Percentile interval of ``name`` at ``confidence``."""
        if name not in self.samples.columns:
            raise KeyError(f"no parameter {name!r}; have {list(self.samples.columns)}")
        tail = 50.0 * (1.0 - self.confidence)
        lo, hi = np.percentile(self.samples[name].to_numpy(), [tail, 100.0 - tail])
        return float(lo), float(hi)

    def to_table(self) -> pd.DataFrame:
        rows = []
        for name in self.samples.columns:
            lo, hi = self.interval(name)
            rows.append({"parameter": name, "estimate": self.point[name], "lower": lo, "upper": hi,
                         "std": float(self.samples[name].std(ddof=1)), "confidence": self.confidence,
                         "n_resamples": self.n_resamples, "starts_per_resample": self.starts_per_resample})
        return pd.DataFrame(rows)


def _counts(n: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    draws = rng.integers(0, n, size=(n_resamples, n))
    counts = np.zeros((n_resamples, n))
    np.add.at(counts, (np.repeat(np.arange(n_resamples), n), draws.ravel()), 1.0)
    return counts


def _resample_starts(point_theta: np.ndarray, grid: np.ndarray, n_grid_starts: int, rng) -> np.ndarray:
    pick = rng.choice(len(grid), size=min(n_grid_starts, len(grid)), replace=False)
    return np.vstack([point_theta[None], grid[np.sort(pick)]])


def _run(features, log_loss, starts, *, n_resamples, seed, delta, reduction, ftol, gtol, maxiter):
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be at least 2, got {n_resamples}")
    rng = np.random.default_rng(seed)
    counts = _counts(len(log_loss), n_resamples, rng)
    thetas, conv, _ = fit_log_sum_exp(features, log_loss, starts, delta=delta, reduction=reduction, ftol=ftol,
                                      gtol=gtol, maxiter=maxiter, rtol_best=1e-6, counts=counts)
    return thetas, np.array([c.n_at_best for c in conv]), np.array([c.grad_norm for c in conv])


def bootstrap_chinchilla(
    N,
    D,
    loss,
    *,
    fit: ChinchillaFit | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    n_grid_starts: int = 7,
    grid: np.ndarray | None = None,
    ftol: float = TIGHT_FTOL,
    gtol: float = TIGHT_GTOL,
    maxiter: int = MAXITER,
) -> BootstrapResult:
    """Percentile intervals for E, A, B, alpha, beta and the allocation exponents a, b.

    Each resample starts from ``fit``'s estimate (fitted here over ``grid`` when not given)
    and ``n_grid_starts`` rows of ``grid`` (default :func:`start_grid`), drawn once per call.
    """
    n, d, l = chinchilla_arrays(N, D, loss)
    _check_confidence(confidence)
    grid = start_grid() if grid is None else np.asarray(grid, dtype=np.float64)
    fit = fit_chinchilla(n, d, l, starts=grid, ftol=ftol, gtol=gtol, maxiter=maxiter) if fit is None else fit
    rng = np.random.default_rng([seed, 1])
    starts = _resample_starts(fit.theta, grid, n_grid_starts, rng)
    thetas, n_at_best, grad_norm = _run(np.stack([np.log(n), np.log(d)]), np.log(l), starts, n_resamples=n_resamples,
                                        seed=seed, delta=fit.delta, reduction=fit.reduction, ftol=ftol, gtol=gtol, maxiter=maxiter)
    alpha, beta = thetas[:, 3], thetas[:, 4]
    samples = pd.DataFrame({"E": np.exp(thetas[:, 2]), "A": np.exp(thetas[:, 0]), "B": np.exp(thetas[:, 1]),
                            "alpha": alpha, "beta": beta, "a": beta / (alpha + beta), "b": alpha / (alpha + beta)})
    a, b = fit.exponents
    point = {"E": fit.E, "A": fit.A, "B": fit.B, "alpha": fit.alpha, "beta": fit.beta, "a": a, "b": b}
    return BootstrapResult(point, samples, confidence, len(starts), ftol, gtol, n_at_best, grad_norm)


def bootstrap_power_law(
    x,
    loss,
    *,
    fit: PowerLawFit | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    n_grid_starts: int = 7,
    grid: np.ndarray | None = None,
    ftol: float = TIGHT_FTOL,
    gtol: float = TIGHT_GTOL,
    maxiter: int = MAXITER,
) -> BootstrapResult:
    """Percentile intervals for E, A, alpha of L = E + A x^-alpha (see :func:`bootstrap_chinchilla`)."""
    xs, ls = power_law_arrays(x, loss)
    _check_confidence(confidence)
    grid = power_law_start_grid() if grid is None else np.asarray(grid, dtype=np.float64)
    fit = fit_power_law(xs, ls, starts=grid, ftol=ftol, gtol=gtol, maxiter=maxiter) if fit is None else fit
    rng = np.random.default_rng([seed, 1])
    starts = _resample_starts(fit.theta, grid, n_grid_starts, rng)
    thetas, n_at_best, grad_norm = _run(np.log(xs)[None], np.log(ls), starts, n_resamples=n_resamples, seed=seed,
                                        delta=fit.delta, reduction=fit.reduction, ftol=ftol, gtol=gtol, maxiter=maxiter)
    samples = pd.DataFrame({"E": np.exp(thetas[:, 1]), "A": np.exp(thetas[:, 0]), "alpha": thetas[:, 2]})
    return BootstrapResult({"E": fit.E, "A": fit.A, "alpha": fit.alpha}, samples, confidence, len(starts), ftol, gtol,
                           n_at_best, grad_norm)


def _check_confidence(confidence: float) -> None:
    positive_scalar("confidence", confidence)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
