"""diffGrad: paths agree, maximize, torch-optimizer (jettify) reference, friction closed forms."""

import pytest
import torch

from descentlab.optim.diffgrad import DiffGrad

from _problems import (ROUNDING_ATOL, compare_maximize, compare_paths, grad_stream, make_params,
                       max_abs_diff, run_on_stream, use_fused_adam)

HP = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)


@pytest.mark.parametrize("fused", [True, False])
def test_paths_agree(monkeypatch, fused):
    use_fused_adam(monkeypatch, fused)
    compare_paths(DiffGrad, HP, atol=ROUNDING_ATOL)


def test_maximize():
    compare_maximize(DiffGrad, HP)
    compare_maximize(DiffGrad, HP, foreach=False)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_matches_torch_optimizer_at_eps_zero(weight_decay):
    # jettify adds eps to sqrt(v) (eps / sqrt(bc2) in our convention): equal at eps = 0.
    torch_optimizer = pytest.importorskip("torch_optimizer")
    hp = dict(lr=1e-2, eps=0.0, weight_decay=weight_decay)
    stream = grad_stream(steps=20)
    ours, theirs = make_params(), make_params()
    run_on_stream(DiffGrad(ours, **hp), ours, stream)
    run_on_stream(torch_optimizer.DiffGrad(theirs, **hp), theirs, stream)
    assert max_abs_diff(ours, theirs) <= 1e-14


def test_first_step_by_hand():
    # m_hat = g, v_hat = g^2, xi = sigmoid(|0 - g|): step = -lr * xi * g / (|g| + eps).
    lr, eps = 0.1, 0.5
    g = torch.tensor([0.3, -2.0, 1e-3], dtype=torch.float64)
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    p.grad = g.clone()
    DiffGrad([p], lr=lr, eps=eps).step()
    xi = 1.0 / (1.0 + torch.exp(-g.abs()))
    torch.testing.assert_close(p.detach(), -lr * xi * g / (g.abs() + eps), rtol=1e-15, atol=0)


@pytest.mark.parametrize("foreach", [False, True])
def test_constant_gradient_halves_adams_step(foreach):
    # With g_t == g_{t-1}, xi = sigmoid(0) = 1/2: every step after the first is half Adam's.
    g = torch.tensor([[0.5, -1.0], [2.0, 0.1]], dtype=torch.float64)
    ours = [torch.zeros_like(g, requires_grad=True)]
    adam = [torch.zeros_like(g, requires_grad=True)]
    opt = DiffGrad(ours, lr=1e-2, foreach=foreach)
    ref = torch.optim.Adam(adam, lr=1e-2)
    run_on_stream(opt, ours, [[g]])
    run_on_stream(ref, adam, [[g]])
    for _ in range(5):
        b_ours, b_adam = ours[0].detach().clone(), adam[0].detach().clone()
        run_on_stream(opt, ours, [[g]])
        run_on_stream(ref, adam, [[g]])
        torch.testing.assert_close(ours[0].detach() - b_ours, 0.5 * (adam[0].detach() - b_adam),
                                   rtol=1e-12, atol=0)


@pytest.mark.parametrize("foreach", [False, True])
def test_previous_grad_holds_the_last_gradient(foreach):
    params = make_params()
    opt = DiffGrad(params, foreach=foreach)
    run_on_stream(opt, params, grad_stream(steps=3))
    for p, g in zip(params, grad_stream(steps=3)[-1]):
        assert torch.equal(opt.state[p]["previous_grad"], g)


def test_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="weight_decay"):
        DiffGrad([torch.zeros(2, requires_grad=True)], weight_decay=-1.0)
