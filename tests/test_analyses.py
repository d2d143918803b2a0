"""Analyses and figure kinds on small synthetic inputs."""

import numpy as np
import pandas as pd
import pytest
import torch

from descentlab.analyses.calibration import expected_calibration_error
from descentlab.plots import FIGURES


def test_ece_by_hand():
    # bins of width 0.5: (0, 0.5] holds 0.2, 0.4 (1 correct); (0.5, 1] holds 0.6, 0.9, 1.0 (2 correct)
    conf = torch.tensor([0.2, 0.4, 0.6, 0.9, 1.0], dtype=torch.float64)
    correct = torch.tensor([1, 0, 1, 1, 0], dtype=torch.bool)
    expected = 2 / 5 * abs(0.5 - 0.3) + 3 / 5 * abs(2 / 3 - (0.6 + 0.9 + 1.0) / 3)
    assert expected_calibration_error(conf, correct, bins=2) == pytest.approx(expected, abs=1e-15)


def test_ece_is_zero_when_confidence_matches_accuracy_and_checks_shapes():
    conf = torch.full((1000,), 0.75)
    correct = torch.arange(1000) % 4 != 0
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="equal-length"):
        expected_calibration_error(conf, correct[:10])


def runs_and_metrics():
    rows, metrics = [], []
    for method in ("A", "B"):
        for lr in (0.1, 0.01):
            for seed in (0, 1):
                rid = f"{method}-{lr}-{seed}"
                rows.append({"run_id": rid, "method": method, "lr": lr, "wd": 0.1, "seed": seed, "status": "ok"})
                for step in (0, 10):
                    acc = 0.5 + 0.4 * (step / 10) * (lr == 0.1) + 0.01 * seed
                    metrics += [(rid, step, "test", "accuracy", acc), (rid, step, "train", "loss", 1 - acc)]
    runs = pd.DataFrame(rows)
    runs.loc[runs.run_id == "B-0.01-1", "status"] = "diverged"
    return pd.DataFrame(metrics, columns=["run_id", "step", "split", "metric", "value"]), runs


def test_heatmap_averages_seeds_and_blanks_diverged_runs():
    metrics, runs = runs_and_metrics()
    fig, plotted, best = FIGURES.get("heatmap")(metrics, runs, {}, x="lr", y="wd", facet="method")
    cell = plotted[(plotted.method == "A") & (plotted.lr == 0.1)].iloc[0]
    assert cell.value == pytest.approx(100 * (1 - (0.9 + 0.91) / 2)) and cell.seeds == 2
    b = plotted[(plotted.method == "B") & (plotted.lr == 0.01)].iloc[0]
    assert b.value == pytest.approx(100 * (1 - 0.5)) and b.diverged == 1  # mean of the run that did not diverge
    assert set(best.method) == {"A", "B"} and (best.lr == 0.1).all()
    with pytest.raises(ValueError, match="not an axis"):
        FIGURES.get("heatmap")(metrics, runs, {}, x="momentum", y="wd")


def test_learning_curves_and_summary_points_draw():
    metrics, runs = runs_and_metrics()
    fig, plotted, summary = FIGURES.get("learning_curves")(metrics, runs, {}, hue="method")
    assert set(plotted.metric) == {"loss", "accuracy"} and len(summary) == len(runs)
    table = pd.DataFrame({"method": ["A", "A", "B", "B"], "ds": ["x"] * 4, "accuracy": [0.5, 0.7, 0.2, 0.4], "ece": [0.1, 0.3, 0.2, 0.2]})
    fig, data, summary = FIGURES.get("summary_points")(metrics, runs, {"t": table}, columns=["accuracy", "ece"], x="ds", hue="method")
    row = summary[summary.method == "A"].iloc[0]
    assert row.accuracy_mean == pytest.approx(0.6) and row.accuracy_std == pytest.approx(np.std([0.5, 0.7], ddof=1))


def test_learning_curves_log_panels_get_a_positive_geometric_band():
    # seeds at 0.01 and 1.0: mean - sd is negative, which on a log axis used to
    # fill the band down to the bottom of the panel
    runs = pd.DataFrame({"run_id": ["a", "b"], "method": ["A", "A"], "seed": [0, 1], "status": ["ok", "ok"]})
    metrics = pd.DataFrame([(rid, step, "train", "loss", v) for rid, v in (("a", 0.01), ("b", 1.0))
                            for step in (0, 10)], columns=["run_id", "step", "split", "metric", "value"])
    panels = [{"split": "train", "metric": "loss", "log": True}]
    fig, _, _ = FIGURES.get("learning_curves")(metrics, runs, {}, hue="method", panels=panels)
    ax = fig.axes[0]
    (line,) = [line for line in ax.get_lines() if len(line.get_ydata())]  # not the legend's proxy
    assert np.allclose(line.get_ydata(), 0.1)  # geometric mean of 0.01 and 1
    band = np.concatenate([p.vertices[:, 1] for c in ax.collections for p in c.get_paths()])
    assert band.min() > 0 and np.isclose(band.min(), 0.1 / np.exp(np.log(100) / np.sqrt(2)))
    with pytest.raises(ValueError, match="band"):
        FIGURES.get("learning_curves")(metrics, runs, {}, hue="method", band="iqr")


def test_count_outliers_finds_the_largest_gap():
    from descentlab.analyses.curvature import count_outliers

    assert count_outliers(np.array([3.0, 2.9, 2.0, 1.05, 0.95, 0.9])) == 3
    assert count_outliers(np.array([0.5, 10.0, 9.0, 0.4])) == 2  # order does not matter
    assert count_outliers(np.array([1.0])) == 1


def test_performance_profile_by_hand():
    from descentlab.plots.benchmark import performance_profile_table

    rows = []
    # problem P1: A reaches 0.5 at step 10, B at step 20; problem P2: A at 40, B at 10
    curves = {("P1", "A"): [(10, 0.5), (20, 0.4)], ("P1", "B"): [(10, 0.9), (20, 0.5)],
              ("P2", "A"): [(10, 0.9), (40, 0.5)], ("P2", "B"): [(10, 0.5), (40, 0.45)]}
    for (prob, solver), points in curves.items():
        for step, value in points:
            rows.append({"problem": prob, "optimizer": solver, "seed": 0, "step": step, "split": "val", "metric": "loss", "value": value})
    steps, profile = performance_profile_table(pd.DataFrame(rows), "problem", "optimizer", "val", "loss", "min", 1.0)
    s = steps.set_index(["problem", "optimizer"])
    # target quantile 1.0 of the best values = the worst solver's best: P1 0.4 vs 0.5 -> 0.5; P2 0.5 vs 0.45 -> 0.5
    assert s.loc[("P1", "A"), "steps"] == 10 and s.loc[("P1", "B"), "steps"] == 20
    assert s.loc[("P2", "A"), "ratio"] == 4 and s.loc[("P2", "B"), "ratio"] == 1
    rho = profile.set_index(["optimizer", "tau"])["rho"]
    assert rho[("A", 1.0)] == 0.5 and rho[("B", 1.0)] == 0.5 and rho[("A", 4.0)] == 1.0 and rho[("B", 2.0)] == 1.0


# -- optimizer benchmark: grids, reruns, winners, profiles -------------------------------------


def fake_run(root, labels, role, values, status="ok"):
    """A finished run on disk: val and test loss equal to ``values`` (one per step)."""
    import json

    from descentlab.runs import Run

    rid = "-".join(f"{k}{v}" for k, v in labels.items() if k != "selected_from") + f"-{role}"
    path = root / rid
    path.mkdir()
    rows = [{"step": 10 * (i + 1), "split": split, "metric": "loss", "value": float(v)}
            for i, v in enumerate(values) for split in ("val", "test")]
    pd.DataFrame(rows).to_parquet(path / "metrics.parquet")
    (path / "status.json").write_text(json.dumps({"status": status}))
    return Run(rid, {}, dict(labels), "s", role, path)


def test_rerun_best_flags_a_selected_lr_on_the_edge_of_its_cells_grid(tmp_path):
    from descentlab.analyses.benchmark import rerun_best

    sweep = [fake_run(tmp_path, {"optimizer": o, "lr": lr, "seed": 0}, "sweep", [1.0])
             for o, grid in (("A", (1, 3, 10)), ("B", (1, 3, 10, 30))) for lr in grid]
    picked = {"A": 10, "B": 3}  # A's best is its grid's largest value, B's is interior
    selected = []
    for o, lr in picked.items():
        selected.append(fake_run(tmp_path, {"optimizer": o, "lr": lr, "seed": 0, "selected_from": "x"}, "selected", [1.0]))
        selected += [fake_run(tmp_path, {"optimizer": o, "lr": lr, "seed": s, "selected_from": "x"}, "rerun", [1.0]) for s in (1, 2)]
    table = rerun_best(sweep, selected, edge_axis="lr")
    flags = table.drop_duplicates("run_id").groupby("optimizer").agg(on_edge=("on_edge", "all"), edge=("edge", "first"),
                                                                     high=("grid_high", "first"))
    assert flags.loc["A", "on_edge"] and flags.loc["A", "edge"] == "high" and flags.loc["A", "high"] == 10
    assert not flags.loc["B", "on_edge"] and flags.loc["B", "edge"] == "" and flags.loc["B", "high"] == 30
    assert "on_edge" not in rerun_best(sweep, selected).columns  # only when asked
    with pytest.raises(ValueError, match="'momentum' is not an axis"):
        rerun_best(sweep, selected, edge_axis="momentum")


def test_best_over_grid_edges_and_a_diverged_larger_value_brackets_the_optimum():
    from descentlab.plots.benchmark import best_over_grid

    nan = np.nan
    table = pd.DataFrame({
        "opt": ["low"] * 3 + ["high"] * 3 + ["bracketed"] * 3 + ["dead"] * 2,
        "lr": [1, 3, 10] * 3 + [1, 3],
        "value": [0.1, 0.2, 0.3, 0.3, 0.2, 0.1, 0.3, 0.1, nan, nan, nan],
    })
    best = best_over_grid(table, "lr", ["opt"]).set_index("opt")
    assert best.loc["low", "edge"] == "low" and best.loc["low", "best_lr"] == 1
    assert best.loc["high", "edge"] == "high" and best.loc["high", "on_edge"]
    assert best.loc["bracketed", "edge"] == "" and not best.loc["bracketed", "on_edge"]  # 10 diverged: 3 is interior
    assert np.isnan(best.loc["dead", "best"]) and best.loc["dead", "edge"] == "all diverged"


def benchmark_table():
    """A rerun_best-like table: 2 problems x 3 optimizers; the selected seed-0
    runs are far better than their reruns (as a run that won a selection is)."""
    rows = []
    final = {("P", "A"): (0.5, 0.7), ("P", "B"): (0.6, 0.6), ("P", "C"): (0.9, 1.1),
             ("Q", "A"): (0.4, 0.6), ("Q", "B"): (0.3, 0.4), ("Q", "C"): (0.2, float("nan"))}
    for (prob, opt), (s1, s2) in final.items():
        for seed, role, last in ((0, "selected", 0.01), (1, "rerun", s1), (2, "rerun", s2)):
            status = "diverged" if np.isnan(last) else "ok"
            for step, value in ((10, 2.0), (20, 1.0 if status == "ok" else 3.0), (30, last)):
                if np.isnan(value):
                    continue  # a diverged run stops recording
                for split in ("val", "test"):
                    rows.append({"problem": prob, "optimizer": opt, "lr": 1, "seed": seed, "role": role, "status": status,
                                 "run_id": f"{prob}{opt}{seed}", "step": step, "split": split, "metric": "loss",
                                 "value": value, "on_edge": opt == "A", "edge": "high" if opt == "A" else ""})
    return pd.DataFrame(rows)


def test_tuned_curves_report_the_reruns_only_with_winners_and_wins():
    fig, plotted, summary = FIGURES.get("tuned_curves")(None, None, {"tuned": benchmark_table()},
                                                       groups={"g1": ["A", "B"], "g2": ["C"]}, title="t")
    assert set(plotted["seed"]) == {1, 2} and set(plotted["split"]) == {"test"}  # never the selected seed 0
    s = summary.set_index(["problem", "optimizer"])
    assert s.loc[("P", "A"), "mean"] == pytest.approx(0.6) and s.loc[("P", "A"), "seeds"] == 2
    assert s.loc[("P", "B"), "winner"] and s.loc[("Q", "B"), "winner"]
    assert s.loc[("P", "A"), "rank"] == 1  # A's mean 0.6 ties B's: both rank 1
    assert np.isnan(s.loc[("Q", "C"), "mean"]) and s.loc[("Q", "C"), "rank"] == 3  # a diverged seed ranks last
    assert s.loc[("P", "B"), "wins"] == 2 and s.loc[("P", "A"), "wins"] == 1 and s.loc[("P", "C"), "worst_rank"] == 3
    assert bool(s.loc[("P", "A"), "on_edge"]) and not bool(s.loc[("P", "B"), "on_edge"])
    assert (summary["n_problems"] == 2).all()


def test_tuned_figures_refuse_a_table_without_reruns():
    table = benchmark_table()
    with pytest.raises(ValueError, match="no rows with role in \\['rerun'\\]"):
        FIGURES.get("tuned_curves")(None, None, {"tuned": table[table.role == "selected"]})
    with pytest.raises(ValueError, match="in none of options.groups"):
        FIGURES.get("tuned_curves")(None, None, {"tuned": table}, groups={"g1": ["A", "B"]})


def test_performance_profile_per_seed_counts_each_problem_and_seed_as_an_instance():
    from descentlab.plots.benchmark import performance_profile_table

    rows = []
    # one problem, two seeds: A is fastest on seed 1 (10 vs 20), B on seed 2 (10 vs 40); target 0.5
    curves = {("A", 1): [(10, 0.5)], ("B", 1): [(10, 0.9), (20, 0.5)],
              ("A", 2): [(10, 0.9), (20, 0.9), (40, 0.5)], ("B", 2): [(10, 0.5)]}
    for (solver, seed), points in curves.items():
        for step, value in points:
            rows.append({"problem": "P", "optimizer": solver, "seed": seed, "step": step, "split": "test", "metric": "loss", "value": value})
    steps, profile = performance_profile_table(pd.DataFrame(rows), "problem", "optimizer", "test", "loss", "min", 1.0, per_seed=True)
    s = steps.set_index(["optimizer", "seed"])["ratio"]
    assert s[("A", 1)] == 1 and s[("B", 1)] == 2 and s[("A", 2)] == 4 and s[("B", 2)] == 1
    rho = profile.set_index(["optimizer", "tau"])["rho"]
    assert rho[("A", 1.0)] == 0.5 and rho[("B", 2.0)] == 1.0 and rho[("A", 2.0)] == 0.5 and rho[("A", 4.0)] == 1.0
    # per problem (the median over seeds): one instance, so rho takes only the values 0 and 1
    _, profile1 = performance_profile_table(pd.DataFrame(rows), "problem", "optimizer", "test", "loss", "min", 1.0)
    assert set(profile1["rho"]) <= {0.0, 1.0}


def test_performance_profile_figure_reads_reruns_and_summarises_per_solver():
    fig, profile, summary = FIGURES.get("performance_profile")(
        None, None, {"tuned": benchmark_table()}, split="test", roles=["rerun"], per_seed=True, target_quantile=1.0)
    s = summary.set_index("optimizer")
    assert (s["instances"] == 4).all()  # 2 problems x seeds 1, 2
    assert s.loc["C", "solved"] == 0.75  # its diverged seed never reaches the target


def test_lr_sensitivity_summary_counts_settings_near_the_best_and_compares_to_a_reference():
    runs = pd.DataFrame({"run_id": [f"r{i}" for i in range(6)], "problem": "P", "optimizer": ["S"] * 3 + ["A"] * 3,
                         "lr": [1, 3, 10] * 2, "seed": 0, "status": ["ok"] * 5 + ["diverged"]})
    values = [1.0, 2.0, 4.0, 1.05, 1.0, 9.0]  # A's lr 10 diverged: it has no final value
    metrics = pd.DataFrame({"run_id": runs["run_id"], "step": 10, "split": "val", "metric": "loss", "value": values})
    fig, plotted, summary = FIGURES.get("lr_sensitivity")(metrics, runs, None, reference="S",
                                                          groups={"sgd": ["S"], "adam": ["A"]}, title="t")
    s = summary.set_index("optimizer")
    assert s.loc["S", "near_best"] == 1 and s.loc["A", "near_best"] == 2 and s.loc["A", "ref_near_best"] == 1
    assert s.loc["S", "log10_range"] == pytest.approx(np.log10(4)) and s.loc["A", "diverged"] == 1
    assert s.loc["S", "edge"] == "low" and s.loc["A", "best_lr"] == 3 and not s.loc["A", "on_edge"]


def test_lr_sensitivity_reference_mapping_compares_each_listed_optimizer_to_its_own():
    runs = pd.DataFrame({"run_id": [f"r{i}" for i in range(9)], "problem": "P", "optimizer": ["S"] * 3 + ["A"] * 3 + ["M"] * 3,
                         "lr": [1, 3, 10] * 3, "seed": 0, "status": "ok"})
    values = [1.0, 2.0, 4.0, 1.0, 1.05, 1.08, 1.0, 1.01, 3.0]
    metrics = pd.DataFrame({"run_id": runs["run_id"], "step": 10, "split": "val", "metric": "loss", "value": values})
    _, _, summary = FIGURES.get("lr_sensitivity")(metrics, runs, None, reference={"M": "A", "A": "S"})
    s = summary.set_index("optimizer")
    assert s.loc["M", "reference"] == "A" and s.loc["M", "ref_near_best"] == 3 and s.loc["M", "near_best"] == 2
    assert s.loc["A", "ref_near_best"] == 1 and pd.isna(s.loc["S", "reference"]) and np.isnan(s.loc["S", "ref_near_best"])
    with pytest.raises(ValueError, match="reference names \\['Z'\\]"):
        FIGURES.get("lr_sensitivity")(metrics, runs, None, reference={"M": "Z"})
