"""Optimizer-benchmark figures: learning-rate sensitivity and performance profiles."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from . import FIGURES
from ._tables import one_table
from .grids import final_values

if TYPE_CHECKING:  # pandas is imported where it is used, so the registry imports fast
    import pandas as pd


@FIGURES.register("lr_sensitivity")
def lr_sensitivity(
    metrics,
    runs,
    tables=None,
    x: str = "lr",
    hue: str = "optimizer",
    facet: str = "problem",
    split: str = "val",
    metric: str = "loss",
    log_y: bool = True,
    xlabel: str | None = None,
    title: str | None = None,
):
    """Final (split, metric) of every tuning run vs the learning-rate axis, one
    line per optimizer, one panel per problem (as in the MoMo paper). Diverged
    runs leave a gap and are listed in the summary. ``xlabel`` defaults to ``x``."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    table = final_values(metrics, runs, split, metric)
    table[x] = pd.to_numeric(table[x])
    facets = list(dict.fromkeys(table[facet]))
    fig, axes = plt.subplots(1, len(facets), figsize=(4.4 * len(facets), 3.8), squeeze=False)
    for ax, value in zip(axes[0], facets):
        part = table[table[facet] == value]
        sns.lineplot(data=part, x=x, y="value", hue=hue, marker="o", errorbar=None, ax=ax, legend=ax is axes[0][-1])
        ax.set(xscale="log", title=str(value), xlabel=xlabel or x, ylabel=f"final {split} {metric}")
        grid = sorted(part[x].unique())
        ax.set_xticks(grid, [f"{v:g}" for v in grid])
        ax.xaxis.set_minor_locator(plt.NullLocator())
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if axes[0][-1].get_legend():
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=7, ncol=1 + len(set(table[hue])) // 16)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    summary = table.groupby([facet, hue], as_index=False).agg(
        settings=("value", "size"), diverged=("status", lambda s: int((s != "ok").sum())), best=("value", "min" if metric == "loss" else "max")
    )
    return fig, table, summary


def steps_to_target(curves: pd.DataFrame, target: float, mode: str) -> float:
    """First step at which a curve (step, value) reaches ``target``; inf if never."""
    reached = curves["value"] <= target if mode == "min" else curves["value"] >= target
    steps = curves.loc[reached, "step"]
    return float(steps.min()) if len(steps) else math.inf


def performance_profile_table(
    table: pd.DataFrame, problem: str, solver: str, split: str, metric: str, mode: str, target_quantile: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Steps-to-target per (problem, solver) and the Dolan-More profile.

    Per problem, the target is the ``target_quantile`` of the solvers' best
    (mean over seeds) values, e.g. 0.5: the value half of the solvers reach.
    A solver's steps-to-target is the median over seeds of the first
    evaluation step at which it reaches the target (inf if a seed never does),
    its ratio the steps divided by the problem's fastest solver's; the profile
    rho(tau) is the fraction of problems with ratio <= tau.
    """
    import pandas as pd

    sel = table[(table["split"] == split) & (table["metric"] == metric)]
    mean_curves = sel.groupby([problem, solver, "step"], as_index=False)["value"].mean()
    rows = []
    for prob, part in mean_curves.groupby(problem):
        best = part.groupby(solver)["value"].min() if mode == "min" else part.groupby(solver)["value"].max()
        q = target_quantile if mode == "min" else 1.0 - target_quantile
        target = float(np.nanquantile(best.to_numpy(), q))
        for name, runs_part in sel[sel[problem] == prob].groupby(solver):
            per_seed = [steps_to_target(c.sort_values("step"), target, mode) for _, c in runs_part.groupby("seed")]
            rows.append({problem: prob, solver: name, "target": target, "steps": float(np.median(per_seed))})
    steps = pd.DataFrame(rows)
    steps["ratio"] = steps["steps"] / steps.groupby(problem)["steps"].transform("min")
    taus = np.unique(np.concatenate([[1.0], steps["ratio"][np.isfinite(steps["ratio"])].to_numpy()]))
    n_problems = steps[problem].nunique()
    profile = pd.DataFrame(
        [{solver: name, "tau": tau, "rho": float((g["ratio"] <= tau).sum()) / n_problems}
         for name, g in steps.groupby(solver) for tau in taus]
    )
    return steps, profile


@FIGURES.register("performance_profile")
def performance_profile(
    metrics,
    runs,
    tables,
    table: str | None = None,
    problem: str = "problem",
    solver: str = "optimizer",
    split: str = "val",
    metric: str = "loss",
    mode: str = "min",
    target_quantile: float = 0.5,
    title: str | None = None,
):
    """Dolan-More performance profile of steps-to-target across problems."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = one_table(tables, table, "performance_profile", required=(problem, solver, "seed", "step", "split", "metric", "value"))
    steps, profile = performance_profile_table(data, problem, solver, split, metric, mode, target_quantile)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    order = profile.groupby(solver)["rho"].mean().sort_values(ascending=False).index
    palette = dict(zip(order, sns.color_palette("husl", len(order))))
    for name in order:
        g = profile[profile[solver] == name].sort_values("tau")
        ax.step(g["tau"], g["rho"], where="post", label=name, color=palette[name])
    ax.set(xscale="log", xlabel=r"$\tau$ (steps / fastest solver's steps)", ylabel=r"fraction of problems within $\tau$", ylim=(-0.02, 1.02))
    ax.legend(fontsize=6, ncol=2, bbox_to_anchor=(1.02, 1), loc="upper left")
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig, profile, steps
