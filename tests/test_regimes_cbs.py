"""Studies scaling-regimes and critical-batch-size: the teacher_student teacher_seed
option, the random-feature regimes analysis, the noise-scale instrument and the
critical-batch analysis, each against an independent answer on a small input."""

import numpy as np
import pandas as pd
import pytest
import torch

from descentlab.analyses import ANALYSES
from descentlab.analyses.critical_batch import crossing_step, fit_tradeoff, noise_scale_near, tune
from descentlab.analyses.regimes import fit_exponent, fit_last_layer, next_dim_columns, seed_bootstrap_counts
from descentlab.data import build_dataset, teacher_weights
from descentlab.plots import FIGURES


# -- teacher_student: teacher_seed ---------------------------------------------------------------

def test_teacher_seed_fixes_the_teacher_across_sizes_and_sample_seeds():
    w1, w2 = teacher_weights(3, 8, 1, teacher_seed=5)
    for n, seed in ((200, 0), (500, 1)):
        d = build_dataset({"name": "teacher_student", "n_samples": n, "dim": 3, "teacher_width": 8, "noise": 0.0,
                           "seed": seed, "teacher_seed": 5})
        for split in ("train", "test"):
            x = d.x[split].double().numpy()
            expected = np.tanh(x @ w1) @ w2
            np.testing.assert_allclose(d.y[split].double().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_teacher_student_without_teacher_seed_is_unchanged():
    # the draw order before the option: inputs, then the teacher, then the noise, all from `seed`
    rng = np.random.default_rng(3)
    x = rng.standard_normal((100, 4))
    w1 = rng.standard_normal((4, 6)) / np.sqrt(4)
    w2 = rng.standard_normal((6, 1)) / np.sqrt(6)
    y = np.tanh(x @ w1) @ w2 + 0.1 * rng.standard_normal((100, 1))
    d = build_dataset({"name": "teacher_student", "n_samples": 100, "dim": 4, "teacher_width": 6, "seed": 3,
                       "val_fraction": 0.0, "test_fraction": 0.0})
    order = np.random.default_rng(3).permutation(100)
    np.testing.assert_allclose(d.y["train"].numpy(), y[order].astype(np.float32))


# -- scaling regimes ----------------------------------------------------------------------------

def test_fit_last_layer_matches_lstsq_and_the_minimum_norm_solution():
    rng = np.random.default_rng(0)
    tall, y = rng.standard_normal((50, 6)), rng.standard_normal((50, 1))
    np.testing.assert_allclose(fit_last_layer(tall, y, ridge=0.0), np.linalg.lstsq(tall, y, rcond=None)[0], atol=1e-10)
    wide, y = rng.standard_normal((6, 50)), rng.standard_normal((6, 1))
    np.testing.assert_allclose(fit_last_layer(wide, y, ridge=0.0), np.linalg.pinv(wide) @ y, atol=1e-10)


def test_seed_bootstrap_counts_resample_whole_seeds():
    seeds = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    counts = seed_bootstrap_counts(seeds, 50, np.random.default_rng(1))
    assert counts.shape == (50, 9)
    for s in (0, 1, 2):  # the points of one seed are drawn together
        block = counts[:, seeds == s]
        assert (block == block[:, :1]).all()
    np.testing.assert_array_equal(counts[:, [0, 3, 6]].sum(1), 3)  # three seeds drawn per resample


def test_fit_exponent_recovers_a_known_power_law_within_its_interval():
    rng = np.random.default_rng(2)
    x = np.repeat([8.0, 16, 32, 64, 128, 256], 10)
    seeds = np.tile(np.arange(10), 6)
    offset = np.exp(0.05 * rng.standard_normal(10))[seeds]  # a seed's whole curve shifts
    loss = (0.01 + 3.0 * x**-1.5) * offset * np.exp(0.01 * rng.standard_normal(len(x)))
    fit = fit_exponent(x, loss, seeds, n_resamples=100)
    assert fit["alpha_lower"] <= 1.5 <= fit["alpha_upper"]
    assert fit["alpha"] == pytest.approx(1.5, abs=0.15)
    assert fit["alpha_upper"] - fit["alpha_lower"] < 0.6


def test_next_dim_columns_by_hand():
    fits = pd.DataFrame({"regime": ["r", "r", "s", "s"], "dim": [2, 4, 2, 4], "alpha": [2.0, 1.0, 1.2, 1.0],
                         "alpha_lower": [1.8, 0.9, 0.9, 0.8], "alpha_upper": [2.2, 1.1, 1.4, 1.2]})
    out = next_dim_columns(fits)
    assert out.above_next_dim.tolist() == [True, False, False, False]  # s: 0.9 is not above 1.2
    assert out.next_dim_alpha_upper.iloc[0] == 1.1 and np.isnan(out.next_dim.iloc[1])


def small_regimes():
    return {"variance-limited D": {"fixed": 4, "sizes": [64, 128, 256, 512]},
            "resolution-limited P": {"fixed": 512, "sizes": [2, 4, 8, 16]}}


def test_scaling_regimes_table_and_figure():
    table = ANALYSES.get("scaling_regimes")([], dims=[2], regimes=small_regimes(), seeds=3, n_test=300, n_resamples=20)
    losses, fits = table[table.record == "loss"], table[table.record == "fit"]
    assert len(losses) == 2 * 4 * 3 and len(fits) == 2
    rl = losses[losses.regime == "resolution-limited P"].groupby("x").loss.mean()
    assert rl.is_monotonic_decreasing  # more features, lower loss (D >> P)
    assert fits.four_over_d.eq(2.0).all() and fits.interval_holds_one.isin([True, False]).all()
    fig, plotted, summary = FIGURES.get("scaling_regimes")(None, None, {"regimes": table})
    assert set(summary.regime) == {"variance-limited D", "resolution-limited P"} and len(plotted) == 8


def test_scaling_regimes_refuses_bad_grids():
    run = ANALYSES.get("scaling_regimes")
    with pytest.raises(ValueError, match="unknown regime"):
        run([], regimes={"variance-limited X": {"fixed": 4, "sizes": [64, 128, 256, 512]}})
    with pytest.raises(ValueError, match="double descent"):
        run([], regimes={"variance-limited D": {"fixed": 32, "sizes": [64, 128, 256, 512]}})
    with pytest.raises(ValueError, match="at least 4 increasing"):
        run([], regimes={"resolution-limited D": {"fixed": 512, "sizes": [8, 4, 16, 32]}})


# -- critical batch size ---------------------------------------------------------------------------

def test_crossing_step_interpolates_and_censors():
    assert crossing_step([0, 10, 20], [2.0, 1.5, 0.5], 1.0) == pytest.approx(15.0)
    assert crossing_step([5, 10], [0.9, 0.5], 1.0) == 5.0
    assert np.isnan(crossing_step([0, 10], [2.0, 1.5], 1.0))
    assert np.isnan(crossing_step([0, 10, 20], [2.0, np.nan, 0.5], 1.0))  # diverged before


def test_noise_scale_near_averages_numerator_and_denominator_in_the_window():
    steps = np.array([10.0, 20, 30, 40, 50])
    trace = np.array([1.0, 2.0, 4.0, 6.0, 100.0])
    g2 = np.array([1.0, 0.1, 0.3, 0.1, 1.0])
    b, n = noise_scale_near(steps, trace, g2, at=30.0)  # window [24, 37.5]: only step 30
    assert (b, n) == (pytest.approx(4.0 / 0.3), 1)
    b, n = noise_scale_near(steps, trace, g2, at=35.0)  # [28, 43.75]: steps 30, 40
    assert n == 2 and b == pytest.approx((4.0 + 6.0) / 2 / ((0.3 + 0.1) / 2))  # not the mean of the ratios
    assert np.isnan(noise_scale_near(steps, trace, g2, at=float("nan"))[0])


def test_fit_tradeoff_recovers_the_hyperbola():
    b = np.array([8.0, 16, 32, 64, 128, 256, 512])
    s = 100.0 * (1 + 50.0 / b)
    fit = fit_tradeoff(b, s)
    assert fit["S_min"] == pytest.approx(100.0, rel=1e-6) and fit["B_crit"] == pytest.approx(50.0, rel=1e-6)
    assert fit["E_min"] == pytest.approx(5000.0, rel=1e-6) and fit["B_crit_inside_grid"]
    e = b * s  # the paper's form of the same law
    np.testing.assert_allclose((s / fit["S_min"] - 1) * (e / fit["E_min"] - 1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="positive"):
        fit_tradeoff([1, 2, 3], [1, -1, 2])


def test_tune_picks_the_fastest_lr_on_tuning_seeds_only():
    rows = []
    for lr, steps in ((0.1, 100.0), (0.2, 50.0), (0.4, np.nan)):
        for seed in (0, 1):
            rows.append({"batch_size": 8, "lr": lr, "seed": seed, "steps_to_target": steps})
    rows.append({"batch_size": 8, "lr": 0.4, "seed": 2, "steps_to_target": 1.0})  # a reporting seed: ignored
    out = tune(pd.DataFrame(rows), [0, 1])
    assert out.tuned_lr.item() == 0.2 and not out.lr_on_edge.item() and out.tuning_steps.item() == 50.0


@pytest.mark.parametrize("chunk_size", [256, 6])  # one chunk; chunks reduced as they come
def test_noise_scale_instrument_matches_an_explicit_per_example_loop(chunk_size):
    from descentlab.curvature.noise_scale import noise_scale_from_per_example
    from descentlab.train.instruments import build_instrument

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    x, y = torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,))
    loss_fn = torch.nn.CrossEntropyLoss()
    inst = build_instrument({"name": "noise_scale", "every": 5, "n_examples": 20, "chunk_size": chunk_size})
    before = [p.detach().clone() for p in model.parameters()]
    assert inst(3, model, loss_fn, x, y) == {}
    got = inst(5, model, loss_fn, x, y)
    rows = []
    for i in range(20):
        model.zero_grad()
        loss_fn(model(x[i : i + 1]), y[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    expected = noise_scale_from_per_example(torch.stack(rows))
    for key in ("b_simple", "trace_sigma", "grad_sq_norm"):
        assert got[key] == pytest.approx(expected[key], rel=1e-10)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


class FakeRun:
    def __init__(self, batch, lr, seed, curve, noise=None):
        self.run_id = f"b{batch}-lr{lr}-s{seed}"
        self.labels = {"batch": batch, "lr": lr, "seed": seed}
        self.spec = {"batch_size": batch, "log_every": 1, "optimizer": {"lr": lr}, "seed": seed}
        self.status = "ok"
        rows = [(s, "train", "loss", v) for s, v in curve]
        for s, v in noise or []:  # B_simple = tr(Sigma) / |G|^2 = v
            rows += [(s, "train", "b_simple", v), (s, "train", "trace_sigma", 2.0 * v), (s, "train", "grad_sq_norm", 2.0)]
        self.table = pd.DataFrame(rows, columns=["step", "split", "metric", "value"])

    def metrics(self):
        return self.table


def test_critical_batch_analysis_and_figure_on_a_known_tradeoff():
    # the loss falls linearly to 0 at step 2 * S(B), S(B) = 20 (1 + 40 / B): it crosses 1.0 (of 2.0) at S(B)
    # after the (log_every + 1) / 2 = 1 step shift; the fastest lr is 0.2 everywhere
    runs = []
    for b in (8, 32, 128, 512):
        s_b = 20.0 * (1 + 40.0 / b)
        for lr, slow in ((0.1, 2.0), (0.2, 1.0), (0.4, 1.5)):
            for seed in (0, 1, 2):
                steps = np.arange(1, int(4 * s_b * slow) + 2)
                curve = [(int(k), 2.0 - (k - 1) / (s_b * slow)) for k in steps]
                noise = [(int(k), 40.0) for k in steps] if b == 32 else None
                runs.append(FakeRun(b, lr, seed, curve, noise))
    table = ANALYSES.get("critical_batch")(runs, target=1.0, tuning_seeds=[0], reporting_seeds=[1, 2], noise_batch=32, n_resamples=20)
    fit = table[table.record == "fit"].iloc[0]
    assert fit.B_crit == pytest.approx(40.0, rel=1e-3) and fit.S_min == pytest.approx(20.0, rel=1e-3)
    assert fit.B_noise == pytest.approx(40.0) and fit.ratio_crit_to_noise == pytest.approx(1.0, rel=1e-3)
    batches = table[table.record == "batch"]
    assert (batches.tuned_lr == 0.2).all() and not batches.lr_on_edge.any()
    assert fit.steps_never_rise and fit.examples_never_fall
    metrics = pd.concat([r.table.assign(run_id=r.run_id) for r in runs], ignore_index=True)
    fig, plotted, summary = FIGURES.get("critical_batch")(metrics, None, {"cb": table})
    assert set(summary.record) == {"batch", "fit"} and (plotted.panel == "steps").sum() == 8
    with pytest.raises(ValueError, match="disjoint"):
        ANALYSES.get("critical_batch")(runs, tuning_seeds=[0, 1], reporting_seeds=[1, 2])
