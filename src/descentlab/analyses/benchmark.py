"""Optimizer benchmarks in the manner of DeepOBS / AlgoPerf: a declared
learning-rate search per (problem, optimizer), then the best setting rerun
over more seeds (``descentlab.selection`` picks it; the workflow trains the
reruns; this reads them into one table)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..runs import Run
from . import ANALYSES

if TYPE_CHECKING:  # pandas is imported where it is used, so the registry imports fast
    import pandas as pd


@ANALYSES.register("rerun_best")
def rerun_best(runs: list[Run], selected: list[Run], device: str = "cpu", edge_axis: str | None = None) -> pd.DataFrame:
    """The tidy metrics of each cell's selected run and its reruns, with the
    cell's labels, seed, status, role (``selected`` or ``rerun``) and the run
    they were selected from. The selection and the reruns are decided and
    trained in the workflow (study ``selections``, rule ``select_runs``); this
    only reads them. Report test metrics from the reruns: the selected runs (one
    per tuning seed of the chosen setting) won their cell on the validation
    split with their own seeds.

    ``edge_axis`` (e.g. ``lr``): also flag a selected value on the edge of
    the grid its cell tried (``runs``, the sweep): columns ``grid_low``,
    ``grid_high``, ``on_edge`` (bool) and ``edge`` (``low``, ``high``, ``single`` for a
    one-value grid, or empty).
    """
    import pandas as pd

    edges = _grid_edges(runs, selected, edge_axis) if edge_axis is not None else {}
    frames = []
    for run in selected:
        m = run.metrics()
        for key, value in run.labels.items():
            m[key] = value
        m["run_id"], m["status"], m["role"] = run.run_id, run.status, run.role
        for key, value in edges.get(run.run_id, {}).items():
            m[key] = value
        frames.append(m)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _grid_edges(runs: list[Run], selected: list[Run], axis: str) -> dict[str, dict]:
    """Per selected or rerun run id: the grid of ``axis`` in its cell (the sweep
    runs that agree with it on every other label) and where its value lies."""
    sweep = [r for r in runs if r.role == "sweep"]
    if not any(axis in r.labels for r in sweep):
        raise ValueError(f"rerun_best: edge_axis {axis!r} is not an axis of the sweep; axes: {sorted({k for r in sweep for k in r.labels} - {'seed'})}")
    out = {}
    for run in selected:
        if axis not in run.labels:
            raise ValueError(f"rerun_best: run {run.run_id} has no {axis!r} label")
        others = {k: v for k, v in run.labels.items() if k not in (axis, "seed", "selected_from")}
        grid = sorted({float(r.labels[axis]) for r in sweep if all(r.labels.get(k) == v for k, v in others.items())})
        if not grid:
            raise ValueError(f"rerun_best: no sweep run shares the cell {others} of run {run.run_id}")
        value = float(run.labels[axis])
        edge = "single" if len(grid) == 1 else "low" if value == grid[0] else "high" if value == grid[-1] else ""
        out[run.run_id] = {"grid_low": grid[0], "grid_high": grid[-1], "on_edge": bool(edge), "edge": edge}
    return out
