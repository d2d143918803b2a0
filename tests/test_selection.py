"""Data-dependent runs: the best run of each cell is selected on the
validation split and rerun with other seeds; the reruns are ordinary runs."""

import functools

import numpy as np
import pandas as pd
import pytest

from descentlab.analyses.benchmark import rerun_best
from descentlab.data import build_dataset
from descentlab.plan import group_runs
from descentlab.runs import Run
from descentlab.selection import plan_selection, select_best
from descentlab.spec import canonical, run_id
from descentlab.train import train_run

DATA = {"name": "gaussian_mixture", "n_samples": 300, "dim": 6, "n_classes": 3}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sel")
    data = build_dataset(DATA)
    data.save(root / "data.pt")
    runs = []
    for opt in ("sgd", "adam"):
        for lr in (1e-5, 0.05):  # the tiny lr barely moves: 0.05 must win in both cells
            spec = canonical({"dataset": DATA, "model": {"name": "mlp", "width": 8}, "optimizer": {"name": opt, "lr": lr},
                              "steps": 30, "eval_every": 10, "log_every": 10})
            rid = run_id(spec)
            train_run(spec, data, root / "runs" / rid)
            runs.append(Run(rid, spec, {"optimizer": opt, "lr": lr, "seed": 0}, "s", "sweep", root / "runs" / rid, root / "data.pt"))
    return root, data, runs


def test_select_best_by_final_validation_loss(sweep):
    _, _, runs = sweep
    chosen = select_best(runs, ["optimizer"], "val", "loss", "min")
    assert {cell: best.labels["lr"] for cell, (best, _) in chosen.items()} == {("sgd",): 0.05, ("adam",): 0.05}
    worst = select_best(runs, ["optimizer"], "val", "loss", "max")
    assert {best.labels["lr"] for best, _ in worst.values()} == {1e-5}


def test_reruns_are_planned_as_runs_and_train_exactly(sweep):
    root, data, runs = sweep
    record = plan_selection(
        runs, {"name": "tuned", "group_by": ["optimizer"], "seeds": [1, 2]}, study="s",
        trained_elsewhere={r.run_id: "s+sweep" for r in runs}, group_runs=functools.partial(group_runs, max_runs_per_job=64),
    )
    records = [Run.from_dict(r) for r in record["runs"]]
    reruns = [r for r in records if r.role == "rerun"]
    assert len(reruns) == 4 and {r.spec["seed"] for r in reruns} == {1, 2}
    assert all(r.spec == dict(canonical(runs[1].spec if r.labels["optimizer"] == "sgd" else runs[3].spec), seed=r.spec["seed"]) for r in reruns)
    assert sorted(m for g in record["groups"].values() for m in g) == sorted(r.run_id for r in reruns)
    assert all(g.startswith("s+tuned+") for g in record["groups"])
    for rerun in reruns:  # the workflow's train rule does this
        train_run(rerun.spec, data, rerun.dir)
    table = rerun_best(runs, selected=records)
    assert set(table.lr) == {0.05} and sorted(set(table.seed)) == [0, 1, 2]
    assert set(table[table.seed == 0].role) == {"selected"} and set(table[table.seed > 0].role) == {"rerun"}
    sgd1 = table[(table.seed == 1) & (table.optimizer == "sgd")]
    direct = train_run(dict(runs[1].spec, seed=1), data, root / "direct")
    expected = pd.read_parquet(direct.out_dir / "metrics.parquet")
    np.testing.assert_array_equal(sgd1.sort_values(["step", "split", "metric"]).value.to_numpy(),
                                  expected.sort_values(["step", "split", "metric"]).value.to_numpy())


def test_a_rerun_already_trained_elsewhere_is_not_trained_twice(sweep):
    root, _, runs = sweep
    seed1 = run_id(dict(runs[1].spec, seed=1))
    record = plan_selection(
        runs, {"name": "tuned", "group_by": ["optimizer"], "seeds": [1]}, study="s",
        trained_elsewhere={seed1: "other+job"}, group_runs=functools.partial(group_runs, max_runs_per_job=64),
    )
    assert seed1 not in [m for g in record["groups"].values() for m in g]
    assert [r["group"] for r in record["runs"] if r["run_id"] == seed1] == ["other+job"]


def test_calibration_with_a_selection_reads_only_the_reruns_and_flags_the_grid_edge(sweep):
    from descentlab.analyses.calibration import calibration

    root, data, runs = sweep
    record = plan_selection(
        runs, {"name": "tuned", "group_by": ["optimizer"], "split": "val", "metric": "loss", "mode": "min", "seeds": [1, 2]},
        study="s", trained_elsewhere={}, group_runs=functools.partial(group_runs, max_runs_per_job=64),
    )
    records = [Run.from_dict(r) for r in record["runs"]]
    reruns = [r for r in records if r.role == "rerun"]
    for rerun in reruns:
        if not (rerun.dir / "final.pt").exists():
            train_run(rerun.spec, data, rerun.dir)
    table = calibration(runs, selected=records, edge_axis="lr")
    per_run = table[table.kind == "run"]
    # the selected seed-0 run won on validation: its test numbers are not reported, nor the sweep's
    assert sorted(per_run.run_id) == sorted(r.run_id for r in reruns) and set(per_run.seed) == {1, 2}
    # 0.05 is the larger of the grid (1e-5, 0.05): on its edge, in every row (reliability bins too)
    assert table.on_edge.all() and set(table.edge) == {"high"} and set(table.grid_low) == {1e-5}
    # the same numbers as evaluating the reruns as plain runs
    plain = calibration(reruns)
    key = ["run_id", "kind", "bin"]
    pd.testing.assert_frame_equal(
        table.drop(columns=["grid_low", "grid_high", "on_edge", "edge"]).sort_values(key).reset_index(drop=True),
        plain.sort_values(key).reset_index(drop=True), check_like=True)
    with pytest.raises(ValueError, match="needs the study's selection"):
        calibration(runs, edge_axis="lr")
