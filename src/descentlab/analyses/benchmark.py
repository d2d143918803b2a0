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
def rerun_best(runs: list[Run], selected: list[Run], device: str = "cpu") -> pd.DataFrame:
    """The tidy metrics of each cell's selected run and its reruns, with the
    cell's labels, seed, status, role (``selected`` or ``rerun``) and the run
    they were selected from. The selection and the reruns are decided and
    trained in the workflow (study ``selections``, rule ``select_runs``); this
    only reads them. Report test metrics from the reruns: the selected run won
    its cell on the validation split with its own seed."""
    import pandas as pd

    frames = []
    for run in selected:
        m = run.metrics()
        for key, value in run.labels.items():
            m[key] = value
        m["run_id"], m["status"], m["role"] = run.run_id, run.status, run.role
        frames.append(m)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
