"""Batch size vs curvature: minibatch sharpness and the largest stable learning rate."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import FIGURES
from ._tables import one_table

if TYPE_CHECKING:  # pandas is imported where it is used, so the registry imports fast
    import pandas as pd


def largest_stable_lr(metrics: pd.DataFrame, runs: pd.DataFrame, lr: str, by: list[str]) -> pd.DataFrame:
    """Per ``by`` cell, the largest ``lr`` whose runs all finished without
    diverging and ended with a lower whole-training-set loss than they started
    with (``full_loss`` at the first and last evaluation: the runs need
    ``eval_splits: [train]``; a running minibatch mean would flatter a run whose
    first steps blew up)."""
    import pandas as pd

    loss = metrics[(metrics["split"] == "train") & (metrics["metric"] == "full_loss")].sort_values("step")
    if loss.empty:
        raise ValueError("largest_stable_lr: no full_loss metric; train the runs with eval_splits: [train]")
    first = loss.groupby("run_id")["value"].first()
    last = loss.groupby("run_id")["value"].last()
    table = runs.copy()
    table[lr] = pd.to_numeric(table[lr])
    table["stable"] = (table["status"] == "ok") & (table["run_id"].map(last) < table["run_id"].map(first))
    cells = table.groupby(by + [lr], as_index=False)["stable"].all()
    stable = cells[cells["stable"]].groupby(by, as_index=False)[lr].max().rename(columns={lr: "largest_stable_lr"})
    tried = cells.groupby(by, as_index=False)[lr].agg(["min", "max"]).rename(columns={"min": "lr_min", "max": "lr_max"})
    return tried.merge(stable, on=by, how="left")


@FIGURES.register("batch_size_curvature")
def batch_size_curvature(
    metrics,
    runs,
    tables,
    table: str | None = None,
    lr: str = "lr",
    batch_size: str = "batch_size",
    optimizer: str = "optimizer",
    base_lrs: dict[str, float] | None = None,
    title: str | None = None,
):
    """Left: top eigenvalue of the minibatch Hessian vs batch size (mean and
    sd over minibatches; dashed: the full-batch value). Right: the largest
    stable learning rate of the grid vs batch size, per optimizer (with
    ``base_lrs``, the ``lr`` labels are multiples of each optimizer's base lr)."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    sharp = one_table(tables, table, "batch_size_curvature", required=("batch_size", "top_eigenvalue", "full"))
    stable = largest_stable_lr(metrics, runs.assign(**{batch_size: pd.to_numeric(runs[batch_size])}), lr, [optimizer, batch_size])
    if base_lrs:  # the lr axis holds multiples of each optimizer's base lr
        scale = stable[optimizer].map(lambda o: base_lrs[str(o)])
        for column in ("lr_min", "lr_max", "largest_stable_lr"):
            stable[column] = stable[column] * scale
    fig, (ax_s, ax_l) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    mini = sharp[~sharp["full"].astype(bool)]
    sns.lineplot(data=mini, x="batch_size", y="top_eigenvalue", marker="o", errorbar="sd", ax=ax_s)
    full = sharp[sharp["full"].astype(bool)]["top_eigenvalue"]
    if len(full):
        ax_s.axhline(float(full.iloc[0]), ls="--", color="gray", label="full training set")
        ax_s.legend(fontsize=8)
    ax_s.set(xscale="log", yscale="log", xlabel="batch size", ylabel="top eigenvalue of minibatch Hessian")
    for name, part in stable.groupby(optimizer):
        part = part.sort_values(batch_size)
        ax_l.plot(part[batch_size], part["largest_stable_lr"], "o-", label=str(name))
    ax_l.set(xscale="log", yscale="log", xlabel="batch size", ylabel="largest stable learning rate (grid)")
    ax_l.legend(fontsize=8)
    for ax in (ax_s, ax_l):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    summary = mini.groupby("batch_size", as_index=False)["top_eigenvalue"].agg(["mean", "std"])
    summary = summary.rename(columns={"batch_size": batch_size, "mean": "minibatch_top_eigenvalue", "std": "minibatch_top_eigenvalue_sd"})
    return fig, sharp, stable.merge(summary, on=batch_size, how="left")
