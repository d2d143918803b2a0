"""Optimizer-benchmark figures: learning-rate sensitivity, tuned learning
curves and performance profiles, drawn as small multiples (one row per
problem, one column per optimizer family given by ``groups``), every
optimizer in its own colour (``style.color_for``) in every figure.

The tuning sweep (seed 0, validation split) is what ``lr_sensitivity``
shows; the tuned figures read the selection's reruns only (``roles``,
default ``rerun``): seeds the selection never saw, reported on the test
split, so nothing is selected and reported on the same data.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from . import FIGURES
from ._tables import one_table
from .curves import central_and_band
from .grids import final_values
from .style import color_for, edge_marker, plain_log_ticks

if TYPE_CHECKING:  # pandas is imported where it is used, so the registry imports fast
    import pandas as pd


def family_panels(names: Sequence[Any], groups: dict[str, Sequence[Any]] | None, figure: str) -> list[tuple[str, list[Any]]]:
    """The columns of a small-multiples figure: (title, members present) per
    group, in the order the groups are given. Every name must be in exactly
    one group (a name left out would silently vanish from the figure)."""
    present = list(dict.fromkeys(names))
    if not groups:
        return [("", present)]
    listed = [str(n) for members in groups.values() for n in members]
    twice = sorted({n for n in listed if listed.count(n) > 1})
    if twice:
        raise ValueError(f"{figure}: {twice} are in more than one of options.groups")
    missing = [n for n in present if str(n) not in listed]
    if missing:
        raise ValueError(f"{figure}: {missing} are in none of options.groups {list(groups)}; add them to a group")
    panels = []
    for title, members in groups.items():
        keep = [n for n in present if str(n) in {str(m) for m in members}]
        keep.sort(key=lambda n: [str(m) for m in members].index(str(n)))
        if keep:
            panels.append((str(title), keep))
    return panels


def best_over_grid(table: pd.DataFrame, x: str, cells: Sequence[str], mode: str = "min") -> pd.DataFrame:
    """Per cell, the grid value of ``x`` with the best finite ``value`` and
    whether it lies on the edge of the grid tried in that cell (its smallest
    or largest value, diverged settings included: a diverged larger value
    brackets the optimum). NaN best for a cell whose every setting diverged."""
    import pandas as pd

    rows = []
    for key, part in table.groupby(list(cells), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        grid = sorted(part[x].unique())
        ok = part[np.isfinite(part["value"].astype(float))]
        row = dict(zip(cells, key), grid_low=grid[0], grid_high=grid[-1])
        if ok.empty:
            rows.append({**row, f"best_{x}": math.nan, "best": math.nan, "on_edge": False, "edge": "all diverged"})
            continue
        best = ok.loc[ok["value"].idxmin() if mode == "min" else ok["value"].idxmax()]
        edge = "single" if len(grid) == 1 else "low" if best[x] == grid[0] else "high" if best[x] == grid[-1] else ""
        rows.append({**row, f"best_{x}": best[x], "best": float(best["value"]), "on_edge": bool(edge), "edge": edge})
    return pd.DataFrame(rows)


def _small_multiples(n_rows: int, n_cols: int, width: float = 3.3, height: float = 2.6):
    import matplotlib.pyplot as plt

    return plt.subplots(n_rows, n_cols, figsize=(width * n_cols, height * n_rows + 0.6), squeeze=False,
                        layout="constrained")


def _legend_below(ax) -> None:
    """A column's legend under its bottom panel, off the curves (the columns
    hold the same optimizers in every row)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2, frameon=False)


def _mark_stuck(ax, xs, color) -> None:
    """Runs that finished without training: an open triangle at the top of the
    panel, at their x (at their value, a loss of 1000 would squash the panel)."""
    if len(xs):
        ax.plot(xs, [0.93] * len(xs), linestyle="none", marker="v", markerfacecolor="none", color=color, markersize=6,
                transform=ax.get_xaxis_transform(), clip_on=False)


def _mark_diverged(ax, xs, color) -> None:
    """Diverged settings: an x at the top of the panel, at their x."""
    if len(xs):
        ax.plot(xs, [0.97] * len(xs), linestyle="none", marker="x", color=color, markersize=6,
                transform=ax.get_xaxis_transform(), clip_on=False)


@FIGURES.register("lr_sensitivity")
def lr_sensitivity(
    metrics,
    runs,
    tables=None,
    x: str = "lr",
    hue: str = "optimizer",
    facet: str = "problem",
    split: str = "val",
    metric: str = "loss",
    log_y: bool = True,
    xlabel: str | None = None,
    title: str | None = None,
    groups: dict[str, list[str]] | None = None,
    tolerance: float = 0.1,
    reference: str | dict[str, str] | None = None,
    stuck_ratio: float | None = None,
):
    """Final (split, metric) of every tuning run vs the learning-rate axis
    (as in the MoMo paper): one row of panels per ``facet`` value, one column
    per group of ``hue`` values (``groups``: title -> members; default one
    panel per row), one line per ``hue`` value in its fixed colour. The best
    setting is circled, open when it lies on the edge of the grid; diverged
    settings are x's at the top of the panel. ``xlabel`` defaults to ``x``.

    ``stuck_ratio`` (a loss metric only; None, the default: off): a run that finished but
    whose final value is at least ``stuck_ratio`` times its first recorded one
    did not train (e.g. a classifier back at chance after a too large step). It
    is drawn as an open triangle at the top of the panel, off the line, and
    like a diverged run it is
    never the best nor counted in ``near_best`` (it still bounds the grid).

    Summary, per (facet, hue): settings, diverged, stuck, the best value and its
    ``best_<x>``, ``on_edge``/``edge`` (low, high), ``near_best`` (settings
    within ``tolerance`` of the best, relative; diverged and stuck ones are
    not), ``log10_range`` (log10 of worst / best finite value, stuck runs
    included: how much the metric
    varies over the grid). With ``reference`` (a ``hue`` value, or a mapping
    hue value -> its reference), each row (each listed row) also has its
    ``reference`` and that one's ``ref_near_best`` and ``ref_log10_range`` in
    the same facet, so a claim can compare the two row by row."""
    import pandas as pd

    mode = "min" if metric == "loss" else "max"
    table = final_values(metrics, runs, split, metric)
    table[x] = pd.to_numeric(table[x])
    table["stuck"] = stuck_runs(metrics, table, split, metric, mode, stuck_ratio)
    facets = list(dict.fromkeys(table[facet]))
    panels = family_panels(table[hue], groups, "lr_sensitivity")
    best = best_over_grid(table.assign(value=table["value"].where(~table["stuck"])), x, [facet, hue], mode)
    fig, axes = _small_multiples(len(facets), len(panels))
    grid = sorted(table[x].unique())
    for r, value in enumerate(facets):
        for c, (group, members) in enumerate(panels):
            ax = axes[r][c]
            drawn = 0  # finite positive values on the line: a log axis needs some
            for name in members:
                part = table[(table[facet] == value) & (table[hue] == name)].sort_values(x)
                if part.empty:
                    continue
                color = color_for(name)
                valid = part[~part["stuck"]]
                drawn += int((np.isfinite(valid["value"].astype(float)) & (valid["value"] > 0)).sum())
                ax.plot(valid[x], valid["value"], color=color, marker=".", linewidth=1.2, label=str(name))
                _mark_stuck(ax, part.loc[part["stuck"], x].to_list(), color)
                _mark_diverged(ax, part.loc[part["status"] != "ok", x].to_list(), color)
                b = best[(best[facet] == value) & (best[hue] == name)].iloc[0]
                if np.isfinite(b["best"]):
                    style = edge_marker(bool(b["on_edge"]))
                    ax.plot([b[f"best_{x}"]], [b["best"]], linestyle="none", markersize=7, color=color,
                            markeredgewidth=1.5, **style)
            ax.set_xscale("log")
            if log_y and drawn:
                ax.set_yscale("log")
            if not drawn:
                ax.text(0.5, 0.5, "no run trained", transform=ax.transAxes, ha="center", va="center", fontsize=8)
            ax.set_xticks(grid, [f"{v:g}" for v in grid])
            ax.xaxis.set_minor_locator(_null_locator())
            plain_log_ticks(ax, "y")
            ax.grid(alpha=0.3)
            ax.set_title(f"{value}" + (f" — {group}" if group else ""), fontsize=9)
            if c == 0:
                ax.set_ylabel(f"final {split} {metric}")
            if r == len(facets) - 1:
                ax.set_xlabel(xlabel or x)
            if r == len(facets) - 1:
                _legend_below(ax)
    if title:
        stuck_note = f"; open triangle at the top: stuck (final {metric} >= {stuck_ratio:g} x initial)" if stuck_ratio is not None else ""
        fig.suptitle(title + f"\n(filled circle: best lr; open circle: best lr on the edge of the grid; x: diverged{stuck_note})",
                     fontsize=10)
    summary = _sensitivity_summary(table, best, x, facet, hue, mode, tolerance, reference)
    return fig, table, summary


def stuck_runs(metrics, table, split, metric, mode, ratio):
    """Per row of ``table`` (``final_values``): whether the run finished (status
    ok) with a final value at least ``ratio`` times its first recorded one."""
    import pandas as pd

    if ratio is None:
        return pd.Series(False, index=table.index)
    if mode != "min" or not 0 < ratio <= 1:
        raise ValueError(f"lr_sensitivity: stuck_ratio needs a loss metric and a value in (0, 1], got {metric!r}, {ratio!r}")
    sel = metrics[(metrics["split"] == split) & (metrics["metric"] == metric)]
    first = table["run_id"].map(sel.sort_values("step").groupby("run_id")["value"].first())
    return (table["status"] == "ok") & (table["value"] >= ratio * first)


def _null_locator():
    from matplotlib.ticker import NullLocator

    return NullLocator()


def _sensitivity_summary(table, best, x, facet, hue, mode, tolerance, reference):
    rows = []
    for (fval, name), part in table.groupby([facet, hue], sort=False):
        values = part["value"].astype(float)
        every = values[np.isfinite(values)]  # stuck runs included: the spread over the grid
        finite = values[np.isfinite(values) & ~part["stuck"]]
        b = (finite.min() if mode == "min" else finite.max()) if len(finite) else math.nan
        if len(finite) and mode == "min":
            near = int((finite <= b * (1 + tolerance) if b >= 0 else finite <= b * (1 - tolerance)).sum())
            spread = float(np.log10(every.max() / b)) if b > 0 else math.nan
        elif len(finite):
            near = int((finite >= b * (1 - tolerance)).sum())
            spread = float(np.log10(b / every.min())) if every.min() > 0 else math.nan
        else:
            near, spread = 0, math.nan
        rows.append({facet: fval, hue: name, "settings": len(part), "diverged": int((part["status"] != "ok").sum()),
                     "stuck": int(part["stuck"].sum()), "near_best": near, "log10_range": spread})
    import pandas as pd

    summary = pd.DataFrame(rows).merge(best, on=[facet, hue], how="left")
    if reference is not None:
        # a name: every row against it; a mapping: each listed row against its own reference
        pairs = reference if isinstance(reference, dict) else {name: reference for name in summary[hue]}
        names = set(map(str, summary[hue].unique()))
        unknown = sorted({str(v) for kv in pairs.items() for v in kv} - names)
        if unknown:
            raise ValueError(f"lr_sensitivity: reference names {unknown} are not values of {hue!r}: {sorted(names)}")
        by_name = summary.set_index([facet, summary[hue].astype(str)])
        refs = [str(pairs[n]) if n in pairs else None for n in summary[hue].astype(str)]
        summary["reference"] = refs
        for col in ("near_best", "log10_range"):
            summary[f"ref_{col}"] = [by_name[col].get((f, r), math.nan) if r is not None else math.nan
                                     for f, r in zip(summary[facet], refs)]
    return summary


def rerun_rows(table: pd.DataFrame, roles: Sequence[str], figure: str) -> pd.DataFrame:
    """The rows of a ``rerun_best`` table whose role is in ``roles``; an error
    if there are none (a figure of the reruns with no reruns is a bug)."""
    if "role" not in table.columns:
        raise ValueError(f"{figure}: the table has no 'role' column (is it a rerun_best table?); columns: {list(table.columns)}")
    rows = table[table["role"].isin(list(roles))]
    if rows.empty:
        raise ValueError(f"{figure}: no rows with role in {list(roles)}; the table has roles {sorted(table['role'].unique())}")
    return rows


@FIGURES.register("tuned_curves")
def tuned_curves(
    metrics,
    runs,
    tables,
    table: str | None = None,
    problem: str = "problem",
    solver: str = "optimizer",
    split: str = "test",
    metric: str = "loss",
    roles: Sequence[str] = ("rerun",),
    groups: dict[str, list[str]] | None = None,
    log_y: bool = True,
    title: str | None = None,
    reference: str | None = None,
    confidence: float = 0.95,
):
    """Learning curves of each solver at its tuned setting, read from a
    ``rerun_best`` table (rows of ``roles``: by default the reruns only, whose
    seeds did not take part in the selection): one row of panels per problem,
    one column per group of solvers, the geometric mean over seeds (log axis)
    with a band from the lowest to the highest seed. A solver whose tuned
    setting lies on the edge of its grid (the table's ``on_edge``) ends in an
    open circle, one with an interior setting in a filled one; a diverged
    seed ends its curve with an x.

    Summary, per (problem, solver): seeds, diverged, the final value's mean,
    sd, min, max over seeds; the tuned setting and ``on_edge`` when the table
    has them; ``rank`` in the problem (diverged last), ``winner`` (rank 1),
    ``wins`` (problems the solver wins), ``worst_rank`` (its worst rank over
    problems) and ``n_problems``; the paired comparisons over seeds of
    ``paired_to`` (``confidence`` t-intervals) with the problem's winner and,
    with ``reference`` (a solver), with that solver."""
    import pandas as pd

    data = rerun_rows(one_table(tables, table, "tuned_curves", required=(problem, solver, "seed", "step", "split", "metric", "value", "status")), roles, "tuned_curves")
    sel = data[(data["split"] == split) & (data["metric"] == metric)]
    if sel.empty:
        raise ValueError(f"tuned_curves: no ({split}, {metric}) rows; the table has {sorted(set(zip(data['split'], data['metric'])))}")
    problems = list(dict.fromkeys(sel[problem]))
    panels = family_panels(sel[solver], groups, "tuned_curves")
    fig, axes = _small_multiples(len(problems), len(panels))
    band = central_and_band("sd", log=log_y)
    for r, prob in enumerate(problems):
        for c, (group, members) in enumerate(panels):
            ax = axes[r][c]
            for name in members:
                part = sel[(sel[problem] == prob) & (sel[solver] == name)]
                if part.empty:
                    continue
                color = color_for(name)
                on_edge = bool(part["on_edge"].iloc[0]) if "on_edge" in part.columns else False
                by_step = part.groupby("step")["value"]
                centre = by_step.agg(band.get("estimator", "mean")) if log_y else by_step.mean()
                ax.plot(centre.index, centre.to_numpy(), color=color, linewidth=1.3, label=str(name))
                ax.plot(centre.index[-1:], centre.to_numpy()[-1:], linestyle="none", color=color, markersize=6,
                        markeredgewidth=1.5, **edge_marker(on_edge))
                ax.fill_between(centre.index, by_step.min().to_numpy(), by_step.max().to_numpy(), color=color, alpha=0.15, linewidth=0)
                for _, seed_part in part.groupby("seed"):
                    if (seed_part["status"] != "ok").any():
                        last = seed_part.sort_values("step").iloc[-1]
                        ax.plot([last["step"]], [last["value"]], marker="x", color=color, markersize=7)
            if log_y:
                ax.set_yscale("log")
                plain_log_ticks(ax, "y")
            ax.grid(alpha=0.3)
            ax.set_title(f"{prob}" + (f" — {group}" if group else ""), fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{split} {metric}")
            if r == len(problems) - 1:
                ax.set_xlabel("step")
            if r == len(problems) - 1:
                _legend_below(ax)
    seeds = sorted(sel["seed"].unique())
    if title:
        fig.suptitle(f"{title}\n(seeds {', '.join(map(str, seeds))}: line = geometric mean, band = lowest to highest seed; "
                     "open circle: tuned lr on the edge of its grid; x: a diverged seed)", fontsize=10)
    summary = tuned_summary(sel, problem, solver, "min" if metric == "loss" else "max", reference, confidence)
    return fig, sel.reset_index(drop=True), summary


def tuned_summary(sel: pd.DataFrame, problem: str, solver: str, mode: str, reference: str | None = None,
                  confidence: float = 0.95) -> pd.DataFrame:
    """Per (problem, solver): final value over seeds, rank, winner, wins, and
    the paired comparisons of ``paired_to``: against the problem's winner
    (``beaten_by_winner``, ``problems_beaten``) and, with ``reference``,
    against that solver (``beats_ref``, ``problems_beating_ref``)."""
    import pandas as pd

    last = sel.sort_values("step").groupby([problem, solver, "seed"], as_index=False, sort=False).last()
    last.loc[last["status"] != "ok", "value"] = np.nan  # a diverged seed has no final value
    keep = [c for c in ("lr", "on_edge", "edge", "selected_from") if c in last.columns]
    rows = []
    for (prob, name), part in last.groupby([problem, solver], sort=False):
        v = part["value"].astype(float)
        row = {problem: prob, solver: name, "seeds": len(part), "diverged": int(v.isna().sum()),
               "mean": float(v.mean()) if v.notna().all() else math.nan, "sd": float(v.std(ddof=1)) if v.notna().sum() > 1 else math.nan,
               "min": float(v.min()), "max": float(v.max())}
        row.update({c: part[c].iloc[0] for c in keep})
        rows.append(row)
    out = pd.DataFrame(rows)
    score = out["mean"] if mode == "min" else -out["mean"]
    out["rank"] = score.fillna(np.inf).groupby(out[problem]).rank(method="min").astype(int)
    out["winner"] = out["rank"] == 1
    out["wins"] = out.groupby(solver)["winner"].transform("sum").astype(int)
    out["worst_rank"] = out.groupby(solver)["rank"].transform("max").astype(int)
    out["n_problems"] = out[problem].nunique()
    return paired_to(out, last, problem, solver, mode, reference, confidence)


def _paired(mine: pd.Series, theirs: pd.Series, sign: float, confidence: float) -> tuple[float, float, float, int]:
    """(mean, low, high, pairs) of ``sign * (theirs - mine)`` over the seeds
    both have a final value for: positive means ``mine`` is better."""
    from ..claims import t_interval

    common = mine.dropna().index.intersection(theirs.dropna().index)
    if len(common) == 0:
        return math.nan, math.nan, math.nan, 0
    diffs = [sign * (float(theirs[k]) - float(mine[k])) for k in common]
    mean, low, high = t_interval(diffs, confidence)
    return mean, low, high, len(common)


def paired_to(out: pd.DataFrame, last: pd.DataFrame, problem: str, solver: str, mode: str,
              reference: str | None, confidence: float) -> pd.DataFrame:
    """Each (problem, solver) of ``out`` compared seed by seed (pairs matched
    on the rerun seed) with the problem's winner and with ``reference``: the
    two-sided ``confidence`` t-interval of the mean paired difference, signed
    so that positive means the other one is better (winner) or this solver is
    better (reference), as in the claims' ``paired`` check. A solver with a
    diverged seed counts as beaten by a winner with none, and never beats the
    reference. Columns: ``gap_to_winner`` [``_low``, ``_high``],
    ``beaten_by_winner`` (interval above 0), ``problems_beaten`` (per solver);
    with ``reference``: ``reference``, ``gain_over_ref`` [``_low``, ``_high``],
    ``beats_ref``, ``problems_beating_ref`` (per solver)."""
    sign = 1.0 if mode == "min" else -1.0
    finals = {key: part.set_index("seed")["value"].astype(float) for key, part in last.groupby([problem, solver], sort=False)}
    if reference is not None and str(reference) not in set(map(str, out[solver])):
        raise ValueError(f"tuned_curves: reference {reference!r} is not a {solver}: {sorted(map(str, out[solver].unique()))}")
    gaps, beaten, gains, beats = [], [], [], []
    for row in out.itertuples(index=False):
        prob, name = getattr(row, problem), getattr(row, solver)
        mine = finals[(prob, name)]
        winner = out[(out[problem] == prob) & out["winner"]][solver].iloc[0]
        theirs = finals[(prob, winner)]
        gap = _paired(theirs, mine, sign, confidence) if winner != name else (0.0, 0.0, 0.0, len(mine))
        gaps.append(gap[:3])
        beaten.append(bool(mine.isna().any() and not theirs.isna().any()) or (np.isfinite(gap[1]) and gap[1] > 0))
        if reference is not None:
            ref = finals[(prob, next(n for n in out[solver] if str(n) == str(reference)))]
            gain = _paired(mine, ref, sign, confidence)
            gains.append(gain[:3])
            beats.append(not mine.isna().any() and (bool(ref.isna().any()) or (np.isfinite(gain[1]) and gain[1] > 0)))
    out = out.copy()
    out["gap_to_winner"], out["gap_to_winner_low"], out["gap_to_winner_high"] = zip(*gaps) if gaps else ([], [], [])
    out["beaten_by_winner"] = beaten
    out["problems_beaten"] = out.groupby(solver)["beaten_by_winner"].transform("sum").astype(int)
    if reference is not None:
        out["reference"] = str(reference)
        out["gain_over_ref"], out["gain_over_ref_low"], out["gain_over_ref_high"] = zip(*gains)
        out["beats_ref"] = beats
        out["problems_beating_ref"] = out.groupby(solver)["beats_ref"].transform("sum").astype(int)
    return out


def steps_to_target(curves: pd.DataFrame, target: float, mode: str) -> float:
    """First step at which a curve (step, value) reaches ``target``; inf if never."""
    reached = curves["value"] <= target if mode == "min" else curves["value"] >= target
    steps = curves.loc[reached, "step"]
    return float(steps.min()) if len(steps) else math.inf


def performance_profile_table(
    table: pd.DataFrame, problem: str, solver: str, split: str, metric: str, mode: str, target_quantile: float,
    per_seed: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Steps-to-target per (problem, solver) and the Dolan-More profile.

    Per problem, the target is the ``target_quantile`` of the solvers' best
    (mean over seeds) values, e.g. 0.5: the value half of the solvers reach.
    A solver's steps-to-target is the median over seeds of the first
    evaluation step at which it reaches the target (inf if a seed never does),
    its ratio the steps divided by the problem's fastest solver's; the profile
    rho(tau) is the fraction of problems with ratio <= tau.

    With ``per_seed``, each (problem, seed) is an instance of its own (the
    problem's target, each seed's own steps, ratios to the fastest solver on
    that seed), so rho(tau) is the fraction of instances: with few problems,
    the profile then takes more than n_problems + 1 values.
    """
    import pandas as pd

    sel = table[(table["split"] == split) & (table["metric"] == metric)]
    mean_curves = sel.groupby([problem, solver, "step"], as_index=False)["value"].mean()
    rows = []
    for prob, part in mean_curves.groupby(problem):
        best = part.groupby(solver)["value"].min() if mode == "min" else part.groupby(solver)["value"].max()
        q = target_quantile if mode == "min" else 1.0 - target_quantile
        target = float(np.nanquantile(best.to_numpy(), q))
        for name, runs_part in sel[sel[problem] == prob].groupby(solver):
            per = {seed: steps_to_target(c.sort_values("step"), target, mode) for seed, c in runs_part.groupby("seed")}
            if per_seed:
                rows += [{problem: prob, "seed": seed, solver: name, "target": target, "steps": s} for seed, s in per.items()]
            else:
                rows.append({problem: prob, solver: name, "target": target, "steps": float(np.median(list(per.values())))})
    steps = pd.DataFrame(rows)
    instance = [problem, "seed"] if per_seed else [problem]
    steps["ratio"] = steps["steps"] / steps.groupby(instance)["steps"].transform("min")
    taus = np.unique(np.concatenate([[1.0], steps["ratio"][np.isfinite(steps["ratio"])].to_numpy()]))
    n_instances = len(steps.drop_duplicates(instance))
    profile = pd.DataFrame(
        [{solver: name, "tau": tau, "rho": float((g["ratio"] <= tau).sum()) / n_instances}
         for name, g in steps.groupby(solver) for tau in taus]
    )
    return steps, profile


@FIGURES.register("performance_profile")
def performance_profile(
    metrics,
    runs,
    tables,
    table: str | None = None,
    problem: str = "problem",
    solver: str = "optimizer",
    split: str = "val",
    metric: str = "loss",
    mode: str = "min",
    target_quantile: float = 0.5,
    title: str | None = None,
    roles: Sequence[str] | None = None,
    per_seed: bool = False,
    groups: dict[str, list[str]] | None = None,
):
    """Dolan-More performance profile of steps-to-target across problems
    (``performance_profile_table``), one panel per group of solvers
    (``groups``), each solver in its fixed colour. ``roles``: read only the
    rows of a ``rerun_best`` table with these roles (e.g. ``[rerun]``).

    Summary, per solver: instances, ``solved`` (fraction of instances where
    it reaches the target), ``rho_at_1`` (fraction where it is the fastest),
    ``rho_at_2``, ``rho_at_4``, and ``median_ratio``."""
    import matplotlib.pyplot as plt
    import pandas as pd

    data = one_table(tables, table, "performance_profile", required=(problem, solver, "seed", "step", "split", "metric", "value"))
    if roles is not None:
        data = rerun_rows(data, roles, "performance_profile")
    steps, profile = performance_profile_table(data, problem, solver, split, metric, mode, target_quantile, per_seed)
    instance = [problem, "seed"] if per_seed else [problem]
    n_instances = len(steps.drop_duplicates(instance))
    panels = family_panels(steps[solver], groups, "performance_profile")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.4), squeeze=False, sharey=True,
                             layout="constrained")
    finite = steps["ratio"][np.isfinite(steps["ratio"])]
    right = max(2.0, float(finite.max()) * 1.5 if len(finite) else 2.0)
    for ax, (group, members) in zip(axes[0], panels):
        for name in members:
            g = profile[profile[solver] == name].sort_values("tau")
            taus = np.append(g["tau"].to_numpy(), right)
            rhos = np.append(g["rho"].to_numpy(), g["rho"].iloc[-1])
            ax.step(taus, rhos, where="post", label=str(name), color=color_for(name), linewidth=1.4)
        ax.set(xscale="log", xlim=(1, right), ylim=(-0.02, 1.02), xlabel=r"$\tau$ (steps / fastest solver's steps)")
        plain_log_ticks(ax, "x")
        ax.set_title(group, fontsize=9)
        ax.grid(alpha=0.3)
        _legend_below(ax)
    axes[0][0].set_ylabel(f"fraction of the {n_instances} {'instances' if per_seed else 'problems'} within " + r"$\tau$")
    if title:
        seeds = sorted(data["seed"].unique())
        target = f"the {target_quantile:g} quantile of the solvers' best mean {split} {metric}"
        fig.suptitle(f"{title}\n({steps[problem].nunique()} problems x seeds {', '.join(map(str, seeds))}; target: {target})"
                     if per_seed else f"{title}\n(target: {target})", fontsize=10)
    rows = []
    for name, g in steps.groupby(solver, sort=False):
        r = g["ratio"].to_numpy(dtype=float)
        rows.append({solver: name, "instances": len(g), "solved": float(np.isfinite(r).mean()),
                     "rho_at_1": float((r <= 1).mean()), "rho_at_2": float((r <= 2).mean()), "rho_at_4": float((r <= 4).mean()),
                     "median_ratio": float(np.median(r))})
    summary = pd.DataFrame(rows)
    summary["n_solvers"] = len(summary)
    return fig, profile, summary
