"""Steps and examples to a target loss against the batch size, the fitted tradeoff
and the critical batch against the gradient noise scale (McCandlish et al. 2018)."""

from __future__ import annotations

import numpy as np

from . import FIGURES
from ._tables import one_table
from .style import color_for, edge_marker, plain_log_ticks


@FIGURES.register("critical_batch")
def critical_batch_figure(metrics, runs, tables, table: str | None = None, title: str | None = None):
    """Three panels: steps-to-target vs batch (reporting seeds, their geometric mean, the fit);
    examples vs steps with the hyperbola (S/Smin - 1)(E/Emin - 1) = 1; B_simple against the
    step along the noise-scale runs, with where each reaches the target and Bcrit. Summary: the analysis'
    batch and fit rows."""
    import matplotlib.pyplot as plt
    import pandas as pd

    del runs
    data = one_table(tables, table, "critical_batch", required=["record", "batch_size", "steps_to_target", "B_crit"])
    per_run, batches, fit = (data[data.record == r].dropna(axis=1, how="all") for r in ("run", "batch", "fit"))
    fit = fit.iloc[0]
    reported = per_run.merge(batches[["batch_size", "tuned_lr"]], on="batch_size")
    reported = reported[np.isclose(reported.lr, reported.tuned_lr) & (reported.role == "reporting")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    ax = axes[0]
    ax.scatter(reported.batch_size, reported.steps_to_target, s=14, color=color_for("SGD"), alpha=0.7, label="reporting seeds")
    for _, b in batches.iterrows():
        ax.plot([b.batch_size], [b.steps], color="black", ms=6, **edge_marker(bool(b.lr_on_edge)))
    grid = np.geomspace(batches.batch_size.min() / 1.5, batches.batch_size.max() * 1.5, 100)
    ax.plot(grid, fit.S_min * (1 + fit.B_crit / grid), color="black", lw=1, label=f"fit: Smin {fit.S_min:.0f}, Bcrit {fit.B_crit:.0f}")
    ax.axvline(fit.B_crit, color="black", ls="--", lw=0.8)
    ax.axvspan(fit.B_crit_lower, fit.B_crit_upper, color="grey", alpha=0.15)
    ax.set(xscale="log", yscale="log", xlabel="batch size B", ylabel=f"steps to training loss {fit.target:g}")
    ax.set_title("steps to target (black: geometric mean; open: tuned lr on the grid's edge)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.scatter(reported.steps_to_target, reported.examples_to_target, s=14, color=color_for("SGD"), alpha=0.7)
    ax.plot(batches.steps, batches.examples, "o", color="black", ms=5)
    for _, b in batches.iterrows():
        ax.annotate(f"B={b.batch_size:g}", (b.steps, b.examples), fontsize=7, xytext=(3, 3), textcoords="offset points")
    s = np.geomspace(fit.S_min * 1.01, batches.steps.max() * 1.5, 200)
    ax.plot(s, fit.E_min * (1 + 1 / (s / fit.S_min - 1)), color="black", lw=1, label="(S/Smin - 1)(E/Emin - 1) = 1")
    ax.axvline(fit.S_min, color="grey", ls=":", lw=0.8)
    ax.axhline(fit.E_min, color="grey", ls=":", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="steps S", ylabel="examples E = B S")
    ax.set_title(f"tradeoff: Smin {fit.S_min:.0f}, Emin {fit.E_min:.0f}", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[2]
    noise_runs = per_run[per_run.has_noise_scale & per_run.run_id.isin(reported.run_id)]
    traces = []
    for _, r in noise_runs.iterrows():
        m = metrics[(metrics.run_id == r.run_id) & (metrics.split == "train") & (metrics.metric == "b_simple")].sort_values("step")
        line, = ax.plot(m.step, m.value, color=color_for("SGD"), lw=0.8, alpha=0.6)
        ax.axvline(r.steps_to_target, color=line.get_color(), ls=":", lw=0.8)
        traces.append(m.assign(run_id=r.run_id))
    ax.axhline(fit.B_crit, color="black", ls="--", lw=1, label=f"Bcrit {fit.B_crit:.0f} [{fit.B_crit_lower:.0f}, {fit.B_crit_upper:.0f}]")
    ax.axhspan(fit.B_crit_lower, fit.B_crit_upper, color="grey", alpha=0.15)
    if np.isfinite(fit.B_noise):
        ax.plot(noise_runs.steps_to_target, noise_runs.b_simple_at_target, "s", color="black",
                label=f"B_simple at target (geo. mean {fit.B_noise:.0f})")
    ax.set(yscale="log", xlabel="step", ylabel="noise scale B_simple (1,024 examples)")
    ax.set_title(f"noise scale along the batch-{fit.noise_batch:g} runs at their tuned lr (n = {len(noise_runs)});\n"
                 f"dotted: each run reaches loss {fit.target:g}", fontsize=9)
    ax.legend(fontsize=7)
    for a in axes:
        plain_log_ticks(a)
        a.grid(alpha=0.3, which="both")
    n = reported.seed.nunique()
    fig.suptitle(f"{title + chr(10) if title else ''}SGD on MNIST-1D: steps and examples to a target loss vs batch size, lr tuned per batch "
                 f"on separate seeds, n = {n} reporting seeds; Bcrit/B_simple = {fit.ratio_crit_to_noise:.2f}", fontsize=10)
    fig.tight_layout()
    plotted = pd.concat([reported.assign(panel="steps"), *(t.assign(panel="noise") for t in traces)], ignore_index=True)
    summary = pd.concat([batches, data[data.record == "fit"]], ignore_index=True).dropna(axis=1, how="all")
    return fig, plotted, summary

