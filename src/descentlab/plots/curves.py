"""Learning curves: metrics vs step, a mean line with a band over seeds."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from . import FIGURES
from ._tables import label_columns

DEFAULT_PANELS = [
    {"split": "train", "metric": "loss", "ylabel": "train loss", "log": True},
    {"split": "test", "metric": "accuracy", "ylabel": "test accuracy", "log": False},
]


@FIGURES.register("learning_curves")
def learning_curves(
    metrics: pd.DataFrame,
    runs: pd.DataFrame,
    tables: dict[str, pd.DataFrame] | None = None,
    hue: str | None = None,
    panels: list[dict[str, Any]] | None = None,
    band: str = "sd",
    title: str | None = None,
):
    """One panel per (split, metric); one line per ``hue`` value (default: the
    study's first axis), mean over seeds with a ``band`` (``sd`` or ``ci``)."""
    panels = panels or DEFAULT_PANELS
    labels = label_columns(runs)
    hue = hue or (labels[0] if labels else None)
    if hue is not None and hue not in runs.columns:
        raise ValueError(f"learning_curves: hue {hue!r} is not an axis of the study; axes: {labels}")
    table = metrics.merge(runs, on="run_id", how="inner")
    keep = pd.Series(False, index=table.index)
    for p in panels:
        keep |= (table["split"] == p["split"]) & (table["metric"] == p["metric"])
    plotted = table[keep].reset_index(drop=True)
    if plotted.empty:
        raise ValueError(f"learning_curves: no metrics match the panels {panels}")

    errorbar = ("sd", 1) if band == "sd" else ("ci", 95)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, p in zip(axes[0], panels):
        data = plotted[(plotted["split"] == p["split"]) & (plotted["metric"] == p["metric"])]
        sns.lineplot(data=data, x="step", y="value", hue=hue, errorbar=errorbar, ax=ax, legend=ax is axes[0][0])
        ax.set_ylabel(p.get("ylabel", f"{p['split']} {p['metric']}"))
        if p.get("log"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    diverged = runs[runs["status"] != "ok"]
    if len(diverged):
        fig.text(0.01, 0.01, f"{len(diverged)} run(s) diverged; their curves end where they stopped", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()

    # Summary: each run's final value of each panel's metric, and its status.
    last = plotted.sort_values("step").groupby(["run_id", "split", "metric"], as_index=False).last()
    last["quantity"] = "final " + last["split"] + " " + last["metric"]
    summary = last.pivot_table(index="run_id", columns="quantity", values="value").reset_index()
    summary = runs.merge(summary, on="run_id", how="left")
    return fig, plotted, summary
