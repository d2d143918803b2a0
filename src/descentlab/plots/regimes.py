"""The four scaling regimes (Bahri et al., "Explaining Neural Scaling Laws"): loss
against data size and model size, one panel per regime, with the fitted power laws."""

from __future__ import annotations

import numpy as np

from . import FIGURES
from ._tables import one_table
from .style import color_for, plain_log_ticks

PANELS = ("variance-limited D", "variance-limited P", "resolution-limited D", "resolution-limited P")
XLABEL = {"D": "training examples D", "P": "features (width) P"}


@FIGURES.register("scaling_regimes")
def scaling_regimes_figure(metrics, runs, tables, table: str | None = None, title: str | None = None):
    """One panel per regime: the mean test loss over seeds per dim (points; bars two standard
    errors of that mean), and the fit E + A x^-alpha (line). Variance-limited panels draw the excess L - E
    over the fitted limit E (slope -1 expected), resolution-limited ones L itself. Summary:
    the fit rows of the analysis (alpha, interval, E, A, convergence, 4/d)."""
    import matplotlib.pyplot as plt

    del metrics, runs
    data = one_table(tables, table, "scaling_regimes", required=["record", "regime", "dim", "x", "seed", "loss", "alpha"])
    points, fits = data[data.record == "loss"], data[data.record == "fit"].copy()
    present = [p for p in PANELS if p in set(points.regime)]
    fig, axes = plt.subplots(1, len(present), figsize=(4.3 * len(present), 4.0), squeeze=False)
    plotted = []
    for ax, regime in zip(axes[0], present):
        variance = regime.startswith("variance")
        for dim, group in points[points.regime == regime].groupby("dim"):
            fit = fits[(fits.regime == regime) & (fits.dim == dim)].iloc[0]
            colour = color_for(f"d = {dim}")
            stats = group.groupby("x").loss.agg(["mean", "sem", "count"]).reset_index()
            offset = fit.E if variance else 0.0
            y = stats["mean"] - offset
            shown = y > 0  # an excess at or below the fitted limit cannot go on a log axis
            low = np.minimum(2 * stats["sem"], 0.95 * y)  # a bar reaching below zero is cut at 5% of the point
            ax.errorbar(stats.x[shown], y[shown], yerr=[low[shown], (2 * stats["sem"])[shown]],
                        fmt="o", color=colour, capsize=2, ms=4,
                        label=f"d = {dim}: alpha {fit.alpha:.2f} [{fit.alpha_lower:.2f}, {fit.alpha_upper:.2f}]")
            grid = np.geomspace(stats.x.min(), stats.x.max(), 50)
            ax.plot(grid, fit.E + fit.A * grid ** -fit.alpha - offset, color=colour, lw=1.2)
            if not variance:
                anchor = stats["mean"].iloc[0] * (grid / grid[0]) ** (-4.0 / dim)
                ax.plot(grid, anchor, color=colour, lw=0.8, ls=":")
            plotted.append(stats.assign(regime=regime, dim=dim, plotted=y, fitted_E=fit.E))
        resource = points[points.regime == regime].resource.iloc[0]
        held = points[points.regime == regime].fixed.iloc[0]
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain_log_ticks(ax)
        ax.set_xlabel(XLABEL[resource])
        ax.set_ylabel("test loss minus fitted limit E" if variance else "test loss (MSE)")
        other = "P" if resource == "D" else "D"
        n = points[points.regime == regime].seed.nunique()
        ax.set_title(f"{regime}: {other} = {held} held, n = {n} seeds\n({'slope -1' if variance else 'slope -4/d (dotted)'} expected)",
                     fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, title="95% interval over seeds", title_fontsize=7)
    fig.suptitle(f"{title + chr(10) if title else ''}Random-feature students of a tanh teacher: loss vs data and width "
                 f"(points: mean over seeds, bars: 2 standard errors, cut at 5% of the point when longer; lines: fitted "
                 f"E + A x^-alpha)", fontsize=9)
    fig.tight_layout()
    import pandas as pd

    return fig, pd.concat(plotted, ignore_index=True), fits.drop(columns=["x", "seed", "loss"], errors="ignore")
