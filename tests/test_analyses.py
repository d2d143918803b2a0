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


def test_count_outliers_finds_the_largest_gap():
    from descentlab.analyses.curvature import count_outliers

    assert count_outliers(np.array([3.0, 2.9, 2.0, 1.05, 0.95, 0.9])) == 3
    assert count_outliers(np.array([0.5, 10.0, 9.0, 0.4])) == 2  # order does not matter
    assert count_outliers(np.array([1.0])) == 1
