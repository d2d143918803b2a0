"""Figures of the weight-averaging studies (``swa``, ``averaging-during-training``,
``ema-scaling``).

- ``averager_curves``: a metric vs step (or vs examples seen) for the runs'
  last iterates and their in-training averagers (metrics ``<metric>@<name>``),
  each line a (runs, averager) pair, mean over seeds with a one-sd band.
- ``swa_line``: train loss and test error along the line through the SGD and
  SWA solutions (analysis ``swa_line``).
- ``posthoc_ema_lengths``: loss vs the reconstructed EMA length sigma_rel
  (analysis ``posthoc_ema_lengths``).
- ``ema_scaling``: EMA curves at batch B and kB vs examples seen, with the EMA
  momentum scaled (rho -> rho^k) and not, and the gap between them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from . import FIGURES
from ._tables import label_columns, one_table

if TYPE_CHECKING:  # pandas is imported where it is used, so the registry imports fast
    import pandas as pd


def metric_values(metrics: pd.DataFrame, split: str, metric: str) -> pd.DataFrame:
    """Rows (run_id, step, value) of ``metric`` on ``split``; ``error[@name]`` is
    1 - ``accuracy[@name]`` when the runs record only the accuracy."""
    rows = metrics[(metrics["split"] == split) & (metrics["metric"] == metric)]
    if rows.empty and metric.split("@")[0] == "error":
        source = "accuracy" + metric[len("error"):]
        rows = metrics[(metrics["split"] == split) & (metrics["metric"] == source)].copy()
        rows["value"] = 1.0 - rows["value"]
    return rows[["run_id", "step", "value"]]


def _query(table: pd.DataFrame, where: str | None, what: str) -> pd.DataFrame:
    if not where:
        return table
    try:
        return table.query(where, engine="python")
    except Exception as err:
        raise ValueError(f"{what}: where {where!r}: {err}; columns: {list(table.columns)}") from None


def line_table(metrics: pd.DataFrame, runs: pd.DataFrame, lines: Sequence[dict[str, Any]], split: str,
               metric: str, figure: str) -> pd.DataFrame:
    """One row per (line, run, step): the line's label (``line``), the run's
    labels and ``value``. A line is ``{label, where (a query on the runs),
    averager (None: the last iterate)}``; a line that matches no run or no
    metric is an error (a misspelt averager would otherwise vanish)."""
    import pandas as pd

    if not lines:
        raise ValueError(f"{figure}: give `lines`: [{{label, where, averager}}, ...]")
    frames = []
    for line in lines:
        unknown = sorted(set(line) - {"label", "where", "averager"})
        if unknown or "label" not in line:
            raise ValueError(f"{figure}: a line is {{label, where, averager}}; got {line!r}")
        chosen = _query(runs, line.get("where"), f"{figure}, line {line['label']!r}")
        if chosen.empty:
            raise ValueError(f"{figure}: line {line['label']!r} matches no run (where {line.get('where')!r})")
        name = metric if not line.get("averager") else f"{metric}@{line['averager']}"
        values = metric_values(metrics[metrics["run_id"].isin(chosen["run_id"])], split, name)
        if values.empty:
            have = sorted(metrics.loc[metrics["run_id"].isin(chosen["run_id"]), "metric"].unique())
            raise ValueError(f"{figure}: line {line['label']!r}: the runs record no {split} {name!r}; they record {have}")
        frames.append(values.merge(chosen, on="run_id").assign(line=line["label"]))
    return pd.concat(frames, ignore_index=True)


def at_or_before(table: pd.DataFrame, keys: list[str], step: int) -> pd.DataFrame:
    """Per ``keys`` group, the row of the last step at or before ``step``."""
    upto = table[table["step"] <= step]
    return upto.sort_values("step").groupby(keys, as_index=False).last()


def _mark_diverged(ax, runs: pd.DataFrame, fig) -> None:
    diverged = runs[runs["status"] != "ok"] if "status" in runs else runs.iloc[:0]
    if len(diverged):
        fig.text(0.01, 0.01, f"{len(diverged)} run(s) diverged; their curves end where they stopped", fontsize=8)


@FIGURES.register("averager_curves")
def averager_curves(
    metrics: pd.DataFrame,
    runs: pd.DataFrame,
    tables: dict[str, pd.DataFrame] | None = None,
    lines: list[dict[str, Any]] | None = None,
    panels: list[dict[str, Any]] | None = None,
    at_steps: list[int] | None = None,
    seed_axis: str | None = None,
    title: str | None = None,
    ylim: list[float] | None = None,
):
    """One panel per ``{split, metric, ylabel, log}`` (metric ``error`` is 1 -
    accuracy), one line per entry of ``lines`` (its runs' iterate, or their
    averager ``averager``): mean over seeds, band one sd. ``seed_axis``: an axis
    whose label is the replicate (e.g. the parent's pretraining seed), used as
    ``seed`` in the summary. The summary has one row per (line, run): its
    labels, ``line``, the final value of each panel (``final <split> <metric>``)
    and, for each of ``at_steps``, its value at the last record at or before it
    (``<split> <metric> at step K``)."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    from .style import color_for, plain_log_ticks

    panels = panels or [{"split": "val", "metric": "loss", "ylabel": "val loss"}]
    runs = _with_seed(runs, seed_axis, "averager_curves")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False, layout="constrained")
    plotted, summary = [], None
    labels = [line["label"] for line in lines or []]
    for ax, panel in zip(axes[0], panels):
        quantity = f"{panel['split']} {panel['metric']}"
        table = line_table(metrics, runs, lines or [], panel["split"], panel["metric"], "averager_curves")
        plotted.append(table.assign(quantity=quantity))
        sns.lineplot(data=table, x="step", y="value", hue="line", hue_order=labels, ax=ax, errorbar=("sd", 1),
                     palette={label: color_for(label) for label in labels}, legend=ax is axes[0][-1])
        ax.set_ylabel(panel.get("ylabel", quantity))
        if panel.get("log"):
            ax.set_yscale("log")
            plain_log_ticks(ax, "y")
        if panel.get("ylim"):
            ax.set_ylim(*panel["ylim"])
        for k in at_steps or ():
            ax.axvline(k, color="0.6", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
        keys = ["line", "run_id"]
        last = table.sort_values("step").groupby(keys, as_index=False).last()
        part = last.drop(columns=["step", "value"]).assign(**{f"final {quantity}": last["value"].to_numpy()})
        for k in at_steps or ():
            upto = at_or_before(table, keys, k)[keys + ["value"]].rename(columns={"value": f"{quantity} at step {k}"})
            part = part.merge(upto, on=keys, how="left")
        if summary is None:
            summary = part
        else:  # the labels are the first panel's; later panels add their values
            summary = summary.merge(part[keys + [c for c in part.columns if c.startswith("final ") or " at step " in c]],
                                    on=keys, how="outer")
    legend = axes[0][-1].get_legend()
    if legend is not None:
        legend.set_title(None)
        for text in legend.get_texts():
            text.set_fontsize(7)
    _mark_diverged(axes[0][0], runs, fig)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig, pd.concat(plotted, ignore_index=True), summary


def _with_seed(runs: pd.DataFrame, seed_axis: str | None, figure: str) -> pd.DataFrame:
    """``runs`` with ``seed`` taken from ``seed_axis`` (the replicate), when given."""
    if seed_axis is None:
        return runs
    if seed_axis not in runs.columns:
        raise ValueError(f"{figure}: seed_axis {seed_axis!r} is not an axis of the study; axes: {label_columns(runs)}")
    if "seed" in runs.columns and runs["seed"].nunique() > 1:
        raise ValueError(f"{figure}: seed_axis {seed_axis!r} stands for the seed, but the runs have {runs['seed'].nunique()} seeds")
    return runs.assign(seed=runs[seed_axis])


def outward_rise(alphas: Sequence[float], losses: Sequence[float], at: float, away: float) -> float:
    """The loss at ``at + away`` minus the loss at ``at`` on a sampled line
    (linear interpolation between samples; NaN when ``at + away`` is off the line)."""
    a, loss = np.asarray(alphas, dtype=float), np.asarray(losses, dtype=float)
    order = np.argsort(a)
    a, loss = a[order], loss[order]
    target = at + away
    if not a[0] - 1e-12 <= target <= a[-1] + 1e-12 or not a[0] - 1e-12 <= at <= a[-1] + 1e-12:
        return float("nan")
    return float(np.interp(target, a, loss) - np.interp(at, a, loss))


def swa_line_summary(line: pd.DataFrame, labels: list[str], step_out: float) -> pd.DataFrame:
    """Per run and solution (``SWA`` at alpha 0, ``SGD`` at alpha 1): its train
    loss and test error, and ``outward_rise``: the train-loss rise over
    ``step_out`` times the SWA-SGD distance, away from the other solution
    (alpha -step_out for SWA, 1 + step_out for SGD). Per run also the line's
    minimum train loss, where it lies (``min_alpha``; ``min_on_edge``: at an end
    of the sampled line, so the true minimum may lie beyond), each solution's
    ``excess_over_min`` and ``sgd_outward_rise`` (the SGD row's outward_rise)."""
    import pandas as pd

    rows = []
    for rid, g in line.groupby("run_id", sort=False):
        train = g[g["split"] == "train"].sort_values("alpha")
        test = g[g["split"] == "test"].sort_values("alpha")
        if train.empty or test.empty:
            raise ValueError(f"swa_line: run {rid} needs the train and test splits on its line")
        i_min = int(np.argmin(train["loss"].to_numpy()))
        line_min, min_alpha = float(train["loss"].iloc[i_min]), float(train["alpha"].iloc[i_min])
        first = g.iloc[0]
        for solution, alpha, away in (("SWA", 0.0, -step_out), ("SGD", 1.0, step_out)):
            train_loss = float(np.interp(alpha, train["alpha"], train["loss"]))
            rows.append({"run_id": rid, **{c: first[c] for c in labels}, "solution": solution,
                         "train_loss": train_loss, "test_error": float(np.interp(alpha, test["alpha"], test["error"])),
                         "outward_rise": outward_rise(train["alpha"], train["loss"], alpha, away),
                         "line_min_train_loss": line_min, "min_alpha": min_alpha,
                         "min_on_edge": i_min in (0, len(train) - 1),
                         "excess_over_min": train_loss - line_min,
                         "sgd_swa_distance": float(first["sgd_swa_distance"])})
        rows[-1]["sgd_outward_rise"] = rows[-2]["sgd_outward_rise"] = rows[-1]["outward_rise"]
    return pd.DataFrame(rows)


@FIGURES.register("swa_line")
def swa_line(
    metrics: pd.DataFrame,
    runs: pd.DataFrame,
    tables: dict[str, pd.DataFrame] | None = None,
    table: str | None = None,
    seed_axis: str | None = None,
    step_out: float = 0.5,
    title: str | None = None,
):
    """Train loss (log) and test error vs distance along the line through the
    SWA (0) and SGD solutions, one thin line per run, the SWA and SGD points
    marked; the summary is ``swa_line_summary`` (with ``seed`` from
    ``seed_axis`` when given)."""
    import matplotlib.pyplot as plt

    from .style import color_for, plain_log_ticks

    line = one_table(tables or {}, table, "swa_line",
                     required=("run_id", "alpha", "distance", "split", "loss", "error", "sgd_swa_distance"))
    line = _with_seed(line, seed_axis, "swa_line")
    labels = [c for c in label_columns(runs) + ["seed"] if c in line.columns]
    summary = swa_line_summary(line, labels, float(step_out))
    fig, axes = plt.subplots(1, 2, figsize=(9.2, 3.6), layout="constrained")
    panels = (("train", "loss", "train loss (cross-entropy)", True), ("test", "error", "test error", False))
    for ax, (split, column, ylabel, log) in zip(axes, panels):
        for k, (rid, g) in enumerate(line[line["split"] == split].groupby("run_id", sort=False)):
            g = g.sort_values("alpha")
            ax.plot(g["distance"], g[column], color="0.35", lw=1.0, alpha=0.8, label="along the line" if k == 0 else None)
            for solution, alpha in (("SWA", 0.0), ("SGD", 1.0)):
                x = alpha * float(g["sgd_swa_distance"].iloc[0])
                y = float(np.interp(alpha, g["alpha"], g[column]))
                ax.plot([x], [y], "o", color=color_for(solution), ms=6, zorder=3, label=solution if k == 0 else None)
        ax.set_xlabel("distance from the SWA solution, towards the SGD solution")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
            plain_log_ticks(ax, "y")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig, line, summary


def interior_optimum(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, bool]:
    """(x at the minimum of y, the minimum, whether it lies strictly inside the grid of x)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    order = np.argsort(x)
    x, y = x[order], y[order]
    i = int(np.nanargmin(y))
    return float(x[i]), float(y[i]), 0 < i < len(x) - 1


@FIGURES.register("posthoc_ema_lengths")
def posthoc_ema_lengths(
    metrics: pd.DataFrame,
    runs: pd.DataFrame,
    tables: dict[str, pd.DataFrame] | None = None,
    table: str | None = None,
    split: str = "val",
    metric: str = "loss",
    where: str | None = None,
    title: str | None = None,
):
    """``split`` ``metric`` of each run's post-hoc EMA vs its length sigma_rel
    (log x), one thin line per run, the mean over runs bold, each run's best
    length marked (open marker: on the edge of the sigma_rel grid). The summary
    has one row per run: ``best_sigma_rel``, ``best_value``, ``best_on_edge``,
    the value at the shortest and longest length, and
    ``gain_over_shortest`` = value at the shortest length - best value."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from .style import color_for, edge_marker, plain_log_ticks

    lengths = one_table(tables or {}, table, "posthoc_ema_lengths", required=("run_id", "sigma_rel", "split", metric))
    lengths = _query(lengths, where, "posthoc_ema_lengths")
    part = lengths[lengths["split"] == split]
    if part.empty:
        raise ValueError(f"posthoc_ema_lengths: no rows on split {split!r}; splits: {sorted(lengths['split'].unique())}")
    labels = [c for c in label_columns(runs) + ["seed"] if c in part.columns]
    fig, ax = plt.subplots(figsize=(5.2, 3.8), layout="constrained")
    rows = []
    color = color_for("post-hoc EMA")
    for rid, g in part.groupby("run_id", sort=False):
        g = g.sort_values("sigma_rel")
        ax.plot(g["sigma_rel"], g[metric], color=color, lw=0.8, alpha=0.5)
        best_x, best_y, interior = interior_optimum(g["sigma_rel"], g[metric])
        ax.plot([best_x], [best_y], color=color, ms=6, ls="none", **edge_marker(not interior))
        rows.append({"run_id": rid, **{c: g[c].iloc[0] for c in labels}, "best_sigma_rel": best_x, "best_value": best_y,
                     "best_on_edge": not interior, "shortest_value": float(g[metric].iloc[0]),
                     "longest_value": float(g[metric].iloc[-1]),
                     "gain_over_shortest": float(g[metric].iloc[0]) - best_y})
    mean = part.groupby("sigma_rel", as_index=False)[metric].mean()
    ax.plot(mean["sigma_rel"], mean[metric], color=color, lw=2.2, label=f"mean over {part['run_id'].nunique()} runs")
    ax.set_xscale("log")
    plain_log_ticks(ax, "x")
    ax.set_xlabel("EMA length sigma_rel (reconstructed after training)")
    ax.set_ylabel(f"{split} {metric}")
    ax.grid(alpha=0.3)
    ax.plot([], [], "o", color=color, label="each run's best length (open: grid edge)")
    ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig, part, pd.DataFrame(rows)


def curve_gap(a: pd.DataFrame, b: pd.DataFrame, x: str = "examples", value: str = "value") -> float:
    """Mean |a - b| over the x values both curves have (NaN when none)."""
    merged = a[[x, value]].merge(b[[x, value]], on=x, suffixes=("_a", "_b"))
    if merged.empty:
        return float("nan")
    return float(np.mean(np.abs(merged[f"{value}_a"] - merged[f"{value}_b"])))


@FIGURES.register("ema_scaling")
def ema_scaling(
    metrics: pd.DataFrame,
    runs: pd.DataFrame,
    tables: dict[str, pd.DataFrame] | None = None,
    batch_axis: str = "batch",
    scaling_axis: str = "ema",
    reference: Any = None,
    averager: str = "ema",
    split: str = "val",
    metric: str = "loss",
    log: bool = True,
    title: str | None = None,
):
    """``split`` ``metric`` of the EMA (``<metric>@<averager>``, solid) and of
    the iterate (dotted) vs examples seen (step x batch size, the batch axis's
    labels being batch sizes), one panel per value of ``scaling_axis``, one
    colour per batch size; mean over seeds. The summary has one row per
    (scaling, seed, larger batch): ``ema_gap`` and ``iterate_gap``, the mean
    absolute difference between that batch's curve and the ``reference``
    batch's (default: the smallest) at the example counts both evaluate."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from .style import plain_log_ticks

    for axis in (batch_axis, scaling_axis):
        if axis not in runs.columns:
            raise ValueError(f"ema_scaling: {axis!r} is not an axis of the study; axes: {label_columns(runs)}")
    batches = sorted({int(b) for b in runs[batch_axis]})
    ref = batches[0] if reference is None else int(reference)
    if ref not in batches:
        raise ValueError(f"ema_scaling: reference batch {ref} is not among the batch axis's labels {batches}")
    frames = []
    for kind, name in (("EMA", f"{metric}@{averager}"), ("iterate", metric)):
        values = metric_values(metrics, split, name)
        if values.empty:
            raise ValueError(f"ema_scaling: the runs record no {split} {name!r}")
        frames.append(values.merge(runs, on="run_id").assign(curve=kind))
    table = pd.concat(frames, ignore_index=True)
    table["batch_size"] = table[batch_axis].astype(int)
    table["examples"] = table["step"] * table["batch_size"]
    scalings = list(dict.fromkeys(runs[scaling_axis]))
    fig, axes = plt.subplots(1, len(scalings), figsize=(4.6 * len(scalings), 3.6), squeeze=False, sharey=True,
                             layout="constrained")
    cmap = plt.get_cmap("viridis")
    colors = {b: cmap(i / max(1, len(batches) - 1) * 0.85) for i, b in enumerate(batches)}
    for ax, scaling in zip(axes[0], scalings):
        part = table[table[scaling_axis] == scaling]
        for b in batches:
            for kind, style in (("EMA", "-"), ("iterate", ":")):
                g = part[(part["batch_size"] == b) & (part["curve"] == kind)].groupby("examples")["value"].mean()
                ax.plot(g.index, g.to_numpy(), ls=style, color=colors[b], lw=1.6 if kind == "EMA" else 1.0,
                        label=f"batch {b}, {kind}")
        ax.set_title(f"EMA momentum {scaling}", fontsize=9)
        ax.set_xlabel("examples seen")
        if log:
            ax.set_yscale("log")
            plain_log_ticks(ax, "y")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{split} {metric}")
    axes[0][-1].legend(fontsize=7)
    _mark_diverged(axes[0][0], runs, fig)
    if title:
        fig.suptitle(title, fontsize=10)
    rows = []
    for (scaling, seed), part in table.groupby([scaling_axis, "seed"], sort=False):
        for b in batches:
            if b == ref:
                continue
            row = {scaling_axis: scaling, "seed": seed, "batch_size": b, "reference_batch": ref}
            for kind in ("EMA", "iterate"):
                mine = part[(part["batch_size"] == b) & (part["curve"] == kind)]
                theirs = part[(part["batch_size"] == ref) & (part["curve"] == kind)]
                row[f"{'ema' if kind == 'EMA' else 'iterate'}_gap"] = curve_gap(mine, theirs)
            rows.append(row)
    return fig, table, pd.DataFrame(rows)
