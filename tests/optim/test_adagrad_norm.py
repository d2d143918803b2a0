"""AdaGrad-Norm: b by hand, clipping, per-group accumulators, paths agree, maximize."""

import math

import pytest
import torch

from descentlab.optim.adagrad_norm import AdaGradNorm

from _problems import compare_maximize, compare_paths


def test_paths_agree():
    # The global norm is summed in a different order on the two paths: 1 ulp.
    compare_paths(AdaGradNorm, dict(lr=0.1), rtol=1e-14, atol=1e-16)
    compare_paths(AdaGradNorm, dict(lr=0.1, clip=2.0, b0=0.5), rtol=1e-14, atol=1e-16)


def test_maximize():
    compare_maximize(AdaGradNorm, dict(lr=0.1))
    compare_maximize(AdaGradNorm, dict(lr=0.1), foreach=False)


def _two_params():
    return [torch.zeros(1, dtype=torch.float64, requires_grad=True),
            torch.zeros(2, dtype=torch.float64, requires_grad=True)]


GRADS = [([3.0], [0.0, 4.0]), ([1.0], [2.0, 2.0]), ([0.0], [0.0, 0.5])]  # ||g||^2 = 25, 9, 0.25


@pytest.mark.parametrize("foreach", [False, True])
def test_three_steps_by_hand(foreach):
    lr, b0 = 0.5, 1.0
    params = _two_params()
    opt = AdaGradNorm(params, lr=lr, b0=b0, foreach=foreach)
    b_sq, expected = [1.0 + 25.0, 1.0 + 25.0 + 9.0, 1.0 + 25.0 + 9.0 + 0.25], [0.0, 0.0, 0.0]
    for t, (g1, g2) in enumerate(GRADS):
        params[0].grad = torch.tensor(g1, dtype=torch.float64)
        params[1].grad = torch.tensor(g2, dtype=torch.float64)
        opt.step()
        step = lr / math.sqrt(b_sq[t])
        expected = [expected[0] - step * g1[0], expected[1] - step * g2[0], expected[2] - step * g2[1]]
        assert opt.param_groups[0]["b_sq"] == pytest.approx(b_sq[t], rel=1e-15)
        got = params[0].detach().tolist() + params[1].detach().tolist()
        assert got == pytest.approx(expected, rel=1e-14, abs=1e-16)


@pytest.mark.parametrize("foreach", [False, True])
def test_clipping_before_accumulating_by_hand(foreach):
    # clip = 2: ||g|| = 5 -> g * 0.4, accumulate 4; ||g|| = 3 -> g * 2/3, accumulate 4;
    # ||g|| = 0.5 is not clipped, accumulate 0.25.
    lr, b0 = 0.5, 1.0
    params = _two_params()
    opt = AdaGradNorm(params, lr=lr, b0=b0, clip=2.0, foreach=foreach)
    scales, b_sq = [0.4, 2.0 / 3.0, 1.0], [5.0, 9.0, 9.25]
    expected = [0.0, 0.0, 0.0]
    for t, (g1, g2) in enumerate(GRADS):
        params[0].grad = torch.tensor(g1, dtype=torch.float64)
        params[1].grad = torch.tensor(g2, dtype=torch.float64)
        opt.step()
        step = lr * scales[t] / math.sqrt(b_sq[t])
        expected = [expected[0] - step * g1[0], expected[1] - step * g2[0], expected[2] - step * g2[1]]
        assert opt.param_groups[0]["b_sq"] == pytest.approx(b_sq[t], rel=1e-15)
        got = params[0].detach().tolist() + params[1].detach().tolist()
        assert got == pytest.approx(expected, rel=1e-14, abs=1e-16)


def test_each_group_has_its_own_accumulator():
    a, b = _two_params()
    opt = AdaGradNorm([{"params": [a]}, {"params": [b], "b0": 2.0}], lr=0.1, b0=1.0)
    a.grad = torch.tensor([3.0], dtype=torch.float64)
    b.grad = torch.tensor([0.0, 4.0], dtype=torch.float64)
    opt.step()
    assert opt.param_groups[0]["b_sq"] == pytest.approx(1.0 + 9.0)
    assert opt.param_groups[1]["b_sq"] == pytest.approx(4.0 + 16.0)


def test_rejects_bad_hyperparameters():
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="b0"):
        AdaGradNorm(p, b0=0.0)
    with pytest.raises(ValueError, match="clip"):
        AdaGradNorm(p, clip=-1.0)
