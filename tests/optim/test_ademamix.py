"""AdEMAMix: paths agree, maximize, golden trajectory of the official code, closed forms."""

import math

import pytest
import torch

from descentlab.optim import _base
from descentlab.optim.ademamix import AdEMAMix, alpha_at, beta3_at

from _problems import (ROUNDING_ATOL, assert_golden, compare_maximize, compare_paths, grad_stream,
                       make_params, run_golden, run_on_stream, use_fused_adam)

HP = dict(lr=1e-2, betas=(0.9, 0.999, 0.9999), alpha=5.0, weight_decay=0.1,
          alpha_warmup=10, beta3_warmup=10)

# Parameters after 10 steps of the official apple/ml-ademamix ``pytorch/ademamix.py``
# on the golden problem of _problems.py with lr=1e-2, weight_decay=0.1, alpha=5,
# alpha_warmup=6, beta3_warmup=6 (so both warmups end inside the run).
ADEMAMIX_WARMUP = [
    [
        0.9592856350183573, 0.7240470889725752, 0.17313683621969986,
        -0.4590084976169442, -0.9181317896382813, -0.969805334045534,
        -0.5142502047546292, 0.19771574479232326, 0.8061512791811816,
        0.9974685496137375, 0.7035359889649674, 0.1280434833926959,
    ],
    [
        0.5184403276482153, -0.08522465793104267, -0.6999492425425715,
        -1.0001973875170145, -0.8221511485092045,
    ],
]


@pytest.mark.parametrize("fused", [True, False])
def test_paths_agree(monkeypatch, fused):
    use_fused_adam(monkeypatch, fused)
    compare_paths(AdEMAMix, HP, atol=ROUNDING_ATOL)
    compare_paths(AdEMAMix, dict(HP, alpha_warmup=None, beta3_warmup=None), atol=ROUNDING_ATOL)
    # beta1 = 0 takes the plain chain (the fused trick divides by beta1)
    compare_paths(AdEMAMix, dict(HP, betas=(0.0, 0.999, 0.9999)), atol=ROUNDING_ATOL)


def test_paths_agree_with_persistent_buffers(monkeypatch):
    monkeypatch.setattr(_base, "SCRATCH_MIN_BYTES", 64)  # a mix of large and small tensors
    compare_paths(AdEMAMix, HP, atol=ROUNDING_ATOL)


def test_maximize():
    compare_maximize(AdEMAMix, HP)
    compare_maximize(AdEMAMix, HP, foreach=False)


@pytest.mark.parametrize("foreach", [False, True])
def test_matches_official_code(foreach):
    actual = run_golden(lambda p: AdEMAMix(p, lr=1e-2, weight_decay=0.1, alpha=5.0, alpha_warmup=6,
                                           beta3_warmup=6, foreach=foreach), steps=10, scale=1.0)
    assert_golden(actual, ADEMAMIX_WARMUP)


@pytest.mark.parametrize("foreach", [False, True])
def test_alpha_zero_is_adamw(foreach):
    stream = grad_stream(steps=20)
    ours, ref = make_params(), make_params()
    run_on_stream(AdEMAMix(ours, lr=1e-2, alpha=0.0, weight_decay=0.1, foreach=foreach), ours, stream)
    run_on_stream(torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.1), ref, stream)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


def test_warmup_schedules():
    assert alpha_at(0, 8.0, 100) == 0.0
    assert alpha_at(25, 8.0, 100) == 2.0
    assert alpha_at(100, 8.0, 100) == 8.0 and alpha_at(7, 8.0, None) == 8.0
    assert math.isclose(beta3_at(0, 0.9, 0.9999, 100), 0.9, rel_tol=1e-7)
    assert beta3_at(100, 0.9, 0.9999, 100) == 0.9999
    # halfway, the half-life ln(0.5)/ln(beta) - 1 is the mean of the end points (up to the
    # official 1e-8 inside the log, 7e-4 relative at beta = 0.9999)
    def half_life(b):
        return math.log(0.5) / math.log(b) - 1
    mid = beta3_at(50, 0.9, 0.9999, 100)
    assert math.isclose(half_life(mid), 0.5 * (half_life(0.9) + half_life(0.9999)), rel_tol=2e-3)


def test_slow_ema_is_not_bias_corrected():
    # One step from zero, beta1 = 0, no warmup: update = (g + alpha (1 - beta3) g) / (|g| + eps).
    g = torch.tensor([0.5, -2.0], dtype=torch.float64)
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    p.grad = g.clone()
    AdEMAMix([p], lr=0.1, betas=(0.0, 0.999, 0.99), alpha=3.0, eps=1e-8).step()
    expected = -0.1 * (g + 3.0 * 0.01 * g) / (g.abs() + 1e-8)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-14, atol=0)


def test_rejects_bad_hyperparameters():
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="betas"):
        AdEMAMix(p, betas=(0.9, 0.999))
    with pytest.raises(ValueError, match="alpha_warmup"):
        AdEMAMix(p, alpha_warmup=0)
