"""LR schedules against closed forms and torch's own schedulers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from descentlab.registry import UnknownNameError
from descentlab.schedules import (
    SCHEDULES,
    as_scheduler,
    build_schedule,
    cosine,
    linear,
    refined,
    step_decay,
    uba,
    wsd,
)


def lrs_through_optimizer(make_scheduler, steps: int, lr: float = 0.5) -> tuple[list[float], torch.Tensor]:
    """Drive a real SGD optimizer on a quadratic; return the lr used at each step and the final param."""
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    optimizer = torch.optim.SGD([param], lr=lr, momentum=0.9)
    scheduler = make_scheduler(optimizer)
    used = []
    for _ in range(steps):
        optimizer.zero_grad()
        (param**2).sum().backward()
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return used, param.detach().clone()


# -- registry --------------------------------------------------------------------------------


def test_registry_names():
    assert {"constant", "step", "cosine", "linear", "wsd", "uba", "refined"} <= set(SCHEDULES.names())


def test_unknown_schedule_lists_names():
    with pytest.raises(UnknownNameError, match="valid schedule names"):
        build_schedule({"name": "cosin"}, 10)


# -- constant, warmup --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "constant"},
        {"name": "step", "milestones": [8]},
        {"name": "cosine"},
        {"name": "linear"},
        {"name": "wsd", "cooldown_steps": 4},
        {"name": "uba", "phi": 0.7},
        {"name": "refined", "grad_norms": [1.0] * 20},
    ],
)
def test_warmup_everywhere(spec):
    warmed = build_schedule({**spec, "warmup_steps": 4}, 20)
    # (step + 1) / warmup: 0.25, 0.5, 0.75, 1 ...
    for step, expected in enumerate([0.25, 0.5, 0.75]):
        if spec["name"] == "refined":  # warmup multiplies the refined curve
            expected *= (19 - step) / 19
        assert warmed(step) == pytest.approx(expected, abs=1e-15)
    assert build_schedule({**spec, "warmup_steps": 0}, 20)(0) == 1.0


def test_constant_values():
    m = build_schedule({"name": "constant", "warmup_steps": 2}, 10)
    assert [m(s) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert m(100) == 1.0


# -- step ------------------------------------------------------------------------------------------


def test_step_closed_form_and_multisteplr():
    m = step_decay(30, milestones=[10, 20], gamma=0.5)
    assert [m(s) for s in (0, 9, 10, 19, 20, 29, 40)] == [1, 1, 0.5, 0.5, 0.25, 0.25, 0.25]
    ours, p_ours = lrs_through_optimizer(lambda o: as_scheduler(o, m), 30)
    ref, p_ref = lrs_through_optimizer(
        lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[10, 20], gamma=0.5), 30
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-15, atol=0)
    torch.testing.assert_close(p_ours, p_ref, rtol=1e-14, atol=0)


# -- cosine ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("final_factor", [0.0, 0.1])
def test_cosine_equals_torch_cosine_annealing(final_factor):
    total, lr = 40, 0.5
    ours, p_ours = lrs_through_optimizer(
        lambda o: as_scheduler(o, cosine(total, final_factor=final_factor)), total + 1, lr
    )
    ref, p_ref = lrs_through_optimizer(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total, eta_min=final_factor * lr),
        total + 1,
        lr,
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(p_ours, p_ref, rtol=1e-10, atol=1e-14)
    # and the closed form, eta_min + (eta_max - eta_min)(1 + cos(pi t / T)) / 2
    for t in (0, 7, 20, 33, 40):
        closed = final_factor * lr + (lr - final_factor * lr) * 0.5 * (1 + math.cos(math.pi * t / total))
        assert ours[t] == pytest.approx(closed, rel=1e-13, abs=1e-16)


def test_cosine_with_warmup_equals_torch_sequential():
    total, warm, lr = 30, 5, 0.5
    ours, _ = lrs_through_optimizer(lambda o: as_scheduler(o, cosine(total, warmup_steps=warm)), total, lr)

    def torch_sched(o):
        warmup = torch.optim.lr_scheduler.LinearLR(o, start_factor=1 / warm, total_iters=warm - 1)
        decay = torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total - warm)
        return torch.optim.lr_scheduler.SequentialLR(o, [warmup, decay], milestones=[warm])

    ref, _ = lrs_through_optimizer(torch_sched, total, lr)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)


def test_cosine_clamps_after_total():
    m = cosine(10, final_factor=0.2)
    assert m(10) == pytest.approx(0.2) and m(25) == pytest.approx(0.2)


# -- linear (D2Z) ----------------------------------------------------------------------------------


def test_linear_closed_form_and_torch_linearlr():
    total, lr = 20, 0.5
    m = linear(total)
    for t in (0, 5, 13, 19, 20, 30):
        assert m(t) == pytest.approx(max(0.0, 1 - t / total), abs=1e-15)
    ours, _ = lrs_through_optimizer(lambda o: as_scheduler(o, linear(total, final_factor=0.1)), total, lr)
    ref, _ = lrs_through_optimizer(
        lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=total),
        total,
        lr,
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)
    warmed = linear(20, warmup_steps=4)
    assert warmed(4) == 1.0 and warmed(12) == pytest.approx(1 - 8 / 16)


# -- WSD ---------------------------------------------------------------------------------------------


SHAPES = {
    "linear": lambda s: 1 - s,
    "cosine": lambda s: 0.5 * (1 + math.cos(math.pi * s)),
    "1-sqrt": lambda s: 1 - math.sqrt(s),
}


@pytest.mark.parametrize("cooldown", list(SHAPES))
@pytest.mark.parametrize("final_factor", [0.0, 0.1])
def test_wsd_closed_form(cooldown, final_factor):
    total, warm = 100, 10
    m = wsd(total, warmup_steps=warm, cooldown_fraction=0.2, cooldown=cooldown, final_factor=final_factor)
    start = 80  # int(0.2 * 100) cooldown steps
    assert m(0) == pytest.approx(0.1) and m(9) == 1.0
    assert m(10) == 1.0 and m(79) == 1.0
    for step in (80, 81, 90, 95, 99):
        s = (step - start) / 20
        assert m(step) == pytest.approx(final_factor + (1 - final_factor) * SHAPES[cooldown](s), abs=1e-15)
    assert m(100) == pytest.approx(final_factor, abs=1e-15)
    assert m(500) == pytest.approx(final_factor, abs=1e-15)


@pytest.mark.parametrize("cooldown", ["linear", "cosine", "1-sqrt", "sqrt", "1-square"])
@pytest.mark.parametrize("final_factor", [0.0, 0.3])
def test_wsd_continuous_and_monotone(cooldown, final_factor):
    total, cd = 1000, 200
    m = wsd(total, cooldown_steps=cd, cooldown=cooldown, final_factor=final_factor)
    values = np.array([m(t) for t in range(total + 5)])
    # continuous at the cooldown start: the first cooldown step is still 1, the next one within a step's change
    assert values[total - cd - 1] == 1.0 and values[total - cd] == 1.0
    assert 1.0 - values[total - cd + 1] < 0.1
    # never below the floor, never increasing (the pytorch-optimizer pitfall is a jump up at the end)
    assert values.min() >= final_factor - 1e-15
    assert np.all(np.diff(values) <= 1e-15)
    # continuous at the end: the last cooldown step is within one step's change of the final value
    assert values[total - 1] - final_factor < 0.1 * (1 - final_factor) + 1e-12
    assert values[total] == pytest.approx(final_factor, abs=1e-15)


def test_wsd_matches_epfml_definition_with_their_fraction():
    # epfml/schedules-and-scaling: n_anneal = int(fract_decay * n); linear cooldown to final factor
    m = wsd(50, cooldown_fraction=0.1, cooldown="linear", final_factor=0.05)
    n_hold, n_anneal = 45, 5
    for step in range(45, 50):
        expected = 0.05 + 0.95 * (1 - (step - n_hold) / n_anneal)
        assert m(step) == pytest.approx(expected, abs=1e-15)


def test_wsd_cosine_cooldown_matches_pytorch_optimizer():
    po = pytest.importorskip("pytorch_optimizer.lr_scheduler.wsd")
    total, cd = 60, 20
    ours = wsd(total, cooldown_steps=cd, cooldown="cosine", final_factor=0.1)
    for step in range(total + 3):
        theirs = po.get_wsd_scheduler_lambda(
            step, num_warmup_steps=0, num_stable_steps=total - cd, num_decay_steps=cd,
            min_lr_ratio=0.1, num_cycles=0.5, cooldown_type="cosine",
        )
        assert ours(step) == pytest.approx(theirs, abs=1e-12)


def test_wsd_errors():
    with pytest.raises(ValueError, match="unknown cooldown 'exp'"):
        wsd(100, cooldown="exp")
    with pytest.raises(ValueError, match="cooldown_fraction"):
        wsd(100, cooldown_fraction=1.5)
    with pytest.raises(ValueError, match="warmup_steps \\+ cooldown_steps"):
        wsd(100, warmup_steps=60, cooldown_fraction=0.5)
    with pytest.raises(ValueError, match="final_factor"):
        wsd(100, final_factor=-0.1)


# -- UBA ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("final_factor", [0.0, 0.1])
@pytest.mark.parametrize("warmup", [0, 7])
def test_uba_phi_two_is_cosine(final_factor, warmup):
    total = 257
    u = uba(total, phi=2.0, warmup_steps=warmup, final_factor=final_factor)
    c = cosine(total, warmup_steps=warmup, final_factor=final_factor)
    diffs = [abs(u(t) - c(t)) for t in range(total + 3)]
    assert max(diffs) <= 1e-12


@pytest.mark.parametrize("phi", [0.5, 1.0, 3.0])
def test_uba_closed_form(phi):
    total = 100
    m = uba(total, phi=phi, final_factor=0.1)
    for t in (0, 10, 50, 77, 100):
        c = 1 + math.cos(math.pi * t / total)
        assert m(t) == pytest.approx(0.1 + 0.9 * 2 * c / (2 * phi + (2 - phi) * c), abs=1e-15)
    assert m(0) == pytest.approx(1.0) and m(total) == pytest.approx(0.1)
    # phi < 2 stays above cosine, phi > 2 below it, in the interior
    cos_mid = cosine(total, final_factor=0.1)(50)
    assert (m(50) > cos_mid) if phi < 2 else (m(50) < cos_mid)


def test_uba_errors():
    with pytest.raises(ValueError, match="phi must be a positive"):
        uba(10, phi=0.0)
    with pytest.raises(TypeError):
        build_schedule({"name": "uba"}, 10)


# -- refined -----------------------------------------------------------------------------------------


def test_refined_constant_norms_is_linear_decay():
    total = 50
    m = refined(total, grad_norms=[3.0] * total)
    values = [m(t) for t in range(total)]
    np.testing.assert_allclose(values, [(total - 1 - t) / (total - 1) for t in range(total)], rtol=0, atol=1e-14)
    # and equals the D2Z schedule that reaches 0 at the last step
    d2z = linear(total - 1)
    np.testing.assert_allclose(values, [d2z(t) for t in range(total)], rtol=0, atol=1e-14)
    assert m(total + 10) == 0.0


def test_refined_closed_form_brute_force():
    rng = np.random.default_rng(0)
    norms = rng.uniform(0.5, 2.0, size=12)
    m = refined(12, grad_norms=norms, window_fraction=0.0)
    w = norms**-2.0
    raw = np.array([w[t] * sum(w[t + 1 :]) for t in range(12)])
    np.testing.assert_allclose([m(t) for t in range(12)], raw / raw.max(), rtol=1e-13)
    # l1 / Adam variant: weights 1 / ||g||
    m1 = refined(12, grad_norms=norms, window_fraction=0.0, norm_power=1.0)
    raw1 = np.array([norms[t] ** -1 * sum(norms[t + 1 :] ** -1) for t in range(12)])
    np.testing.assert_allclose([m1(t) for t in range(12)], raw1 / raw1.max(), rtol=1e-13)


def test_refined_median_filter_removes_spikes_and_rising_norms_give_fast_annealing():
    spiky = np.full(200, 2.0)
    spiky[[30, 100, 101, 170]] = 1000.0
    filtered = refined(200, grad_norms=spiky)  # width 21 median filter
    np.testing.assert_allclose([filtered(t) for t in range(200)], [(199 - t) / 199 for t in range(200)], atol=1e-14)
    unfiltered = refined(200, grad_norms=spiky, window_fraction=0.0)
    assert unfiltered(100) < 1e-3  # a spike kills the step size there without the filter
    # rising norms: the schedule decays faster than linear in the middle
    rising = refined(200, grad_norms=np.linspace(1.0, 3.0, 200))
    assert rising(100) < 0.8 * (199 - 100) / 199


def test_refined_reads_metrics_files(tmp_path):
    steps = np.arange(30)
    norms = 1.0 + 0.01 * steps
    rows = [{"step": s, "split": "train", "metric": "grad_norm", "value": v} for s, v in zip(steps, norms)]
    rows += [{"step": s, "split": "train", "metric": "loss", "value": 5.0} for s in steps]
    rows += [{"step": s, "split": "val", "metric": "grad_norm", "value": 99.0} for s in steps]
    table = pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # unsorted on purpose
    table.to_parquet(tmp_path / "metrics.parquet")
    table.drop(columns="split")[lambda d: d["value"] != 99.0].to_csv(tmp_path / "metrics.csv", index=False)
    from_list = refined(30, grad_norms=norms.tolist())
    for path in (tmp_path / "metrics.parquet", str(tmp_path / "metrics.csv")):
        from_file = build_schedule({"name": "refined", "grad_norms": path}, 30)
        assert [from_file(t) for t in range(30)] == [from_list(t) for t in range(30)]
    # interpolated onto a longer run: still peak 1 and ends at 0
    longer = refined(90, grad_norms=norms)
    values = [longer(t) for t in range(90)]
    assert max(values) == pytest.approx(1.0) and values[-1] == 0.0


def test_refined_irregular_logging_interpolates_by_step(tmp_path):
    # norms 1 + step logged at steps 0, 1, 3 only: interpolation by step value recovers 1, 2, 3, 4
    pd.DataFrame({"step": [3, 0, 1], "metric": "grad_norm", "value": [4.0, 1.0, 2.0]}).to_csv(
        tmp_path / "m.csv", index=False
    )
    from_file = refined(4, grad_norms=tmp_path / "m.csv", window_fraction=0.0)
    from_list = refined(4, grad_norms=[1.0, 2.0, 3.0, 4.0], window_fraction=0.0)
    assert [from_file(t) for t in range(4)] == pytest.approx([from_list(t) for t in range(4)], abs=1e-15)


def test_refined_errors(tmp_path):
    with pytest.raises(ValueError, match="finite and > 0"):
        refined(10, grad_norms=[1.0, 0.0, 2.0])
    with pytest.raises(ValueError, match="finite and > 0"):
        refined(10, grad_norms=[1.0, float("inf")])
    with pytest.raises(ValueError, match="at least 2"):
        refined(10, grad_norms=[1.0])
    with pytest.raises(FileNotFoundError):
        refined(10, grad_norms=tmp_path / "nope.parquet")
    pd.DataFrame({"step": [0, 1], "metric": ["loss", "loss"], "value": [1.0, 2.0]}).to_csv(
        tmp_path / "m.csv", index=False
    )
    with pytest.raises(ValueError, match="no rows with metric == 'grad_norm'"):
        refined(10, grad_norms=tmp_path / "m.csv")


# -- generic errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: cosine(0), "total_steps must be >= 1"),
        (lambda: cosine(10, warmup_steps=11), "warmup_steps must be in"),
        (lambda: cosine(10, final_factor=1.5), "final_factor must be in"),
        (lambda: linear(10, warmup_steps=-1), "warmup_steps must be in"),
        (lambda: step_decay(10, milestones=[5, 3]), "strictly increasing"),
        (lambda: step_decay(10, milestones=[10]), "milestones must lie in"),
        (lambda: step_decay(10, milestones=[]), "non-empty"),
        (lambda: step_decay(10, milestones=[5], gamma=0.0), "gamma must be in"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_as_scheduler_state_round_trip():
    m = wsd(20, cooldown_steps=5)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = as_scheduler(opt, m)
    for _ in range(17):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.SGD([param], lr=1.0)
    sched2 = as_scheduler(opt2, m)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == sched.get_last_lr() == [pytest.approx(m(17))]
