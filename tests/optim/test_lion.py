"""Lion: paths agree, maximize, lion-pytorch reference, and exact +-lr steps."""

import pytest
import torch

from descentlab.optim import _base
from descentlab.optim.lion import Lion

from _problems import compare_maximize, compare_paths, grad_stream, make_params, run_on_stream

HP = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)


def test_paths_agree():
    compare_paths(Lion, HP)


@pytest.mark.parametrize("min_bytes, block_bytes", [(0, 32), (64, 40), (0, 1 << 20)])
def test_paths_agree_block_by_block(monkeypatch, min_bytes, block_bytes):
    # Large contiguous CPU tensors are updated a block at a time: force that for
    # all tensors (0) or a mix of large and small ones (64), with blocks of 4 or 5
    # float64 elements (uneven last blocks) or one block per tensor. Same kernels: exact.
    monkeypatch.setattr(_base, "SCRATCH_MIN_BYTES", min_bytes)
    monkeypatch.setattr(_base, "BLOCK_BYTES", block_bytes)
    compare_paths(Lion, HP)


def test_maximize():
    compare_maximize(Lion, HP)
    compare_maximize(Lion, HP, foreach=False)


@pytest.mark.parametrize("foreach", [False, True])
def test_matches_lion_pytorch(foreach):
    lion_pytorch = pytest.importorskip("lion_pytorch")
    stream = grad_stream(steps=20)
    ours, theirs = make_params(), make_params()
    run_on_stream(Lion(ours, foreach=foreach, **HP), ours, stream)
    run_on_stream(lion_pytorch.Lion(theirs, **HP), theirs, stream)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("foreach", [False, True])
def test_every_coordinate_moves_by_exactly_lr(foreach):
    # lr a power of two and parameters on its grid: all sums are exact.
    lr = 2.0**-10
    params = [(torch.randint(-50, 50, s, dtype=torch.float64) * lr).requires_grad_()
              for s in [(4, 3), (5,)]]
    opt = Lion(params, lr=lr, foreach=foreach)
    stream = grad_stream([(4, 3), (5,)], steps=15)
    before = [p.detach().clone() for p in params]

    def check(t):
        for p, b, g in zip(params, before, stream[t]):
            delta = p.detach() - b
            assert torch.equal(delta.abs(), torch.full_like(delta, lr))
            b.copy_(p.detach())

    # step 1: c = (1 - beta1) g, so the move is exactly -lr * sign(g)
    for p, g in zip(params, stream[0]):
        p.grad = g.clone()
    opt.step()
    for p, b, g in zip(params, before, stream[0]):
        assert torch.equal(p.detach() - b, -lr * g.sign())
        b.copy_(p.detach())
    run_on_stream(opt, params, stream[1:], after_step=lambda t: check(t + 1))


def test_decoupled_decay_then_sign_step():
    lr, wd = 0.01, 0.5
    params = make_params()
    opt = Lion(params, lr=lr, weight_decay=wd)
    stream = grad_stream(steps=5)
    for grads in stream:
        before = [p.detach().clone() for p in params]
        run_on_stream(opt, params, [grads])
        for p, b in zip(params, before):
            torch.testing.assert_close((p.detach() - b * (1 - lr * wd)).abs(),
                                       torch.full_like(b, lr), rtol=0, atol=1e-15)


def test_rejects_bad_hyperparameters():
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="lr"):
        Lion(p, lr=-1.0)
    with pytest.raises(ValueError, match="beta"):
        Lion(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="weight_decay"):
        Lion(p, weight_decay=-0.1)
