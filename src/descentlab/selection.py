"""Data-dependent runs: pick the best run of each cell of a sweep and plan
its reruns with more seeds.

The workflow runs this in a Snakemake checkpoint (rule ``select_runs``) once
the sweep has trained; what it writes (``selections/<study>/<name>.json``) is
the plan of the reruns: their specs, run ids and training jobs. They then
train through the same training rule as every other run, and analyses (e.g.
``rerun_best``) only read them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from .runs import Run
from .spec import run_id


def final_value(run: Run, split: str, metric: str) -> float:
    """The run's last recorded (split, metric); NaN if it diverged or never recorded it."""
    if run.status != "ok":
        return math.nan
    m = run.metrics()
    sel = m[(m["split"] == split) & (m["metric"] == metric)]
    return float(sel.sort_values("step")["value"].iloc[-1]) if len(sel) else math.nan


def select_best(runs: Sequence[Run], group_by: Sequence[str], split: str, metric: str, mode: str) -> dict[tuple, tuple[Run, float] | None]:
    """Per cell (the values of ``group_by``), the run with the best final value
    and that value; None for a cell whose every setting diverged. Ties go to
    the run listed first."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    best: dict[tuple, tuple[float, Run, float] | None] = {}
    for run in runs:
        missing = [g for g in group_by if g not in run.labels]
        if missing:
            raise ValueError(f"group_by {missing} are not axes of the study; axes: {sorted(run.labels)}")
        cell = tuple(run.labels[g] for g in group_by)
        value = final_value(run, split, metric)
        best.setdefault(cell, None)
        if math.isnan(value):
            continue
        score = value if mode == "min" else -value
        if best[cell] is None or score < best[cell][0]:
            best[cell] = (score, run, value)
    return {cell: (None if entry is None else (entry[1], entry[2])) for cell, entry in best.items()}


def plan_selection(
    runs: Sequence[Run],
    selection: dict[str, Any],
    *,
    study: str,
    results: str | Path,
    trained_elsewhere: dict[str, str],
    group_runs,
) -> dict[str, Any]:
    """The selection's record: per cell, the selected run and its value; the
    selected runs and their reruns as run records; the jobs that train the
    reruns. ``trained_elsewhere`` maps run ids the plan already trains to
    their job (a rerun identical to a declared run is not trained twice);
    ``group_runs(runs, prefix=...)`` cuts the rest into jobs."""
    group_by = list(selection["group_by"])
    chosen = select_best(runs, group_by, selection.get("split", "val"), selection.get("metric", "loss"), selection.get("mode", "min"))
    cells, records, reruns = [], [], []
    for cell, entry in sorted(chosen.items(), key=lambda kv: str(kv[0])):
        labels = dict(zip(group_by, cell))
        if entry is None:
            cells.append({"cell": labels, "selected": None, "value": None})
            continue
        best, value = entry
        cells.append({"cell": labels, "selected": best.run_id, "value": value})
        records.append(Run(best.run_id, best.spec, {**best.labels, "selected_from": best.run_id}, study, "selected", best.dir, best.data))
        for seed in selection["seeds"]:
            spec = dict(best.spec, seed=int(seed))
            rid = run_id(spec)
            labels = {**{k: v for k, v in best.labels.items() if k != "seed"}, "seed": int(seed), "selected_from": best.run_id}
            rerun = Run(rid, spec, labels, study, "rerun", Path(results) / "runs" / rid, best.data)
            records.append(rerun)
            if rid not in trained_elsewhere:
                reruns.append(rerun)
    groups = group_runs(reruns, prefix=f"{study}+{selection['name']}+")
    group_of = dict(trained_elsewhere)
    group_of.update({rid: gid for gid, members in groups.items() for rid in members})
    return {
        "study": study,
        "selection": selection,
        "cells": cells,
        "runs": [dict(r.to_dict(), group=group_of.get(r.run_id)) for r in records],
        "groups": groups,
    }


def write_selection(record: dict[str, Any], path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_selection(path: str | os.PathLike) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise RuntimeError(f"{path}: cannot read the selection ({err}); delete it to recompute it") from None
