"""MARS: paths agree, maximize, golden trajectories of the official code, closed forms.

MARS is not on PyPI. The golden numbers were produced by running the official
AGI-Arena/MARS ``MARS/optimizers/mars.py`` (read and run outside this
repository) on the golden problem of _problems.py: a 4x3 matrix (MARS branch)
and a 5-vector (1-D AdamW branch), lr=1e-2, weight_decay=0.1, 10 steps.
"""

import pytest
import torch

from descentlab.optim import _base
from descentlab.optim.mars import MARS

from _problems import (ROUNDING_ATOL, assert_golden, compare_maximize, compare_paths, grad_stream,
                       make_params, run_golden, run_on_stream, use_fused_adam)

HP = dict(lr=1e-2, weight_decay=0.1)

# gradient scale 1: ||c|| > 1, the clipping branch is active
MARS_ADAMW_CLIPPED = [
    [
        0.96149456784796, 0.7291904436372746, 0.17590754609409634,
        -0.4625297655821824, -0.9241911241875985, -0.9671084406462651,
        -0.5084853639043142, 0.19784311405540178, 0.802051454873549,
        0.992043354436891, 0.7064954215416792, 0.1341885519754365,
    ],
    [
        0.5337456841475441, -0.11584605099273465, -0.7261539522654117,
        -0.9993792705629031, -0.8002988262644153,
    ],
]
# gradient scale 0.05 and gamma 0.5: mostly unclipped, large correction term
MARS_ADAMW_UNCLIPPED = [
    [
        0.9753049633529015, 0.7459744103360503, 0.1699943523684296,
        -0.48018611654571064, -0.930091169874089, -0.951987247507851,
        -0.4938116903064533, 0.18787604184430534, 0.7840006324681148,
        0.9907569567731884, 0.7226211162548003, 0.14589018800946932,
    ],
    [
        0.5337456853697599, -0.11584605729972795, -0.7261539543304582,
        -0.999379270222638, -0.8002988234225378,
    ],
]
# mars_type="mars-lion" in the official code
MARS_LION = [
    [
        0.960224241368509, 0.7174372734870353, 0.18812549923226268,
        -0.44012928315042565, -0.9328522451168516, -0.9668651467929321,
        -0.5052907347378843, 0.22448601604260984, 0.8076358454868461,
        0.9898950831662989, 0.6867060490886783, 0.11199642828648668,
    ],
    [
        0.5337456841475441, -0.11584605099273465, -0.7261539522654117,
        -0.9993792705629031, -0.8002988262644153,
    ],
]


@pytest.mark.parametrize("extra", [{}, {"mars_type": "lion"}, {"optimize_1d": True},
                                   {"gamma": 0.5, "mars_type": "lion", "optimize_1d": True}])
@pytest.mark.parametrize("fused", [True, False])
def test_paths_agree(monkeypatch, extra, fused):
    use_fused_adam(monkeypatch, fused)
    compare_paths(MARS, dict(HP, **extra), atol=ROUNDING_ATOL)
    compare_paths(MARS, dict(HP, **extra), scale=0.05, atol=ROUNDING_ATOL)


def test_paths_agree_with_persistent_buffers(monkeypatch):
    monkeypatch.setattr(_base, "SCRATCH_MIN_BYTES", 64)  # a mix of large and small tensors
    for extra in ({}, {"mars_type": "lion"}):
        compare_paths(MARS, dict(HP, **extra), atol=ROUNDING_ATOL)


def test_maximize():
    compare_maximize(MARS, HP)
    compare_maximize(MARS, HP, foreach=False)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("extra, scale, expected", [
    ({}, 1.0, MARS_ADAMW_CLIPPED),
    ({"gamma": 0.5}, 0.05, MARS_ADAMW_UNCLIPPED),
    ({"mars_type": "lion"}, 1.0, MARS_LION),
])
def test_matches_official_code(foreach, extra, scale, expected):
    actual = run_golden(lambda p: MARS(p, foreach=foreach, **HP, **extra), steps=10, scale=scale)
    assert_golden(actual, expected)


@pytest.mark.parametrize("foreach", [False, True])
def test_gamma_zero_with_small_gradients_is_adamw(foreach):
    shapes = [(4, 3), (3, 2, 2)]  # matrices: the MARS branch
    stream = grad_stream(shapes, steps=20, scale=0.05)  # ||g|| < 1: never clipped
    assert max(float(g.norm()) for grads in stream for g in grads) < 1.0
    ours, ref = make_params(shapes), make_params(shapes)
    run_on_stream(MARS(ours, lr=1e-2, betas=(0.9, 0.99), gamma=0.0, weight_decay=0.1,
                       foreach=foreach), ours, stream)
    run_on_stream(torch.optim.AdamW(ref, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1), ref, stream)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("foreach", [False, True])
def test_vectors_use_adamw_with_the_1d_hyperparameters(foreach):
    shapes = [(5,), (1,)]
    stream = grad_stream(shapes, steps=20)
    ours, ref = make_params(shapes), make_params(shapes)
    run_on_stream(MARS(ours, lr=1e-2, lr_1d=2e-3, betas_1d=(0.8, 0.9), weight_decay_1d=0.3,
                       foreach=foreach), ours, stream)
    run_on_stream(torch.optim.AdamW(ref, lr=2e-3, betas=(0.8, 0.9), weight_decay=0.3), ref, stream)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("foreach", [False, True])
def test_correction_is_clipped_per_tensor(foreach):
    # Step 1 (g_0 = 0): c = g (1 + gamma beta1 / (1 - beta1)); clipped to norm 1 per tensor.
    gamma, beta1 = 0.1, 0.9
    big, small = torch.full((3, 2), 4.0, dtype=torch.float64), torch.full((2, 2), 0.01, dtype=torch.float64)
    params = [torch.zeros_like(big, requires_grad=True), torch.zeros_like(small, requires_grad=True)]
    opt = MARS(params, gamma=gamma, betas=(beta1, 0.99), foreach=foreach)
    run_on_stream(opt, params, [[big, small]])
    expected_big = (1 - beta1) * big / big.norm()
    expected_small = (1 - beta1) * small * (1 + gamma * beta1 / (1 - beta1))
    torch.testing.assert_close(opt.state[params[0]]["exp_avg"], expected_big, rtol=1e-15, atol=0)
    torch.testing.assert_close(opt.state[params[1]]["exp_avg"], expected_small, rtol=1e-15, atol=0)


def test_lr_1d_follows_a_schedule():
    p = [torch.zeros(3, dtype=torch.float64, requires_grad=True)]
    opt = MARS(p, lr=1e-2, lr_1d=4e-3)
    assert opt.param_groups[0]["lr_1d_factor"] == pytest.approx(0.4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-3)
    del sched


def test_rejects_bad_hyperparameters():
    p = [torch.zeros(2, 2, requires_grad=True)]
    with pytest.raises(ValueError, match="mars_type"):
        MARS(p, mars_type="shampoo")
    with pytest.raises(ValueError, match="gamma"):
        MARS(p, gamma=-1.0)
    with pytest.raises(ValueError, match="lr"):
        MARS(p, lr=0.0)
