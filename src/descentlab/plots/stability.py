"""Edge of stability: sharpness vs step against the 2/lr threshold."""

from __future__ import annotations


from . import FIGURES


@FIGURES.register("edge_of_stability")
def edge_of_stability(
    metrics,
    runs,
    tables=None,
    lr_axis: str = "lr",
    sharpness: str = "sharpness",
    threshold_factor: float = 2.0,
    title: str | None = None,
):
    """Train loss and sharpness vs step, one colour per learning rate, with the
    stability threshold ``threshold_factor / lr`` (2/lr for GD; (2 + 2 beta)/lr
    for heavy-ball momentum) dashed in the same colour (Cohen et al. 2021)."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    if lr_axis not in runs.columns:
        raise ValueError(f"edge_of_stability: {lr_axis!r} is not an axis of the study")
    merged = metrics.merge(runs, on="run_id")
    merged[lr_axis] = pd.to_numeric(merged[lr_axis])
    plotted = merged[((merged["split"] == "train") & (merged["metric"].isin(["loss", sharpness])))].reset_index(drop=True)
    if not (plotted["metric"] == sharpness).any():
        raise ValueError(f"edge_of_stability: no {sharpness!r} metric; add the top_eigenvalue instrument to the runs")
    lrs = sorted(plotted[lr_axis].unique())
    palette = dict(zip(lrs, sns.color_palette("viridis", len(lrs))))
    fig, (ax_loss, ax_sharp) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for lr in lrs:
        part = plotted[plotted[lr_axis] == lr]
        for ax, metric in ((ax_loss, "loss"), (ax_sharp, sharpness)):
            curve = part[part["metric"] == metric].groupby("step", as_index=False)["value"].mean()
            ax.plot(curve["step"], curve["value"], color=palette[lr], label=f"lr = {lr:g}")
        ax_sharp.axhline(threshold_factor / lr, color=palette[lr], ls="--", lw=1)
    ax_loss.set(yscale="log", xlabel="step", ylabel="train loss")
    ax_sharp.set(xlabel="step", ylabel=r"sharpness $\lambda_{max}$ (dashed: %g/lr)" % threshold_factor)
    ax_loss.legend()
    for ax in (ax_loss, ax_sharp):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    sharp = plotted[plotted["metric"] == sharpness]
    late = sharp[sharp["step"] >= sharp["step"].max() * 0.75]  # the last quarter: where EoS hovers
    summary = late.groupby(lr_axis, as_index=False)["value"].agg(["mean", "max"]).rename(columns={"mean": "late_sharpness_mean", "max": "late_sharpness_max"})
    summary["threshold"] = threshold_factor / summary[lr_axis]
    summary["ratio_to_threshold"] = summary["late_sharpness_mean"] / summary["threshold"]
    return fig, plotted, summary
