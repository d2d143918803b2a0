"""Data-dependent runs: the best run of each cell is selected on the
validation split and rerun with other seeds; the reruns are ordinary runs."""

import functools
import itertools

import numpy as np
import pandas as pd
import pytest

from descentlab.analyses.benchmark import rerun_best
from descentlab.data import build_dataset
from descentlab.plan import group_runs
from descentlab.runs import Run
from descentlab.selection import plan_selection, select_best, select_settings
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


# -- seed-averaged tuning and the reference protocol, on hand-made metrics ------------------------
# Each fake run is a directory with status.json and metrics.parquet, as training leaves them; the
# expected choice is computed independently (pandas groupby over a table of the same numbers).


_SETTING_IDS = itertools.count(20)


def fake_run(root, labels, final, diverged=False):
    """A sweep run whose last validation accuracy is ``final`` (an earlier step holds another value,
    so reading the last step matters); ``diverged`` writes the status training gives a diverged run."""
    import json

    spec = canonical({"dataset": DATA, "model": {"name": "mlp", "width": 8}, "optimizer": {"name": "sgd", "lr": 0.1},
                      "steps": next(_SETTING_IDS), "seed": int(labels["seed"])})  # steps: a distinct run id per run
    rid = run_id(spec)
    d = root / rid
    d.mkdir(parents=True)
    (d / "status.json").write_text(json.dumps({"status": "diverged" if diverged else "ok"}))
    pd.DataFrame({"step": [20, 10, 20], "split": ["val", "val", "train"], "metric": ["accuracy"] * 3,
                  "value": [final, 0.999, 0.5]}).to_parquet(d / "metrics.parquet")
    return Run(rid, spec, dict(labels), "s", "sweep", d, root / "data.pt")


def fake_sweep(root, axes, seeds, rng, diverged_fraction=0.1, nan_fraction=0.05):
    """Every combination of ``axes`` at every seed, random final values, some diverged runs and
    some ok runs whose last value is NaN; returns the runs and a table of their labels and values."""
    runs, rows = [], []
    names = list(axes)
    for combo in itertools.product(*axes.values()):
        for seed in seeds:
            labels = dict(zip(names, combo), seed=seed)
            value = float(np.round(rng.uniform(0.2, 0.9), 2))  # 2 decimals: ties happen and must go to the first
            diverged = rng.uniform() < diverged_fraction
            if not diverged and rng.uniform() < nan_fraction:
                value = float("nan")
            runs.append(fake_run(root, labels, value, diverged))
            rows.append(dict(labels, value=np.nan if diverged else value, order=len(rows)))
    return runs, pd.DataFrame(rows)


def brute_force_choice(table, group_by, mode):
    """Per cell: the setting (labels but the seed) with the best mean value over seeds, a setting
    with a NaN at any seed excluded, ties to the setting listed first; None if none is left."""
    settings = [c for c in table.columns if c not in ("seed", "value", "order")]
    per = table.groupby(settings, sort=False).agg(mean=("value", lambda v: v.mean(skipna=False)), order=("order", "min")).reset_index()
    out = {}
    for cell, rows in per.groupby(group_by, sort=False):
        cell = cell if isinstance(cell, tuple) else (cell,)
        valid = rows[rows["mean"].notna()]
        if valid.empty:
            out[cell] = None
            continue
        target = valid["mean"].min() if mode == "min" else valid["mean"].max()
        first = valid[valid["mean"] == target].sort_values("order").iloc[0]
        out[cell] = ({s: first[s] for s in settings}, float(first["mean"]))
    return out


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("seeds", [[0], [0, 1, 2]])
def test_each_cell_gets_the_setting_with_the_best_mean_over_tuning_seeds(tmp_path, mode, seeds):
    rng = np.random.default_rng(len(seeds) + (mode == "max"))
    axes = {"opt": ["sgd", "adam", "lion"], "lr": [0.01, 0.03, 0.1, 0.3], "wd": [0.0, 0.1]}
    runs, table = fake_sweep(tmp_path, axes, seeds, rng)
    # the hand-made sweep has what the rule must handle: diverged seeds and ties
    assert table.value.isna().any() and table.duplicated(["opt", "value"]).any()
    chosen = select_settings(runs, ["opt"], "val", "accuracy", mode)
    expected = brute_force_choice(table, ["opt"], mode)
    assert set(chosen) == set(expected)
    for cell, setting in chosen.items():
        assert (setting is None) == (expected[cell] is None)
        if setting is not None:
            assert setting.labels == expected[cell][0] and setting.seeds == seeds
            assert setting.value == pytest.approx(expected[cell][1], abs=1e-12)
    # select_best: the chosen setting's first tuning run and its mean
    best = select_best(runs, ["opt"], "val", "accuracy", mode)
    assert {c: (None if b is None else (b[0].run_id, b[1])) for c, b in best.items()} == \
        {c: (None if s is None else (s.runs[0].run_id, s.value)) for c, s in chosen.items()}


def test_a_setting_with_one_diverged_seed_is_not_chosen_and_the_mean_beats_the_luckiest_seed(tmp_path):
    runs = []
    for lr, values in ((0.1, [0.95, 0.50, 0.52]),  # the luckiest single run, a poor mean
                       (0.3, [0.70, 0.71, 0.69]),  # the best mean
                       (1.0, [0.99, 0.99, None])):  # best at two seeds, diverged at the third
        for seed, v in enumerate(values):
            runs.append(fake_run(tmp_path, {"opt": "sgd", "lr": lr, "seed": seed}, 0.0 if v is None else v, diverged=v is None))
    (setting,) = select_settings(runs, ["opt"], "val", "accuracy", "max").values()
    assert setting.labels == {"opt": "sgd", "lr": 0.3} and setting.value == pytest.approx(0.70)
    # one seed alone picks its luckiest run: what seed-averaging prevents
    (single,) = select_settings([r for r in runs if r.labels["seed"] == 0], ["opt"], "val", "accuracy", "max").values()
    assert single.labels["lr"] == 1.0
    # a cell whose every setting has a diverged seed has no choice
    only_diverged = [r for r in runs if r.labels["lr"] == 1.0]
    assert select_settings(only_diverged, ["opt"], "val", "accuracy", "max") == {("sgd",): None}


def brute_force_reference(table, group_by, axis, value, mode):
    """Each cell at the setting chosen for the cell with ``axis`` = ``value``, with its own ``axis``."""
    own = brute_force_choice(table, group_by, mode)
    settings = [c for c in table.columns if c not in ("seed", "value", "order")]
    means = table.groupby(settings, sort=False)["value"].apply(lambda v: v.mean(skipna=False))
    out = {}
    for cell in own:
        ref = own[tuple(value if g == axis else c for g, c in zip(group_by, cell))]
        if ref is None:
            out[cell] = None
            continue
        labels = dict(ref[0], **{axis: cell[group_by.index(axis)]})
        out[cell] = (labels, float(means[tuple(labels[s] for s in settings)]))
    return out


def test_reference_runs_every_loss_at_the_setting_tuned_for_cross_entropy(tmp_path):
    rng = np.random.default_rng(7)
    axes = {"dataset": ["a", "b", "c"], "loss": ["cross-entropy", "squentropy", "mse"], "lr": [0.1, 0.3, 1.0, 3.0]}
    runs, table = fake_sweep(tmp_path, axes, [0, 1], rng, diverged_fraction=0.15)
    # dataset c: cross-entropy diverges at every lr, so no loss has a setting there
    ce_c = [r for r in runs if r.labels["dataset"] == "c" and r.labels["loss"] == "cross-entropy" and r.labels["seed"] == 1]
    for r in ce_c:
        (r.dir / "status.json").write_text('{"status": "diverged"}')
    table.loc[(table.dataset == "c") & (table["loss"] == "cross-entropy") & (table.seed == 1), "value"] = np.nan
    reference = {"axis": "loss", "value": "cross-entropy"}
    chosen = select_settings(runs, ["dataset", "loss"], "val", "accuracy", "max", reference)
    expected = brute_force_reference(table, ["dataset", "loss"], "loss", "cross-entropy", "max")
    assert set(chosen) == set(expected) and len(chosen) == 9
    for cell, setting in chosen.items():
        if expected[cell] is None:
            assert setting is None
            continue
        assert setting.labels == expected[cell][0]
        np.testing.assert_equal(setting.value, expected[cell][1])  # NaN where the reference lr diverged for that loss
    assert [c for c, s in chosen.items() if s is None] == [("c", l) for l in axes["loss"]]
    # the reference protocol differs from each loss at its own lr somewhere in this sweep
    own = select_settings(runs, ["dataset", "loss"], "val", "accuracy", "max")
    assert any(own[c] is not None and chosen[c] is not None and own[c].labels != chosen[c].labels for c in chosen)
    assert all(own[c].labels == chosen[c].labels for c in chosen if c[1] == "cross-entropy" and own[c] is not None)


def test_reference_errors_name_what_is_wrong(tmp_path):
    runs = [fake_run(tmp_path, {"loss": l, "lr": lr, "seed": 0}, 0.5) for l in ("ce", "mse") for lr in (0.1, 1.0)]
    with pytest.raises(ValueError, match=r"reference axis 'lr' must be one of group_by \['loss'\]"):
        select_settings(runs, ["loss"], "val", "accuracy", "max", {"axis": "lr", "value": 0.1})
    with pytest.raises(ValueError, match=r"reference value 'squentropy' is not a value of axis 'loss'; values: \['ce', 'mse'\]"):
        select_settings(runs, ["loss"], "val", "accuracy", "max", {"axis": "loss", "value": "squentropy"})
    with pytest.raises(ValueError, match="exactly the keys 'axis' and 'value'"):
        select_settings(runs, ["loss"], "val", "accuracy", "max", {"axis": "loss"})
    # a reference setting that another value of the axis never ran
    partial = runs[:3]  # mse has no lr 1.0 run... but the settings' seeds still agree
    ok = select_settings(partial, ["loss"], "val", "accuracy", "max", {"axis": "loss", "value": "ce"})
    assert ok[("mse",)].labels == {"loss": "mse", "lr": 0.1}  # ties: ce's first lr, 0.1, which mse ran
    (partial[2].dir / "metrics.parquet").unlink()
    pd.DataFrame({"step": [20], "split": ["val"], "metric": ["accuracy"], "value": [0.1]}).to_parquet(partial[2].dir / "metrics.parquet")
    (runs[0].dir / "metrics.parquet").unlink()
    pd.DataFrame({"step": [20], "split": ["val"], "metric": ["accuracy"], "value": [0.1]}).to_parquet(runs[0].dir / "metrics.parquet")
    with pytest.raises(ValueError, match=r"the setting chosen for loss='ce', \{'loss': 'ce', 'lr': 1.0\}, was not run with loss='mse'"):
        select_settings(partial, ["loss"], "val", "accuracy", "max", {"axis": "loss", "value": "ce"})


def test_settings_run_with_different_tuning_seeds_are_refused(tmp_path):
    runs = [fake_run(tmp_path, {"lr": 0.1, "seed": 0}, 0.5), fake_run(tmp_path, {"lr": 0.1, "seed": 1}, 0.5),
            fake_run(tmp_path, {"lr": 0.3, "seed": 0}, 0.6)]
    with pytest.raises(ValueError, match=r"different tuning seeds: \[\(0,\), \(0, 1\)\]"):
        select_settings(runs, ["lr"], "val", "accuracy", "max")
    no_seed = Run(runs[0].run_id, runs[0].spec, {"lr": 0.1}, "s", "sweep", runs[0].dir)
    with pytest.raises(ValueError, match="has no 'seed' label"):
        select_settings([no_seed], ["lr"], "val", "accuracy", "max")


def test_plan_reruns_the_chosen_setting_and_refuses_rerun_seeds_it_tuned_on(tmp_path):
    runs = [fake_run(tmp_path, {"opt": o, "lr": lr, "seed": s}, v)
            for o in ("sgd", "adam") for lr, vals in ((0.1, (0.9, 0.5)), (0.3, (0.7, 0.72))) for s, v in zip((0, 1), vals)]
    plan = functools.partial(plan_selection, study="toy", trained_elsewhere={r.run_id: "toy+sweep" for r in runs},
                             group_runs=functools.partial(group_runs, max_runs_per_job=64))
    with pytest.raises(ValueError, match=r"study 'toy': selection 'tuned' reruns seeds \[1\] that it tunes on \(tuning seeds \[0, 1\]"):
        plan(runs, {"name": "tuned", "group_by": ["opt"], "metric": "accuracy", "mode": "max", "seeds": [1, 2]})
    record = plan(runs, {"name": "tuned", "group_by": ["opt"], "metric": "accuracy", "mode": "max", "seeds": [2, 3]})
    records = [Run.from_dict(r) for r in record["runs"]]
    chosen = {r.run_id for r in runs if r.labels["lr"] == 0.3}
    # the chosen setting's two tuning runs are the selected ones; its reruns use seeds 2 and 3 only
    assert {r.run_id for r in records if r.role == "selected"} == chosen
    reruns = [r for r in records if r.role == "rerun"]
    assert sorted((r.labels["opt"], r.labels["lr"], r.labels["seed"]) for r in reruns) == \
        [("adam", 0.3, 2), ("adam", 0.3, 3), ("sgd", 0.3, 2), ("sgd", 0.3, 3)]
    assert all(r.spec == dict(next(x for x in runs if x.run_id == r.labels["selected_from"]).spec, seed=r.labels["seed"]) for r in reruns)
    cell = next(c for c in record["cells"] if c["cell"] == {"opt": "sgd"})
    assert cell["value"] == pytest.approx(0.71) and [t["value"] for t in cell["tuning"]] == [0.7, 0.72]
    assert sorted(m for g in record["groups"].values() for m in g) == sorted(r.run_id for r in reruns)


def test_a_study_with_a_bad_reference_is_refused_before_any_work(tmp_path):
    import yaml

    from descentlab.studies import StudyError, load_study

    study = {
        "name": "toy", "title": "toy", "papers": ["none"],
        "base": {"dataset": {"name": "gaussian_mixture", "n_samples": 200}, "model": {"name": "mlp", "width": 8},
                 "optimizer": {"name": "sgd", "lr": 0.1}, "steps": 10},
        "seeds": [0, 1],
        "scales": {"smoke": {}, "cpu": {}, "paper": {}},
        "axes": {"loss": [{"label": "cross-entropy", "set": {}}, {"label": "MSE", "set": {"loss": {"name": "mse"}}}],
                 "lr_factor": [{"label": 1, "multiply": {"optimizer.lr": 1}}, {"label": 3, "multiply": {"optimizer.lr": 3}}]},
        "selections": [{"name": "at-ce-lr", "group_by": ["loss"], "seeds": [2, 3], "reference": {"axis": "loss", "value": "cross-entropy"}}],
        "figures": [{"name": "curves", "kind": "learning_curves"}],
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(study))
    load_study(path)  # valid
    for reference, match in (({"axis": "lr_factor", "value": 1}, r"reference axis 'lr_factor' must be one of group_by \['loss'\]"),
                             ({"axis": "loss", "value": "CE"}, r"reference value 'CE' is not a label of axis 'loss'"),
                             ({"axis": "loss"}, "value")):
        study["selections"][0]["reference"] = reference
        path.write_text(yaml.safe_dump(study))
        with pytest.raises(StudyError, match=match):
            load_study(path)


def test_only_keeps_the_listed_values_and_names_what_the_sweep_lacks(tmp_path):
    runs = [fake_run(tmp_path, {"loss": l, "lr": lr, "seed": 0}, v)
            for l in ("ce", "sq", "mse") for lr, v in ((0.1, 0.6), (1.0, 0.7 if l == "ce" else 0.5))]
    plan = functools.partial(plan_selection, study="toy", trained_elsewhere={}, group_runs=functools.partial(group_runs, max_runs_per_job=64))
    sel = {"name": "at-ce-lr", "group_by": ["loss"], "metric": "accuracy", "mode": "max", "seeds": [5],
           "reference": {"axis": "loss", "value": "ce"}, "only": {"loss": ["ce", "sq"]}}
    record = plan(runs, sel)
    assert [c["cell"] for c in record["cells"]] == [{"loss": "ce"}, {"loss": "sq"}]
    reruns = [Run.from_dict(r) for r in record["runs"] if r["role"] == "rerun"]
    assert sorted((r.labels["loss"], r.labels["lr"], r.labels["seed"]) for r in reruns) == [("ce", 1.0, 5), ("sq", 1.0, 5)]
    with pytest.raises(ValueError, match=r"only: loss values \['squentropy'\] are not in the sweep; values: \['ce', 'mse', 'sq'\]"):
        plan(runs, dict(sel, only={"loss": ["ce", "squentropy"]}))
    with pytest.raises(ValueError, match=r"only: 'optimizer' is not an axis of the sweep; axes: \['loss', 'lr'\]"):
        plan(runs, dict(sel, only={"optimizer": ["sgd"]}))
