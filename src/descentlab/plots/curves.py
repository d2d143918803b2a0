"""Learning curves: metrics vs step, a mean line with a band over seeds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import FIGURES
from ._tables import label_columns, one_table

if TYPE_CHECKING:  # pandas is imported where it is used, so the registry imports fast
    import pandas as pd

DEFAULT_PANELS = [
    {"split": "train", "metric": "loss", "ylabel": "train loss", "log": True},
    {"split": "test", "metric": "accuracy", "ylabel": "test accuracy", "log": False},
]


def central_and_band(band: str, log: bool) -> dict[str, Any]:
    """seaborn ``estimator``/``errorbar`` for a line over seeds and its band.

    On a log axis the sd band is taken in log space (geometric mean times or
    divided by the geometric sd): a linear mean - sd can be negative, and the
    band then fills the whole lower axis.
    """
    if band == "ci":
        return {"errorbar": ("ci", 95)}
    if not log:
        return {"errorbar": ("sd", 1)}

    def logs(values) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        return np.log(values[np.isfinite(values) & (values > 0)])  # what a log axis can show

    def geometric_mean(values) -> float:
        x = logs(values)
        return float(np.exp(x.mean())) if len(x) else float("nan")

    def geometric_sd_band(values) -> tuple[float, float]:
        x = logs(values)
        if len(x) < 2:
            return float("nan"), float("nan")
        return float(np.exp(x.mean() - x.std(ddof=1))), float(np.exp(x.mean() + x.std(ddof=1)))

    return {"estimator": geometric_mean, "errorbar": geometric_sd_band}


@FIGURES.register("learning_curves")
def learning_curves(
    metrics: pd.DataFrame,
    runs: pd.DataFrame,
    tables: dict[str, pd.DataFrame] | None = None,
    hue: str | None = None,
    panels: list[dict[str, Any]] | None = None,
    band: str = "sd",
    facet: str | None = None,
    table: str | None = None,
    title: str | None = None,
):
    """One panel per (split, metric), and one row of panels per ``facet`` value;
    one line per ``hue`` value (default: the study's first axis), mean over
    seeds with a ``band`` (``sd`` or ``ci``; on log panels the geometric mean
    with a geometric-sd band). With ``table``, the curves come
    from that analysis table (tidy metrics with label columns, e.g. the reruns
    of an optimizer benchmark) instead of the study's runs."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    panels = panels or DEFAULT_PANELS
    if table is not None:
        source = one_table(tables, table, "learning_curves", required=("run_id", "step", "split", "metric", "value"))
        runs = source.drop(columns=["step", "split", "metric", "value"]).drop_duplicates("run_id")
        metrics = source[["run_id", "step", "split", "metric", "value"]]
    labels = label_columns(runs)
    hue = hue or (labels[0] if labels else None)
    for axis in (hue, facet):
        if axis is not None and axis not in runs.columns:
            raise ValueError(f"learning_curves: {axis!r} is not an axis of the study; axes: {labels}")
    merged = metrics.merge(runs, on="run_id", how="inner")
    keep = pd.Series(False, index=merged.index)
    for p in panels:
        keep |= (merged["split"] == p["split"]) & (merged["metric"] == p["metric"])
    plotted = merged[keep].reset_index(drop=True)
    if plotted.empty:
        raise ValueError(f"learning_curves: no metrics match the panels {panels}")

    if band not in ("sd", "ci"):
        raise ValueError(f"learning_curves: band must be 'sd' or 'ci', not {band!r}")
    facets = list(dict.fromkeys(plotted[facet])) if facet else [None]
    # constrained layout keeps a legend placed outside the axes inside the figure
    fig, axes = plt.subplots(len(facets), len(panels), figsize=(4.2 * len(panels), 3.4 * len(facets)),
                             squeeze=False, layout="constrained")
    many = hue is not None and plotted[hue].nunique() > 8
    for row, value in zip(axes, facets):
        rows = plotted if value is None else plotted[plotted[facet] == value]
        for ax, p in zip(row, panels):
            data = rows[(rows["split"] == p["split"]) & (rows["metric"] == p["metric"])]
            sns.lineplot(data=data, x="step", y="value", hue=hue, ax=ax, legend=ax is axes[0][0],
                         **central_and_band(band, log=bool(p.get("log"))))
            ax.set_ylabel(p.get("ylabel", f"{p['split']} {p['metric']}"))
            if value is not None:
                ax.set_title(str(value))
            if p.get("log"):
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
    if many and axes[0][0].get_legend():  # many lines: one legend beside the figure
        legend = axes[0][0].get_legend()
        handles, labels = axes[0][0].get_legend_handles_labels()
        legend.remove()
        fig.legend(handles, labels, title=hue, loc="outside right center", fontsize=7)
    diverged = runs[runs["status"] != "ok"]
    if len(diverged):
        fig.text(0.01, 0.01, f"{len(diverged)} run(s) diverged; their curves end where they stopped", fontsize=8)
    if title:
        fig.suptitle(title)

    # Summary: each run's final value of each panel's metric, and its status.
    last = plotted.sort_values("step").groupby(["run_id", "split", "metric"], as_index=False).last()
    last["quantity"] = "final " + last["split"] + " " + last["metric"]
    summary = last.pivot_table(index="run_id", columns="quantity", values="value").reset_index()
    summary = runs.merge(summary, on="run_id", how="left")
    return fig, plotted, summary
