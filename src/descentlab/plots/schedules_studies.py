"""Figures of the learning-rate-schedule studies (``wsd-vs-cosine``, ``decay-to-zero``).

They read ``schedule_finals`` (one row per run: schedule as trained, tokens,
tokens per parameter, final validation loss) and ``schedule_power_laws``
(analyses/schedules_studies.py); the summaries hold the per-seed numbers the
studies' claims check. Diverged runs are drawn as crosses at the top of their
panel and kept in the summaries with their status, never dropped silently.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from . import FIGURES
from ._tables import one_table
from .style import color_for, edge_marker, plain_log_ticks

if TYPE_CHECKING:
    import pandas as pd

COSINE, WSD, CONSTANT, D2Z = "cosine", "WSD", "constant", "D2Z"


def schedule_label(row) -> str:
    """A reader's name for a run's schedule: cosine 10x, D2Z, WSD 1-sqrt, constant."""
    name = row["schedule"]
    if name == "wsd":
        return f"WSD {row['cooldown']}"
    if name == "cosine":
        factor = row["final_factor"]
        return "cosine" if factor == 0 else f"cosine {1 / factor:g}x"
    if name == "linear":
        factor = row["final_factor"]
        return D2Z if factor == 0 else f"linear {1 / factor:g}x"
    return name


def mark_diverged(ax, xs, label: str = "diverged") -> None:
    """Crosses at the top of the panel for runs that diverged (they have no final loss)."""
    xs = list(xs)
    if xs:
        top = ax.get_ylim()[1]
        ax.plot(xs, [top] * len(xs), "x", color="red", clip_on=False, label=label)


@FIGURES.register("wsd_loss_curves")
def wsd_loss_curves(metrics, runs, tables, table: str | None = None, title: str | None = None, metric: str = "loss"):
    """One panel per length: train loss vs step of the cosine run, the 20%
    1-sqrt WSD run of that length and the constant run it branches from
    (means over seeds); below each, the logged learning rates. Summary: the
    final validation loss per (schedule, length, seed) of cosine and WSD-20%."""
    import matplotlib.pyplot as plt
    import pandas as pd

    finals = one_table(tables, table, "wsd_loss_curves", required=["run_id", "schedule", "steps", "final_val_loss"])
    cosine = finals[finals["schedule"] == "cosine"]
    wsd = finals[(finals["schedule"] == "wsd") & (finals["cooldown"] == "1-sqrt") & np.isclose(finals["cooldown_fraction"], 0.2)]
    constant = finals[finals["schedule"] == "constant"]
    lengths = sorted(set(cosine["steps"]) & set(wsd["steps"]))
    if not lengths:
        raise ValueError("wsd_loss_curves: no length has both a cosine run and a WSD run with a 20% 1-sqrt cooldown")
    train = metrics[(metrics["split"] == "train") & metrics["metric"].isin([metric, "lr"])]
    fig, axes = plt.subplots(2, len(lengths), figsize=(3.6 * len(lengths), 5.2), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]}, sharex="col")
    plotted = []
    for k, length in enumerate(lengths):
        ax, lr_ax = axes[0][k], axes[1][k]
        for name, subset in ((CONSTANT, constant), (COSINE, cosine[cosine["steps"] == length]), (WSD, wsd[wsd["steps"] == length])):
            rows = train[train["run_id"].isin(subset["run_id"])]
            if name == CONSTANT:
                rows = rows[rows["step"] <= length]
            for what, target in ((metric, ax), ("lr", lr_ax)):
                curve = rows[rows["metric"] == what].groupby("step", as_index=False)["value"].mean()
                style = "--" if name == CONSTANT else "-"
                target.plot(curve["step"], curve["value"], style, color=color_for(name), label=name if what == metric else None,
                            lw=2.2 if name == WSD else 1.4, marker="." if name == WSD else None)
                plotted.append(curve.assign(length=length, schedule=name, metric=what))
            bad = subset[subset["status"] != "ok"]
            mark_diverged(ax, bad["steps"])
        last = train[(train["metric"] == metric) & train["run_id"].isin(pd.concat([cosine, wsd])["run_id"]) & (train["step"] >= length / 4)]
        finals_here = pd.concat([cosine, wsd, constant])
        lows = last[last["run_id"].isin(finals_here[finals_here["steps"] == length]["run_id"])]["value"]
        if len(lows):
            ax.set_ylim(lows.min() - 0.05, lows.quantile(0.9) + 0.1)
        ax.set_title(f"{length} steps")
        ax.grid(alpha=0.3)
        lr_ax.set_xlabel("step")
        lr_ax.grid(alpha=0.3)
        if k == 0:
            ax.set_ylabel(f"train {metric}")
            lr_ax.set_ylabel("learning rate")
            ax.legend(fontsize=8)
    seeds = finals["seed"].nunique()
    fig.suptitle(f"{title + chr(10) if title else ''}(lines: mean over n = {seeds} seeds)", fontsize=10)
    fig.tight_layout()
    summary = pd.concat([cosine, wsd])[lambda t: t["steps"].isin(lengths)]
    summary = summary[["run_id", "seed", "status", "schedule", "cooldown", "cooldown_fraction", "branch_step", "steps", "tokens", "final_val_loss"]]
    return fig, pd.concat(plotted, ignore_index=True), summary.reset_index(drop=True)


def cooldown_summary(finals: pd.DataFrame, steps: int | None = None) -> pd.DataFrame:
    """Per-seed final losses of the WSD runs of ``steps`` steps (default: the
    length with the most cooldown fractions), with the best
    1-sqrt cooldown fraction (lowest mean over seeds) and whether it lies on
    the edge of the fractions tried (``best_on_edge``)."""
    if steps is None:  # the length with the most cooldown fractions: the sweep's
        counts = finals[finals["schedule"] == "wsd"].groupby("steps")["cooldown_fraction"].nunique()
        steps = int(counts.idxmax()) if len(counts) else -1
    wsd = finals[(finals["schedule"] == "wsd") & (finals["steps"] == steps)].copy()
    if wsd.empty:
        raise ValueError(f"wsd_cooldown_fraction: no WSD runs of {steps} steps; lengths: {sorted(finals['steps'].unique())}")
    sqrt = wsd[wsd["cooldown"] == "1-sqrt"]
    means = sqrt.groupby("cooldown_fraction")["final_val_loss"].mean()
    grid = sorted(means.index)
    # a fraction with a diverged seed has a NaN mean: it cannot be the best
    best = float(means.idxmin()) if means.notna().any() else math.nan
    wsd["best_fraction"] = best
    wsd["best_on_edge"] = bool(len(grid) < 3 or best in (grid[0], grid[-1]))
    columns = ["run_id", "seed", "status", "cooldown", "cooldown_fraction", "branch_step", "steps", "final_val_loss",
               "best_fraction", "best_on_edge"]
    return wsd[columns].sort_values(["cooldown", "cooldown_fraction", "seed"]).reset_index(drop=True)


@FIGURES.register("wsd_cooldown_fraction")
def wsd_cooldown_fraction(metrics, runs, tables, steps: int | None = None, table: str | None = None, title: str | None = None):
    """Final validation loss of the WSD runs of ``steps`` steps vs their cooldown
    fraction (1-sqrt: line; other shapes: points), the cosine run of that
    length as a band; mean over seeds, bars one sd."""
    import matplotlib.pyplot as plt

    finals = one_table(tables, table, "wsd_cooldown_fraction", required=["schedule", "steps", "cooldown", "cooldown_fraction", "final_val_loss"])
    summary = cooldown_summary(finals, steps)
    steps = int(summary["steps"].iloc[0])
    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    cosine = finals[(finals["schedule"] == "cosine") & (finals["steps"] == steps)]["final_val_loss"].dropna()
    if len(cosine):
        mean, sd = cosine.mean(), cosine.std(ddof=1) if len(cosine) > 1 else 0.0
        ax.axhspan(mean - sd, mean + sd, color=color_for(COSINE), alpha=0.2)
        ax.axhline(mean, color=color_for(COSINE), lw=1.2, label=f"cosine to 10%, {steps} steps")
    for shape, group in summary.groupby("cooldown"):
        stats = group.groupby("cooldown_fraction")["final_val_loss"].agg(["mean", "std"]).reset_index()
        name = f"WSD {shape}"
        marker = edge_marker(False) if shape == "1-sqrt" else {"marker": "s", "markeredgecolor": "black"}
        ax.errorbar(stats["cooldown_fraction"], stats["mean"], yerr=stats["std"].fillna(0), color=color_for(name), capsize=3,
                    linestyle="-" if len(stats) > 1 else "none", label=f"{name} cooldown", ms=7, **marker)
        bad = group[group["status"] != "ok"]
        mark_diverged(ax, bad["cooldown_fraction"])
    best = summary["best_fraction"].iloc[0]
    sqrt = summary[(summary["cooldown"] == "1-sqrt") & (summary["cooldown_fraction"] == best)]
    if len(sqrt):
        ax.plot([best], [sqrt["final_val_loss"].mean()], ms=13, color="black", linestyle="none",
                label=f"best 1-sqrt fraction ({best:g}{', edge of grid' if summary['best_on_edge'].iloc[0] else ''})",
                **edge_marker(True))
    ax.set_xscale("log")
    plain_log_ticks(ax, "x")
    ax.set_xticks(sorted(summary["cooldown_fraction"].unique()))  # every fraction tried, labelled
    ax.set_xlabel("cooldown fraction of training (log)")
    ax.set_ylabel("final validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    seeds = summary["seed"].nunique()
    ax.set_title(f"{title + chr(10) if title else ''}(points: mean over n = {seeds} seeds, bars and band: one sd)", fontsize=9)
    fig.tight_layout()
    return fig, summary, summary


@FIGURES.register("wsd_scaling_laws")
def wsd_scaling_laws(metrics, runs, tables, finals: str = "finals", laws: str = "laws", title: str | None = None):
    """Final validation loss vs tokens of every run the fits used (points) and
    the fitted laws (lines). Summary: per length trained, each law's prediction
    and their gap (WSD - cosine, nats), with the fits' constants and convergence."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from ..analyses.schedules_studies import predictions

    data = one_table(tables, finals, "wsd_scaling_laws", required=["tokens", "final_val_loss", "schedule"])
    fits = one_table(tables, laws, "wsd_scaling_laws", required=["fit", "query", "E", "A", "alpha"])
    names = list(fits["fit"])
    if set(names) != {COSINE, WSD}:
        raise ValueError(f"wsd_scaling_laws: needs the fits named {COSINE!r} and {WSD!r}; got {names}")
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    plotted = []
    for _, fit in fits.iterrows():
        points = data.query(fit["query"], engine="python")
        ok = points[points["status"] == "ok"]
        ax.plot(ok["tokens"], ok["final_val_loss"], "o", color=color_for(fit["fit"]), alpha=0.6, ms=5)
        xs = np.geomspace(fit["x_min"], fit["x_max"], 50)
        ax.plot(xs, fit["E"] + fit["A"] * xs ** -fit["alpha"], color=color_for(fit["fit"]),
                label=f"{fit['fit']}: E={fit['E']:.3f}, A={fit['A']:.3g}, alpha={fit['alpha']:.2f}")
        mark_diverged(ax, points[points["status"] != "ok"]["tokens"])
        plotted.append(points.assign(fit=fit["fit"]))
    ax.set_xscale("log")
    plain_log_ticks(ax, "x")
    ax.set_xlabel("tokens trained (log)")
    ax.set_ylabel("final validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    seeds = data["seed"].nunique()
    ax.set_title(f"{title + chr(10) if title else ''}(points: runs, n = {seeds} seeds per length; lines: fitted laws)", fontsize=9)
    fig.tight_layout()
    lengths = sorted(pd.concat(plotted)["tokens"].unique())
    pred = predictions(fits, lengths).pivot(index="x", columns="fit", values="predicted_loss").reset_index()
    summary = pd.DataFrame({"tokens": pred["x"], "predicted_cosine": pred[COSINE], "predicted_wsd": pred[WSD]})
    summary["predicted_gap"] = summary["predicted_wsd"] - summary["predicted_cosine"]
    for _, fit in fits.iterrows():  # the fits' constants and convergence beside the predictions
        for column in ("E", "A", "alpha", "n_points", "grad_norm", "n_at_best", "n_starts", "best_start_index"):
            if column in fit:
                summary[f"{fit['fit']}_{column}"] = fit[column]
    return fig, pd.concat(plotted, ignore_index=True), summary


def d2z_summary(finals: pd.DataFrame, a: str = D2Z, b: str = "cosine 10x") -> pd.DataFrame:
    """Per-seed final losses of the two schedules at each length, with the
    relative gain of ``a`` over ``b`` (percent of ``b``'s loss, positive when
    ``a`` is lower) on both rows of a pair, and which length is the shortest and
    longest (``length_end``)."""
    table = finals.copy()
    table["schedule_label"] = [schedule_label(r) for _, r in table.iterrows()]
    missing = {a, b} - set(table["schedule_label"])
    if missing:
        raise ValueError(f"d2z_vs_tpp: no runs with schedule {sorted(missing)}; schedules: {sorted(table['schedule_label'].unique())}")
    table = table[table["schedule_label"].isin([a, b])]
    wide = table.pivot_table(index=["steps", "seed"], columns="schedule_label", values="final_val_loss", dropna=False)
    gain = (100.0 * (wide[b] - wide[a]) / wide[b]).rename("gain_percent").reset_index()
    table = table.merge(gain, on=["steps", "seed"], how="left")
    lengths = sorted(table["steps"].unique())
    table["length_end"] = ["shortest" if s == lengths[0] else "longest" if s == lengths[-1] else "middle" for s in table["steps"]]
    columns = ["run_id", "seed", "status", "schedule_label", "steps", "tokens", "params", "tpp", "final_val_loss",
               "gain_percent", "length_end"]
    return table[columns].sort_values(["steps", "schedule_label", "seed"]).reset_index(drop=True)


@FIGURES.register("d2z_vs_tpp")
def d2z_vs_tpp(metrics, runs, tables, a: str = D2Z, b: str = "cosine 10x", table: str | None = None, title: str | None = None):
    """Left: final validation loss vs tokens per parameter of the two schedules
    (mean over seeds, bars one sd). Right: the gain of ``a`` over ``b`` (% of
    ``b``'s loss) per seed and its mean, vs tokens per parameter."""
    import matplotlib.pyplot as plt

    finals = one_table(tables, table, "d2z_vs_tpp", required=["schedule", "final_factor", "steps", "tpp", "final_val_loss"])
    summary = d2z_summary(finals, a, b)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.2))
    for name, group in summary.groupby("schedule_label"):
        stats = group.groupby("tpp")["final_val_loss"].agg(["mean", "std"]).reset_index()
        left.errorbar(stats["tpp"], stats["mean"], yerr=stats["std"].fillna(0), color=color_for(name), capsize=3, marker="o", label=name)
        mark_diverged(left, group[group["status"] != "ok"]["tpp"])
    pairs = summary[summary["schedule_label"] == a]
    right.axhline(0.0, color="grey", lw=1)
    right.plot(pairs["tpp"], pairs["gain_percent"], "o", color=color_for(a), alpha=0.5, label="one seed")
    mean = pairs.groupby("tpp")["gain_percent"].mean()
    right.plot(mean.index, mean.values, "-", color=color_for(a), lw=2, label="mean over seeds")
    for ax in (left, right):
        ax.set_xscale("log")
        plain_log_ticks(ax, "x")
        ax.set_xlabel("tokens per parameter (log)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    left.set_ylabel("final validation loss")
    right.set_ylabel(f"gain of {a} over {b} (% of loss)")
    seeds = summary["seed"].nunique()
    fig.suptitle(f"{title + chr(10) if title else ''}(n = {seeds} seeds; bars: one sd)", fontsize=10)
    fig.tight_layout()
    return fig, summary, summary
