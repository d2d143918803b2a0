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


# -- intrinsic dimension ----------------------------------------------------------------


def subspace_runs(curves, baselines, diverged=()):
    """Runs of an intrinsic-dimension study: ``curves[width][seed]`` = {d: accuracy},
    ``baselines[width][seed]`` = the full model's accuracy."""
    rows, metrics = [], []
    for width, by_seed in curves.items():
        for seed, curve in by_seed.items():
            for dim, acc in [("full", baselines[width][seed])] + list(curve.items()):
                rid = f"{width}-{dim}-{seed}"
                status = "diverged" if (width, dim, seed) in diverged else "ok"
                rows.append({"run_id": rid, "width": width, "dim": str(dim), "seed": seed, "status": status})
                metrics += [(rid, 0, "test", "accuracy", 0.1), (rid, 100, "test", "accuracy", acc)]
    return pd.DataFrame(metrics, columns=["run_id", "step", "split", "metric", "value"]), pd.DataFrame(rows)


def test_intrinsic_dimension_by_hand_with_censoring_and_diverged_runs():
    # baseline 1.0 in every seed: threshold 0.9. Width 200's mean curve first
    # reaches it at d = 20 (seeds: 20, 20, 40), width 400's at 40; width 800
    # never (censored high), width 100 at the smallest d (censored low).
    curves = {
        200: {0: {10: 0.5, 20: 0.95, 40: 0.99}, 1: {10: 0.5, 20: 0.92, 40: 0.99}, 2: {10: 0.5, 20: 0.85, 40: 0.99}},
        400: {0: {10: 0.5, 20: 0.85, 40: 0.95}, 1: {10: 0.5, 20: 0.85, 40: 0.95}, 2: {10: 0.5, 20: 1.0, 40: 0.95}},
        800: {s: {10: 0.5, 20: 0.6, 40: 0.7} for s in range(3)},
        100: {s: {10: 0.95, 20: 0.97, 40: 0.99} for s in range(3)},
    }
    baselines = {w: {s: 1.0 for s in range(3)} for w in curves}
    # seed 2 of width 400 diverges at d = 20: its last recorded 1.0 would lift the mean to the
    # threshold (0.9); left out, the mean is 0.85 and the seed's own d_int90 is 40
    metrics, runs = subspace_runs(curves, baselines, diverged={(400, 20, 2)})
    params = {100: 1000, 200: 2000, 400: 4000, 800: 8000}
    fig, _, summary = FIGURES.get("intrinsic_dimension")(metrics, runs, {}, num_params=params, chance=0.1)
    s = summary.set_index(["width", "seed"])
    assert list(summary.width.unique()) == [100, 200, 400, 800] and len(summary) == 12
    assert (s.loc[200, "d_int_mean_curve"] == 20).all() and (s.loc[200, "censoring_mean_curve"] == "interior").all()
    assert list(s.loc[200, "d_int"]) == [20, 20, 40] and not s.loc[200, "censored"].any()
    assert (s.loc[400, "d_int_mean_curve"] == 40).all() and list(s.loc[400, "d_int"]) == [40, 40, 40]
    assert list(s.loc[400, "diverged"]) == [0, 0, 1]
    assert s.loc[800, "d_int"].isna().all() and (s.loc[800, "censoring"] == "high").all() and s.loc[800, "censored"].all()
    assert (s.loc[100, "d_int"] == 10).all() and (s.loc[100, "censoring"] == "low").all() and s.loc[100, "censored"].all()
    assert s.loc[(400, 0), "d_int_fraction_of_params"] == pytest.approx(40 / 4000)
    assert list(s.loc[200, "d_int_ratio"]) == [2, 2, 4]  # to the first width's (100: 10), seed by seed
    assert s.loc[(200, 0), "threshold"] == pytest.approx(0.9) and (summary.seeds == 3).all()
    with pytest.raises(ValueError, match="num_params has no entry"):
        FIGURES.get("intrinsic_dimension")(metrics, runs, {}, num_params={200: 1})
    with pytest.raises(ValueError, match="full-model baseline"):
        FIGURES.get("intrinsic_dimension")(metrics, runs[runs.dim != "full"], {})


def test_intrinsic_dimension_study_states_the_models_parameter_counts():
    from descentlab.data import build_dataset
    from descentlab.models import build_model
    from descentlab.studies import load_study

    study = load_study("config/studies/intrinsic-dimension.yaml")
    (figure,) = study["figures"]
    data = build_dataset(study["base"]["dataset"])
    for width, stated in figure["options"]["num_params"].items():
        model = build_model({**study["base"]["model"], "width": int(width)}, data.input_shape, data.num_outputs)
        assert sum(p.numel() for p in model.parameters()) == stated


# -- batch size and curvature ------------------------------------------------------------


def batch_runs():
    """SGD and Adam at batch 8 and 32, lr labels 1, 10, 100 (multiples of the
    base lr), seeds 0 and 1. SGD trains up to label 10 at batch 8 and up to 100
    at batch 32 except seed 1 (stuck at label 100); label 100 diverges at batch
    8. Adam trains everywhere. SGD's sharpness: 4 + seed until step 50, then
    batch / 4 + lr label / 10."""
    rows, metrics = [], []
    for opt in ("SGD", "Adam"):
        for b in (8, 32):
            for lr in (1, 10, 100):
                for seed in (0, 1):
                    rid = f"{opt}-{b}-{lr}-{seed}"
                    status, final = "ok", 0.5
                    if opt == "SGD" and b == 8 and lr == 100:
                        status, final = "diverged", None
                    elif opt == "SGD" and b == 32 and lr == 100 and seed == 1:
                        final = 2.2  # 2.2 / 2.3 > 0.9: stuck
                    rows.append({"run_id": rid, "optimizer": opt, "batch_size": str(b), "lr": str(lr), "seed": seed, "status": status})
                    metrics.append((rid, 0, "train", "full_loss", 2.3))
                    if final is not None:
                        metrics.append((rid, 100, "train", "full_loss", final))
                    if opt == "SGD":
                        for step in (0, 25, 50, 75, 100):
                            value = 4 + seed if step < 50 else b / 4 + lr / 10
                            metrics.append((rid, step, "train", "sharpness", value))
    return pd.DataFrame(metrics, columns=["run_id", "step", "split", "metric", "value"]), pd.DataFrame(rows)


def test_batch_size_curvature_by_hand():
    metrics, runs = batch_runs()
    fig, table, summary = FIGURES.get("batch_size_curvature")(
        metrics, runs, {}, base_lrs={"SGD": 0.01, "Adam": 0.001}, sharpness_lrs=[1, 10])
    outcome = table.set_index("run_id")["outcome"]
    assert outcome["SGD-8-100-0"] == "diverged" and outcome["SGD-32-100-1"] == "stuck" and outcome["SGD-32-100-0"] == "trains"
    late = summary[summary.quantity == "late_sharpness"].set_index(["batch_size", "lr", "seed"])
    # the last quarter of 100 steps: steps 75 and 100
    assert late.loc[(32, 0.1, 1), "late_sharpness"] == pytest.approx(32 / 4 + 10 / 10)
    assert late.loc[(8, 0.01, 0), "threshold"] == pytest.approx(200)
    assert np.isnan(late.loc[(32, 1.0, 1), "late_sharpness"]) and np.isnan(late.loc[(8, 1.0, 0), "late_sharpness"])
    stable = summary[summary.quantity == "largest_stable_lr"].set_index(["optimizer", "batch_size", "seed"])
    assert stable.loc[("SGD", 8, 0), "largest_stable_lr"] == pytest.approx(0.1) and not stable.loc[("SGD", 8, 0), "on_edge"]
    assert stable.loc[("SGD", 32, 0), "largest_stable_lr"] == pytest.approx(1.0) and stable.loc[("SGD", 32, 0), "on_edge"]
    assert stable.loc[("SGD", 32, 1), "largest_stable_lr"] == pytest.approx(0.1)
    assert stable.loc[("SGD", 32, 0), "ratio_to_previous_batch"] == pytest.approx(10)
    assert stable.loc[("SGD", 32, 1), "ratio_to_smallest_batch"] == pytest.approx(1)
    assert stable.loc[("SGD", 8, 0), "first_step_growth"] == pytest.approx(10)
    assert stable.loc[("Adam", 8, 0), "largest_stable_lr"] == pytest.approx(0.1) and stable.loc[("Adam", 8, 0), "on_edge"]
    with pytest.raises(ValueError, match="base_lrs has no entry"):
        FIGURES.get("batch_size_curvature")(metrics, runs, {}, base_lrs={"SGD": 0.01})
    with pytest.raises(ValueError, match="sharpness_lrs"):
        FIGURES.get("batch_size_curvature")(metrics, runs, {}, sharpness_lrs=[3])
    with pytest.raises(ValueError, match="full_loss"):
        FIGURES.get("batch_size_curvature")(metrics[metrics.metric != "full_loss"], runs, {})


def test_largest_stable_lr_needs_every_seed_and_flags_the_grid_edges():
    from descentlab.plots.batchsize import largest_stable_lr

    outcomes = pd.DataFrame({
        "cell": ["a"] * 4 + ["b"] * 2 + ["c"] * 2,
        "lr": [0.1, 0.1, 1.0, 1.0, 0.1, 1.0, 0.1, 1.0],
        "outcome": ["trains", "trains", "trains", "stuck", "trains", "trains", "diverged", "stuck"],
    })
    table = largest_stable_lr(outcomes, "lr", ["cell"]).set_index("cell")
    assert table.loc["a", "largest_stable_lr"] == 0.1 and not table.loc["a", "on_edge"]  # one seed stuck at 1.0
    assert table.loc["b", "largest_stable_lr"] == 1.0 and table.loc["b", "on_edge"]  # the grid's top trains
    assert np.isnan(table.loc["c", "largest_stable_lr"]) and table.loc["c", "on_edge"]  # nothing trains


def test_heatmap_row_best_is_chosen_on_its_own_split_per_seed():
    # val accuracy peaks at lr = 0.1 for every wd under A, and at lr = 0.1 (wd 0.1) / 1 (wd 1) under B;
    # test accuracy peaks elsewhere (lr = 0.01), so a best read off test would differ
    best_lr = {("A", 0.1): 0.1, ("A", 1.0): 0.1, ("B", 0.1): 0.1, ("B", 1.0): 1.0}
    rows, metrics = [], []
    for method in ("A", "B"):
        for lr in (0.01, 0.1, 1.0):
            for wd in (0.1, 1.0):
                for seed in (0, 1, 2):
                    rid = f"{method}-{lr}-{wd}-{seed}"
                    rows.append({"run_id": rid, "method": method, "lr": lr, "wd": wd, "seed": seed, "status": "ok"})
                    val = 0.9 - 0.1 * abs(np.log10(lr / best_lr[method, wd])) - 0.01 * seed
                    metrics += [(rid, 10, "val", "accuracy", val), (rid, 10, "test", "accuracy", 0.9 if lr == 0.01 else 0.5)]
    runs = pd.DataFrame(rows)
    metrics = pd.DataFrame(metrics, columns=["run_id", "step", "split", "metric", "value"])
    fig, plotted, summary = FIGURES.get("heatmap")(metrics, runs, {}, x="lr", y="wd", facet="method", row_best="val")
    assert len(summary) == 6 and set(summary.seed) == {0, 1, 2}
    a, b = summary[summary.method == "A"], summary[summary.method == "B"]
    assert (a["best lr at wd=0.1"] == 0.1).all() and (a["best lr at wd=1"] == 0.1).all()
    assert (b["best lr at wd=1"] == 1.0).all()
    assert np.allclose(a.best_lr_spread, 0.0) and np.allclose(b.best_lr_spread, 1.0)  # decades
    assert (~a.best_on_edge).all() and (a.edge_bests == 0).all()
    assert b.best_on_edge.all() and (b.edge_bests == 1).all()  # lr = 1 is the grid's top
    # a cell with a diverged seed is not eligible as a row's best
    runs.loc[runs.run_id == "A-0.1-0.1-2", "status"] = "diverged"
    _, _, summary = FIGURES.get("heatmap")(metrics, runs, {}, x="lr", y="wd", facet="method", row_best="val")
    assert (summary[summary.method == "A"]["best lr at wd=0.1"].tolist()) == [0.1, 0.1, 0.01]


def test_parabola_vertex_recovers_an_exact_parabola_and_refuses_a_bad_bracket():
    from descentlab.plots.grids import parabola_vertex

    x = np.array([-3.0, -2.5, -2.0])  # uneven spacing too, below
    assert parabola_vertex(x, 3.0 * (x + 2.37) ** 2 + 1.0) == pytest.approx(-2.37, abs=1e-12)
    x = np.array([0.0, 1.0, 3.0])
    assert parabola_vertex(x, (x - 1.4) ** 2) == pytest.approx(1.4, abs=1e-12)
    assert parabola_vertex([0.0, 1.0, 2.0], [5.0, 5.0, 5.0]) == 1.0  # flat: no curvature, the middle point
    assert parabola_vertex([0.0, 1.0, 2.0], [1.0, 1.0, 3.0]) == pytest.approx(0.5)  # a tie: halfway
    with pytest.raises(ValueError, match="lowest value in the middle"):
        parabola_vertex([0.0, 1.0, 2.0], [0.0, 1.0, 2.0])


def test_heatmap_fit_best_refines_each_rows_best_lr_between_grid_points():
    # val error is a parabola in log10(lr) with its minimum at 10**-1.8 (wd 0.1) and 10**-1.1 (wd 1):
    # the grid argmin is 0.01 and 0.1, the fitted bests are the true minima; lr 1e-3 and 1 bound the grid
    centre = {0.1: -1.8, 1.0: -1.1}
    grid = (0.001, 0.01, 0.1, 1.0)
    rows, metrics = [], []
    for wd in (0.1, 1.0):
        for lr in grid:
            for seed in (0, 1):
                rid = f"{lr}-{wd}-{seed}"
                rows.append({"run_id": rid, "lr": lr, "wd": wd, "seed": seed, "status": "ok"})
                val = 0.9 - 0.05 * (np.log10(lr) - centre[wd]) ** 2
                metrics += [(rid, 10, "val", "accuracy", val), (rid, 10, "test", "accuracy", 0.5)]
    runs = pd.DataFrame(rows)
    metrics = pd.DataFrame(metrics, columns=["run_id", "step", "split", "metric", "value"])
    _, _, summary = FIGURES.get("heatmap")(metrics, runs, {}, x="lr", y="wd", row_best="val", fit_best=True)
    assert (summary["best lr at wd=0.1"] == 0.01).all() and (summary["best lr at wd=1"] == 0.1).all()
    assert np.allclose(np.log10(summary["fitted best lr at wd=0.1"]), -1.8)
    assert np.allclose(np.log10(summary["fitted best lr at wd=1"]), -1.1)
    assert np.allclose(summary.best_lr_spread, 1.0) and np.allclose(summary.fitted_best_lr_spread, 0.7)
    # a diverged neighbour leaves the grid value (and a best on the edge is never moved)
    runs.loc[runs.run_id == "0.001-0.1-1", "status"] = "diverged"
    _, _, summary = FIGURES.get("heatmap")(metrics, runs, {}, x="lr", y="wd", row_best="val", fit_best=True)
    assert summary.set_index("seed").loc[1, "fitted best lr at wd=0.1"] == 0.01
    assert np.isclose(np.log10(summary.set_index("seed").loc[0, "fitted best lr at wd=0.1"]), -1.8)
    with pytest.raises(ValueError, match="fit_best .* needs row_best"):
        FIGURES.get("heatmap")(metrics, runs, {}, x="lr", y="wd", fit_best=True)


def test_learning_curves_value_at_steps_and_best_of_a_sweep_on_its_edge():
    # the sweep tried lr 0.1, 0.3, 1 for A and 0.1, 0.3 for B; the reruns of the best: A at 0.3, B at 0.3
    sweep = pd.DataFrame([{"run_id": f"{m}{lr}", "method": m, "lr": lr, "seed": 0, "status": "ok"}
                          for m, lrs in (("A", (0.1, 0.3, 1.0)), ("B", (0.1, 0.3))) for lr in lrs])
    tuned = pd.DataFrame([(f"{m}-{s}", m, 0.3, s, "ok", step, "train", "loss", 1.0 / (step + 1) + s)
                          for m in ("A", "B") for s in (1, 2) for step in (0, 5, 10, 20)],
                         columns=["run_id", "method", "lr", "seed", "status", "step", "split", "metric", "value"])
    panels = [{"split": "train", "metric": "loss", "log": True}]
    fig, _, summary = FIGURES.get("learning_curves")(pd.DataFrame(columns=["run_id", "step", "split", "metric", "value"]),
                                                     sweep, {"t": tuned}, table="t", hue="method", panels=panels,
                                                     at_steps=[7, 20], best_of="lr")
    row = summary[summary.run_id == "A-2"].iloc[0]
    assert row["train loss at step 7"] == pytest.approx(1 / 6 + 2) and row["train loss at step 20"] == pytest.approx(1 / 21 + 2)
    assert row["final train loss"] == pytest.approx(1 / 21 + 2)
    assert not summary.set_index("run_id").loc["A-1", "lr_on_edge"] and summary.set_index("run_id").loc["B-1", "lr_on_edge"]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["A, lr 0.3", "B, lr 0.3 (grid edge)"]
    with pytest.raises(ValueError, match="best_of"):
        FIGURES.get("learning_curves")(tuned, sweep, {}, hue="method", best_of="lr")
    _, plotted, summary = FIGURES.get("learning_curves")(tuned, sweep, {"t": tuned}, table="t", hue="method",
                                                         panels=panels, where="seed == 2")
    assert set(summary.run_id) == {"A-2", "B-2"} and set(plotted.run_id) == {"A-2", "B-2"}


def test_learning_curves_best_of_several_axes_flags_each_axis_edge():
    # the sweep tried lr 0.1, 0.3, 1 and wd 0, 0.01, 0.1 for A and B; A's best is (0.3, 0.1), B's (1, 0.01)
    sweep = pd.DataFrame([{"run_id": f"{m}{lr}-{wd}", "method": m, "lr": lr, "wd": wd, "seed": 0, "status": "ok"}
                          for m in ("A", "B") for lr in (0.1, 0.3, 1.0) for wd in (0.0, 0.01, 0.1)])
    best = {"A": (0.3, 0.1), "B": (1.0, 0.01)}
    tuned = pd.DataFrame([(f"{m}-{s}", m, *best[m], s, "ok", step, "train", "loss", 1.0 / (step + 1))
                          for m in ("A", "B") for s in (1, 2) for step in (0, 10)],
                         columns=["run_id", "method", "lr", "wd", "seed", "status", "step", "split", "metric", "value"])
    panels = [{"split": "train", "metric": "loss", "log": True}]
    fig, _, summary = FIGURES.get("learning_curves")(pd.DataFrame(columns=["run_id", "step", "split", "metric", "value"]),
                                                     sweep, {"t": tuned}, table="t", hue="method", panels=panels,
                                                     best_of=["lr", "wd"])
    flags = summary.set_index("run_id")
    assert not flags.loc["A-1", "lr_on_edge"] and flags.loc["A-1", "wd_on_edge"]
    assert flags.loc["B-2", "lr_on_edge"] and not flags.loc["B-2", "wd_on_edge"]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["A, lr 0.3, wd 0.1 (grid edge)", "B, lr 1.0 (grid edge), wd 0.01"]
    with pytest.raises(ValueError, match="best_of"):
        FIGURES.get("learning_curves")(tuned, sweep, {"t": tuned}, table="t", hue="method", best_of=["lr", "momentum"])


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


def three_seed_table(finals):
    """A rerun_best-like table with reruns only: ``finals`` maps (problem,
    optimizer) to the final test losses of seeds 1, 2, 3 (NaN: diverged)."""
    rows = []
    for (prob, opt), values in finals.items():
        for seed, last in zip((1, 2, 3), values):
            status = "diverged" if np.isnan(last) else "ok"
            for step, value in ((10, 2.0), (20, last)):
                if not np.isnan(value):
                    rows.append({"problem": prob, "optimizer": opt, "lr": 1, "seed": seed, "role": "rerun", "status": status,
                                 "run_id": f"{prob}{opt}{seed}", "step": step, "split": "test", "metric": "loss", "value": value})
    return pd.DataFrame(rows)


def test_tuned_summary_compares_each_optimizer_with_the_winner_and_a_reference_seed_by_seed():
    from scipy import stats

    nan = np.nan
    finals = {("P", "A"): (1.0, 1.1, 1.2), ("P", "B"): (1.5, 1.7, 1.6), ("P", "C"): (1.05, 1.2, 1.2),
              ("Q", "A"): (2.0, 2.1, 2.2), ("Q", "B"): (1.0, 1.2, 1.1), ("Q", "C"): (1.0, nan, 1.1)}
    _, _, summary = FIGURES.get("tuned_curves")(None, None, {"tuned": three_seed_table(finals)}, reference="A")
    s = summary.set_index(["problem", "optimizer"])
    # B - A on P, seed by seed: 0.5, 0.6, 0.4; the 95% t-interval by scipy, independently
    diffs = np.array([0.5, 0.6, 0.4])
    low, high = stats.t.interval(0.95, 2, loc=diffs.mean(), scale=stats.sem(diffs))
    assert s.loc[("P", "B"), "gap_to_winner"] == pytest.approx(0.5)
    assert s.loc[("P", "B"), ["gap_to_winner_low", "gap_to_winner_high"]].tolist() == pytest.approx([low, high])
    assert s.loc[("P", "B"), "beaten_by_winner"] and not s.loc[("P", "A"), "beaten_by_winner"]  # the winner itself
    assert not s.loc[("P", "C"), "beaten_by_winner"]  # 0.05, 0.1, 0: its interval reaches below 0
    assert s.loc[("Q", "C"), "beaten_by_winner"]  # a diverged seed against a winner with none
    assert s.loc[("P", "A"), "problems_beaten"] == 1 and s.loc[("Q", "B"), "problems_beaten"] == 1
    # against the reference A: gain = A - B, positive when B is better
    assert s.loc[("Q", "B"), "gain_over_ref"] == pytest.approx(1.0) and s.loc[("Q", "B"), "beats_ref"]
    assert not s.loc[("P", "B"), "beats_ref"] and s.loc[("P", "B"), "gain_over_ref"] == pytest.approx(-0.5)
    assert not s.loc[("Q", "C"), "beats_ref"]  # better on its two finite seeds, but one diverged
    assert s.loc[("Q", "B"), "problems_beating_ref"] == 1 and (s["reference"] == "A").all()
    assert not s.loc[("P", "A"), "beats_ref"]  # no better than itself
    with pytest.raises(ValueError, match="reference 'Z' is not a optimizer"):
        FIGURES.get("tuned_curves")(None, None, {"tuned": three_seed_table(finals)}, reference="Z")


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


def test_lr_sensitivity_marks_a_run_stuck_at_its_initial_loss_and_never_picks_it_as_best():
    runs = pd.DataFrame({"run_id": [f"r{i}" for i in range(4)], "problem": "P", "optimizer": "A",
                         "lr": [1, 3, 10, 30], "seed": 0, "status": "ok"})
    # (first, final) val loss per run: lr 30 ends at 2.25 of 2.3 (ratio 0.98: stuck); lr 10 at 2.0 (0.87: trains)
    first_final = [(2.3, 1.2), (2.3, 1.0), (2.3, 2.0), (2.3, 2.25)]
    rows = [{"run_id": f"r{i}", "step": step, "split": "val", "metric": "loss", "value": v}
            for i, pair in enumerate(first_final) for step, v in zip((0, 10), pair)]
    metrics = pd.DataFrame(rows)
    _, plotted, summary = FIGURES.get("lr_sensitivity")(metrics, runs, None, stuck_ratio=0.9, tolerance=10.0)
    assert plotted.set_index("lr")["stuck"].to_dict() == {1: False, 3: False, 10: False, 30: True}
    s = summary.iloc[0]
    assert s["stuck"] == 1 and s["near_best"] == 3  # a tolerance of 1000% takes every run that trained, not the stuck one
    assert s["best_lr"] == 3 and not s["on_edge"]
    assert s["log10_range"] == pytest.approx(np.log10(2.25 / 1.0))  # the spread still sees the stuck run
    # a stuck run is never the best: here the only run below its start by more than 10% is lr 1
    stuck_low = pd.DataFrame([{**r, "value": 2.2} if r["run_id"] != "r0" and r["step"] == 10 else r for r in rows])
    _, _, summary2 = FIGURES.get("lr_sensitivity")(metrics=stuck_low, runs=runs, stuck_ratio=0.9)
    assert summary2.iloc[0]["best_lr"] == 1 and summary2.iloc[0]["edge"] == "low" and summary2.iloc[0]["stuck"] == 3
    # off by default, and a clear error for an accuracy metric
    assert FIGURES.get("lr_sensitivity")(metrics, runs, None)[2].iloc[0]["stuck"] == 0
    with pytest.raises(ValueError, match="stuck_ratio needs a loss metric"):
        FIGURES.get("lr_sensitivity")(metrics.assign(metric="accuracy"), runs, None, metric="accuracy", stuck_ratio=0.9)


def test_lr_sensitivity_draws_a_panel_whose_every_run_is_stuck(tmp_path):
    # every run back at its initial loss (as at smoke scale): no point on the log axis, still a figure
    runs = pd.DataFrame({"run_id": ["r0", "r1"], "problem": "P", "optimizer": "A", "lr": [1, 3], "seed": 0, "status": "ok"})
    metrics = pd.DataFrame([{"run_id": r, "step": step, "split": "val", "metric": "loss", "value": 2.3}
                            for r in ("r0", "r1") for step in (0, 10)])
    fig, _, summary = FIGURES.get("lr_sensitivity")(metrics, runs, None, stuck_ratio=0.9, title="t")
    fig.savefig(tmp_path / "f.png")
    assert summary.iloc[0]["stuck"] == 2 and np.isnan(summary.iloc[0]["best"])
