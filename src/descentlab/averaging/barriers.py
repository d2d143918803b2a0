"""Loss and error along a piecewise-linear path through models, and its barriers.

``path_table`` evaluates ``n_points`` evenly spaced points (alpha from 0 to 1)
on each segment between consecutive models, on every named split, optionally
recomputing BatchNorm running statistics on training data at each point (the
interpolated statistics do not belong to the interpolated weights, which
inflates barriers). It returns a tidy table, one row per (segment, alpha,
split): loss, accuracy, error, and their excess over the straight line between
the segment's end values:

    excess(alpha) = value(alpha) - ((1 - alpha) value(0) + alpha value(1)).

``barrier_table``: per segment and split, the barrier = max over alpha of the
excess (for loss as in Entezari et al. 2022; for error we use the same linear
line, where Frankle et al. 2020 subtract the mean of the end errors, which is
the same value at alpha = 1/2), with the alpha at which it occurs. A path
through one pair of models has one segment (0). With ``layers``, only those
layers move along the path (layer-wise barriers).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..landscape.evaluate import evaluate
from ..landscape.interpolation import recompute_batchnorm  # re-exported
from .interpolation import interpolate, interpolate_layerwise
from .states import Source, check_same_architecture, load_state

__all__ = ["path_table", "barrier_table", "with_excess", "recompute_batchnorm"]

PATH_COLUMNS = ["segment", "alpha", "split", "loss", "accuracy", "error", "loss_excess", "error_excess"]


def path_table(model: nn.Module, states: Sequence[Source], splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
               loss_fn, n_points: int = 11, bn_data: torch.Tensor | None = None, bn_chunk_size: int | None = None,
               chunk_size: int | None = 1024, layers: Sequence[str] | None = None) -> pd.DataFrame:
    """The tidy path table (see the module docstring); ``model`` supplies the architecture only.

    ``layers``: interpolate only these layers (names as in :func:`layer_names`), the others stay at
    each segment's start model: layer-wise linear mode connectivity (Adilova et al., ICLR 2024),
    whose alpha = 1 end point is a hybrid of the two models.
    """
    if int(n_points) < 3:
        raise ValueError(f"n_points must be >= 3 (use >= 11), got {n_points!r}")
    if len(states) < 2:
        raise ValueError(f"a path needs at least two models, got {len(states)}")
    if not splits:
        raise ValueError("splits is empty: name at least one (x, y) split to evaluate on")
    work = copy.deepcopy(model)
    reference = work.state_dict()
    rows = []
    previous = load_state(states[0])
    check_same_architecture(reference, previous, what="model 0")
    for segment in range(len(states) - 1):
        current = load_state(states[segment + 1])
        check_same_architecture(reference, current, what=f"model {segment + 1}")
        for alpha in np.linspace(0.0, 1.0, int(n_points)):
            if layers is None:
                work.load_state_dict(interpolate(previous, current, float(alpha)))
            else:
                work.load_state_dict(interpolate_layerwise(previous, current, {name: float(alpha) for name in layers},
                                                           default=0.0))
            if bn_data is not None:
                recompute_batchnorm(work, bn_data, bn_chunk_size)
            for split, (x, y) in splits.items():
                rows.append({"segment": segment, "alpha": float(alpha), "split": split,
                             **evaluate(work, loss_fn, x, y, chunk_size=chunk_size)})
        previous = current
    return with_excess(pd.DataFrame(rows))[PATH_COLUMNS]


def with_excess(path: pd.DataFrame) -> pd.DataFrame:
    """``path`` plus loss_excess and error_excess: each value minus the straight line between its
    segment's end values (rows at alpha = 0 and 1) on the same split."""
    missing = [c for c in ("segment", "alpha", "split", "loss", "error") if c not in path]
    if missing:
        raise ValueError(f"a path table needs columns segment, alpha, split, loss, error; missing {missing}")
    out = path.copy()
    for (segment, split), g in out.groupby(["segment", "split"]):
        alpha = g["alpha"]
        if not (np.isclose(alpha.min(), 0.0) and np.isclose(alpha.max(), 1.0)):
            raise ValueError(f"segment {segment}, split {split!r}: the path must include alpha = 0 and alpha = 1")
        for value in ("loss", "error"):
            start = g.loc[alpha.idxmin(), value]
            end = g.loc[alpha.idxmax(), value]
            out.loc[g.index, f"{value}_excess"] = g[value] - ((1 - alpha) * start + alpha * end)
    return out


def barrier_table(path: pd.DataFrame) -> pd.DataFrame:
    """Per (segment, split): loss_barrier, loss_barrier_alpha, error_barrier, error_barrier_alpha
    (the first alpha where the excess is largest)."""
    path = with_excess(path)
    rows = []
    for (segment, split), g in path.sort_values("alpha").groupby(["segment", "split"], sort=True):
        row = {"segment": segment, "split": split}
        for value in ("loss", "error"):
            excess = g[f"{value}_excess"].to_numpy(dtype=float)
            if np.isnan(excess).all():
                row[f"{value}_barrier"], row[f"{value}_barrier_alpha"] = float("nan"), float("nan")
                continue
            i = int(np.nanargmax(excess))
            row[f"{value}_barrier"] = float(excess[i])
            row[f"{value}_barrier_alpha"] = float(g["alpha"].iloc[i])
        rows.append(row)
    return pd.DataFrame(rows, columns=["segment", "split", "loss_barrier", "loss_barrier_alpha", "error_barrier",
                                       "error_barrier_alpha"])
