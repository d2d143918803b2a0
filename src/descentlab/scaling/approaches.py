"""Hoffmann et al. (2022)'s Approaches 1 and 2 to the compute-optimal model size.

- Approach 1: the lower envelope of loss against compute over all runs (or
  points of their training curves): in each compute bin, the run with the
  lowest loss; then N_opt proportional to C^a by least squares in log-log.
- Approach 2: isoFLOP profiles: per compute budget, a parabola of loss in
  log N; its vertex is N_opt(C); then the same power law through the vertices.

Compute is C = 6 N D throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._checks import as_array, at_least, same_length


@dataclass(frozen=True)
class ComputeOptimalFrontier:
    """N_opt = k_N C^a and D_opt = k_D C^b fitted through ``points`` (columns C, N_opt, D_opt, loss)."""

    approach: str
    a: float
    b: float
    k_N: float
    k_D: float
    points: pd.DataFrame

    def n_opt(self, compute) -> np.ndarray:
        return self.k_N * as_array("compute", compute) ** self.a

    def d_opt(self, compute) -> np.ndarray:
        return self.k_D * as_array("compute", compute) ** self.b

    def to_table(self) -> pd.DataFrame:
        return pd.DataFrame([{"approach": self.approach, "a": self.a, "b": self.b, "k_N": self.k_N, "k_D": self.k_D,
                              "n_points": len(self.points)}])


def _frontier(approach: str, points: pd.DataFrame) -> ComputeOptimalFrontier:
    at_least("compute-optimal points", len(points), 2, "a power law through them")
    log_c = np.log(points["C"].to_numpy())
    if np.ptp(log_c) == 0:
        raise ValueError("all compute-optimal points have the same compute; a power law in C needs several budgets")
    a, log_kn = np.polyfit(log_c, np.log(points["N_opt"].to_numpy()), 1)
    b, log_kd = np.polyfit(log_c, np.log(points["D_opt"].to_numpy()), 1)
    return ComputeOptimalFrontier(approach, float(a), float(b), float(np.exp(log_kn)), float(np.exp(log_kd)), points)


def _inputs(N, D, loss):
    n, d, l = as_array("N", N), as_array("D", D), as_array("loss", loss)
    same_length(N=n, D=d, loss=l)
    return n, d, l


def approach1_envelope(N, D, loss, *, n_bins: int = 30, compute_range: tuple[float, float] | None = None) -> ComputeOptimalFrontier:
    """Approach 1: the lowest-loss point in each of ``n_bins`` log-spaced compute bins.

    ``compute_range`` limits the bins (default: the data's range); keep it where
    the runs' model sizes bracket the optimum, or the envelope sticks to the
    smallest or largest model.
    """
    n, d, l = _inputs(N, D, loss)
    at_least("loss", len(l), 2, "an envelope")
    if n_bins < 2:
        raise ValueError(f"n_bins must be at least 2, got {n_bins}")
    c = 6.0 * n * d
    lo, hi = (c.min(), c.max()) if compute_range is None else compute_range
    if not (0 < lo < hi):
        raise ValueError(f"compute_range must satisfy 0 < low < high, got {(lo, hi)}")
    edges = np.geomspace(lo, hi, n_bins + 1)
    which = np.searchsorted(edges, c, side="right") - 1
    which[c == hi] = n_bins - 1
    rows = []
    for k in range(n_bins):
        members = np.flatnonzero(which == k)
        if members.size:
            i = members[np.argmin(l[members])]
            rows.append({"C": c[i], "N_opt": n[i], "D_opt": d[i], "loss": l[i]})
    return _frontier("1: lower envelope", pd.DataFrame(rows))


def _budgets(c: np.ndarray, rtol: float) -> np.ndarray:
    """Group labels: runs whose compute agrees within ``rtol`` share an isoFLOP budget."""
    order = np.argsort(c)
    gaps = np.diff(np.log(c[order])) > np.log1p(rtol)
    labels = np.empty(len(c), dtype=np.int64)
    labels[order] = np.concatenate([[0], np.cumsum(gaps)])
    return labels


def approach2_isoflop(N, D, loss, *, budget=None, rtol: float = 1e-3) -> ComputeOptimalFrontier:
    """Approach 2: per isoFLOP budget, the vertex of a parabola of loss in log N.

    ``budget`` labels each run's compute budget; by default runs with C = 6ND
    equal within ``rtol`` form one. A budget needs 3 runs and an upward parabola
    whose vertex lies within its sampled model sizes, else it raises.
    """
    n, d, l = _inputs(N, D, loss)
    c = 6.0 * n * d
    labels = _budgets(c, rtol) if budget is None else np.asarray(budget)
    if labels.shape != l.shape:
        raise ValueError(f"budget must have one label per run ({len(l)}), got shape {labels.shape}")
    rows = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        cb = float(np.exp(np.mean(np.log(c[members]))))
        if members.size < 3:
            raise ValueError(f"budget C={cb:.3g} has {members.size} runs; a parabola needs at least 3")
        x = np.log(n[members])
        curv, slope, _ = np.polyfit(x, l[members], 2)
        if curv <= 0:
            raise ValueError(f"budget C={cb:.3g}: loss is not convex in log N (curvature {curv:.3g}); no minimum")
        vertex = -slope / (2.0 * curv)
        if not x.min() <= vertex <= x.max():
            raise ValueError(f"budget C={cb:.3g}: the parabola's minimum N={np.exp(vertex):.3g} lies outside the "
                             f"sampled sizes [{n[members].min():.3g}, {n[members].max():.3g}]; widen the grid")
        n_opt = float(np.exp(vertex))
        rows.append({"C": cb, "N_opt": n_opt, "D_opt": cb / (6.0 * n_opt),
                     "loss": float(np.polyval([curv, slope, _], vertex)), "curvature": float(curv), "runs": members.size})
    return _frontier("2: isoFLOP parabolas", pd.DataFrame(rows))
