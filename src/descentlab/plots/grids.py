"""Hyperparameter grids: a final metric over two sweep axes, one panel per facet."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import FIGURES

if TYPE_CHECKING:  # pandas is imported where it is used, so the registry imports fast
    import pandas as pd


def final_values(metrics: pd.DataFrame, runs: pd.DataFrame, split: str, metric: str) -> pd.DataFrame:
    """Each run's value of (split, metric) at its last recorded step, with its
    labels and status; NaN for a run that diverged before recording it."""
    sel = metrics[(metrics["split"] == split) & (metrics["metric"] == metric)]
    last = sel.sort_values("step").groupby("run_id", as_index=False).last()[["run_id", "step", "value"]]
    out = runs.merge(last, on="run_id", how="left")
    out.loc[out["status"] != "ok", "value"] = np.nan  # a diverged run has no final value
    return out


@FIGURES.register("heatmap")
def heatmap(
    metrics,
    runs,
    tables=None,
    x: str = "lr",
    y: str = "weight_decay",
    facet: str | None = None,
    split: str = "test",
    metric: str = "accuracy",
    as_error: bool = True,
    percent: bool = True,
    title: str | None = None,
):
    """Mean over seeds of a final metric on the (x, y) grid; with ``as_error``
    the accuracy is shown as an error, 1 - accuracy. Diverged runs show blank.
    One panel per value of ``facet``, sharing the colour scale."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    for axis in (x, y) + ((facet,) if facet else ()):
        if axis not in runs.columns:
            raise ValueError(f"heatmap: {axis!r} is not an axis of the study; axes: {[c for c in runs.columns if c not in ('run_id', 'seed', 'status')]}")
    table = final_values(metrics, runs, split, metric)
    if as_error:
        table["value"] = 1.0 - table["value"]
    if percent:
        table["value"] = 100.0 * table["value"]
    quantity = f"{split} {'error' if as_error else metric}{' (%)' if percent else ''}"
    group_cols = ([facet] if facet else []) + [y, x]
    plotted = table.groupby(group_cols, as_index=False, sort=True).agg(
        value=("value", "mean"), std=("value", "std"), seeds=("value", "size"), diverged=("status", lambda s: int((s != "ok").sum()))
    )
    facets = list(dict.fromkeys(table[facet])) if facet else [None]
    vmin, vmax = np.nanmin(plotted["value"]), np.nanmax(plotted["value"])
    fig, axes = plt.subplots(1, len(facets), figsize=(4.6 * len(facets), 3.9), squeeze=False)
    for ax, value in zip(axes[0], facets):
        part = plotted if value is None else plotted[plotted[facet] == value]
        grid = part.pivot(index=y, columns=x, values="value").sort_index(ascending=False)
        sns.heatmap(grid, ax=ax, annot=True, fmt=".1f", cmap="viridis_r", vmin=vmin, vmax=vmax,
                    cbar=ax is axes[0][-1], cbar_kws={"label": quantity}, annot_kws={"fontsize": 7})
        ax.set_title(str(value) if value is not None else "")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    best = plotted.sort_values("value").groupby(facet if facet else (lambda _: 0), as_index=False).first() if facet else plotted.nsmallest(1, "value")
    return fig, plotted, best
