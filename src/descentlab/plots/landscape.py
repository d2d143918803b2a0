"""Loss-landscape figures: 2-D contours and 1-D slices per configuration."""

from __future__ import annotations

import numpy as np

from . import FIGURES
from ._tables import one_table


@FIGURES.register("loss_landscape")
def loss_landscape(
    metrics,
    runs,
    tables,
    table: str | None = None,
    by: str = "batch_size",
    quantity: str = "loss",
    levels: int = 20,
    title: str | None = None,
):
    """One contour panel per value of ``by`` (first seed), log-spaced loss
    levels, and a last panel with the 1-D slices of every value of ``by``."""
    import matplotlib.pyplot as plt

    data = one_table(tables, table, "loss_landscape", required=("kind", by, "alpha", quantity))
    data = data[data["status"] == "ok"]
    values = list(dict.fromkeys(data[by]))
    fig, axes = plt.subplots(1, len(values) + 1, figsize=(4.2 * (len(values) + 1), 3.8), squeeze=False)
    surface = data[data["kind"] == "surface"]
    surface = surface[surface["seed"] == surface["seed"].min()]
    finite = surface[quantity][np.isfinite(surface[quantity])]
    lv = np.geomspace(max(finite.min(), 1e-4), finite.max(), levels) if quantity == "loss" else levels
    for ax, value in zip(axes[0], values):
        part = surface[surface[by] == value]
        grid = part.pivot_table(index="beta", columns="alpha", values=quantity)
        cs = ax.contour(grid.columns, grid.index, grid.to_numpy(), levels=lv, cmap="viridis", linewidths=0.8)
        ax.clabel(cs, cs.levels[::4], fontsize=6, fmt="%.2g")
        ax.plot(0, 0, "k*", ms=6)
        ax.set(title=f"{by} = {value}", xlabel=r"$\alpha$ (direction 1)", ylabel=r"$\beta$ (direction 2)", aspect="equal")
    ax_line = axes[0][-1]
    line = data[data["kind"] == "line"]
    for value in values:
        part = line[line[by] == value].groupby("alpha", as_index=False)[quantity].mean()
        ax_line.plot(part["alpha"], part[quantity], label=f"{by} = {value}")
    ax_line.set(xlabel=r"$\alpha$", ylabel=f"train {quantity}", yscale="log" if quantity == "loss" else "linear", title="1-D slices (mean over seeds)")
    ax_line.legend(fontsize=8)
    ax_line.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    center = surface[(surface["alpha"].abs() < 1e-12) & (surface["beta"].abs() < 1e-12)]
    summary = line.groupby(by, as_index=False).agg(min_loss=(quantity, "min"), edge_loss=(quantity, "max"))
    summary = summary.merge(center.groupby(by, as_index=False)[quantity].mean().rename(columns={quantity: "center_" + quantity}), on=by, how="left")
    return fig, data, summary
