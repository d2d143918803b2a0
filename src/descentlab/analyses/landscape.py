"""Loss landscapes of trained runs along filter-normalised random directions
(Li, Xu, Taylor, Studer & Goldstein 2018, arXiv 1712.09913)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..losses import build_loss
from ..runs import Run
from . import ANALYSES

if TYPE_CHECKING:  # pandas is imported where it is used, so the registry imports fast
    import pandas as pd


@ANALYSES.register("landscape")
def landscape(
    runs: list[Run],
    device: str = "cpu",
    split: str = "train",
    n_examples: int | None = 2000,
    span: float = 1.0,
    surface_points: int = 21,
    line_points: int = 41,
    seed: int = 0,
) -> pd.DataFrame:
    """Per run: the loss and accuracy on a ``surface_points``^2 grid of
    theta + a d1 + b d2, |a|, |b| <= ``span`` (``kind = surface``), and on a
    1-D slice along d1 (``kind = line``), with d1, d2 filter-normalised
    Gaussian directions (BatchNorm and bias directions zeroed), drawn with
    ``seed`` for every run alike."""
    import pandas as pd

    from ..landscape import loss_line, loss_surface, random_direction

    grid = np.linspace(-span, span, int(surface_points))
    line = np.linspace(-span, span, int(line_points))
    frames = []
    for run in runs:
        base = {"run_id": run.run_id, **run.labels, "status": run.status}
        if run.status != "ok":
            frames.append(pd.DataFrame([dict(base, kind="none")]))
            continue
        model, data = run.load(device=device)
        loss_fn = build_loss(run.spec["loss"], model=model)
        n = data.size(split) if n_examples is None else min(int(n_examples), data.size(split))
        x, y = data.x[split][:n].to(device), data.y[split][:n].to(device)
        d1, d2 = random_direction(model, seed=seed), random_direction(model, seed=seed + 1)
        surface = loss_surface(model, loss_fn, x, y, directions=(d1, d2), alphas=grid)
        slice_ = loss_line(model, loss_fn, x, y, direction=d1, alphas=line)
        frames.append(surface.assign(kind="surface", **base))
        frames.append(slice_.assign(kind="line", **base))
    return pd.concat(frames, ignore_index=True)
