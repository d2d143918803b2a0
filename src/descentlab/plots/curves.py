"""Learning curves: metrics vs step, a mean line with a band over seeds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import FIGURES
from ._tables import label_columns, one_table

if TYPE_CHECKING:  # pandas is imported where it is used, so the registry imports fast
    import pandas as pd

DEFAULT_PANELS = [
    {"split": "train", "metric": "loss", "ylabel": "train loss", "log": True},
    {"split": "test", "metric": "accuracy", "ylabel": "test accuracy", "log": False},
]


def central_and_band(band: str, log: bool) -> dict[str, Any]:
    """seaborn ``estimator``/``errorbar`` for a line over seeds and its band.

    On a log axis the sd band is taken in log space (geometric mean times or
    divided by the geometric sd): a linear mean - sd can be negative, and the
    band then fills the whole lower axis.
    """
    if band == "ci":
        return {"errorbar": ("ci", 95)}
    if not log:
        return {"errorbar": ("sd", 1)}

    def logs(values) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        return np.log(values[np.isfinite(values) & (values > 0)])  # what a log axis can show

    def geometric_mean(values) -> float:
        x = logs(values)
        return float(np.exp(x.mean())) if len(x) else float("nan")

    def geometric_sd_band(values) -> tuple[float, float]:
        x = logs(values)
        if len(x) < 2:
            return float("nan"), float("nan")
        return float(np.exp(x.mean() - x.std(ddof=1))), float(np.exp(x.mean() + x.std(ddof=1)))

    return {"estimator": geometric_mean, "errorbar": geometric_sd_band}


@FIGURES.register("learning_curves")
def learning_curves(
    metrics: pd.DataFrame,
    runs: pd.DataFrame,
    tables: dict[str, pd.DataFrame] | None = None,
    hue: str | None = None,
    panels: list[dict[str, Any]] | None = None,
    band: str = "sd",
    facet: str | None = None,
    table: str | None = None,
    title: str | None = None,
    at_steps: list[int] | None = None,
    best_of: str | list[str] | None = None,
    where: str | None = None,
):
    """One panel per (split, metric), and one row of panels per ``facet`` value;
    one line per ``hue`` value (default: the study's first axis), mean over
    seeds with a ``band`` (``sd`` or ``ci``; on log panels the geometric mean
    with a geometric-sd band). With ``table``, the curves come
    from that analysis table (tidy metrics with label columns, e.g. the reruns
    of an optimizer benchmark) instead of the study's runs. Lines are
    coloured by name (``style.color_for``).

    The summary has one row per run: its labels, status and each panel's final
    value; with ``at_steps``, also each panel's value at the last record at or
    before each step K (``<split> <metric> at step K``), for claims about speed.
    ``best_of`` (an axis, e.g. ``lr``, or a list of axes, with ``table``): the
    curves are the best setting of those axes out of the study's sweep
    (``runs``); the summary gets ``<axis>_on_edge`` per axis (the chosen value
    is the smallest or largest the sweep tried for that ``hue``) and the
    legend says the chosen values.
    ``where``: a pandas query on the runs (e.g. ``role == 'rerun'``, to leave
    out the run that won the tuning on its own seed)."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    from .style import colors_for, plain_log_ticks

    panels = panels or DEFAULT_PANELS
    sweep = runs
    best_axes = [best_of] if isinstance(best_of, str) else list(best_of or ())
    if best_axes and (table is None or not set(best_axes) <= set(sweep.columns)):
        raise ValueError(f"learning_curves: best_of={best_of!r} needs `table` (the reruns of the best) and "
                         f"axes of the study; axes: {label_columns(sweep)}")
    if table is not None:
        source = one_table(tables, table, "learning_curves", required=("run_id", "step", "split", "metric", "value"))
        runs = source.drop(columns=["step", "split", "metric", "value"]).drop_duplicates("run_id")
        metrics = source[["run_id", "step", "split", "metric", "value"]]
    if where is not None:
        try:
            runs = runs.query(where, engine="python")
        except Exception as err:
            raise ValueError(f"learning_curves: where {where!r}: {err}; columns: {list(runs.columns)}") from None
        if runs.empty:
            raise ValueError(f"learning_curves: where {where!r} keeps no run")
        metrics = metrics[metrics["run_id"].isin(runs["run_id"])]
    labels = label_columns(runs)
    hue = hue or (labels[0] if labels else None)
    for axis in (hue, facet):
        if axis is not None and axis not in runs.columns:
            raise ValueError(f"learning_curves: {axis!r} is not an axis of the study; axes: {labels}")
    merged = metrics.merge(runs, on="run_id", how="inner")
    keep = pd.Series(False, index=merged.index)
    for p in panels:
        keep |= (merged["split"] == p["split"]) & (merged["metric"] == p["metric"])
    plotted = merged[keep].reset_index(drop=True)
    if plotted.empty:
        raise ValueError(f"learning_curves: no metrics match the panels {panels}")

    if band not in ("sd", "ci"):
        raise ValueError(f"learning_curves: band must be 'sd' or 'ci', not {band!r}")
    facets = list(dict.fromkeys(plotted[facet])) if facet else [None]
    # constrained layout keeps a legend placed outside the axes inside the figure
    fig, axes = plt.subplots(len(facets), len(panels), figsize=(4.2 * len(panels), 3.4 * len(facets)),
                             squeeze=False, layout="constrained")
    many = hue is not None and plotted[hue].nunique() > 8
    for row, value in zip(axes, facets):
        rows = plotted if value is None else plotted[plotted[facet] == value]
        for ax, p in zip(row, panels):
            data = rows[(rows["split"] == p["split"]) & (rows["metric"] == p["metric"])]
            palette = colors_for(dict.fromkeys(plotted[hue])) if hue is not None else None
            sns.lineplot(data=data, x="step", y="value", hue=hue, ax=ax, legend=ax is axes[0][0], palette=palette,
                         **central_and_band(band, log=bool(p.get("log"))))
            ax.set_ylabel(p.get("ylabel", f"{p['split']} {p['metric']}"))
            if value is not None:
                ax.set_title(str(value))
            if p.get("log"):
                ax.set_yscale("log")
                plain_log_ticks(ax, "y")
            ax.grid(alpha=0.3)
    edges = None
    for axis in best_axes:
        edge = _on_grid_edge(runs, sweep, axis, hue)
        edges = edge if edges is None else edges.merge(edge, on="run_id")
    if edges is not None and hue is not None and axes[0][0].get_legend():
        chosen = {}
        for row in runs.merge(edges, on="run_id").itertuples(index=False):
            setting = []
            for axis in best_axes:
                mark = " (grid edge)" if getattr(row, f"{axis}_on_edge") else ""
                setting.append(f"{axis} {getattr(row, axis)}{mark}")
            chosen.setdefault(str(getattr(row, hue)), set()).add(", ".join(setting))
        for text in axes[0][0].get_legend().get_texts():
            if text.get_text() in chosen:
                text.set_text(f"{text.get_text()}, {'; '.join(sorted(chosen[text.get_text()]))}")
    if not many and axes[0][0].get_legend() and len(panels) > 1:
        # on the last panel (an accuracy, rising: its lower right is free), small, clear of the lines
        legend = axes[0][0].get_legend()
        handles, texts = legend.legend_handles, [t.get_text() for t in legend.get_texts()]
        legend.remove()
        axes[0][-1].legend(handles, texts, title=hue, loc="best", fontsize=7, title_fontsize=7)
    if many and axes[0][0].get_legend():  # many lines: one legend beside the figure
        legend = axes[0][0].get_legend()
        handles, labels = axes[0][0].get_legend_handles_labels()
        legend.remove()
        fig.legend(handles, labels, title=hue, loc="outside right center", fontsize=7)
    diverged = runs[runs["status"] != "ok"]
    if len(diverged):
        fig.text(0.01, 0.01, f"{len(diverged)} run(s) diverged; their curves end where they stopped", fontsize=8)
    if title:
        fig.suptitle(title)

    # Summary: each run's final value of each panel's metric, and its status.
    last = plotted.sort_values("step").groupby(["run_id", "split", "metric"], as_index=False).last()
    last["quantity"] = "final " + last["split"] + " " + last["metric"]
    summary = last.pivot_table(index="run_id", columns="quantity", values="value").reset_index()
    summary = runs.merge(summary, on="run_id", how="left")
    for k in at_steps or ():
        upto = plotted[plotted["step"] <= k].sort_values("step").groupby(["run_id", "split", "metric"], as_index=False).last()
        upto["quantity"] = upto["split"] + " " + upto["metric"] + f" at step {k}"
        summary = summary.merge(upto.pivot_table(index="run_id", columns="quantity", values="value").reset_index(),
                                on="run_id", how="left")
    if edges is not None:
        summary = summary.merge(edges, on="run_id", how="left")
    return fig, plotted, summary


def _on_grid_edge(chosen: pd.DataFrame, sweep: pd.DataFrame, axis: str, hue: str | None) -> pd.DataFrame:
    """Per chosen run: whether its ``axis`` value is the smallest or largest
    the sweep tried (for the same ``hue`` value, when there is one)."""
    import pandas as pd

    rows = []
    for row in chosen.itertuples(index=False):
        tried = sweep if hue is None else sweep[sweep[hue].astype(str) == str(getattr(row, hue))]
        values = sorted(pd.to_numeric(tried[axis]).unique())
        if not values:
            raise ValueError(f"learning_curves: the sweep has no {axis} for {hue}={getattr(row, hue)!r}")
        value = float(getattr(row, axis))
        rows.append({"run_id": row.run_id, f"{axis}_on_edge": value in (values[0], values[-1])})
    return pd.DataFrame(rows)
