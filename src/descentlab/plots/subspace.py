"""Intrinsic dimension: accuracy vs subspace dimension d, with d_int90 marked."""

from __future__ import annotations

import math

from . import FIGURES
from .grids import final_values


def _censoring(d_int: int | None, grid: list[float]) -> str:
    """Where d_int90 sits on the d grid: "interior", "low" (the smallest d
    already reaches the threshold: the true d_int90 may be smaller) or "high"
    (no d reaches it: d_int90 is above the grid)."""
    if d_int is None:
        return "high"
    return "low" if d_int <= min(grid) else "interior"


@FIGURES.register("intrinsic_dimension")
def intrinsic_dimension_plot(
    metrics,
    runs,
    tables=None,
    dim: str = "dim",
    hue: str = "width",
    full_label: str = "full",
    split: str = "test",
    metric: str = "accuracy",
    fraction: float = 0.9,
    num_params: dict | None = None,
    chance: float | None = None,
    title: str | None = None,
):
    """Final ``metric`` vs d (log scale) per ``hue``: the mean over seeds, the
    band their min-max; the full model's mean (the ``dim`` label
    ``full_label``) dashed, ``fraction`` of it dotted, and d_int90 (Li et al.
    2018: the smallest d whose mean reaches ``fraction`` of the full model's)
    marked, open when censored by the d grid. With ``num_params`` (hue label ->
    the full model's parameter count D) a second panel puts d / D on the x
    axis. ``chance``: the metric at chance, drawn when some run gets near it.

    The summary has one row per ``hue`` and seed: that seed's d_int (against
    its own full model; NaN when no d reaches it), its ``censoring``
    ("interior"; "low": the smallest d already reaches the threshold; "high":
    no d does; ``censored`` is True for both), d_int / D
    (``d_int_fraction_of_params``), ``d_int_ratio`` to the first ``hue``'s
    d_int in the same seed, and the mean curve's d_int and censoring, repeated.
    Diverged runs count in ``diverged`` and are left out of the means."""
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    from ..landscape.subspace import intrinsic_dimension
    from .style import color_for, edge_marker, plain_log_ticks

    for axis in (dim, hue):
        if axis not in runs.columns:
            raise ValueError(f"intrinsic_dimension: {axis!r} is not an axis of the study")
    table = final_values(metrics, runs, split, metric)
    is_full = table[dim].astype(str) == full_label
    full, sub = table[is_full], table[~is_full].copy()
    if full.empty:
        raise ValueError(f"intrinsic_dimension: no run with {dim} = {full_label!r} (the full-model baseline)")
    sub[dim] = pd.to_numeric(sub[dim])
    grid = sorted(sub[dim].unique())
    groups = sorted(table[hue].unique(), key=lambda g: (pd.to_numeric(g, errors="coerce"), str(g)))
    if num_params is not None:
        missing = [g for g in groups if str(g) not in {str(k) for k in num_params}]
        if missing:
            raise ValueError(f"intrinsic_dimension: num_params has no entry for {hue} {missing}")
        num_params = {str(k): int(v) for k, v in num_params.items()}
    panels = 2 if num_params else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4), squeeze=False)
    axes = axes[0]
    pct = int(round(fraction * 100))
    rows = []
    for g in groups:
        color = color_for(f"{hue} {g}")
        part = sub[sub[hue] == g]
        base_by_seed = full[full[hue] == g].set_index("seed")["value"]
        baseline = float(base_by_seed.mean())
        stats = part.groupby(dim)["value"].agg(["mean", "min", "max", "count"]).reindex(grid)
        diverged = part.groupby(dim)["value"].apply(lambda v: int(v.isna().sum())).reindex(grid, fill_value=0)
        d_int = intrinsic_dimension(list(grid), stats["mean"].fillna(-np.inf).tolist(), baseline, fraction)
        where = _censoring(d_int, grid)
        if where == "interior":
            shown = f"d_int{pct} = {d_int:g}"
        else:  # censored: the true value lies beyond the grid
            shown = f"d_int{pct} > {max(grid):g}" if d_int is None else f"d_int{pct} <= {d_int:g}"
        seed_rows = []
        for seed, runs_of_seed in part.groupby("seed"):
            own = float(base_by_seed.get(seed, math.nan))  # this seed's full model
            curve = runs_of_seed.sort_values(dim)
            d = intrinsic_dimension(curve[dim].tolist(), curve["value"].fillna(-np.inf).tolist(), own, fraction) if math.isfinite(own) else None
            seed_rows.append({hue: g, "seed": seed, "baseline": own, "threshold": fraction * own,
                              "d_int": math.nan if d is None else d, "censoring": _censoring(d, grid) if math.isfinite(own) else "no baseline",
                              "diverged": int(curve["value"].isna().sum())})
        D = num_params[str(g)] if num_params else None
        for ax, scale in zip(axes, (1.0, D)):
            x = np.asarray(grid, dtype=float) / scale
            ax.plot(x, stats["mean"], "-", color=color, label=f"{hue} {g}" + (f" (D = {D:,})" if D else "") + f": {shown}")
            ax.fill_between(x, stats["min"], stats["max"], color=color, alpha=0.2, lw=0)
            ax.plot(x, stats["mean"], "o", color=color, ms=4)
            bad = diverged.to_numpy() > 0
            if bad.any():
                ax.plot(x[bad], stats["mean"].to_numpy()[bad], "x", color="black", ms=8)
            ax.axhline(baseline, color=color, ls="--", lw=1)
            ax.axhline(fraction * baseline, color=color, ls=":", lw=1)
            at = d_int if d_int is not None else max(grid)
            ax.plot([at / scale], [fraction * baseline], ms=10, color=color, ls="none", markeredgewidth=2,
                    **edge_marker(where != "interior"))
        for row in seed_rows:
            row.update({"num_params": D, "d_int_mean_curve": math.nan if d_int is None else d_int, "censoring_mean_curve": where,
                        "seeds": int(stats["count"].max()), "d_min": min(grid), "d_max": max(grid)})
        rows += seed_rows
    summary = pd.DataFrame(rows)
    summary["censored"] = summary["censoring"] != "interior"
    summary["d_int_fraction_of_params"] = summary["d_int"] / summary["num_params"].astype(float)
    first = summary[summary[hue] == groups[0]].set_index("seed")["d_int"]
    summary["d_int_ratio"] = summary["d_int"] / summary["seed"].map(first)  # to the first hue's, same seed
    seeds = int(summary["seed"].nunique())
    axes[0].set(xscale="log", xlabel="subspace dimension d", ylabel=f"{split} {metric}")
    axes[0].set_title(f"{split} {metric} in a random d-dim subspace\n(mean of n = {seeds} seeds, band: min-max)", fontsize=9)
    if panels == 2:
        axes[1].set(xscale="log", xlabel="d / D (fraction of the model's parameters)")
        axes[1].set_title("the same against d / D", fontsize=9)
    # chance as a line only when some run gets near it; else the axes would
    # squash the curves, and the y label says where it is
    near_chance = chance is not None and float(table["value"].min(skipna=True)) < chance + 0.2
    for ax in axes:
        if near_chance:
            ax.axhline(chance, color="gray", lw=1, ls="-.")
        plain_log_ticks(ax, "x")
        ax.grid(alpha=0.3)
    if chance is not None and not near_chance:
        axes[0].set_ylabel(f"{split} {metric} (chance: {chance:g})")
    axes[0].set_xticks(grid, [f"{d:g}" for d in grid])
    handles, labels = axes[0].get_legend_handles_labels()
    from matplotlib.lines import Line2D

    handles += [Line2D([], [], color="gray", ls="--"), Line2D([], [], color="gray", ls=":"),
                Line2D([], [], color="gray", marker="o", ms=9, ls="none", markeredgewidth=2),
                Line2D([], [], color="gray", marker="o", ms=9, ls="none", markeredgewidth=2, markerfacecolor="none")]
    labels += ["full model", f"{pct}% of it", f"d_int{pct}", f"d_int{pct} censored by the d grid"]
    if near_chance:
        handles.append(Line2D([], [], color="gray", ls="-.", lw=1))
        labels.append("chance")
    if summary["diverged"].any():
        handles.append(Line2D([], [], color="black", marker="x", ls="none"))
        labels.append("some seeds diverged (left out)")
    axes[-1].legend(handles, labels, fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig, table, summary
