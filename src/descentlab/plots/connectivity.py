"""Figures of linear mode connectivity (tables of ``analyses.connectivity``):
the barrier between two copies of a parent forked at step k vs k (Frankle et
al. 2020), the same per layer as a heatmap (Adilova et al. 2024), and the
barrier between independent runs before and after weight matching vs width
(Entezari et al. 2022; Ainsworth et al. 2023)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from . import FIGURES
from ._tables import one_table
from .style import color_for

if TYPE_CHECKING:  # pandas is imported where it is used, so the registry imports fast
    import pandas as pd

VALUE_NAMES = {"loss_barrier": "loss barrier", "error_barrier": "error barrier"}


def _panels(panels: Sequence[Sequence[str]], figure: str) -> list[tuple[str, str]]:
    out = []
    for panel in panels:
        if len(panel) != 2 or panel[1] not in VALUE_NAMES:
            raise ValueError(f"{figure}: each panel is [split, loss_barrier | error_barrier], got {panel!r}")
        out.append((str(panel[0]), str(panel[1])))
    if not out:
        raise ValueError(f"{figure}: panels is empty")
    return out


def pair_summary(data: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Per group of ``by``: n_pairs (finished), n_failed, and the mean and sd over
    the finished pairs of loss_barrier and error_barrier, and of the end errors
    (error_end: the mean of error_a and error_b)."""
    import pandas as pd

    rows = []
    for key, g in data.groupby(list(by), sort=True):
        ok = g[g["status"] == "ok"]
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row.update(n_pairs=len(ok), n_failed=int((g["status"] != "ok").sum()))
        for value in ("loss_barrier", "error_barrier"):
            row[f"{value}_mean"] = float(ok[value].mean()) if len(ok) else float("nan")
            row[f"{value}_sd"] = float(ok[value].std(ddof=1)) if len(ok) > 1 else float("nan")
        row["error_end"] = float(((ok["error_a"] + ok["error_b"]) / 2).mean()) if len(ok) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _mark_failed(ax, failed: pd.DataFrame, x: str) -> None:
    if len(failed):
        ax.plot(failed[x], [0.0] * len(failed), "x", color="red", ms=9, mew=2, label="pair with a diverged run")


@FIGURES.register("instability_barriers")
def instability_barriers(
    metrics,
    runs,
    tables,
    table: str | None = None,
    panels: Sequence[Sequence[str]] = (("test", "error_barrier"), ("train", "loss_barrier")),
    stable_below: float | None = 0.02,
    title: str | None = None,
):
    """Barrier of the whole network (layer ``all``) vs the fork step, one panel
    per [split, value]: every pair a small dot, the mean over pairs a line with
    +-1 sd bars; on error panels a dashed line at ``stable_below`` (Frankle et
    al.'s "stable": an error barrier within 2%). Pairs with a diverged run are
    red crosses at 0. Summary: ``pair_summary`` per (fork_step, split)."""
    import matplotlib.pyplot as plt

    data = one_table(tables, table, "instability_barriers", required=("fork_step", "layer", "split", "status"))
    data = data[data["layer"] == "all"]
    chosen = _panels(panels, "instability_barriers")
    steps = sorted(data["fork_step"].unique())
    positive = [s for s in steps if s > 0]
    fig, axes = plt.subplots(1, len(chosen), figsize=(5.2 * len(chosen), 4.0), squeeze=False)
    for ax, (split, value) in zip(axes[0], chosen):
        part = data[data["split"] == split]
        if part.empty:
            raise ValueError(f"instability_barriers: no rows for split {split!r}; the table has {sorted(data['split'].unique())}")
        ok = part[part["status"] == "ok"]
        summary = pair_summary(part, ["fork_step"])
        color = color_for(VALUE_NAMES[value])
        ax.plot(ok["fork_step"], ok[value], ".", color="0.55", ms=5, label="one pair")
        ax.errorbar(summary["fork_step"], summary[f"{value}_mean"], yerr=summary[f"{value}_sd"], color=color,
                    marker="o", capsize=3, label=f"mean over pairs (n = {int(summary['n_pairs'].max())}), bars: sd")
        _mark_failed(ax, part[part["status"] != "ok"], "fork_step")
        if value == "error_barrier" and stable_below is not None:
            ax.axhline(stable_below, ls="--", color="0.3", lw=1, label=f"stable: barrier < {stable_below:g}")
        ax.axhline(0.0, color="0.8", lw=0.8)
        if positive:
            ax.set_xscale("symlog", linthresh=min(positive), linscale=0.5)
        ax.set_xticks(steps)
        ax.set_xticklabels([f"{s:g}" for s in steps])
        ax.margins(x=0.06)  # keep the points at both ends of the grid inside the frame
        ax.set_xlabel("parent step k at which the two runs were forked")
        ax.set_ylabel(f"{split} {VALUE_NAMES[value]}")
        ax.set_title(f"{split} {VALUE_NAMES[value]} between the two children", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(title or "Instability: barrier between two copies of a parent trained on with different data orders")
    fig.tight_layout()
    return fig, data, pair_summary(data, ["fork_step", "split"])


def layer_summary(data: pd.DataFrame) -> pd.DataFrame:
    """``pair_summary`` per (layer_index, layer, fork_step, split), with the whole network's mean
    barriers at the same fork step and split (full_loss_barrier, full_error_barrier)."""
    summary = pair_summary(data, ["layer_index", "layer", "fork_step", "split"])
    full = summary[summary["layer"] == "all"].set_index(["fork_step", "split"])
    for value in ("loss_barrier", "error_barrier"):
        summary[f"full_{value}"] = [full[f"{value}_mean"].get((k, s), float("nan"))
                                    for k, s in zip(summary["fork_step"], summary["split"])]
    return summary


@FIGURES.register("layerwise_barrier_heatmap")
def layerwise_barrier_heatmap(
    metrics,
    runs,
    tables,
    table: str | None = None,
    panels: Sequence[Sequence[str]] = (("train", "loss_barrier"), ("test", "error_barrier")),
    title: str | None = None,
):
    """Heatmaps (one per [split, value]) of the mean barrier over pairs: rows
    the whole network and each layer moved alone (the others at the first
    child's weights), columns the fork step; each cell annotated. Pairs with a
    diverged run are left out and counted in the panel title. Summary:
    ``layer_summary``."""
    import matplotlib.pyplot as plt
    import numpy as np

    data = one_table(tables, table, "layerwise_barrier_heatmap",
                     required=("fork_step", "layer", "layer_index", "split", "status"))
    chosen = _panels(panels, "layerwise_barrier_heatmap")
    summary = layer_summary(data)
    layers = summary[["layer_index", "layer"]].drop_duplicates().sort_values("layer_index")
    n_layers = int(layers["layer_index"].max())
    names = ["whole network" if i == 0 else (f"layer {i} ({name})" if i < n_layers else f"layer {i}, output ({name})")
             for i, name in zip(layers["layer_index"], layers["layer"])]
    steps = sorted(summary["fork_step"].unique())
    fig, axes = plt.subplots(1, len(chosen), figsize=(1.2 * len(steps) * len(chosen) + 3.5, 0.55 * len(names) + 2.2),
                             squeeze=False)
    for ax, (split, value) in zip(axes[0], chosen):
        part = summary[summary["split"] == split]
        grid = np.full((len(names), len(steps)), np.nan)
        for row in part.itertuples():
            grid[list(layers["layer_index"]).index(row.layer_index), steps.index(row.fork_step)] = getattr(row, f"{value}_mean")
        top = np.nanmax(grid) if np.isfinite(grid).any() else 1.0
        image = ax.imshow(grid, cmap="magma_r", vmin=0.0, vmax=max(top, 1e-9), aspect="auto")
        for i in range(len(names)):
            for j in range(len(steps)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=8,
                            color="white" if grid[i, j] > 0.6 * top else "black")
        ax.set_xticks(range(len(steps)), [f"{s:g}" for s in steps])
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("fork step k")
        failed = int(data[(data["split"] == split) & (data["layer"] == "all")]["status"].ne("ok").sum())
        ax.set_title(f"{split} {VALUE_NAMES[value]} (mean over pairs)" + (f"; {failed} pairs diverged" if failed else ""),
                     fontsize=10)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(title or "Layer-wise barriers: one layer interpolated, the others at the first child's weights")
    fig.tight_layout()
    return fig, data, summary


@FIGURES.register("matching_barriers_vs_width")
def matching_barriers_vs_width(
    metrics,
    runs,
    tables,
    table: str | None = None,
    panels: Sequence[Sequence[str]] = (("train", "loss_barrier"), ("test", "error_barrier")),
    title: str | None = None,
):
    """Barrier between two independently trained runs vs model width, before
    (``none``) and after weight matching, one panel per [split, value]: every
    pair a small dot, the mean over pairs a line with +-1 sd bars (log2 width
    axis). Pairs with a diverged run are red crosses at 0. Summary:
    ``pair_summary`` per (width, alignment, split)."""
    import matplotlib.pyplot as plt

    data = one_table(tables, table, "matching_barriers_vs_width", required=("width", "alignment", "split", "status"))
    chosen = _panels(panels, "matching_barriers_vs_width")
    widths = sorted(data["width"].unique())
    fig, axes = plt.subplots(1, len(chosen), figsize=(5.2 * len(chosen), 4.0), squeeze=False)
    for ax, (split, value) in zip(axes[0], chosen):
        part = data[data["split"] == split]
        if part.empty:
            raise ValueError(f"matching_barriers_vs_width: no rows for split {split!r}")
        for alignment, g in part.groupby("alignment", sort=False):
            name = "no alignment" if alignment == "none" else alignment
            color = color_for(name)
            ok = g[g["status"] == "ok"]
            summary = pair_summary(g, ["width"])
            ax.plot(ok["width"], ok[value], ".", color=color, alpha=0.45, ms=5)
            ax.errorbar(summary["width"], summary[f"{value}_mean"], yerr=summary[f"{value}_sd"], color=color,
                        marker="o", capsize=3, label=f"{name}: mean over pairs (n = {int(summary['n_pairs'].max())}), bars: sd")
        _mark_failed(ax, part[(part["status"] != "ok") & (part["alignment"] == "none")], "width")
        ax.axhline(0.0, color="0.8", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [f"{w:g}" for w in widths])
        ax.minorticks_off()
        ax.set_xlabel("hidden width")
        ax.set_ylabel(f"{split} {VALUE_NAMES[value]}")
        ax.set_title(f"{split} {VALUE_NAMES[value]}, dots: pairs", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(title or "Barrier between independently trained networks, before and after weight matching, vs width")
    fig.tight_layout()
    return fig, data, pair_summary(data, ["width", "alignment", "split"])
