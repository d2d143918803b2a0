"""Hyperparameter grids: a final metric over two sweep axes, one panel per facet."""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING

import numpy as np

from . import FIGURES

if TYPE_CHECKING:  # pandas is imported where it is used, so the registry imports fast
    import pandas as pd


def final_values(metrics: pd.DataFrame, runs: pd.DataFrame, split: str, metric: str) -> pd.DataFrame:
    """Each run's value of (split, metric) at its last recorded step, with its
    labels and status; NaN for a run that diverged before recording it."""
    sel = metrics[(metrics["split"] == split) & (metrics["metric"] == metric)]
    last = sel.sort_values("step").groupby("run_id", as_index=False).last()[["run_id", "step", "value"]]
    out = runs.merge(last, on="run_id", how="left")
    out.loc[out["status"] != "ok", "value"] = np.nan  # a diverged run has no final value
    return out


@FIGURES.register("heatmap")
def heatmap(
    metrics,
    runs,
    tables=None,
    x: str = "lr",
    y: str = "weight_decay",
    facet: str | None = None,
    split: str = "test",
    metric: str = "accuracy",
    as_error: bool = True,
    percent: bool = True,
    title: str | None = None,
    row_best: str | None = None,
    chance: float | None = None,
    log_x: bool = True,
    fit_best: bool = False,
):
    """Mean over seeds of a final metric on the (x, y) grid; with ``as_error``
    the accuracy is shown as an error, 1 - accuracy. Diverged runs show blank
    and are labelled "div" (with their count when some seeds survived).
    One panel per value of ``facet``, sharing the colour scale.

    ``chance``: the metric's value at chance (0.1 accuracy for ten classes);
    cells whose mean lies within 0.05 of it are labelled "chance".

    ``row_best``: a split (e.g. ``val``) on which each row's best x is chosen,
    so that choosing and reporting use different data. The figure marks, per
    row, the best x of the mean over seeds (open on the x grid's edge), and the
    summary becomes one row per (facet, seed) with that seed's best x per row
    (``best <x> at <y>=<value>``), ``best_on_edge`` (a row's best on the edge
    of the x grid, or no finite value), ``edge_bests`` (how many) and
    ``best_<x>_spread``: max - min over rows of log10(best x) with ``log_x``
    (the x grid in decades), else of best x itself.
    ``fit_best`` (with ``row_best``): also each row's best x refined between
    grid points, the vertex of the parabola through the best grid point and
    its two neighbours (in log10 x with ``log_x``), in columns ``fitted best
    <x> at <y>=<value>`` and ``fitted_best_<x>_spread``; a best on the grid's
    edge or next to a diverged cell keeps its grid value (it is flagged).
    Without ``row_best`` the summary is each facet's best cell."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    for axis in (x, y) + ((facet,) if facet else ()):
        if axis not in runs.columns:
            raise ValueError(f"heatmap: {axis!r} is not an axis of the study; axes: {[c for c in runs.columns if c not in ('run_id', 'seed', 'status')]}")
    if fit_best and row_best is None:
        raise ValueError("heatmap: fit_best refines each row's best x, so it needs row_best (the split to choose on)")
    table = final_values(metrics, runs, split, metric)
    if as_error:
        table["value"] = 1.0 - table["value"]
    if percent:
        table["value"] = 100.0 * table["value"]
    quantity = f"{split} {'error' if as_error else metric}{' (%)' if percent else ''}"
    group_cols = ([facet] if facet else []) + [y, x]
    plotted = table.groupby(group_cols, as_index=False, sort=True).agg(
        value=("value", "mean"), std=("value", "std"), seeds=("value", "size"), diverged=("status", lambda s: int((s != "ok").sum()))
    )
    if row_best is not None:  # each row's best x, chosen on another split than the one drawn
        table_choice = final_values(metrics, runs, row_best, metric)
        if as_error:
            table_choice["value"] = 1.0 - table_choice["value"]
        if table_choice["value"].isna().all():
            raise ValueError(f"heatmap: row_best={row_best!r}: no run recorded ({row_best}, {metric})")
        # a cell where any seed diverged cannot be a row's best
        mean_choice = table_choice.groupby(group_cols, as_index=False, sort=True).agg(value=("value", lambda v: float(np.mean(v))))
        choice = row_bests(mean_choice, x, y, [facet] if facet else [], log_x)
    facets = list(dict.fromkeys(table[facet])) if facet else [None]
    vmin, vmax = np.nanmin(plotted["value"]), np.nanmax(plotted["value"])
    fig, axes = plt.subplots(1, len(facets), figsize=(4.6 * len(facets), 3.9), squeeze=False)
    for ax, value in zip(axes[0], facets):
        part = plotted if value is None else plotted[plotted[facet] == value]
        grid = part.pivot(index=y, columns=x, values="value").sort_index(ascending=False)
        sns.heatmap(grid, ax=ax, annot=True, fmt=".1f", cmap="viridis_r", vmin=vmin, vmax=vmax,
                    cbar=ax is axes[0][-1], cbar_kws={"label": quantity}, annot_kws={"fontsize": 7})
        _label_bad_cells(ax, part, grid, x, y, chance, as_error, percent)
        if row_best is not None:
            rows_choice = choice[choice[facet] == value] if facet else choice
            _mark_row_bests(ax, rows_choice, grid, x, y)
            if fit_best:
                _draw_fitted_bests(ax, rows_choice, grid, y, log_x)
        ax.set_title(str(value) if value is not None else "")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        # plain numbers, horizontal: rotated labels such as 1e-05 and 0.0001 run into each other
        ax.set_yticklabels([_tick(v) for v in grid.index], rotation=0)
        ax.set_xticklabels([_tick(v) for v in grid.columns])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if row_best is not None:
        return fig, plotted, per_seed_row_bests(table_choice, x, y, facet, log_x, fit_best)
    best = plotted.sort_values("value").groupby(facet if facet else (lambda _: 0), as_index=False).first() if facet else plotted.nsmallest(1, "value")
    return fig, plotted, best


def _tick(value) -> str:
    """A grid value as a plain tick label (0.0001, 1e-05, 0.3; a label that is not a number as it is)."""
    return f"{value:g}" if isinstance(value, numbers.Real) else str(value)


def _cell_position(grid, x_value, y_value) -> tuple[float, float]:
    """The centre of a (x, y) cell of a seaborn heatmap drawn from ``grid``."""
    return list(grid.columns).index(x_value) + 0.5, list(grid.index).index(y_value) + 0.5


def _label_bad_cells(ax, part, grid, x, y, chance, as_error, percent) -> None:
    """Diverged runs and cells at chance, written into their cells (never blank without a word)."""
    scale = 100.0 if percent else 1.0
    for row in part.itertuples(index=False):
        cx, cy = _cell_position(grid, getattr(row, x), getattr(row, y))
        mean = row.value / scale
        if as_error:
            mean = 1.0 - mean
        if row.diverged and row.diverged == row.seeds:
            ax.text(cx, cy, "div", ha="center", va="center", fontsize=7, color="red")
        elif row.diverged:
            ax.text(cx, cy + 0.35, f"{row.diverged} div", ha="center", va="center", fontsize=5, color="red")
        elif chance is not None and np.isfinite(mean) and abs(mean - chance) <= 0.05:
            ax.text(cx, cy + 0.35, "chance", ha="center", va="center", fontsize=5, color="red")


def row_bests(table: pd.DataFrame, x: str, y: str, keys: list[str], log_x: bool = True) -> pd.DataFrame:
    """Per (keys..., y): the x with the lowest value (NaN values skipped),
    whether it lies on the edge of the x grid (or no x has a value), and
    ``fitted``: the best refined by a parabola (``parabola_vertex``)."""
    import pandas as pd

    grid = sorted(table[x].unique())
    rows = []
    for key, group in table.groupby(keys + [y], sort=True):
        finite = group[np.isfinite(group["value"])]
        best = finite.loc[finite["value"].idxmin(), x] if len(finite) else np.nan
        on_edge = bool(not len(finite) or best in (grid[0], grid[-1]))
        fitted = best
        if not on_edge:
            values = group.set_index(x)["value"]
            i = grid.index(best)
            # a cell missing from the row (or diverged) leaves the grid value
            neighbours = [values.get(grid[i - 1], np.nan), values.get(grid[i + 1], np.nan)]
            if np.isfinite(neighbours).all():
                points = [grid[i - 1], best, grid[i + 1]]
                where = np.log10(points) if log_x else np.asarray(points, dtype=float)
                vertex = parabola_vertex(where, [neighbours[0], values[best], neighbours[1]])
                fitted = 10.0 ** vertex if log_x else vertex
        rows.append(dict(zip(keys + [y], key if isinstance(key, tuple) else (key,)), best=best, on_edge=on_edge,
                         fitted=fitted))
    return pd.DataFrame(rows)


def parabola_vertex(x, y) -> float:
    """The x of the vertex of the parabola through three points whose middle
    one is the lowest (so the vertex lies between its neighbours); x[1]
    itself when the three values are equal (no curvature to locate it)."""
    (x0, x1, x2), (y0, y1, y2) = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if not x0 < x1 < x2 or y1 > min(y0, y2):
        raise ValueError(f"parabola_vertex: needs increasing x and the lowest value in the middle, got x={x}, y={y}")
    # Lagrange form: the derivative of the interpolating parabola set to zero
    num = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
    den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    return x1 if den == 0 else float(x1 - 0.5 * num / den)


def per_seed_row_bests(table: pd.DataFrame, x: str, y: str, facet: str | None, log_x: bool,
                       fit_best: bool = False) -> pd.DataFrame:
    """One row per (facet, seed): each y-row's best x, the edge flags, and the
    spread of the best x (with ``fit_best``, also of the fitted best x)."""
    import pandas as pd

    def spread(values):
        values = values.astype(float)
        values = np.log10(values) if log_x else values
        return float(values.max() - values.min()) if values.notna().all() else np.nan

    keys = ([facet] if facet else []) + ["seed"]
    bests = row_bests(table, x, y, keys, log_x)
    out = []
    for key, group in bests.groupby(keys, sort=True):
        record = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        for row in group.itertuples(index=False):
            record[f"best {x} at {y}={getattr(row, y):g}"] = row.best
        if fit_best:
            for row in group.itertuples(index=False):
                record[f"fitted best {x} at {y}={getattr(row, y):g}"] = row.fitted
        record[f"best_{x}_spread"] = spread(group["best"])
        if fit_best:
            record[f"fitted_best_{x}_spread"] = spread(group["fitted"])
        record["edge_bests"] = int(group["on_edge"].sum())
        record["best_on_edge"] = bool(group["on_edge"].any())
        out.append(record)
    return pd.DataFrame(out)


def _mark_row_bests(ax, choice, grid, x, y) -> None:
    """A white outline around each row's best cell (mean over seeds on the choosing
    split): solid inside the grid, dashed on its edge."""
    from matplotlib.patches import Rectangle

    for row in choice.itertuples(index=False):
        if not np.isfinite(row.best):
            continue
        cx, cy = _cell_position(grid, row.best, getattr(row, y))
        ax.add_patch(Rectangle((cx - 0.47, cy - 0.47), 0.94, 0.94, fill=False, edgecolor="white",
                               linewidth=2.0, linestyle="--" if row.on_edge else "-"))


def _draw_fitted_bests(ax, choice, grid, y, log_x) -> None:
    """A line through each row's fitted best x (mean over seeds), placed between
    the cells' centres as its value lies between their x values (log with ``log_x``)."""
    columns = np.asarray(grid.columns, dtype=float)
    where = np.log10(columns) if log_x else columns
    points = []
    for row in choice.itertuples(index=False):
        if np.isfinite(row.fitted):
            value = np.log10(row.fitted) if log_x else row.fitted
            points.append((float(np.interp(value, where, np.arange(len(where)))) + 0.5,
                           list(grid.index).index(getattr(row, y)) + 0.5))
    if points:
        xs, ys = zip(*sorted(points, key=lambda p: p[1]))
        ax.plot(xs, ys, color="white", linestyle="--", linewidth=1.0, marker="D", markersize=3)
