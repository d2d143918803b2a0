"""Calibration of square-loss outputs, reliability bins, the Hessian bulk edge,
and the calibration / hessian_spectrum figures and their claims."""

import numpy as np
import pandas as pd
import pytest
import torch

from descentlab.analyses.calibration import (
    expected_calibration_error,
    output_probabilities,
    probabilities,
    reliability_bins,
)
from descentlab.analyses.curvature import bulk_edge, count_outliers
from descentlab.claims import evaluate_claims
from descentlab.plots import FIGURES


def test_output_probabilities_clip_and_renormalise_by_hand():
    outputs = torch.tensor([[1.2, 0.3, -0.5], [0.2, 0.2, 0.1], [-1.0, -0.2, 0.0]])
    p = output_probabilities(outputs)
    assert torch.allclose(p[0], torch.tensor([1.0, 0.3, 0.0], dtype=torch.float64) / 1.3)
    assert torch.allclose(p[1], torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64))
    assert torch.allclose(p[2], torch.full((3,), 1 / 3, dtype=torch.float64))  # nothing positive: uniform
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        output_probabilities(torch.zeros(3))


def test_square_loss_outputs_are_read_as_probabilities_not_softmaxed():
    # an MSE net that outputs the one-hot target exactly is certain (confidence 1);
    # softmax of the same outputs says e / (e + C - 1), 0.23 for C = 10
    outputs = torch.eye(10)[:4]
    p_mse, how = probabilities(outputs, "mse")
    assert how == "outputs" and torch.allclose(p_mse.max(1).values, torch.ones(4, dtype=torch.float64))
    p_ce, how = probabilities(outputs, "cross_entropy")
    assert how == "softmax"
    assert torch.allclose(p_ce.max(1).values, torch.full((4,), np.e / (np.e + 9), dtype=torch.float64))


def test_reliability_bins_reproduce_the_ece():
    gen = torch.Generator().manual_seed(0)
    conf = torch.rand(500, generator=gen, dtype=torch.float64)
    correct = torch.rand(500, generator=gen, dtype=torch.float64) < conf**2
    rows = reliability_bins(conf, correct, bins=10)
    assert sum(r["count"] for r in rows) == 500
    by_hand = sum(r["count"] / 500 * abs(r["bin_accuracy"] - r["bin_confidence"]) for r in rows)
    assert by_hand == pytest.approx(expected_calibration_error(conf, correct, bins=10), abs=1e-12)
    assert all(r["bin_lo"] < r["bin_confidence"] <= r["bin_hi"] for r in rows)


def test_bulk_edge_is_the_largest_non_outlier_eigenvalue():
    lam = np.array([0.9, 5.0, 4.0, 1.0, 0.8])  # any order
    assert count_outliers(lam) == 2 and bulk_edge(lam, 2) == 1.0
    # the old edge, a 0.99 quantile of a density that is 99.9% at zero, would be ~0
    with pytest.raises(ValueError, match="top_k"):
        bulk_edge(lam, 5)


def calibration_table():
    rows = []
    for ds in ("A", "B"):
        for loss, acc in (("cross-entropy", 0.8), ("squentropy", 0.78), ("MSE", 0.75)):
            for seed in (0, 1, 2):
                base = {"run_id": f"{ds}-{loss}-{seed}", "dataset": ds, "loss": loss, "seed": seed, "status": "ok"}
                how = "outputs" if loss == "MSE" else "softmax"
                a = acc + 0.01 * seed
                ece = {"cross-entropy": 0.2, "squentropy": 0.1, "MSE": 0.05}[loss] + 0.01 * seed
                rows.append(dict(base, kind="run", probabilities=how, num_classes=10, accuracy=a, ece=ece,
                                 confidence=a + ece, ece_softmax=0.6 if loss == "MSE" else ece, confidence_softmax=0.2))
                rows.append(dict(base, kind="bin", probabilities=how, bin=13, bin_lo=13 / 15, bin_hi=14 / 15,
                                 count=50, bin_accuracy=a, bin_confidence=0.9))
    rows.append({"run_id": "B-MSE-9", "dataset": "B", "loss": "MSE", "seed": 9, "status": "diverged", "kind": "run"})
    rows.append({"run_id": "A-MSE-8", "dataset": "A", "loss": "MSE", "seed": 8, "status": "ok", "kind": "run",
                 "probabilities": "outputs", "num_classes": 10, "accuracy": 0.1, "ece": 0.0, "ece_softmax": 0.0})
    return pd.DataFrame(rows)


def test_calibration_figure_summary_has_paired_differences_and_marks_failures():
    table = calibration_table()
    fig, _, summary = FIGURES.get("calibration")(None, None, {"calibration": table}, reference="cross-entropy")
    row = summary[(summary.dataset == "B") & (summary.loss == "squentropy") & (summary.seed == 1)].iloc[0]
    assert row.accuracy_minus_reference == pytest.approx(-0.02) and row.ece_minus_reference == pytest.approx(-0.1)
    assert summary.loc[summary.run_id == "A-MSE-8", "at_chance"].item()  # 0.1 < 1.5 / 10
    assert summary.loc[summary.run_id == "B-MSE-9", "status"].item() == "diverged"  # listed, not dropped
    claims = [
        {"id": "ece", "text": "t", "check": "paired",
         "options": {"column": "ece", "by": "loss", "a": "squentropy", "b": "cross-entropy", "greater": False, "within": ["dataset"]}},
        {"id": "acc", "text": "t", "check": "paired",
         "options": {"column": "accuracy", "by": "loss", "a": "MSE", "b": "cross-entropy", "margin": -0.03, "within": ["dataset"]}},
    ]
    out = evaluate_claims(claims, summary, {}, study="s", figure="f", scale="cpu")
    # squentropy's ECE is 0.1 lower in every pair; MSE is exactly 0.05 less accurate: fails the 3-point margin
    assert list(out.holds) == ["yes", "no"]
    with pytest.raises(ValueError, match="no run has loss"):
        FIGURES.get("calibration")(None, None, {"calibration": table}, reference="hinge")


def test_calibration_figure_keeps_the_tuned_value_and_its_grid_edge_flag():
    table = calibration_table()
    table["lr_factor"] = np.where(table.loss == "MSE", 3, 1)
    table["on_edge"] = table.loss == "MSE"  # MSE's best lr is its grid's largest
    fig, _, summary = FIGURES.get("calibration")(None, None, {"calibration": table}, reference="cross-entropy", best_of="lr_factor")
    ok = summary[summary.status == "ok"]
    assert set(ok.loc[ok.loss == "MSE", "on_edge"]) == {True} and set(ok.loc[ok.loss != "MSE", "on_edge"]) == {False}
    assert set(ok.loc[ok.loss == "MSE", "lr_factor"]) == {3}
    # MSE's accuracy markers are open (no face colour), the others filled
    from matplotlib.collections import PathCollection

    drawn = [c for c in fig.axes[0].collections if isinstance(c, PathCollection) and len(c.get_offsets())]
    open_markers = [len(c.get_offsets()) for c in drawn if len(c.get_facecolors()) == 0]
    assert open_markers == [3, 3]  # MSE's three seeds on datasets A and B
    with pytest.raises(ValueError, match="on_edge"):
        FIGURES.get("calibration")(None, None, {"calibration": calibration_table()}, best_of="lr_factor")


def spectrum_table(edge_wide=1.2):
    rows = []
    for c in (3, 5):
        for w in (32, 128):
            for seed in (0, 1, 2):
                rid = f"{c}-{w}-{seed}"
                base = {"run_id": rid, "classes": str(c), "width": str(w), "seed": seed, "status": "ok"}
                edge = (edge_wide if w == 128 else 1.0) + 0.01 * seed
                lam = [5.0 + i for i in range(c - 1)][::-1] + [edge, edge * 0.9, edge * 0.8]
                rows += [dict(base, kind="eigenvalue", index=i + 1, value=v, residual=1e-8) for i, v in enumerate(lam)]
                grid = np.linspace(-0.5, 8, 50)
                rows += [dict(base, kind="density", eigenvalue=g, value=float(np.exp(-g**2 / 0.01)) + 1e-3) for g in grid]
                rows.append(dict(base, kind="summary", outliers=c - 1 + (1 if (c, w, seed) == (5, 128, 2) else 0),
                                 bulk_edge=edge, gap_ratio=5.0 / edge, top_eigenvalue=lam[0], num_params=100 * w))
    return pd.DataFrame(rows)


def test_spectrum_figure_summary_and_claims():
    fig, _, summary = FIGURES.get("hessian_spectrum")(None, None, {"spectrum": spectrum_table()})
    assert len(summary) == 12 and summary["width"].dtype.kind == "i"
    assert set(summary.outliers_minus_c1) == {0, 1}
    same = summary.set_index(["classes", "seed", "width"])["outliers_same_across_widths"]
    assert not same[(5, 2, 32)] and not same[(5, 2, 128)] and same[(3, 2, 128)]
    claims = [
        {"id": "c1", "text": "t", "check": "all_rows", "options": {"holds_if": "abs(outliers_minus_c1) <= 1"}},
        {"id": "same", "text": "t", "check": "all_rows", "options": {"holds_if": "outliers_same_across_widths"}},
        {"id": "edge", "text": "t", "check": "paired",
         "options": {"column": "bulk_edge", "by": "width", "a": 128, "b": 32, "within": ["classes"]}},
    ]
    out = evaluate_claims(claims, summary, {}, study="s", figure="f", scale="cpu")
    assert list(out.holds) == ["yes", "no", "yes"]
    _, _, flat = FIGURES.get("hessian_spectrum")(None, None, {"spectrum": spectrum_table(edge_wide=1.0)})
    assert evaluate_claims(claims[2:], flat, {}, study="s", figure="f", scale="cpu").holds.item() == "no"
