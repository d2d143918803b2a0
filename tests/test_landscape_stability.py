"""Sharpness read off loss landscapes, matched-train-loss weights, and the
edge-of-stability and loss-landscape figure summaries the claims check."""

import numpy as np
import pandas as pd
import pytest
import torch

from descentlab.analyses import ANALYSES
from descentlab.analyses.landscape import rise_radius, slice_curvature, weights_at_train_loss
from descentlab.claims import evaluate_claims
from descentlab.data import SplitData
from descentlab.plots import FIGURES
from descentlab.plots.stability import edge_of_stability_summary


def test_rise_radius_on_piecewise_linear_slices():
    a = np.linspace(-1, 1, 21)
    # slopes 3 on the left, 1 on the right: a rise of 0.3 at |alpha| = 0.1 and 0.3
    left, right = rise_radius(a, np.where(a < 0, -3 * a, a) + 0.7, rise=0.3)
    assert left == pytest.approx(0.1, abs=1e-12) and right == pytest.approx(0.3, abs=1e-12)
    # between grid points (0.25 is not on the grid): linear interpolation is exact for a line
    left, right = rise_radius(a, 2 * np.abs(a), rise=0.5)
    assert left == pytest.approx(0.25, abs=1e-12) and right == pytest.approx(0.25, abs=1e-12)
    # never rises that far on the right: censored (NaN); a non-finite loss counts as risen
    loss = np.where(a < 0, np.inf, 0.01 * a)
    left, right = rise_radius(a, loss, rise=0.5)
    assert left == pytest.approx(0.1) and np.isnan(right)
    # unsorted input gives the same answer
    order = np.random.default_rng(0).permutation(21)
    assert rise_radius(a[order], (2 * np.abs(a))[order], 0.5) == pytest.approx((0.25, 0.25))


def test_rise_radius_and_curvature_reject_bad_slices():
    with pytest.raises(ValueError, match="alpha = 0"):
        rise_radius(np.linspace(-1, 1, 20), np.zeros(20), 0.1)
    with pytest.raises(ValueError, match="positive"):
        rise_radius(np.linspace(-1, 1, 21), np.zeros(21), 0.0)
    with pytest.raises(ValueError, match="equal-length"):
        rise_radius(np.linspace(-1, 1, 21), np.zeros(20), 0.1)
    with pytest.raises(ValueError, match="interior"):
        slice_curvature(np.linspace(0, 1, 11), np.zeros(11))
    with pytest.raises(ValueError, match="uneven"):
        slice_curvature(np.array([-0.2, 0.0, 0.1]), np.zeros(3))


def test_slice_curvature_is_exact_for_a_quadratic():
    a = np.linspace(-1, 1, 41)
    assert slice_curvature(a, 3.5 * a**2 - 0.2 * a + 1.0) == pytest.approx(7.0, rel=1e-12)


class FakeRun:
    """A finished run with three saved weights of a linear model: the
    weights scale with the step, so the loss falls with the step."""

    def __init__(self, steps=30, checkpoints=(10, 20)):
        self.run_id, self.labels, self.status = "r", {"batch_size": 32, "seed": 0}, "ok"
        self.spec = {"steps": steps, "checkpoints": list(checkpoints), "loss": {"name": "cross_entropy"}}
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 4, generator=g)
        y = (x[:, 0] > 0).long()
        self.data = SplitData(x={"train": x, "val": x[:8], "test": x[:16]}, y={"train": y, "val": y[:8], "test": y[:16]},
                              task="classification", num_outputs=2, input_shape=(4,))
        self.loaded = []

    def load(self, weights="final.pt", device="cpu"):
        self.loaded.append(weights)
        step = self.spec["steps"] if weights == "final.pt" else int(weights.split("_")[-1].split(".")[0])
        model = torch.nn.Linear(4, 2)
        with torch.no_grad():
            model.weight.copy_(torch.tensor([[-1.0, 0, 0, 0], [1.0, 0, 0, 0]]) * step / 10)
            model.bias.zero_()
        return model.eval(), self.data


def _ce(model, data):
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model(data.x["train"]), data.y["train"]))


def test_weights_at_train_loss_takes_the_first_checkpoint_at_or_below_the_target():
    run = FakeRun()
    losses = {s: _ce(run.load(w)[0], run.data) for s, w in ((10, "checkpoints/step_000010.pt"), (20, "checkpoints/step_000020.pt"), (30, "final.pt"))}
    assert losses[10] > losses[20] > losses[30]
    run.loaded.clear()
    _, _, step, loss, reached = weights_at_train_loss(run, _ce, target=(losses[10] + losses[20]) / 2)
    assert (step, reached) == (20, True) and loss == pytest.approx(losses[20])
    assert run.loaded == ["checkpoints/step_000010.pt", "checkpoints/step_000020.pt"]
    _, _, step, loss, reached = weights_at_train_loss(run, _ce, target=losses[30] / 2)
    assert (step, reached) == (30, False) and loss == pytest.approx(losses[30])


def test_landscape_analysis_summarises_the_matched_weights():
    run = FakeRun()
    target = _ce(run.load("checkpoints/step_000020.pt")[0], run.data) + 1e-6
    table = ANALYSES.get("landscape")([run], n_examples=None, span=1.0, surface_points=5, line_points=21,
                                      line_directions=2, rise=0.05, at_train_loss=target)
    summary = table[table["kind"] == "summary"].iloc[0]
    assert summary["weights_step"] == 20 and summary["reached_target"] and summary["target_train_loss"] == target
    assert summary["train_loss"] == pytest.approx(target, abs=1e-5)
    lines = table[table["kind"] == "line"]
    assert sorted(lines["direction"].unique()) == [0, 1]
    sides = np.concatenate([rise_radius(p["alpha"], p["loss"], 0.05) for _, p in lines.groupby("direction")])
    assert summary["radius"] == pytest.approx(np.where(np.isnan(sides), 1.0, sides).mean())
    assert summary["radius_censored"] == bool(np.isnan(sides).any())
    center = table[(table["kind"] == "surface") & (table["alpha"] == 0) & (table["beta"] == 0)]
    assert center["loss"].iloc[0] == pytest.approx(summary["train_loss"])
    with pytest.raises(ValueError, match="odd"):
        ANALYSES.get("landscape")([run], line_points=20)


def eos_tables(diverged_lr=None):
    """Sharpness rising linearly from 0.5 to 2/lr at step 400, then flat; the
    loss falls as 1/(1 + step/100)."""
    rows, runs = [], []
    for lr in (0.5, 1.0):
        rid = f"lr{lr}"
        runs.append({"run_id": rid, "lr": lr, "seed": 0, "status": "diverged" if lr == diverged_lr else "ok"})
        for step in range(0, 1001, 100):
            sharp = 0.5 + (2 / lr - 0.5) * min(step / 400, 1.0)
            rows += [(rid, step, "train", "sharpness", sharp), (rid, step, "train", "loss", 1 / (1 + step / 100))]
    return pd.DataFrame(rows, columns=["run_id", "step", "split", "metric", "value"]), pd.DataFrame(runs)


def test_edge_of_stability_summary_by_hand():
    metrics, runs = eos_tables()
    fig, plotted, summary = FIGURES.get("edge_of_stability")(metrics, runs, {}, lr_axis="lr")
    row = summary.set_index("lr").loc[0.5]
    assert row["threshold"] == 4.0 and row["initial_ratio"] == pytest.approx(0.5 / 4)
    # 0.9 x 4 = 3.6 is first reached at step 400 (3.125 at 300)
    assert row["onset_step"] == 400 and row["late_start"] == 750 and row["onset_before_late"]
    assert row["ratio_to_threshold"] == pytest.approx(1.0)
    assert row["loss_ratio_after_onset"] == pytest.approx((1 / 11) / (1 / 5))
    assert row["loss_increases_after_onset"] == 0 and not row["diverged"]
    claims = [{"id": "at", "text": "t", "check": "all_rows", "options": {"holds_if": "abs(ratio_to_threshold - 1) <= 0.15 and not diverged"}}]
    assert evaluate_claims(claims, summary, {}, study="s", figure="f", scale="cpu")["holds"].iloc[0] == "yes"
    metrics, runs = eos_tables(diverged_lr=1.0)
    _, _, summary = FIGURES.get("edge_of_stability")(metrics, runs, {}, lr_axis="lr")
    assert summary.set_index("lr").loc[1.0, "diverged"]
    assert evaluate_claims(claims, summary, {}, study="s", figure="f", scale="cpu")["holds"].iloc[0] == "no"
    with pytest.raises(ValueError, match="late_fraction"):
        FIGURES.get("edge_of_stability")(metrics, runs, {}, lr_axis="lr", late_fraction=1.0)


def landscape_table(with_summary=True):
    rows = []
    for bs, width in ((32, 1.0), (1024, 0.5)):
        for seed in (0, 1, 2):
            rid = f"b{bs}-s{seed}"
            base = {"run_id": rid, "batch_size": bs, "seed": seed, "status": "ok"}
            for a in np.linspace(-1, 1, 5):
                for b in np.linspace(-1, 1, 5):
                    rows.append(dict(base, kind="surface", alpha=a, beta=b, loss=0.2 + (a**2 + b**2) / width))
                rows.append(dict(base, kind="line", direction=0, alpha=a, loss=0.2 + a**2 / width))
            if with_summary:
                rows.append(dict(base, kind="summary", weights_step=100, reached_target=True, target_train_loss=0.3,
                                 train_loss=0.2, test_accuracy=0.6 - 0.05 * (bs > 32) + 0.01 * seed, test_loss=1.0,
                                 radius=np.sqrt(0.1 * width), radius_censored=False, slice_curvature=2 / width, rise=0.1))
    rows.append({"run_id": "bad", "batch_size": 1024, "seed": 3, "status": "diverged", "kind": "none"})
    return pd.DataFrame(rows)


def test_loss_landscape_summary_has_one_row_per_finished_run_for_paired_claims():
    table = landscape_table()
    fig, data, summary = FIGURES.get("loss_landscape")(None, None, {"landscape": table}, by="batch_size")
    assert len(summary) == 6 and "bad" not in set(summary["run_id"])
    assert summary.set_index("run_id").loc["b1024-s0", "center_loss"] == pytest.approx(0.2)
    claims = [{"id": "sharper", "text": "t", "check": "paired",
               "options": {"column": "radius", "by": "batch_size", "a": 32, "b": 1024, "greater": True}},
              {"id": "worse", "text": "t", "check": "paired",
               "options": {"column": "test_accuracy", "by": "batch_size", "a": 32, "b": 1024, "greater": True, "margin": 0.06}}]
    result = evaluate_claims(claims, summary, {}, study="s", figure="f", scale="cpu").set_index("claim")
    # radius differences are all sqrt(0.1) - sqrt(0.05) > 0 with zero spread; accuracy gaps 0.05 < margin 0.06
    assert result.loc["sharper", "holds"] == "yes" and result.loc["worse", "holds"] == "no"
    # shared linear levels, from the lowest loss up to the flatter panel's highest (0.2 + 2 / 1.0)
    contours = [ax.collections[0] for ax in fig.axes[:2]]
    assert all(np.allclose(c.levels, np.linspace(0.2, 2.2, 13)[1:]) for c in contours)


def test_loss_landscape_still_draws_a_table_without_summaries():
    fig, data, summary = FIGURES.get("loss_landscape")(None, None, {"landscape": landscape_table(False)}, by="batch_size")
    assert len(summary) == 6 and {"min_loss", "edge_loss", "center_loss"} <= set(summary.columns)


def test_curvature_summary_counts_the_flipped_labels_the_model_reproduces():
    run = FakeRun()  # the model predicts class 1 exactly when x[:, 0] > 0, as the clean labels say
    data = run.data
    y = data.y["train"].clone()
    noisy = [0, 1, 2, 3]
    y[noisy] = 1 - y[noisy]  # flipped: the model now disagrees with all four ...
    y[[0, 1]] = data.y["train"][[0, 1]]  # ... except two, restored to what it predicts
    run.data = SplitData(x=data.x, y=dict(data.y, train=y), task=data.task, num_outputs=2, input_shape=(4,),
                         info={"noisy_indices": noisy})
    row = ANALYSES.get("curvature_summary")([run], n_examples=32, trace_probes=2)
    assert row["noisy_label_fit"].iloc[0] == pytest.approx(0.5)
    run.data = data  # no label noise: no column
    assert "noisy_label_fit" not in ANALYSES.get("curvature_summary")([run], n_examples=32, trace_probes=2).columns
