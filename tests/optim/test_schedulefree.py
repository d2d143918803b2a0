"""Schedule-Free AdamW/SGD: multi-tensor == loop, against the official ``schedulefree``
package (reference and fast classes), the y -> x -> y identity, modes and state."""

from __future__ import annotations

import copy

import pytest
import torch

from descentlab.optim import OPTIMIZERS
from descentlab.optim.schedulefree import ScheduleFreeAdamW, ScheduleFreeSGD

SHAPES = [(3, 4), (5,), (2, 3, 2)]
STEPS = 25


def make_params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True) for s in SHAPES]


def grad_sequence(steps=STEPS, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES] for _ in range(steps)]


def groups(params, **second_group):
    """Two groups: the second has its own hyperparameters."""
    return [{"params": params[:2]}, {"params": params[2:], **second_group}]


def run(opt, params, grads, skip=None):
    """Fresh grads each step (a clone, since the official classes write into p.grad)."""
    for t, gs in enumerate(grads):
        for i, (p, g) in enumerate(zip(params, gs)):
            p.grad = None if (skip is not None and skip(t, i)) else g.clone()
        opt.step()


SF_CASES = [
    (ScheduleFreeAdamW, dict(lr=0.05, betas=(0.8, 0.95), weight_decay=0.1, warmup_steps=5, r=1.0,
                             weight_lr_power=2.0), dict(lr=0.02, weight_decay=0.0)),
    (ScheduleFreeAdamW, dict(lr=0.05, bias_correction="denominator", warmup_steps=3), dict(lr=0.1)),
    (ScheduleFreeSGD, dict(lr=0.1, momentum=0.8, weight_decay=0.05, warmup_steps=4, r=0.5,
                           weight_lr_power=1.0), dict(lr=0.3, momentum=0.6)),
]


@pytest.mark.parametrize("cls,kw,second", SF_CASES)
def test_foreach_matches_loop_exactly(cls, kw, second):
    grads = grad_sequence()
    skip = lambda t, i: i == 1 and t % 4 == 2  # noqa: E731 - a param sometimes without grad
    results = []
    for foreach in (True, False):
        params = make_params()
        opt = cls(groups(params, **second), foreach=foreach, **kw)
        run(opt, params, grads, skip)
        results.append((params, opt))
    (pa, oa), (pb, ob) = results
    for a, b in zip(pa, pb):
        assert torch.equal(a, b)
    for a, b in zip(pa, pb):
        for key in oa.state[a]:
            assert torch.equal(oa.state[a][key], ob.state[b][key]), key
    oa.eval(), ob.eval()
    for a, b in zip(pa, pb):
        assert torch.equal(a, b)


def _official(name):
    sf = pytest.importorskip("schedulefree")
    return getattr(sf, name)


def _compare_with_official(ours_cls, ours_kw, theirs, theirs_kw, atol):
    grads = grad_sequence()
    mine, ref = make_params(), make_params()
    ours = ours_cls(groups(mine, lr=0.03), **ours_kw)
    other = theirs(groups(ref, lr=0.03), **theirs_kw)
    other.train()
    for gs in grads:
        for p, q, g in zip(mine, ref, gs):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        other.step()
        for p, q in zip(mine, ref):
            torch.testing.assert_close(p, q, rtol=0, atol=atol)  # y
            torch.testing.assert_close(ours.state[p]["z"], other.state[q]["z"], rtol=0, atol=atol)
    ours.eval(), other.eval()
    for p, q in zip(mine, ref):  # x
        torch.testing.assert_close(p, q, rtol=0, atol=atol)


ADAMW_KW = dict(lr=0.05, betas=(0.85, 0.99), eps=1e-6, weight_decay=0.1, warmup_steps=6, r=0.5,
                weight_lr_power=1.5)


def test_adamw_denominator_matches_official_reference():
    """AdamWScheduleFreeReference keeps x, y and z explicitly: a different algebra."""
    _compare_with_official(ScheduleFreeAdamW, dict(ADAMW_KW, bias_correction="denominator"),
                           _official("AdamWScheduleFreeReference"), ADAMW_KW, atol=1e-12)


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("foreach_theirs", [True, False])
def test_adamw_denominator_matches_official_fast(foreach, foreach_theirs):
    _compare_with_official(ScheduleFreeAdamW, dict(ADAMW_KW, bias_correction="denominator", foreach=foreach),
                           _official("AdamWScheduleFree"), dict(ADAMW_KW, foreach=foreach_theirs), atol=1e-14)


@pytest.mark.parametrize("foreach", [True, False])
def test_adamw_paper_matches_official_paper_class(foreach):
    _compare_with_official(ScheduleFreeAdamW, dict(ADAMW_KW, foreach=foreach),
                           _official("AdamWScheduleFreePaper"), dict(ADAMW_KW, foreach=True), atol=1e-14)


SGD_KW = dict(lr=0.2, momentum=0.7, weight_decay=0.05, warmup_steps=4, r=1.0, weight_lr_power=2.0)


def test_sgd_matches_official_reference():
    _compare_with_official(ScheduleFreeSGD, SGD_KW, _official("SGDScheduleFreeReference"), SGD_KW, atol=1e-12)


@pytest.mark.parametrize("foreach", [True, False])
def test_sgd_matches_official_fast(foreach):
    _compare_with_official(ScheduleFreeSGD, dict(SGD_KW, foreach=foreach), _official("SGDScheduleFree"),
                           dict(SGD_KW, foreach=not foreach), atol=1e-14)


@pytest.mark.parametrize("ours_cls,kw,theirs_name", [
    (ScheduleFreeAdamW, dict(ADAMW_KW, bias_correction="denominator"), "ScheduleFreeAdamW"),
    (ScheduleFreeSGD, SGD_KW, "ScheduleFreeSGD"),
])
def test_matches_pytorch_optimizer(ours_cls, kw, theirs_name):
    """pytorch-optimizer follows schedulefree 1.4.1's default class (the "denominator" bias correction)."""
    po = pytest.importorskip("pytorch_optimizer")
    theirs_kw = {k: v for k, v in kw.items() if k != "bias_correction"}
    _compare_with_official(ours_cls, kw, getattr(po, theirs_name), theirs_kw, atol=1e-13)


def test_paper_and_denominator_bias_corrections_differ():
    """The two AdamW variants are different algorithms (so the flag is not a no-op)."""
    outs = []
    for bc in ("paper", "denominator"):
        params = make_params()
        run(ScheduleFreeAdamW(params, lr=0.05, bias_correction=bc), params, grad_sequence(5))
        outs.append(params)
    assert max((a - b).abs().max().item() for a, b in zip(*outs)) > 1e-3


@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
def test_y_x_y_identity_and_x_is_the_average(cls):
    """eval() gives x with y = beta*x + (1-beta)*z; train() gives y back."""
    params = make_params()
    opt = cls(params, lr=0.05)
    run(opt, params, grad_sequence(10))
    beta = opt.param_groups[0]["betas"][0] if cls is ScheduleFreeAdamW else opt.param_groups[0]["momentum"]
    ys = [p.detach().clone() for p in params]
    opt.eval()
    for p, y in zip(params, ys):
        z = opt.state[p]["z"]
        torch.testing.assert_close(beta * p + (1 - beta) * z, y, rtol=0, atol=1e-14)
    opt.eval()  # idempotent
    opt.train()
    for p, y in zip(params, ys):
        torch.testing.assert_close(p, y, rtol=0, atol=1e-14)


def test_first_step_average_equals_z():
    """With r=0 and constant lr the weights are uniform: ckp1 = 1/(k+1), so x_1 = z_1."""
    params = make_params()
    opt = ScheduleFreeSGD(params, lr=0.1, momentum=0.9)
    run(opt, params, grad_sequence(1))
    opt.eval()
    for p in params:
        torch.testing.assert_close(p, opt.state[p]["z"], rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", ["sfadamw", "sfsgd"])
def test_step_in_eval_mode_raises_and_grads_untouched(name):
    params = make_params()
    opt = OPTIMIZERS.build({"name": name, "lr": 0.01, "weight_decay": 0.1}, params)
    grads = grad_sequence(1)[0]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()
    for p, g in zip(params, grads):
        assert torch.equal(p.grad, g)
    opt.eval()
    with pytest.raises(RuntimeError, match="eval mode"):
        opt.step()


@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
def test_state_dict_round_trip_saved_in_eval_mode(cls):
    grads = grad_sequence(12)
    params = make_params()
    opt = cls(groups(params, lr=0.02), lr=0.05, warmup_steps=3)
    run(opt, params, grads[:5])
    opt.eval()
    saved_params = [p.detach().clone() for p in params]
    saved = copy.deepcopy(opt.state_dict())
    opt.train()
    run(opt, params, grads[5:])

    clone = [p.detach().clone().requires_grad_() for p in saved_params]
    opt2 = cls(groups(clone, lr=0.5), lr=0.5)  # hyperparameters come from the state dict
    opt2.load_state_dict(saved)
    opt2.train()
    run(opt2, clone, grads[5:])
    for a, b in zip(params, clone):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kw",
    [dict(lr=-1.0), dict(betas=(0.0, 0.9)), dict(betas=(0.9, 1.0)), dict(warmup_steps=-1),
     dict(bias_correction="none"), dict(weight_decay=-0.1)],
)
def test_bad_hyperparameters(kw):
    with pytest.raises(ValueError):
        ScheduleFreeAdamW(make_params(), **kw)


def test_sgd_bad_momentum():
    with pytest.raises(ValueError, match="momentum"):
        ScheduleFreeSGD(make_params(), momentum=0.0)
