"""Summary values per configuration: mean over seeds with a one-sd error bar."""

from __future__ import annotations


from . import FIGURES
from ._tables import one_table
from .style import colors_for


@FIGURES.register("summary_points")
def summary_points(
    metrics,
    runs,
    tables,
    columns: list[str] | None = None,
    x: str | None = None,
    hue: str | None = None,
    table: str | None = None,
    ylabels: dict[str, str] | None = None,
    title: str | None = None,
):
    """One panel per column of an analysis table (e.g. accuracy, ece); points
    at the mean over seeds of each (x, hue) with a one-sd error bar, each hue
    value in its colour of every figure (``style.color_for``)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = one_table(tables, table, "summary_points", required=[c for c in (columns or []) + [x, hue] if c])
    columns = columns or [c for c in data.select_dtypes("number").columns if c != "seed"]
    ylabels = ylabels or {}
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.6), squeeze=False)
    for ax, column in zip(axes[0], columns):
        dodge = 0.4 if hue and data[hue].nunique() > 1 else False  # seaborn divides by levels - 1
        palette = colors_for(data[hue].unique()) if hue else None
        sns.pointplot(data=data, x=x, y=column, hue=hue, errorbar="sd", dodge=dodge, linestyle="none",
                      capsize=0.1, ax=ax, legend=ax is axes[0][0], palette=palette)
        ax.set_ylabel(ylabels.get(column, column))
        ax.grid(alpha=0.3)
    seeds = f"n = {data['seed'].nunique()} seeds, " if "seed" in data.columns else ""
    fig.suptitle(f"{title + chr(10) if title else ''}(points: mean over seeds, {seeds}bars: one sd)", fontsize=10)
    fig.tight_layout()
    keys = [k for k in (x, hue) if k]
    summary = data.groupby(keys, as_index=False)[columns].agg(["mean", "std", "count"])
    summary.columns = ["_".join(c).rstrip("_") if isinstance(c, tuple) else c for c in summary.columns]
    return fig, data, summary
