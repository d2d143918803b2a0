"""Loss landscapes of trained runs along filter-normalised random directions
(Li, Xu, Taylor, Studer & Goldstein 2018, arXiv 1712.09913), and the
sharpness numbers read off them (Keskar et al. 2017, arXiv 1609.04836)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..losses import build_loss
from ..runs import Run
from . import ANALYSES

if TYPE_CHECKING:  # pandas is imported where it is used, so the registry imports fast
    import pandas as pd


def rise_radius(alphas: Sequence[float], losses: Sequence[float], rise: float) -> tuple[float, float]:
    """(left, right): the distance from alpha = 0 at which the loss first rises
    ``rise`` above its value at 0, walking out on each side of a 1-D slice
    (linear interpolation between grid points); NaN on a side where it never
    does within the grid (censored: the radius is at least the grid's edge)."""
    a, loss = np.asarray(alphas, dtype=float), np.asarray(losses, dtype=float)
    if a.ndim != 1 or a.shape != loss.shape or len(a) < 3:
        raise ValueError(f"rise_radius: need equal-length 1-D alphas and losses (3 or more), got {a.shape} and {loss.shape}")
    if rise <= 0:
        raise ValueError(f"rise_radius: rise must be positive, got {rise}")
    order = np.argsort(a)
    a, loss = a[order], loss[order]
    zero = np.flatnonzero(np.isclose(a, 0.0, atol=1e-12))
    if len(zero) != 1:
        raise ValueError("rise_radius: the slice must contain alpha = 0 exactly once (use an odd number of line points)")
    i0 = int(zero[0])
    level = loss[i0] + rise

    def walk(indices) -> float:
        prev = i0
        for i in indices:
            if not np.isfinite(loss[i]) or loss[i] >= level:  # a non-finite loss has risen past any level
                if not np.isfinite(loss[i]):
                    return abs(a[i])
                frac = (level - loss[prev]) / (loss[i] - loss[prev])
                return abs(a[prev] + frac * (a[i] - a[prev]))
            prev = i
        return float("nan")

    return walk(range(i0 - 1, -1, -1)), walk(range(i0 + 1, len(a)))


def slice_curvature(alphas: Sequence[float], losses: Sequence[float]) -> float:
    """The second difference of a 1-D slice at alpha = 0, with the nearest
    grid points on either side: (L(h) + L(-h) - 2 L(0)) / h^2 (exact for a
    quadratic; h must be the same on both sides)."""
    a, loss = np.asarray(alphas, dtype=float), np.asarray(losses, dtype=float)
    order = np.argsort(a)
    a, loss = a[order], loss[order]
    zero = np.flatnonzero(np.isclose(a, 0.0, atol=1e-12))
    if len(zero) != 1 or zero[0] == 0 or zero[0] == len(a) - 1:
        raise ValueError("slice_curvature: the slice must contain alpha = 0 as an interior point")
    i = int(zero[0])
    h_left, h_right = a[i] - a[i - 1], a[i + 1] - a[i]
    if not np.isclose(h_left, h_right):
        raise ValueError(f"slice_curvature: uneven grid around 0 ({h_left} and {h_right})")
    return float((loss[i + 1] + loss[i - 1] - 2 * loss[i]) / h_right**2)


def weights_at_train_loss(run: Run, loss_of, target: float, device: str = "cpu"):
    """The first of the run's saved weights (its ``checkpoints`` in step
    order, then ``final.pt``) whose loss, ``loss_of(model, data)``, is at most
    ``target``: (model, data, step, loss, reached). When none reaches it, the
    final weights with ``reached = False``."""
    from ..checkpoints import weights_path

    steps = sorted(int(s) for s in run.spec.get("checkpoints", []))
    candidates = [(s, str(weights_path("", s))) for s in steps if s < int(run.spec["steps"])]
    candidates.append((int(run.spec["steps"]), "final.pt"))
    for step, weights in candidates:
        model, data = run.load(weights=weights, device=device)
        loss = loss_of(model, data)
        if loss <= target:
            return model, data, step, loss, True
    return model, data, step, loss, False


@ANALYSES.register("landscape")
def landscape(
    runs: list[Run],
    device: str = "cpu",
    split: str = "train",
    n_examples: int | None = 2000,
    span: float = 1.0,
    surface_points: int = 21,
    line_points: int = 41,
    line_directions: int = 1,
    rise: float = 0.1,
    at_train_loss: float | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Per run: the loss and accuracy on a ``surface_points``^2 grid of
    theta + a d1 + b d2, |a|, |b| <= ``span`` (``kind = surface``), and on
    1-D slices along ``line_directions`` directions d1, d3, d4, ...
    (``kind = line``, column ``direction``), with filter-normalised Gaussian
    directions (BatchNorm and bias directions zeroed) drawn with ``seed``
    for every run alike; and a ``kind = summary`` row: the train loss at
    theta, the test loss and accuracy, the mean slice curvature at 0
    (``slice_curvature``) and the mean radius at which the loss rises by
    ``rise`` (``rise_radius``, both sides of every slice; ``radius_censored``
    when some side never rises that much within ``span``: the mean then uses
    ``span`` there and is a lower bound).

    ``at_train_loss``: instead of the final weights, take each run's first
    saved weights (its checkpoints, then the final ones) whose loss on the
    ``n_examples`` examples of ``split`` is at most this, so that runs are
    compared at a matched training loss (``weights_step``; ``reached_target``
    False when even the final weights do not reach it)."""
    import pandas as pd

    from ..landscape import evaluate, loss_line, loss_surface, random_direction

    if int(line_points) % 2 != 1:
        raise ValueError(f"landscape: line_points must be odd (the slice includes 0), got {line_points}")
    if int(line_directions) < 1:
        raise ValueError(f"landscape: line_directions must be at least 1, got {line_directions}")
    grid = np.linspace(-span, span, int(surface_points))
    line = np.linspace(-span, span, int(line_points))
    frames = []
    for run in runs:
        base = {"run_id": run.run_id, **run.labels, "status": run.status}
        if run.status != "ok":
            frames.append(pd.DataFrame([dict(base, kind="none")]))
            continue
        def subset(data):
            n = data.size(split) if n_examples is None else min(int(n_examples), data.size(split))
            return data.x[split][:n].to(device), data.y[split][:n].to(device)

        def loss_of(model, data):
            x, y = subset(data)
            return evaluate(model, build_loss(run.spec["loss"], model=model), x, y)["loss"]

        if at_train_loss is None:
            model, data = run.load(device=device)
            step, reached = int(run.spec["steps"]), True
        else:
            model, data, step, _, reached = weights_at_train_loss(run, loss_of, float(at_train_loss), device)
        loss_fn = build_loss(run.spec["loss"], model=model)
        x, y = subset(data)
        d1, d2 = random_direction(model, seed=seed), random_direction(model, seed=seed + 1)
        surface = loss_surface(model, loss_fn, x, y, directions=(d1, d2), alphas=grid)
        slices = []
        for k in range(int(line_directions)):
            direction = d1 if k == 0 else random_direction(model, seed=seed + 1 + k)
            slices.append(loss_line(model, loss_fn, x, y, direction=direction, alphas=line).assign(direction=k))
        slices = pd.concat(slices, ignore_index=True)
        sides, curvatures = [], []
        for _, part in slices.groupby("direction"):
            sides += rise_radius(part["alpha"], part["loss"], rise)
            curvatures.append(slice_curvature(part["alpha"], part["loss"]))
        sides = np.asarray(sides)
        test = evaluate(model, loss_fn, data.x["test"].to(device), data.y["test"].to(device))
        summary = dict(base, kind="summary", weights_step=step, reached_target=reached,
                       target_train_loss=float("nan") if at_train_loss is None else float(at_train_loss), train_loss=evaluate(model, loss_fn, x, y)["loss"],
                       test_loss=test["loss"], test_accuracy=test["accuracy"], slice_curvature=float(np.mean(curvatures)),
                       radius=float(np.where(np.isnan(sides), span, sides).mean()), radius_censored=bool(np.isnan(sides).any()),
                       rise=float(rise))
        frames.append(surface.assign(kind="surface", **base))
        frames.append(slices.assign(kind="line", **base))
        frames.append(pd.DataFrame([summary]))
    return pd.concat(frames, ignore_index=True)
