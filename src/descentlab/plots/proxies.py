"""Small-scale proxies for Transformer instabilities (Wortsman et al., arXiv 2309.14322):
final loss vs learning rate per width and setting, the LR sensitivity of each
setting, and the attention-logit and log-partition growth at high learning rates."""

from __future__ import annotations

import math

import numpy as np

from . import FIGURES
from .style import color_for, edge_marker


def lr_sensitivity(final_losses, initial_loss: float) -> tuple[float, float]:
    """The paper's LR sensitivity (Section 2.2) over one lr grid: the mean of
    min(final loss, initial loss) minus the best final loss. A diverged run (NaN
    or inf) counts as the initial loss, as the min with it caps every bad run.
    Returns (sensitivity, best loss); (NaN, NaN) if every run diverged."""
    losses = np.asarray(final_losses, dtype=float)
    if not len(losses):
        raise ValueError("lr_sensitivity: no runs")
    capped = np.where(np.isfinite(losses), np.minimum(losses, initial_loss), initial_loss)
    finite = losses[np.isfinite(losses)]
    if not len(finite):
        return math.nan, math.nan
    best = float(finite.min())
    return float(capped.mean() - best), best


def decade_ticks(ax) -> None:
    """A log y axis spanning many decades: ticks at powers of ten, written 10^k."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.yaxis.set_major_locator(LogLocator(base=10, numticks=10))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos=None: f"$10^{{{math.log10(v):.0f}}}$"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _final(metrics, split: str, metric: str):
    """run_id -> the run's last (split, metric) value."""
    part = metrics[(metrics["split"] == split) & (metrics["metric"] == metric)]
    return part.sort_values("step").groupby("run_id")["value"].last()


def proxies_summary(per_run, setting_axis: str, width_axis: str, lr_axis: str, baseline: str):
    """One row per (setting, width, seed): LR sensitivity over the lr grid, the best
    loss and lr (and whether that lr is on the grid's edge), the peak attention logit
    and final mean log-partition at the highest lr, and the same numbers of the
    baseline setting at that width and seed (the claims compare the two).
    ``per_run`` has one row per run: its axes, seed, status, ``initial_loss``
    (its loss at step 0), ``final_loss`` (inf if it diverged),
    ``peak_attention_logit`` and ``final_log_partition``."""
    import pandas as pd

    top_lr = per_run[lr_axis].max()
    lrs = sorted(per_run[lr_axis].unique())
    rows = []
    for (setting, width, seed), part in per_run.groupby([setting_axis, width_axis, "seed"]):
        part = part.sort_values(lr_axis)
        initial_loss = float(part["initial_loss"].mean())  # one init per (setting, width, seed)
        sensitivity, best = lr_sensitivity(part["final_loss"], initial_loss)
        finite = part[np.isfinite(part["final_loss"])]
        best_lr = float(finite.loc[finite["final_loss"].idxmin(), lr_axis]) if len(finite) else math.nan
        top = part[part[lr_axis] == top_lr].iloc[0]
        rows.append({
            setting_axis: setting, width_axis: width, "seed": seed,
            "initial_loss": initial_loss, "lr_sensitivity": sensitivity, "best_loss": best, "best_lr": best_lr,
            "best_lr_on_edge": best_lr in (lrs[0], lrs[-1]),
            "diverged_runs": int((part["status"] != "ok").sum()),
            "top_lr": top_lr,
            "peak_attention_logit_top_lr": float(top["peak_attention_logit"]),
            "abs_log_partition_top_lr": abs(float(top["final_log_partition"])),
        })
    summary = pd.DataFrame(rows)
    base = summary[summary[setting_axis] == baseline].set_index([width_axis, "seed"])
    if base.empty:
        raise ValueError(f"stability_proxies: baseline setting {baseline!r} has no runs; settings: "
                         f"{sorted(summary[setting_axis].unique())}")
    for column in ("lr_sensitivity", "peak_attention_logit_top_lr", "abs_log_partition_top_lr"):
        summary[f"baseline_{column}"] = [base.loc[(w, s), column] for w, s in zip(summary[width_axis], summary["seed"])]
    # per setting and seed: does the sensitivity grow with width (Figure 1's trend)?
    grows = {}
    for (setting, seed), part in summary.groupby([setting_axis, "seed"]):
        values = part.sort_values(width_axis)["lr_sensitivity"].to_numpy()
        grows[(setting, seed)] = bool(len(values) > 1 and np.all(np.diff(values) > 0))
    summary["sensitivity_grows_with_width"] = [grows[(a, s)] for a, s in zip(summary[setting_axis], summary["seed"])]
    return summary


@FIGURES.register("stability_proxies")
def lr_sensitivity_figure(
    metrics,
    runs,
    tables=None,
    setting_axis: str = "setting",
    width_axis: str = "width",
    lr_axis: str = "lr",
    baseline: str | None = None,
    split: str = "val",
    title: str | None = None,
):
    """Wortsman et al.'s Figure 1 and Section 3.1 at the study's scale.

    Top row, one panel per width: final ``split`` loss vs lr, one line per
    setting (an x at the initial loss for a diverged run); last panel: LR
    sensitivity vs width. Bottom row, one panel per width: the largest
    attention logit vs step at the highest lr, one line per setting (log
    scale); last panel: the final mean |log Z| of the output at that lr vs width.
    A run's loss at step 0 is the paper's L0 that caps a bad run (the runs must
    evaluate at step 0, which the training loop does).
    The summary (``proxies_summary``) holds the numbers of the claims."""
    import matplotlib.pyplot as plt
    import pandas as pd

    for axis in (setting_axis, width_axis, lr_axis):
        if axis not in runs.columns:
            raise ValueError(f"stability_proxies: {axis!r} is not an axis of the study; axes: {sorted(runs.columns)}")
    if baseline is None:
        raise ValueError("stability_proxies: option baseline (a setting label) is required")
    if not ((metrics["metric"] == "max_attention_logit").any()):
        raise ValueError("stability_proxies: no max_attention_logit metric; add the logit_growth instrument to the runs")
    runs = runs.copy()
    runs[lr_axis] = pd.to_numeric(runs[lr_axis])
    runs[width_axis] = pd.to_numeric(runs[width_axis])
    growth = metrics[(metrics["split"] == "train") & metrics["metric"].isin(["max_attention_logit", "mean_log_partition"])]
    per_run = runs.set_index("run_id")
    losses = metrics[(metrics["split"] == split) & (metrics["metric"] == "loss")]
    per_run["initial_loss"] = losses[losses["step"] == 0].set_index("run_id")["value"].reindex(per_run.index)
    if per_run["initial_loss"].isna().any():
        raise ValueError(f"stability_proxies: runs without a {split} loss at step 0: "
                         f"{sorted(per_run.index[per_run['initial_loss'].isna()])[:3]}")
    per_run["final_loss"] = _final(metrics, split, "loss").reindex(per_run.index)
    per_run.loc[per_run["status"] != "ok", "final_loss"] = np.inf  # diverged: capped at the initial loss
    per_run["peak_attention_logit"] = growth[growth["metric"] == "max_attention_logit"].groupby("run_id")["value"].max()
    per_run["final_log_partition"] = _final(growth, "train", "mean_log_partition")
    per_run = per_run.reset_index()
    summary = proxies_summary(per_run, setting_axis, width_axis, lr_axis, baseline)
    initial_loss = float(per_run["initial_loss"].mean())  # the dotted line and the x's

    settings = list(dict.fromkeys(runs[setting_axis]))
    widths = sorted(runs[width_axis].unique())
    lrs = sorted(runs[lr_axis].unique())
    top_lr = lrs[-1]
    seeds = runs["seed"].nunique()
    fig, axes = plt.subplots(2, len(widths) + 1, figsize=(3.3 * (len(widths) + 1), 6.6), squeeze=False)
    for col, width in enumerate(widths):
        ax = axes[0, col]
        for setting in settings:
            part = per_run[(per_run[setting_axis] == setting) & (per_run[width_axis] == width)]
            curve = part.groupby(lr_axis)["final_loss"].mean().sort_index()
            shown = curve.clip(upper=initial_loss).where(np.isfinite(curve), initial_loss)
            ax.plot(shown.index, shown.values, "-o", ms=3, color=color_for(setting), label=setting)
            bad = curve[~np.isfinite(curve)]
            ax.plot(bad.index, [initial_loss] * len(bad), "x", color=color_for(setting), ms=8, mew=2)
            row = summary[(summary[setting_axis] == setting) & (summary[width_axis] == width)].iloc[0]
            if np.isfinite(row["best_lr"]):
                ax.plot(row["best_lr"], row["best_loss"], "*", ms=10, color=color_for(setting),
                        **edge_marker(row["best_lr_on_edge"]))
        ax.axhline(initial_loss, color="0.6", ls=":", lw=1)
        ax.set(xscale="log", xlabel="peak learning rate", title=f"width {width:g}",
               ylabel=f"final {split} loss" if col == 0 else None)
        ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs], rotation=45)  # the grid itself: no crowded 1-2-5 ticks
        ax.minorticks_off()
        ax = axes[1, col]
        top_runs = runs[(runs[width_axis] == width) & (runs[lr_axis] == top_lr)]
        for setting in settings:
            ids = top_runs[top_runs[setting_axis] == setting]["run_id"]
            part = growth[(growth["metric"] == "max_attention_logit") & growth["run_id"].isin(ids)]
            curve = part.groupby("step")["value"].mean()
            ax.plot(curve.index, curve.values, color=color_for(setting), label=setting)
        ax.set(yscale="log", xlabel="step", title=f"width {width:g}, lr {top_lr:g}",
               ylabel="largest attention logit" if col == 0 else None)
        decade_ticks(ax)
    ax = axes[0, -1]
    for setting in settings:
        part = summary[summary[setting_axis] == setting].groupby(width_axis)["lr_sensitivity"].mean()
        ax.plot(part.index, part.values, "-o", color=color_for(setting), label=setting)
    ax.set(xscale="log", xlabel="width (n_embd)", ylabel="LR sensitivity", title="LR sensitivity vs width")
    ax.set_xticks(widths, [f"{w:g}" for w in widths])
    ax.minorticks_off()
    ax = axes[1, -1]
    for setting in settings:
        part = summary[summary[setting_axis] == setting].groupby(width_axis)["abs_log_partition_top_lr"].mean()
        ax.plot(part.index, part.values, "-o", color=color_for(setting))
    ax.axhline(0, color="0.6", ls=":", lw=1)
    ax.set(xscale="log", xlabel="width (n_embd)", ylabel="final mean |log Z| of the output",
           title=f"Output log-partition at lr {top_lr:g}")
    ax.set_xticks(widths, [f"{w:g}" for w in widths])
    ax.minorticks_off()
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(settings), fontsize=8, bbox_to_anchor=(0.5, 0.955),
               title=f"n = {seeds} seed{'s' if seeds != 1 else ''} per point; x: diverged (drawn at the initial loss, dotted); "
                     "star: best lr (open: on the grid's edge)", title_fontsize=8, frameon=False)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle(title or "Without qk-layernorm, loss rises at high learning rates as attention logits grow")
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    plotted = per_run.drop(columns=[c for c in ("dir", "data") if c in per_run.columns])
    return fig, plotted, summary
