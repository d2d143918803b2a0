"""Batch size vs curvature (Jastrzebski et al. 2020; McCandlish et al. 2018):
full-batch sharpness along training per batch size and learning rate, and the
largest learning rate that still trains, per batch size."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from . import FIGURES

if TYPE_CHECKING:  # pandas is imported where it is used, so the registry imports fast
    import pandas as pd

OUTCOMES = ("trains", "stuck", "diverged")


def run_outcomes(metrics: pd.DataFrame, runs: pd.DataFrame, max_loss_ratio: float = 0.9) -> pd.DataFrame:
    """Each run's whole-training-set loss at its first and last evaluation
    (``full_loss``: the runs need ``eval_splits: [train]``; a running minibatch
    mean would flatter a run whose first steps blew up) and its outcome:
    "diverged" (the run stopped on a non-finite loss, or ended on one),
    "stuck" (finite, but the final loss is above ``max_loss_ratio`` times the
    initial one: at or above chance), else "trains"."""
    import numpy as np

    if not 0 < max_loss_ratio <= 1:
        raise ValueError(f"max_loss_ratio must be in (0, 1], got {max_loss_ratio!r}")
    loss = metrics[(metrics["split"] == "train") & (metrics["metric"] == "full_loss")].sort_values("step")
    if loss.empty:
        raise ValueError("batch_size_curvature: no full_loss metric; train the runs with eval_splits: [train]")
    table = runs.copy()
    table["first_loss"] = table["run_id"].map(loss.groupby("run_id")["value"].first())
    table["final_loss"] = table["run_id"].map(loss.groupby("run_id")["value"].last())
    table["loss_ratio"] = table["final_loss"] / table["first_loss"]
    finite = np.isfinite(table["final_loss"].astype(float)) & (table["status"] == "ok")
    table["outcome"] = np.where(~finite, "diverged", np.where(table["loss_ratio"] <= max_loss_ratio, "trains", "stuck"))
    return table


def largest_stable_lr(outcomes: pd.DataFrame, lr: str, by: list[str]) -> pd.DataFrame:
    """Per ``by`` cell (include "seed" for one row per seed), the largest
    ``lr`` (numeric) whose runs all train (outcome "trains"), the grid's range,
    and ``on_edge``: True when that lr is the grid's largest (the threshold may
    lie above the grid) or no lr trains (NaN: it lies below)."""
    cells = outcomes.assign(ok=outcomes["outcome"] == "trains").groupby(by + [lr], as_index=False)["ok"].all()
    stable = cells[cells["ok"]].groupby(by, as_index=False)[lr].max().rename(columns={lr: "largest_stable_lr"})
    tried = cells.groupby(by, as_index=False)[lr].agg(["min", "max"]).rename(columns={"min": "lr_min", "max": "lr_max"})
    table = tried.merge(stable, on=by, how="left")
    table["on_edge"] = table["largest_stable_lr"].isna() | (table["largest_stable_lr"] >= table["lr_max"])
    return table


def _growth(stable: pd.DataFrame, optimizer: str, batch_size: str, per: list[str]) -> pd.DataFrame:
    """Per optimizer (and ``per``), how the largest stable lr grows with the
    batch size: ratio to the next smaller batch size's, to the smallest's, and
    (on every row) the ratio of the first step of the batch grid."""
    import numpy as np
    import pandas as pd

    parts = []
    for _, part in stable.sort_values(batch_size).groupby([optimizer] + per, sort=False):
        part = part.copy()
        values = part["largest_stable_lr"].to_numpy(dtype=float)
        part["ratio_to_previous_batch"] = np.concatenate([[np.nan], values[1:] / values[:-1]])
        part["ratio_to_smallest_batch"] = values / values[0]
        part["first_step_growth"] = values[1] / values[0] if len(values) > 1 else np.nan
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else stable.iloc[0:0]


@FIGURES.register("batch_size_curvature")
def batch_size_curvature(
    metrics,
    runs,
    tables=None,
    lr: str = "lr",
    batch_size: str = "batch_size",
    optimizer: str = "optimizer",
    base_lrs: dict[str, float] | None = None,
    sharpness: str = "sharpness",
    sharpness_optimizer: str = "SGD",
    sharpness_lrs: list | None = None,
    late_fraction: float = 0.25,
    max_loss_ratio: float = 0.9,
    title: str | None = None,
):
    """Top row: full-batch sharpness (the ``top_eigenvalue`` instrument's
    ``sharpness``) vs step of ``sharpness_optimizer``, one panel per lr of
    ``sharpness_lrs`` (``lr`` labels), one line per batch size (mean over
    seeds, band min-max), dashed 2/lr. Bottom row: per optimizer, which cells
    of the (batch size, lr) grid train, get stuck or diverge (see
    ``run_outcomes``), and the largest lr that trains in every seed; last
    panel, that lr vs batch size for all optimizers (geometric mean over
    seeds, bars min-max; open marker: on the edge of the lr grid). With
    ``base_lrs`` the ``lr`` labels are multiples of each optimizer's base lr.

    The summary has a ``quantity`` column: "late_sharpness" rows (per
    optimizer, batch size, lr, seed: the mean sharpness over the last
    ``late_fraction`` of training, NaN unless the run trains, and 2/lr) and
    "largest_stable_lr" rows (per optimizer, batch size and seed, with
    ``on_edge`` and the growth ratios of ``_growth``)."""
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    from .style import color_for, edge_marker, plain_log_ticks

    for axis in (lr, batch_size, optimizer):
        if axis not in runs.columns:
            raise ValueError(f"batch_size_curvature: {axis!r} is not an axis of the study")
    table = run_outcomes(metrics, runs, max_loss_ratio)
    table["lr_label"] = table[lr].astype(str)
    table[batch_size] = pd.to_numeric(table[batch_size])
    table[lr] = pd.to_numeric(table[lr])
    if base_lrs:  # the lr axis holds multiples of each optimizer's base lr
        unknown = sorted(set(table[optimizer].astype(str)) - set(base_lrs))
        if unknown:
            raise ValueError(f"batch_size_curvature: base_lrs has no entry for {unknown}")
        table[lr] = table[lr] * table[optimizer].astype(str).map(base_lrs)
    table[lr] = table[lr].map(lambda v: float(f"{v:.10g}"))  # 0.01 * 30 is 0.3, not 0.30000000000000004
    names = list(dict.fromkeys(table[optimizer]))  # the study's order
    seeds = int(table["seed"].nunique())

    # -- sharpness along training -----------------------------------------------------
    sharp = metrics[(metrics["split"] == "train") & (metrics["metric"] == sharpness)].merge(
        table[["run_id", optimizer, batch_size, lr, "lr_label", "seed", "outcome"]], on="run_id")
    sharp = sharp[sharp[optimizer].astype(str) == str(sharpness_optimizer)]
    if sharp.empty:
        raise ValueError(f"batch_size_curvature: no {sharpness!r} metric for {sharpness_optimizer}; "
                         "give its runs the top_eigenvalue instrument")
    shown = [str(v) for v in sharpness_lrs] if sharpness_lrs else sorted(sharp["lr_label"].unique(), key=float)
    missing = sorted(set(shown) - set(sharp["lr_label"]))
    if missing:
        raise ValueError(f"batch_size_curvature: sharpness_lrs {missing} not among the lr labels {sorted(set(sharp['lr_label']))}")
    last_step = sharp.groupby("run_id")["step"].transform("max")
    late = sharp[sharp["step"] >= (1 - late_fraction) * last_step]
    late_rows = late.groupby(["run_id", optimizer, batch_size, lr, "lr_label", "seed", "outcome"], as_index=False)["value"].mean()
    late_rows = late_rows.rename(columns={"value": "late_sharpness"})
    late_rows.loc[late_rows["outcome"] != "trains", "late_sharpness"] = np.nan  # no claim rests on a run that failed
    late_rows["threshold"] = 2.0 / late_rows[lr]
    late_rows["quantity"] = "late_sharpness"

    # -- largest stable lr --------------------------------------------------------------
    per_seed = _growth(largest_stable_lr(table, lr, [optimizer, batch_size, "seed"]), optimizer, batch_size, ["seed"])
    per_seed["quantity"] = "largest_stable_lr"
    all_seeds = largest_stable_lr(table, lr, [optimizer, batch_size])

    batches = sorted(table[batch_size].unique())
    # batch size is an ordered quantity: a sequential palette, small to large
    batch_colors = {b: plt.cm.viridis(0.9 * i / max(len(batches) - 1, 1)) for i, b in enumerate(batches)}
    n_top = len(shown)
    n_bottom = len(names) + 1
    cols = max(n_top, n_bottom)
    fig, axes = plt.subplots(2, cols, figsize=(4.2 * cols, 7.6), squeeze=False)
    for ax in axes[0][n_top:]:
        ax.set_visible(False)
    for ax in axes[1][n_bottom:]:
        ax.set_visible(False)
    for ax, label in zip(axes[0], shown):
        part = sharp[sharp["lr_label"] == label]
        value = float(part[lr].iloc[0])
        for b in batches:
            runs_b = part[part[batch_size] == b]
            if runs_b.empty:
                continue
            color = batch_colors[b]
            curve = runs_b.groupby("step")["value"].agg(["mean", "min", "max"])
            failed = (runs_b.drop_duplicates("run_id")["outcome"] != "trains").sum()
            style = "-" if failed == 0 else ":"
            note = "" if failed == 0 else f" ({failed} run{'s' if failed > 1 else ''} stuck/diverged)"
            ax.plot(curve.index, curve["mean"], style, color=color, label=f"batch {b:g}{note}")
            ax.fill_between(curve.index, curve["min"], curve["max"], color=color, alpha=0.15, lw=0)
        ax.axhline(2.0 / value, color="gray", ls="--", lw=1, label="2 / lr")
        ax.set_xlabel("step")
        ax.set_ylabel("full-batch sharpness (top Hessian eigenvalue)")
        ax.set_title(f"{sharpness_optimizer}, lr = {value:g}: sharpness along training", fontsize=9)
        top = float(part["value"].max())
        if 2.0 / value <= 1.5 * top:
            ax.set_ylim(0, 1.15 * max(top, 2.0 / value))
        else:  # 2/lr far above the curves: keep them readable, say where it is
            ax.set_ylim(0, 1.3 * top)
            ax.text(0.98, 0.97, f"2 / lr = {2.0 / value:g} (above)", transform=ax.transAxes, ha="right", va="top", fontsize=7)
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)

    markers = {"trains": dict(marker="o"), "some": dict(marker="o", markerfacecolor="none"),
               "stuck": dict(marker="s", color="gray", markerfacecolor="none"), "diverged": dict(marker="x", color="red")}
    for ax, name in zip(axes[1], names):
        color = color_for(name)
        part = table[table[optimizer] == name]
        for (b, value), cell in part.groupby([batch_size, lr]):
            counts = cell["outcome"].value_counts()
            if counts.get("diverged", 0):
                kind = "diverged"
            elif counts.get("trains", 0) == len(cell):
                kind = "trains"
            elif counts.get("trains", 0):
                kind = "some"
            else:
                kind = "stuck"
            ax.plot([b], [value], ls="none", ms=7, **{"color": color, **markers[kind]})
        line = all_seeds[all_seeds[optimizer] == name].sort_values(batch_size)
        ax.plot(line[batch_size], line["largest_stable_lr"], "-", color=color, lw=1.5)
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="learning rate")
        ax.set_title(f"{name}: which (batch, lr) cells train", fontsize=9)
        plain_log_ticks(ax)
        ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    key = [Line2D([], [], ls="none", color="black", **markers["trains"]), Line2D([], [], ls="none", color="black", **markers["some"]),
           Line2D([], [], ls="none", **markers["stuck"]), Line2D([], [], ls="none", **markers["diverged"]),
           Line2D([], [], color="black"), Line2D([], [], ls="none", color="black", marker="v", markerfacecolor="none")]

    ax = axes[1][len(names)]
    for name in names:
        part = per_seed[per_seed[optimizer] == name]
        color = color_for(name)
        rows = []
        for b, cell in part.groupby(batch_size):
            values = cell["largest_stable_lr"].to_numpy(dtype=float)
            finite = values[np.isfinite(values)]
            mean = float(np.exp(np.log(finite).mean())) if len(finite) else math.nan
            rows.append((b, mean, finite.min() if len(finite) else math.nan, finite.max() if len(finite) else math.nan,
                         bool(cell["on_edge"].any()), float(cell["lr_min"].min())))
        rows = pd.DataFrame(rows, columns=["b", "mean", "min", "max", "edge", "lr_min"])
        ax.plot(rows["b"], rows["mean"], "-", color=color, label=name)
        ax.vlines(rows["b"], rows["min"], rows["max"], color=color, lw=1)
        for r in rows.itertuples():
            if math.isnan(r.mean):  # no seed trains at any lr: the threshold is below the grid
                ax.plot([r.b], [r.lr_min], ls="none", ms=8, color=color, marker="v", markerfacecolor="none")
            else:
                ax.plot([r.b], [r.mean], ls="none", ms=7, color=color, **edge_marker(r.edge))
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="largest lr that trains")
    ax.set_title(f"largest lr that trains vs batch size\n(geometric mean of n = {seeds} seeds, bars min-max; open: grid edge)", fontsize=9)
    plain_log_ticks(ax)
    ax.add_artist(ax.legend(fontsize=7, loc="upper left"))
    ax.legend(key, [f"trains in all {seeds} seeds", "trains in some seeds", f"stuck (final loss > {max_loss_ratio:g} x initial)",
                    "diverged in some seed", "largest lr training in all seeds", "no lr of the grid trains"],
              fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="grid cells", title_fontsize=7)
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()

    columns = ["quantity", optimizer, batch_size, lr, "seed"]
    summary = pd.concat([late_rows.drop(columns=["run_id", "lr_label"]), per_seed], ignore_index=True)
    summary = summary[columns + [c for c in summary.columns if c not in columns]].sort_values(columns, ignore_index=True)
    return fig, table, summary
