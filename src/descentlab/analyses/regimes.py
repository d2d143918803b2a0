"""The four scaling regimes of Bahri, Dyer, Kaplan, Lee & Sharma, "Explaining
Neural Scaling Laws" (PNAS 2024, arXiv 2102.06701), on a teacher-student task.

The teacher is the ``teacher_student`` dataset's (a random one-hidden-layer
tanh network, :func:`descentlab.data.teacher_weights`), noiseless, on Gaussian
inputs in ``dim`` dimensions (the data manifold's dimension d). The student is
the paper's controlled setting, a random-feature model: an ``mlp`` of one
hidden ReLU layer of width P (torch's default initialisation, seeded) whose
first layer stays at its initialisation and whose last layer (with its bias)
is trained to convergence, i.e. solved exactly as least squares in float64
(the minimum-norm solution, the limit of gradient descent from zero, when
P > D). Test loss: mean squared error on a fixed test sample.

Regimes (one resource varied, the other held large):

- variance-limited in D: P fixed and small, D >> P varied: L - L_inf ~ 1/D;
- variance-limited in P: D fixed and small, P >> D varied: L - L_inf ~ 1/P;
- resolution-limited in D: P fixed and large, D << P varied: L ~ D^-alpha_D;
- resolution-limited in P: D fixed and large, P << D varied: L ~ P^-alpha_P,
  with alpha ~ 4/d for a piecewise-linear (ReLU) model resolving a
  d-dimensional manifold (the paper's Sec. 2.2, after Sharma & Kaplan).

Within a seed the designs are nested (the first D examples of one sample, the
first P features of one layer), so a seed's curve is smooth in x; seeds
differ in sample and features. Exponents: ``descentlab.scaling``'s power law
L = E + A x^-alpha fitted to every (x, seed) point, with a bootstrap that
resamples whole seeds (the points of one seed are not independent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from . import ANALYSES

if TYPE_CHECKING:
    import pandas as pd

REGIMES = {  # name -> (resource varied, which size is held fixed)
    "variance-limited D": ("D", "P"),
    "variance-limited P": ("P", "D"),
    "resolution-limited D": ("D", "P"),
    "resolution-limited P": ("P", "D"),
}


def relu_features(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The student's hidden layer, relu(x W^T + b), with a column of ones for the output bias."""
    h = np.maximum(x @ weight.T + bias, 0.0)
    return np.hstack([h, np.ones((len(x), 1))])


def fit_last_layer(features: np.ndarray, y: np.ndarray, ridge: float = 1e-10) -> np.ndarray:
    """Least-squares output weights: (F^T F + lam I)^-1 F^T y when F has at least as
    many rows as columns, else the minimum-norm F^T (F F^T + lam I)^-1 y. ``ridge``
    is relative (lam = ridge * trace / size), only there to keep the solve stable."""
    n, p = features.shape
    if n >= p:
        gram = features.T @ features
        lam = ridge * np.trace(gram) / p
        return np.linalg.solve(gram + lam * np.eye(p), features.T @ y)
    kernel = features @ features.T
    lam = ridge * np.trace(kernel) / n
    return features.T @ np.linalg.solve(kernel + lam * np.eye(n), y)


def student_layer(dim: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """First layer of ``mlp(width, depth 1)`` at torch's initialisation under ``seed``, float64."""
    import torch

    from ..models import build_model

    torch.manual_seed(seed)
    model = build_model({"name": "mlp", "width": width, "depth": 1, "activation": "relu"}, (dim,), 1)
    layer = model[1]
    return layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()


def test_loss(x: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: np.ndarray, out: np.ndarray, chunk: int = 128) -> float:
    """Mean squared error of the random-feature model on (x, y), in chunks: the features of a wide model are
    big, and small chunks reuse memory instead of faulting in fresh pages (system time)."""
    total = 0.0
    for start in range(0, len(x), chunk):
        pred = relu_features(x[start : start + chunk], weight, bias) @ out
        total += float(((pred - y[start : start + chunk]) ** 2).sum())
    return total / y.size


def regime_curve(dim: int, resource: str, sizes: Sequence[int], fixed: int, seed: int, teacher: tuple, x_test, y_test,
                 ridge: float, hold_other: bool = False) -> list[float]:
    """Test losses of one seed along ``sizes`` of ``resource`` (D or P), the other held at ``fixed``; nested design.

    ``hold_other``: the held resource's draw is the same for every seed (seed 0's), so only the
    varied one's changes: the variance-limited regimes measure the approach to one limit (the
    best fit of one fixed model as D grows; the kernel fit of one fixed sample as P grows)."""
    w1, w2 = teacher
    largest = max(sizes)
    n_max, width_max = (largest, fixed) if resource == "D" else (fixed, largest)
    sample_seed = 0 if hold_other and resource == "P" else seed
    feature_seed = 0 if hold_other and resource == "D" else seed
    rng = np.random.default_rng([sample_seed, dim, n_max])
    x = rng.standard_normal((n_max, dim))
    y = np.tanh(x @ w1) @ w2
    weight, bias = student_layer(dim, width_max, 1_000_003 * (feature_seed + 1) + dim)
    losses = []
    for size in sizes:
        n, width = (size, fixed) if resource == "D" else (fixed, size)
        out = fit_last_layer(relu_features(x[:n], weight[:width], bias[:width]), y[:n], ridge)
        losses.append(test_loss(x_test, y_test, weight[:width], bias[:width], out))
    return losses


def seed_bootstrap_counts(seeds: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_resamples, n_rows) weights of a cluster bootstrap: each row counts as often as its seed was drawn."""
    unique = np.unique(seeds)
    draws = rng.integers(0, len(unique), size=(n_resamples, len(unique)))
    per_seed = np.stack([np.bincount(d, minlength=len(unique)) for d in draws])  # (R, n_seeds)
    index = np.searchsorted(unique, seeds)
    return per_seed[:, index].astype(np.float64)


def fit_exponent(x: np.ndarray, loss: np.ndarray, seeds: np.ndarray, *, n_resamples: int = 200, confidence: float = 0.95,
                 seed: int = 0) -> dict[str, float]:
    """L = E + A x^-alpha on every (x, seed) point (``descentlab.scaling.fit_power_law``), with a
    percentile interval for alpha from a bootstrap over seeds, each resample refitted from the
    point estimate and seven rows of the start grid with the same tight tolerances."""
    from ..scaling import fit_power_law, power_law_start_grid
    from ..scaling.chinchilla import MAXITER, TIGHT_FTOL, TIGHT_GTOL
    from ..scaling.objective import fit_log_sum_exp

    fit = fit_power_law(x, loss)
    rng = np.random.default_rng([seed, 2])
    grid = power_law_start_grid()
    starts = np.vstack([fit.theta[None], grid[np.sort(rng.choice(len(grid), size=7, replace=False))]])
    counts = seed_bootstrap_counts(np.asarray(seeds), n_resamples, rng)
    thetas, conv, _ = fit_log_sum_exp(np.log(np.asarray(x, dtype=np.float64))[None], np.log(np.asarray(loss, dtype=np.float64)),
                                      starts, delta=fit.delta, reduction=fit.reduction, ftol=TIGHT_FTOL, gtol=TIGHT_GTOL,
                                      maxiter=MAXITER, rtol_best=1e-6, counts=counts)
    tail = 50.0 * (1.0 - confidence)
    lower, upper = np.percentile(thetas[:, 2], [tail, 100.0 - tail])
    c = fit.convergence
    return {"alpha": fit.alpha, "alpha_lower": float(lower), "alpha_upper": float(upper), "E": fit.E, "A": fit.A,
            "confidence": confidence, "n_resamples": n_resamples, "n_points": fit.n_points,
            "fit_grad_norm": float(c.grad_norm), "fit_n_at_best": int(c.n_at_best), "fit_n_starts": int(c.n_starts),
            "fit_best_start": int(c.best_start_index),
            "resample_min_n_at_best": int(min(r.n_at_best for r in conv))}


def _check_regimes(regimes: dict) -> None:
    unknown = sorted(set(regimes) - set(REGIMES))
    if unknown:
        raise ValueError(f"scaling_regimes: unknown regime(s) {unknown}; valid: {sorted(REGIMES)}")
    for name, grid in regimes.items():
        missing = {"sizes", "fixed"} - set(grid)
        if missing:
            raise ValueError(f"scaling_regimes: regime {name!r} lacks {sorted(missing)}")
        extra = set(grid) - {"sizes", "fixed", "seeds"}
        if extra:
            raise ValueError(f"scaling_regimes: regime {name!r} has unknown key(s) {sorted(extra)}; valid: fixed, seeds, sizes")
        if "seeds" in grid and int(grid["seeds"]) < 2:
            raise ValueError(f"scaling_regimes: regime {name!r} needs at least 2 seeds, got {grid['seeds']}")
        sizes = list(grid["sizes"])
        if len(sizes) < 4 or sorted(set(sizes)) != sizes or min(sizes) < 1:
            raise ValueError(f"scaling_regimes: {name!r} sizes must be at least 4 increasing positive integers, got {sizes}")
        varied, _ = REGIMES[name]
        large = name.startswith("resolution")
        # variance-limited: varied >> fixed; resolution-limited: varied << fixed (away from the interpolation peak P = D)
        ratio = (min(sizes) / grid["fixed"]) if not large else (grid["fixed"] / max(sizes))
        if ratio < 4:
            raise ValueError(f"scaling_regimes: {name!r} needs the {'held' if large else 'varied'} resource at least 4x the "
                             f"other (sizes {sizes}, fixed {grid['fixed']}): near P = D the loss peaks (double descent)")


@ANALYSES.register("scaling_regimes")
def scaling_regimes(
    runs,
    device: str = "cpu",
    dims: Sequence[int] = (2, 4),
    regimes: dict | None = None,
    seeds: int = 8,
    teacher_width: int = 32,
    teacher_seed: int = 0,
    n_test: int = 2000,
    ridge: float = 1e-10,
    n_resamples: int = 200,
    confidence: float = 0.95,
    threads: int = 1,
) -> pd.DataFrame:
    """Test losses of random-feature students (rows ``record == 'loss'``: regime, dim, x, seed,
    loss; ``seeds`` per regime unless its entry gives its own) and the fitted exponent per (regime, dim)
    (rows ``record == 'fit'``: alpha with its
    bootstrap interval, E, A, the fit's convergence, and 4/d)."""
    from threadpoolctl import threadpool_limits

    del runs, device  # a standalone experiment
    with threadpool_limits(limits=int(threads)):  # the job's threads bound numpy's BLAS too
        return _scaling_regimes(dims, regimes, seeds, teacher_width, teacher_seed, n_test, ridge, n_resamples, confidence)


def _scaling_regimes(dims, regimes, seeds, teacher_width, teacher_seed, n_test, ridge, n_resamples, confidence) -> pd.DataFrame:
    import pandas as pd

    from ..data import teacher_weights

    if not regimes:
        raise ValueError("scaling_regimes: give regimes: {name: {sizes: [...], fixed: n}}")
    _check_regimes(regimes)
    if int(seeds) < 2:
        raise ValueError(f"scaling_regimes: need at least 2 seeds for the intervals, got {seeds}")
    rows, fits = [], []
    for dim in dims:
        teacher = teacher_weights(int(dim), int(teacher_width), 1, int(teacher_seed))
        test_rng = np.random.default_rng([int(teacher_seed), int(dim), 7])
        x_test = test_rng.standard_normal((int(n_test), int(dim)))
        y_test = np.tanh(x_test @ teacher[0]) @ teacher[1]
        for name, grid in regimes.items():
            resource, held = REGIMES[name]
            sizes = [int(s) for s in grid["sizes"]]
            points = []
            n_seeds = int(grid.get("seeds", seeds))  # the variance-limited regimes need more
            for s in range(n_seeds):
                curve = regime_curve(int(dim), resource, sizes, int(grid["fixed"]), s, teacher, x_test, y_test, ridge,
                                     hold_other=name.startswith("variance"))
                for size, loss in zip(sizes, curve):
                    points.append({"record": "loss", "regime": name, "resource": resource, "dim": int(dim), "x": size,
                                   "fixed": int(grid["fixed"]), "held": held, "seed": s, "loss": loss})
            rows += points
            table = pd.DataFrame(points)
            fit = fit_exponent(table.x.to_numpy(), table.loss.to_numpy(), table.seed.to_numpy(),
                               n_resamples=int(n_resamples), confidence=confidence)
            fits.append({"record": "fit", "regime": name, "resource": resource, "dim": int(dim), "fixed": int(grid["fixed"]),
                         "held": held, "n_seeds": n_seeds, "four_over_d": 4.0 / int(dim),
                         "target_variance": float(y_test.var()), **fit})
    fits = pd.DataFrame(fits)
    fits["interval_holds_four_over_d"] = (fits.alpha_lower <= fits.four_over_d) & (fits.four_over_d <= fits.alpha_upper)
    fits["interval_holds_one"] = (fits.alpha_lower <= 1.0) & (1.0 <= fits.alpha_upper)
    fits = fits.join(next_dim_columns(fits))
    return pd.concat([pd.DataFrame(rows), fits], ignore_index=True)


def next_dim_columns(fits: pd.DataFrame) -> pd.DataFrame:
    """Per fit row: the next larger dim of the same regime, its alpha and interval, and whether this
    row's interval lies wholly above it (``above_next_dim``; False on the largest dim, which has none)."""
    import pandas as pd

    out = pd.DataFrame(index=fits.index, columns=["next_dim", "next_dim_alpha", "next_dim_alpha_upper"], dtype=float)
    for _, group in fits.groupby("regime"):
        ordered = group.sort_values("dim")
        for this, nxt in zip(ordered.index[:-1], ordered.index[1:]):
            out.loc[this] = [fits.at[nxt, "dim"], fits.at[nxt, "alpha"], fits.at[nxt, "alpha_upper"]]
    out["above_next_dim"] = fits.alpha_lower > out.next_dim_alpha_upper  # NaN compares False
    return out
