"""Grams: paths agree, maximize, references, and the Adam-magnitude / gradient-sign closed form."""

import pytest
import torch

from descentlab.optim.grams import Grams

from _problems import (ROUNDING_ATOL, compare_maximize, compare_paths, grad_stream, make_params,
                       max_abs_diff, run_on_stream, use_fused_adam)

HP = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)


@pytest.mark.parametrize("fused", [True, False])
def test_paths_agree(monkeypatch, fused):
    use_fused_adam(monkeypatch, fused)
    compare_paths(Grams, HP, atol=ROUNDING_ATOL)


def test_maximize():
    compare_maximize(Grams, HP)
    compare_maximize(Grams, HP, foreach=False)


@pytest.mark.parametrize("foreach", [False, True])
def test_update_has_adams_magnitude_and_minus_the_gradient_sign(foreach):
    # Moments depend only on the gradients, so with a fixed gradient stream
    # every Grams step has exactly the magnitude of the Adam step (torch.optim.Adam).
    stream = grad_stream(steps=20)
    ours, adam = make_params(), make_params()
    opt = Grams(ours, lr=1e-3, foreach=foreach)
    ref = torch.optim.Adam(adam, lr=1e-3)
    for grads in stream:
        before_ours = [p.detach().clone() for p in ours]
        before_adam = [p.detach().clone() for p in adam]
        run_on_stream(opt, ours, [grads])
        run_on_stream(ref, adam, [grads])
        for p, b, q, c, g in zip(ours, before_ours, adam, before_adam, grads):
            step_ours, step_adam = p.detach() - b, q.detach() - c
            torch.testing.assert_close(step_ours.abs(), step_adam.abs(), rtol=1e-9, atol=1e-18)
            assert torch.equal(step_ours.sign(), -g.sign())


def test_matches_pytorch_optimizer():
    # pytorch-optimizer 4.1 uses the same eps convention (eps added to sqrt(v_hat)).
    po = pytest.importorskip("pytorch_optimizer")
    stream = grad_stream(steps=20)
    ours, theirs = make_params(), make_params()
    run_on_stream(Grams(ours, **HP), ours, stream)
    run_on_stream(po.Grams(theirs, **HP), theirs, stream)
    assert max_abs_diff(ours, theirs) <= 1e-14


def test_matches_official_grams_pytorch_up_to_eps_convention():
    # grams-pytorch (official) adds eps to sqrt(v), i.e. eps / sqrt(1 - beta2^t) in our terms,
    # so compare at eps = 0; it also overwrites p.grad (run_on_stream hands it a copy).
    grams = pytest.importorskip("grams")
    hp = dict(HP, eps=0.0)
    stream = grad_stream(steps=20)
    ours, theirs = make_params(), make_params()
    run_on_stream(Grams(ours, **hp), ours, stream)
    run_on_stream(grams.Grams(theirs, **hp), theirs, stream)
    assert max_abs_diff(ours, theirs) <= 1e-14


def test_rejects_bad_hyperparameters():
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="eps"):
        Grams(p, eps=-1.0)
    with pytest.raises(ValueError, match="beta"):
        Grams(p, betas=(1.0, 0.9))
