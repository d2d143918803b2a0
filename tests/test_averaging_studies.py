"""The analyses and figures of the averaging studies (swa, averaging-during-training,
ema-scaling), checked on tiny hand-made runs and tables against answers computed
here by hand: the network's forward pass written out, losses of known weights,
closed forms of the post-hoc EMA's inner products."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from descentlab.analyses import ANALYSES
from descentlab.data import DATASETS
from descentlab.plots import FIGURES
from descentlab.plots.averaging import (
    curve_gap,
    interior_optimum,
    line_table,
    outward_rise,
    swa_line_summary,
)
from descentlab.runs import Run
from descentlab.spec import run_id, validate
from descentlab.train.averagers import p_dot_p, sigma_rel_to_gamma
from descentlab.train.averagers.power_ema import FORMAT

DATA = {"name": "gaussian_mixture", "n_samples": 200, "dim": 3, "n_classes": 3}
MODEL = {"name": "mlp", "width": 4, "depth": 1}


# -- post-hoc EMA inner products for short EMAs ---------------------------------------------


@pytest.mark.parametrize("sigma_rel", [0.002, 0.01])
def test_inner_product_of_a_short_profile_with_itself_is_its_closed_form(sigma_rel):
    """int_0^t ((g+1) tau^g / t^(g+1))^2 dtau = (g+1)^2 / ((2g+1) t); the powers
    alone overflow float64 here (g ~ 4,900 and 125,000 at t = 2,000)."""
    g, t = sigma_rel_to_gamma(sigma_rel), 2000.0
    assert float(p_dot_p(t, g, t, g)) == pytest.approx((g + 1) ** 2 / ((2 * g + 1) * t), rel=1e-9)


def test_inner_products_scale_as_one_over_time():
    """<p(c t_a), p(c t_b)> = <p(t_a), p(t_b)> / c: large times give the small times' value."""
    g_a, g_b = sigma_rel_to_gamma(0.01), sigma_rel_to_gamma(0.05)
    small = float(p_dot_p(2.0, g_a, 1.9, g_b))
    assert np.isfinite(small) and small > 0
    assert float(p_dot_p(2000.0, g_a, 1900.0, g_b)) == pytest.approx(small / 1000.0, rel=1e-9)


# -- hand-made runs ----------------------------------------------------------------------------


def _weights(seed):
    g = torch.Generator().manual_seed(seed)
    return {"1.weight": torch.randn(4, 3, generator=g), "1.bias": torch.randn(4, generator=g),
            "3.weight": torch.randn(3, 4, generator=g), "3.bias": torch.randn(3, generator=g)}


def _forward(w, x):
    """The MLP (flatten, linear, relu, linear) written out."""
    return F.relu(x @ w["1.weight"].T + w["1.bias"]) @ w["3.weight"].T + w["3.bias"]


def _run_dir(root, spec, files, status="ok"):
    spec = validate(spec)
    rid = run_id(spec)
    d = root / "runs" / rid
    (d / "checkpoints").mkdir(parents=True)
    (d / "status.json").write_text(json.dumps({"status": status}))
    for name, content in files.items():
        torch.save(content, d / name)
    return rid, spec, d


@pytest.fixture()
def swa_runs(tmp_path):
    """A parent (the SGD solution: weights B at its last step 10) and a child
    with an SWA averager whose final SWA weights are A, and one without."""
    data = DATASETS.build(DATA)
    data_file = tmp_path / "data.pt"
    data.save(data_file)
    base = {"dataset": DATA, "model": MODEL, "steps": 10}
    a, b = _weights(1), _weights(2)
    pid, _, _ = _run_dir(tmp_path, base, {"final.pt": b})
    init = {"run": pid, "step": 10, "restore": "optimizer", "exclude": []}
    child = dict(base, steps=20, init=init, averaging=[{"kind": "swa", "start": 10, "every": 5}])
    cid, cspec, cdir = _run_dir(tmp_path, child, {"final.pt": _weights(3), "final.swa.pt": a})
    plain = dict(base, steps=20, init=init)
    qid, qspec, qdir = _run_dir(tmp_path, plain, {"final.pt": _weights(4)})
    runs = [Run(cid, cspec, {"method": "SWA", "seed": 0}, "s", "sweep", cdir, data_file),
            Run(qid, qspec, {"method": "SGD", "seed": 0}, "s", "sweep", qdir, data_file)]
    return runs, data, a, b


def test_swa_line_evaluates_the_line_through_swa_and_the_parent_weights(swa_runs):
    runs, data, a, b = swa_runs
    table = ANALYSES.get("swa_line")(runs, lo=-1.0, hi=2.0, n_points=7, splits=["train", "test"])
    assert set(table["run_id"]) == {runs[0].run_id}  # the run without SWA is left out
    assert sorted(table["alpha"].unique()) == pytest.approx([-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0])
    length = float(torch.sqrt(sum(((b[k] - a[k]) ** 2).sum() for k in a)))
    for row in table.itertuples():
        w = {k: (1 - row.alpha) * a[k] + row.alpha * b[k] for k in a}
        x, y = data.x[row.split], data.y[row.split]
        out = _forward(w, x)
        assert row.loss == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-5)
        assert row.error == pytest.approx(float((out.argmax(1) != y).double().mean()), abs=1e-9)
        assert row.distance == pytest.approx(row.alpha * length, rel=1e-6)
        assert row.method == "SWA"


def test_swa_line_needs_a_run_with_the_averager(swa_runs):
    runs, *_ = swa_runs
    with pytest.raises(ValueError, match="no finished run with an SWA averager 'swa'"):
        ANALYSES.get("swa_line")(runs[1:])
    with pytest.raises(ValueError, match="must cover both solutions"):
        ANALYSES.get("swa_line")(runs, lo=0.2, hi=2.0)


def test_swa_line_recomputes_batchnorm_statistics_at_each_point(tmp_path):
    """With BatchNorm, each point's running mean is the training set's mean of the
    conv output (written out here) at that point's weights, not an interpolation."""
    spec_data = {"name": "gaussian_mixture", "n_samples": 100, "dim": 6, "n_classes": 2}
    data = DATASETS.build(spec_data)
    data_file = tmp_path / "data.pt"
    data.save(data_file)
    model = {"name": "cnn", "channels": 2, "depth": 1, "batchnorm": True}
    from descentlab.models import build_model

    def weights(seed):
        torch.manual_seed(seed)
        net = build_model(model, data.input_shape, data.num_outputs)
        with torch.no_grad():
            net[2].running_mean.fill_(5.0 * seed)  # wrong on purpose: must be recomputed
        return net.state_dict()

    a, b = weights(1), weights(2)
    base = {"dataset": spec_data, "model": model, "steps": 10}
    pid, _, _ = _run_dir(tmp_path, base, {"final.pt": b})
    child = dict(base, steps=20, init={"run": pid, "step": 10, "restore": "optimizer", "exclude": []},
                 averaging=[{"kind": "swa", "start": 10}])
    cid, cspec, cdir = _run_dir(tmp_path, child, {"final.pt": a, "final.swa.pt": a})
    run = Run(cid, cspec, {"seed": 0}, "s", "sweep", cdir, data_file)
    table = ANALYSES.get("swa_line")([run], lo=0.0, hi=1.0, n_points=3, splits=["train"])
    x, y = data.x["train"], data.y["train"]
    for row in table.itertuples():
        w = {k: (1 - row.alpha) * a[k].float() + row.alpha * b[k].float() for k in a if a[k].is_floating_point()}
        conv = F.conv1d(x.unsqueeze(1), w["1.weight"], None, padding=1)  # (n, channels, length)
        mean = conv.mean(dim=(0, 2))
        var = conv.var(dim=(0, 2), unbiased=False)
        h = F.relu((conv - mean[None, :, None]) / torch.sqrt(var[None, :, None] + 1e-5) * w["2.weight"][None, :, None]
                   + w["2.bias"][None, :, None])
        out = h.mean(dim=2) @ w["6.weight"].T + w["6.bias"]
        # eval mode uses the recomputed running variance (unbiased): a tiny difference from var
        assert row.loss == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-3)


def _posthoc_run(tmp_path, data, data_file):
    """A run whose post-hoc EMA record has snapshots of two profiles at t = 5 and 10."""
    snapshots = []
    for t, step in ((5, 4), (10, 9)):
        for k, sigma in enumerate((0.05, 0.10)):
            snapshots.append({"step": step, "t": t, "sigma_rel": sigma, "gamma": sigma_rel_to_gamma(sigma),
                              "weights": _weights(10 * t + k)})
    record = {"format": FORMAT, "sigma_rels": [0.05, 0.10], "gammas": [s["gamma"] for s in snapshots[:2]],
              "snapshots": snapshots}
    spec = {"dataset": DATA, "model": MODEL, "steps": 9,
            "averaging": [{"kind": "posthoc_ema", "sigma_rels": [0.05, 0.1], "snapshot_every": 5}]}
    rid, spec, d = _run_dir(tmp_path, spec, {"final.pt": _weights(0), "final.posthoc_ema.pt": record})
    return Run(rid, spec, {"seed": 3}, "s", "sweep", d, data_file), snapshots


def test_posthoc_ema_lengths_at_a_tracked_length_is_that_profile(tmp_path):
    """Reconstructing a tracked profile's own length at the last step gives that
    profile's last snapshot exactly (least squares on a system it solves)."""
    data = DATASETS.build(DATA)
    data_file = tmp_path / "data.pt"
    data.save(data_file)
    run, snapshots = _posthoc_run(tmp_path, data, data_file)
    table = ANALYSES.get("posthoc_ema_lengths")([run], sigma_rels=[0.05, 0.10], splits=["val"])
    assert list(table["sigma_rel"]) == [0.05, 0.10] and (table["seed"] == 3).all()
    x, y = data.x["val"], data.y["val"]
    for row, snap in zip(table.itertuples(), snapshots[2:]):
        assert row.loss == pytest.approx(float(F.cross_entropy(_forward(snap["weights"], x), y)), rel=1e-4)
    with pytest.raises(ValueError, match="no power-function profile"):
        ANALYSES.get("posthoc_ema_lengths")([run], sigma_rels=[0.5])


# -- figure helpers on hand-made tables ---------------------------------------------------------


def test_outward_rise_on_a_parabola():
    alphas = np.linspace(-1, 2, 31)
    losses = (alphas - 0.2) ** 2
    assert outward_rise(alphas, losses, at=1.0, away=0.5) == pytest.approx(1.3**2 - 0.8**2)
    assert outward_rise(alphas, losses, at=0.0, away=-0.5) == pytest.approx(0.7**2 - 0.2**2)
    assert np.isnan(outward_rise(alphas, losses, at=1.0, away=1.5))  # off the sampled line


def test_swa_line_summary_per_solution():
    alphas = np.linspace(-1, 2, 31)
    rows = []
    for split in ("train", "test"):
        for a in alphas:
            rows.append({"run_id": "r", "seed": 7, "alpha": a, "split": split, "loss": (a + 0.3) ** 2 + 1.0,
                         "error": 0.1 + 0.05 * a, "sgd_swa_distance": 4.0})
    summary = swa_line_summary(pd.DataFrame(rows), ["seed"], step_out=0.5).set_index("solution")
    assert summary.loc["SWA", "train_loss"] == pytest.approx(1.09)
    assert summary.loc["SGD", "test_error"] == pytest.approx(0.15)
    assert summary.loc["SGD", "outward_rise"] == pytest.approx(1.8**2 - 1.3**2)
    assert summary.loc["SWA", "outward_rise"] == pytest.approx(0.2**2 - 0.3**2)
    assert summary.loc["SWA", "sgd_outward_rise"] == summary.loc["SGD", "outward_rise"]
    assert summary.loc["SWA", "min_alpha"] == pytest.approx(-0.3) and not summary.loc["SWA", "min_on_edge"]
    assert summary.loc["SWA", "excess_over_min"] == pytest.approx(0.09)


def test_interior_optimum_and_curve_gap():
    assert interior_optimum([0.3, 0.1, 0.2], [2.0, 3.0, 1.0]) == (0.2, 1.0, True)
    assert interior_optimum([0.1, 0.2, 0.3], [1.0, 2.0, 3.0])[2] is False
    a = pd.DataFrame({"examples": [0, 4, 8], "value": [1.0, 2.0, 3.0]})
    b = pd.DataFrame({"examples": [0, 8, 16], "value": [1.5, 2.0, 9.0]})
    assert curve_gap(a, b) == pytest.approx((0.5 + 1.0) / 2)


def _metrics(rows):
    return pd.DataFrame(rows, columns=["run_id", "step", "split", "metric", "value"])


def test_averager_curves_summary_and_errors():
    metrics = _metrics([(r, s, "val", m, v + (0.5 if m == "loss" else 0.0) + s / 100 + i)
                        for i, r in enumerate(["a", "b"]) for s in (0, 10, 20) for m, v in (("loss", 1.0), ("loss@ema", 0.0))]
                       + [("a", 20, "test", "accuracy@ema", 0.75)])
    runs = pd.DataFrame({"run_id": ["a", "b"], "training": ["x", "x"], "seed": [0, 1], "status": ["ok", "ok"]})
    lines = [{"label": "last iterate", "where": "training == 'x'"}, {"label": "EMA", "where": "training == 'x'", "averager": "ema"}]
    fig, plotted, summary = FIGURES.get("averager_curves")(metrics, runs, {}, lines=lines, at_steps=[15],
                                                           panels=[{"split": "val", "metric": "loss"}])
    s = summary.set_index(["line", "seed"])
    assert s.loc[("EMA", 1), "val loss at step 15"] == pytest.approx(1.1)  # the record at step 10
    assert s.loc[("last iterate", 0), "final val loss"] == pytest.approx(1.7)
    _, _, summary = FIGURES.get("averager_curves")(metrics, runs, {}, lines=lines[1:],
                                                   panels=[{"split": "test", "metric": "error"}])
    assert summary["final test error"].tolist() == pytest.approx([0.25])  # 1 - accuracy
    with pytest.raises(ValueError, match="record no val 'loss@emma'"):
        FIGURES.get("averager_curves")(metrics, runs, {}, lines=[{"label": "E", "averager": "emma"}])
    with pytest.raises(ValueError, match="matches no run"):
        FIGURES.get("averager_curves")(metrics, runs, {}, lines=[{"label": "E", "where": "training == 'y'"}])


def test_ema_scaling_gaps_compare_curves_at_the_same_examples():
    rows = []
    for scaling in ("scaled", "unscaled"):
        for batch, steps in ((2, (0, 2, 4)), (4, (0, 1, 2))):
            rid = f"{scaling}{batch}"
            for step in steps:
                examples = step * batch
                ema = 1.0 + examples / 10 + (0.3 if scaling == "unscaled" and batch == 4 and step else 0.0)
                rows += [(rid, step, "val", "loss@ema", ema), (rid, step, "val", "loss", 2.0 + 0.1 * (batch == 4))]
    runs = pd.DataFrame({"run_id": ["scaled2", "scaled4", "unscaled2", "unscaled4"], "batch": ["2", "4", "2", "4"],
                         "ema": ["scaled", "scaled", "unscaled", "unscaled"], "seed": 0, "status": "ok"})
    _, _, summary = FIGURES.get("ema_scaling")(_metrics(rows), runs, {}, log=False)
    s = summary.set_index("ema")
    assert s.loc["scaled", "ema_gap"] == pytest.approx(0.0)
    assert s.loc["unscaled", "ema_gap"] == pytest.approx(0.2)  # 0 at 0 examples, 0.3 at 4 and 8
    assert s.loc["scaled", "iterate_gap"] == pytest.approx(0.1)
    assert (s["batch_size"] == 4).all() and (s["reference_batch"] == 2).all()


def test_line_table_names_the_missing_metric():
    metrics = _metrics([("a", 0, "val", "loss", 1.0)])
    runs = pd.DataFrame({"run_id": ["a"], "seed": [0], "status": ["ok"]})
    with pytest.raises(ValueError, match="give `lines`"):
        line_table(metrics, runs, [], "val", "loss", "f")
