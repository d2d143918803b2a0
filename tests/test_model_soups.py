"""The model-soups figure: the best single model is chosen on the selection split
(never on the reported ones), per seed, and every merge is reported next to it."""

import pandas as pd
import pytest

from descentlab.plots import FIGURES
from descentlab.plots.model_soups import final_accuracies, soup_summary


def hand_made():
    """Seed 0: run a is best on val, b best on test; seed 1: c best on val, d diverged (val 0.99)."""
    runs = pd.DataFrame([
        {"run_id": "a", "ft": "x", "seed": 0, "status": "ok"},
        {"run_id": "b", "ft": "y", "seed": 0, "status": "ok"},
        {"run_id": "c", "ft": "x", "seed": 1, "status": "ok"},
        {"run_id": "d", "ft": "y", "seed": 1, "status": "diverged"},
        {"run_id": "m0", "merge": "soup", "rule": "uniform", "seed": 0, "status": "ok"},
        {"run_id": "m1", "merge": "soup", "rule": "uniform", "seed": 1, "status": "ok"},
    ])
    acc = {  # run: (val, test, shifted)
        "a": (0.8, 0.6, 0.3), "b": (0.7, 0.9, 0.5), "c": (0.75, 0.7, 0.4), "d": (0.99, 0.1, 0.1),
        "m0": (0.78, 0.65, 0.45), "m1": (0.74, 0.72, 0.41),
    }
    rows = []
    for rid, values in acc.items():
        for split, v in zip(("val", "test", "test_shifted"), values):
            rows.append({"run_id": rid, "step": 10, "split": split, "metric": "accuracy", "value": v})
            rows.append({"run_id": rid, "step": 0, "split": split, "metric": "accuracy", "value": 0.0})  # not final
            rows.append({"run_id": rid, "step": 10, "split": split, "metric": "loss", "value": 9.0})
    return pd.DataFrame(rows), runs


def test_best_single_is_chosen_on_validation_among_runs_that_did_not_diverge():
    metrics, runs = hand_made()
    table = final_accuracies(metrics, runs, ["val", "test", "test_shifted"])
    summary = soup_summary(table, "ft", "test", "test_shifted", "val").set_index(["model", "seed"])
    assert summary.loc[("best-single", 0), "member"] == "x"  # a, not b (best on test)
    assert summary.loc[("best-single", 0), ["test_accuracy", "shifted_accuracy"]].tolist() == [0.6, 0.3]
    assert summary.loc[("best-single", 1), "member"] == "x"  # c: d diverged
    assert summary.loc[("soup", 1), ["val_accuracy", "test_accuracy", "shifted_accuracy"]].tolist() == [0.74, 0.72, 0.41]
    assert summary.loc[("soup", 0), "best_single_val_accuracy"] == 0.8
    assert summary.loc[("soup", 1), "n_singles_diverged"] == 1


def test_the_figure_draws_and_returns_its_tables():
    metrics, runs = hand_made()
    fig, plotted, summary = FIGURES.get("soup_scatter")(metrics, runs, {}, individual="ft", title="t")
    assert len(plotted) == 6 and sorted(summary["model"].unique()) == ["best-single", "soup"]
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["fine-tuned models (3)", "best single (on val), per seed", "soup"]
    with pytest.raises(ValueError, match="no label 'lr'"):
        FIGURES.get("soup_scatter")(metrics, runs, {}, individual="lr")
