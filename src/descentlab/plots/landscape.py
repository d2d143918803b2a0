"""Loss-landscape figures: 2-D contours and 1-D slices per configuration, and
the sharpness and generalisation numbers of each run."""

from __future__ import annotations

import numpy as np

from . import FIGURES
from ._tables import one_table

SUMMARY_COLUMNS = ["weights_step", "reached_target", "target_train_loss", "train_loss", "test_accuracy", "test_loss",
                   "radius", "radius_censored", "slice_curvature"]


def _shared_levels(surface, by, values, quantity: str, levels: int):
    """Linear levels shared by every panel, from the lowest value on any
    surface up to the lowest of the panels' maxima (so that every level
    appears in every panel and equal spacing means equal loss steps)."""
    finite = surface[np.isfinite(surface[quantity])]
    low = float(finite[quantity].min())
    high = min(float(finite[finite[by] == v][quantity].max()) for v in values)
    return np.linspace(low, high, levels + 1)[1:] if high > low else levels


def _per_seed_panel(ax, runs_summary, by, values, column, ylabel, colors):
    """One point per (value, seed), the seeds joined across values; open
    markers for censored radii (a lower bound)."""
    for seed, part in runs_summary.groupby("seed"):
        part = part.set_index(by).reindex(values)
        ax.plot(range(len(values)), part[column], color="0.7", lw=0.8, zorder=1)
    for i, value in enumerate(values):
        part = runs_summary[runs_summary[by] == value]
        censored = part["radius_censored"].astype(bool) if column == "radius" and "radius_censored" in part else np.zeros(len(part), bool)
        ax.scatter(np.full(len(part), i)[~censored], part[column][~censored], color=colors[value], zorder=2)
        ax.scatter(np.full(len(part), i)[censored], part[column][censored], facecolor="none", edgecolor=colors[value], zorder=2)
    ax.set_xticks(range(len(values)), [str(v) for v in values])
    ax.set(xlabel=by, ylabel=ylabel, xlim=(-0.5, len(values) - 0.5))
    ax.grid(alpha=0.3)


@FIGURES.register("loss_landscape")
def loss_landscape(
    metrics,
    runs,
    tables,
    table: str | None = None,
    by: str = "batch_size",
    quantity: str = "loss",
    levels: int = 12,
    title: str | None = None,
):
    """One contour panel per value of ``by`` (first seed) with linear levels
    shared by all panels, a panel with the 1-D slices (mean over seeds and
    directions, band: their range), and, when the analysis has per-run
    summaries (``kind = summary``), per-seed panels of the radius at which the
    loss rises by ``rise``, the test accuracy and the train loss at the weights
    compared. Runs that did not finish are listed in the title of the slices
    panel, never drawn. The summary table: one row per run."""
    import matplotlib.pyplot as plt
    import pandas as pd

    data = one_table(tables, table, "loss_landscape", required=("kind", by, "alpha", quantity))
    failed = data[data["status"] != "ok"]
    data = data[data["status"] == "ok"]
    values = list(dict.fromkeys(data[by]))
    try:
        values = sorted(values, key=float)
    except (TypeError, ValueError):
        pass
    colors = {v: plt.get_cmap("tab10")(i) for i, v in enumerate(values)}
    summaries = data[data["kind"] == "summary"] if "kind" in data else data.iloc[:0]
    has_summary = len(summaries) > 0
    nrows = 2 if has_summary else 1
    ncols = max(len(values) + 1, 3)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols, 3.7 * nrows), squeeze=False)
    surface = data[data["kind"] == "surface"]
    surface = surface[surface["seed"] == surface["seed"].min()]
    lv = _shared_levels(surface, by, values, quantity, levels)
    for ax, value in zip(axes[0], values):
        part = surface[surface[by] == value]
        grid = part.pivot_table(index="beta", columns="alpha", values=quantity)
        cs = ax.contour(grid.columns, grid.index, grid.to_numpy(), levels=lv, cmap="viridis", linewidths=0.8)
        ax.clabel(cs, cs.levels[::3], fontsize=6, fmt="%.2g")
        ax.plot(0, 0, "k*", ms=6)
        where = ""
        if has_summary:
            row = summaries[(summaries[by] == value) & (summaries["seed"] == surface["seed"].min())]
            if len(row):
                where = f"\n(step {int(row['weights_step'].iloc[0])}, train loss {row['train_loss'].iloc[0]:.2g})"
        ax.set(title=f"{by} = {value}{where}", xlabel=r"$\alpha$ (direction 1)", ylabel=r"$\beta$ (direction 2)", aspect="equal")
        ax.title.set_fontsize(9)
    ax_line = axes[0][len(values)]
    line = data[data["kind"] == "line"]
    for value in values:
        part = line[line[by] == value].groupby("alpha")[quantity]
        mean = part.mean()
        ax_line.plot(mean.index, mean.to_numpy(), color=colors[value], label=f"{by} = {value}")
        ax_line.fill_between(mean.index, part.min().to_numpy(), part.max().to_numpy(), color=colors[value], alpha=0.15, lw=0)
    seeds = int(line["seed"].nunique()) if "seed" in line else 1
    directions = int(line["direction"].nunique()) if "direction" in line else 1
    dropped = f"; not finished: {len(failed)} runs" if len(failed) else ""
    ax_line.set(xlabel=r"$\alpha$ (filter-normalised direction)", ylabel=f"train {quantity}",
                title=f"1-D slices: mean over {seeds} seeds x {directions} directions\n(band: their range){dropped}")
    ax_line.title.set_fontsize(9)
    ax_line.legend(fontsize=8)
    ax_line.grid(alpha=0.3)
    for ax in axes[0][len(values) + 1:]:
        ax.axis("off")
    if has_summary:
        rise = float(summaries["rise"].iloc[0]) if "rise" in summaries else float("nan")
        panels = [("radius", f"radius where train loss rises by {rise:g}\n(open: censored at the grid edge)"),
                  ("test_accuracy", "test accuracy"), ("train_loss", "train loss at the weights compared")]
        for ax, (column, ylabel) in zip(axes[1], panels):
            _per_seed_panel(ax, summaries, by, values, column, ylabel, colors)
        axes[1][0].set_title(f"per seed (n = {summaries['seed'].nunique()}), lines join seeds", fontsize=9)
        for ax in axes[1][len(panels):]:
            ax.axis("off")
    fig.suptitle(title or "Loss landscape around each solution")
    fig.tight_layout()
    per_run = line.groupby(["run_id", by, "seed"], as_index=False).agg(min_loss=(quantity, "min"), edge_loss=(quantity, "max"))
    center = data[data["kind"] == "surface"]
    center = center[(center["alpha"].abs() < 1e-12) & (center["beta"].abs() < 1e-12)]
    per_run = per_run.merge(center[["run_id", quantity]].rename(columns={quantity: "center_" + quantity}), on="run_id", how="left")
    if has_summary:
        keep = ["run_id"] + [c for c in SUMMARY_COLUMNS if c in summaries.columns]
        per_run = per_run.merge(summaries[keep], on="run_id", how="left")
    return fig, data, pd.DataFrame(per_run)
