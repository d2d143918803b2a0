"""Edge of stability: sharpness vs step against the 2/lr threshold."""

from __future__ import annotations

import numpy as np

from . import FIGURES
from .style import plain_log_ticks


def edge_of_stability_summary(curves, lr_axis: str, sharpness: str, threshold_factor: float,
                              late_fraction: float, onset_fraction: float):
    """One row per learning rate (mean over seeds) from its train loss and
    sharpness curves: what Cohen et al.'s Figure 1 shows.

    - ``initial_ratio``: the first measured sharpness / threshold (below 1:
      sharpness starts under 2/lr and has to rise to it);
    - ``onset_step``: the first step at which sharpness reaches
      ``onset_fraction`` of the threshold (NaN: never);
    - ``ratio_to_threshold``: mean sharpness over the last ``late_fraction``
      of the steps / threshold (about 1 at the edge of stability);
    - ``onset_before_late``: the onset comes before that late window starts;
    - ``loss_ratio_after_onset``: final train loss / train loss at the onset
      (below 1: the loss keeps falling at the edge of stability);
    - ``loss_increases_after_onset``: steps after the onset at which the loss
      went up (non-monotone descent);
    - ``diverged``: a run of this lr diverged (its numbers are not valid)."""
    import pandas as pd

    rows = []
    for lr, part in curves.groupby(lr_axis):
        threshold = threshold_factor / lr
        sharp = part[part["metric"] == sharpness].groupby("step")["value"].mean().sort_index()
        loss = part[part["metric"] == "loss"].groupby("step")["value"].mean().sort_index()
        last = int(max(sharp.index.max(), loss.index.max()))
        late_start = last * (1 - late_fraction)
        late = sharp[sharp.index >= late_start]
        reached = sharp[sharp >= onset_fraction * threshold]
        onset = float(reached.index[0]) if len(reached) else np.nan
        after = loss[loss.index >= onset] if len(reached) else loss.iloc[:0]
        loss_at_onset = float(after.iloc[0]) if len(after) else np.nan
        rows.append({
            lr_axis: lr,
            "threshold": threshold,
            "initial_sharpness": float(sharp.iloc[0]),
            "initial_ratio": float(sharp.iloc[0]) / threshold,
            "max_ratio": float(sharp.max()) / threshold,
            "onset_step": onset,
            "late_start": late_start,
            "onset_before_late": bool(len(reached)) and onset < late_start,
            "late_sharpness_mean": float(late.mean()),
            "late_sharpness_max": float(late.max()),
            "ratio_to_threshold": float(late.mean()) / threshold,
            "loss_at_onset": loss_at_onset,
            "final_loss": float(loss.iloc[-1]),
            "loss_ratio_after_onset": float(loss.iloc[-1]) / loss_at_onset if len(after) else np.nan,
            "loss_increases_after_onset": int((after.diff() > 0).sum()),
            "diverged": bool(part["diverged"].any()),
            "seeds": int(part["run_id"].nunique()),
        })
    return pd.DataFrame(rows)


@FIGURES.register("edge_of_stability")
def edge_of_stability(
    metrics,
    runs,
    tables=None,
    lr_axis: str = "lr",
    sharpness: str = "sharpness",
    threshold_factor: float = 2.0,
    late_fraction: float = 0.25,
    onset_fraction: float = 0.9,
    title: str | None = None,
):
    """Train loss and sharpness vs step, one colour per learning rate, with the
    stability threshold ``threshold_factor / lr`` (2/lr for GD; (2 + 2 beta)/lr
    for heavy-ball momentum) dashed in the same colour (Cohen et al. 2021).
    A diverged run's curves end in an x. The summary (one row per lr,
    ``edge_of_stability_summary``) holds the numbers of the paper's claims."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    if lr_axis not in runs.columns:
        raise ValueError(f"edge_of_stability: {lr_axis!r} is not an axis of the study")
    if not 0 < late_fraction < 1:
        raise ValueError(f"edge_of_stability: late_fraction must be in (0, 1), got {late_fraction}")
    merged = metrics.merge(runs, on="run_id")
    merged[lr_axis] = pd.to_numeric(merged[lr_axis])
    merged["diverged"] = merged["status"] != "ok"
    plotted = merged[((merged["split"] == "train") & (merged["metric"].isin(["loss", sharpness])))].reset_index(drop=True)
    if not (plotted["metric"] == sharpness).any():
        raise ValueError(f"edge_of_stability: no {sharpness!r} metric; add the top_eigenvalue instrument to the runs")
    lrs = sorted(plotted[lr_axis].unique())
    palette = dict(zip(lrs, sns.color_palette("viridis", len(lrs))))
    summary = edge_of_stability_summary(plotted, lr_axis, sharpness, threshold_factor, late_fraction, onset_fraction)
    seeds = int(plotted["run_id"].nunique() / max(len(lrs), 1))
    fig, (ax_loss, ax_sharp) = plt.subplots(1, 2, figsize=(10, 3.8))
    for lr in lrs:
        part = plotted[plotted[lr_axis] == lr]
        row = summary[summary[lr_axis] == lr].iloc[0]
        label = f"lr = {lr:g}" + (" (diverged)" if row["diverged"] else "")
        for ax, metric in ((ax_loss, "loss"), (ax_sharp, sharpness)):
            curve = part[part["metric"] == metric].groupby("step", as_index=False)["value"].mean()
            ax.plot(curve["step"], curve["value"], color=palette[lr], label=label, lw=1.2)
            if row["diverged"] and len(curve):
                ax.plot(curve["step"].iloc[-1], curve["value"].iloc[-1], "x", color=palette[lr], ms=8, mew=2)
        ax_sharp.axhline(threshold_factor / lr, color=palette[lr], ls="--", lw=1)
        if np.isfinite(row["onset_step"]):
            ax_sharp.plot(row["onset_step"], threshold_factor / lr, "v", color=palette[lr], ms=6)
        ax_sharp.axvspan(row["late_start"], plotted["step"].max(), color="0.92", zorder=0)
    ax_loss.set(yscale="log", xlabel="step", ylabel="train loss (full batch)", title="Train loss keeps falling, non-monotonically")
    plain_log_ticks(ax_loss, "y")
    ax_sharp.set(xlabel="step", ylabel=r"sharpness $\lambda_{max}$ of the train loss",
                 title=f"Sharpness rises to {threshold_factor:g}/lr (dashed) and hovers there")
    ax_sharp.text(0.99, 0.02, f"shaded: last {late_fraction:.0%} of steps (late window)\n"
                  f"triangle: sharpness first reaches {onset_fraction:g} x {threshold_factor:g}/lr",
                  transform=ax_sharp.transAxes, ha="right", va="bottom", fontsize=7)
    ax_loss.legend(fontsize=8, title=f"n = {seeds} seed{'s' if seeds != 1 else ''}", title_fontsize=8)
    for ax in (ax_loss, ax_sharp):
        ax.grid(alpha=0.3)
    fig.suptitle(title or "Full-batch gradient descent trains at the edge of stability")
    fig.tight_layout()
    return fig, plotted, summary
