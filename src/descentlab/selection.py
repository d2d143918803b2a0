"""Data-dependent runs: pick the best setting of each cell of a sweep and
plan its reruns with more seeds.

A setting is a run's labels without the seed. The sweep may run each setting
with several tuning seeds (the study's ``seeds``); a setting is scored by the
mean of its final validation value over them, so the choice is not the
luckiest seed's, nor flipped by float32 rounding at one seed. The chosen
setting is then trained again with the selection's ``seeds``, which must be
disjoint from the tuning seeds (reporting on a seed that took part in the
choice would report its luck). With ``reference`` every value of one axis is
run at the setting chosen for one of its values (e.g. every loss at
cross-entropy's tuned lr); with ``only`` the selection sees (and reruns) only
the sweep runs with the listed labels (e.g. two of four losses).

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
from dataclasses import dataclass, field
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


@dataclass
class Setting:
    """One setting of a sweep (a run's labels without the seed) and its
    tuning runs, one per tuning seed, in the order the sweep lists them."""

    labels: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    values: list[float] = field(default_factory=list)  # final value per tuning run; NaN: diverged

    @property
    def seeds(self) -> list[int]:
        return [int(r.labels["seed"]) for r in self.runs]

    @property
    def value(self) -> float:
        """The mean final value over the tuning seeds; NaN if any seed diverged
        (a setting that diverges at one seed in three is not a safe choice)."""
        if not self.values or any(math.isnan(v) for v in self.values):
            return math.nan
        return math.fsum(self.values) / len(self.values)


def _seed_of(run: Run) -> int:
    if "seed" not in run.labels:
        raise ValueError(f"run {run.run_id} has no 'seed' label; labels: {sorted(run.labels)}")
    return int(run.labels["seed"])


def score_settings(runs: Sequence[Run], split: str, metric: str) -> list[Setting]:
    """The sweep's settings in the order of their first run, each with its
    tuning runs and their final values. Every setting must have been run
    with the same tuning seeds, once each: a mean over other seeds would not
    compare like with like."""
    settings: dict[tuple, Setting] = {}
    for run in runs:
        seed = _seed_of(run)
        labels = {k: v for k, v in run.labels.items() if k != "seed"}
        setting = settings.setdefault(tuple(sorted(labels.items(), key=lambda kv: kv[0])), Setting(labels))
        if seed in setting.seeds:
            raise ValueError(f"setting {labels} has two runs with seed {seed} ({setting.runs[setting.seeds.index(seed)].run_id}, {run.run_id})")
        setting.runs.append(run)
        setting.values.append(final_value(run, split, metric))
    seed_sets = {tuple(sorted(s.seeds)) for s in settings.values()}
    if len(seed_sets) > 1:
        raise ValueError(f"the sweep's settings were run with different tuning seeds: {sorted(seed_sets)}; each setting needs every tuning seed")
    return list(settings.values())


def select_settings(
    runs: Sequence[Run],
    group_by: Sequence[str],
    split: str,
    metric: str,
    mode: str,
    reference: dict[str, Any] | None = None,
) -> dict[tuple, Setting | None]:
    """Per cell (the values of ``group_by``), the setting with the best mean
    final (``split``, ``metric``) over the tuning seeds (``mode`` ``min`` or
    ``max``); None for a cell whose every setting diverged. A setting with any
    diverged seed (NaN final value) scores as diverged and is never chosen.
    Ties go to the setting listed first.

    ``reference`` (``{axis, value}``, ``axis`` one of ``group_by``): the
    protocol that runs every value of ``axis`` at the setting tuned for
    ``value`` (e.g. every loss at cross-entropy's tuned lr). Each cell gets the
    setting chosen for its reference cell (the same cell with ``axis`` =
    ``value``), with its own ``axis`` value; it is chosen even where that
    setting diverged for this cell (its value is then NaN), and every cell of
    a reference cell that diverged everywhere is None.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    settings = score_settings(runs, split, metric)
    best: dict[tuple, Setting | None] = {}
    for setting in settings:
        missing = [g for g in group_by if g not in setting.labels]
        if missing:
            raise ValueError(f"group_by {missing} are not axes of the study; axes: {sorted(setting.labels)}")
        cell = tuple(setting.labels[g] for g in group_by)
        best.setdefault(cell, None)
        value = setting.value
        if math.isnan(value):
            continue
        current = best[cell]
        if current is None or (value < current.value if mode == "min" else value > current.value):
            best[cell] = setting
    if reference is None:
        return best
    return _at_reference(settings, best, list(group_by), reference)


def _at_reference(settings: list[Setting], best: dict[tuple, Setting | None], group_by: list[str], reference: dict[str, Any]) -> dict[tuple, Setting | None]:
    """Each cell at the setting chosen for its reference cell (see ``select_settings``)."""
    unknown = sorted(set(reference) - {"axis", "value"})
    if unknown or "axis" not in reference or "value" not in reference:
        raise ValueError(f"reference needs exactly the keys 'axis' and 'value', got {sorted(reference)}")
    axis, value = reference["axis"], reference["value"]
    if axis not in group_by:
        raise ValueError(f"reference axis {axis!r} must be one of group_by {group_by}")
    at = group_by.index(axis)
    values = sorted({str(cell[at]) for cell in best})
    if not any(cell[at] == value for cell in best):
        raise ValueError(f"reference value {value!r} is not a value of axis {axis!r}; values: {values}")
    by_labels = {tuple(sorted(s.labels.items(), key=lambda kv: kv[0])): s for s in settings}
    chosen: dict[tuple, Setting | None] = {}
    for cell in best:
        ref_cell = cell[:at] + (value,) + cell[at + 1:]
        if ref_cell not in best:
            raise ValueError(f"cell {dict(zip(group_by, cell))} has no reference cell {dict(zip(group_by, ref_cell))} in the sweep")
        ref = best[ref_cell]
        if ref is None:
            chosen[cell] = None
            continue
        labels = dict(ref.labels, **{axis: cell[at]})
        key = tuple(sorted(labels.items(), key=lambda kv: kv[0]))
        if key not in by_labels:
            raise ValueError(f"the setting chosen for {axis}={value!r}, {ref.labels}, was not run with {axis}={cell[at]!r}")
        chosen[cell] = by_labels[key]
    return chosen


def select_best(runs: Sequence[Run], group_by: Sequence[str], split: str, metric: str, mode: str,
                reference: dict[str, Any] | None = None) -> dict[tuple, tuple[Run, float] | None]:
    """Per cell, the chosen setting's first tuning run and the setting's mean
    final value (``select_settings``; with one tuning seed: the best run)."""
    return {cell: (None if s is None else (s.runs[0], s.value)) for cell, s in select_settings(runs, group_by, split, metric, mode, reference).items()}


def only_runs(runs: Sequence[Run], only: dict[str, list] | None) -> list[Run]:
    """The runs whose label of each axis of ``only`` is one of its listed values
    (all runs if ``only`` is None); a listed axis or value the sweep lacks is an error."""
    if only is None:
        return list(runs)
    for axis, values in only.items():
        present = {r.labels[axis] for r in runs if axis in r.labels}
        if not present:
            raise ValueError(f"only: {axis!r} is not an axis of the sweep; axes: {sorted({k for r in runs for k in r.labels} - {'seed'})}")
        missing = [v for v in values if v not in present]
        if missing:
            raise ValueError(f"only: {axis} values {missing} are not in the sweep; values: {sorted(map(str, present))}")
    return [r for r in runs if all(r.labels[axis] in values for axis, values in only.items())]


def plan_selection(
    runs: Sequence[Run],
    selection: dict[str, Any],
    *,
    study: str,
    trained_elsewhere: dict[str, str],
    group_runs,
) -> dict[str, Any]:
    """The selection's record (of the sweep runs ``only`` keeps): per cell, the chosen setting (its first tuning
    run, its mean value over the tuning seeds, and each tuning run's value);
    the tuning runs of the chosen settings (role ``selected``) and their reruns
    with the selection's ``seeds`` as run records; the jobs that train the
    reruns. The reruns' seeds must not be tuning seeds. ``trained_elsewhere``
    maps run ids the plan already trains to their job (a rerun identical to a
    declared run is not trained twice); ``group_runs(runs, prefix=...)`` cuts
    the rest into jobs."""
    group_by = list(selection["group_by"])
    runs = only_runs(runs, selection.get("only"))
    tuning = sorted({_seed_of(r) for r in runs})
    shared = sorted(set(tuning) & {int(s) for s in selection["seeds"]})
    if shared:
        raise ValueError(
            f"study {study!r}: selection {selection['name']!r} reruns seeds {shared} that it tunes on "
            f"(tuning seeds {tuning}, rerun seeds {sorted(selection['seeds'])}); rerun with other seeds")
    chosen = select_settings(runs, group_by, selection.get("split", "val"), selection.get("metric", "loss"),
                             selection.get("mode", "min"), selection.get("reference"))
    cells, records, reruns = [], [], []
    for cell, setting in sorted(chosen.items(), key=lambda kv: str(kv[0])):
        labels = dict(zip(group_by, cell))
        if setting is None:
            cells.append({"cell": labels, "selected": None, "value": None})
            continue
        first = setting.runs[0]
        value = setting.value
        cells.append({"cell": labels, "selected": first.run_id, "value": None if math.isnan(value) else value,
                      "tuning": [{"run_id": r.run_id, "seed": s, "value": None if math.isnan(v) else v}
                                 for r, s, v in zip(setting.runs, setting.seeds, setting.values)]})
        for run in setting.runs:
            records.append(Run(run.run_id, run.spec, {**run.labels, "selected_from": first.run_id}, study, "selected", run.dir, run.data))
        for seed in selection["seeds"]:
            spec = dict(first.spec, seed=int(seed))
            rid = run_id(spec)
            labels = {**setting.labels, "seed": int(seed), "selected_from": first.run_id}
            rerun = Run(rid, spec, labels, study, "rerun", first.dir.parent / rid, first.data)  # beside the runs it reruns
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
