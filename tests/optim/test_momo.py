"""MoMo / MoMo-Adam: the capped Polyak step in closed form, the official ``momo-opt``
package, multi-tensor == loop, state round trip."""

from __future__ import annotations

import copy

import pytest
import torch

from _problems import ROUNDING_ATOL, closure_for, make_model, use_fused_adam
from _problems import regression_batches as batches
from descentlab.optim import OPTIMIZERS, _base
from descentlab.optim.momo import Momo, MomoAdam

STEPS = 20


def train(model, opt, data):
    for batch in data:
        opt.step(closure_for(model, opt, batch))


def train_official(model, opt_factory, data):
    """Train with a ``momo-opt`` class under float64 default dtype: the official
    code keeps the <g, x> average in ``torch.tensor(0.)`` / ``torch.zeros(1)``,
    float32 otherwise (measured: 2e-8 off on these problems, 4e-16 in float64)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        opt = opt_factory(model.parameters())
        train(model, opt, data)
    finally:
        torch.set_default_dtype(previous)
    return opt


def assert_models_close(a, b, atol=0.0):
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=atol)


@pytest.mark.parametrize("lr,expected", [(10.0, 1.5), (0.1, 0.3)])
@pytest.mark.parametrize("foreach", [True, False])
def test_beta_zero_is_the_capped_polyak_step(lr, expected, foreach):
    """On 1/2 (p-3)^2 from 0: the Polyak step f/|g|^2 = 4.5/9 = 0.5 moves p to 1.5 unless lr caps it."""
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = Momo([p], lr=lr, beta=0.0, foreach=foreach)

    def closure():
        opt.zero_grad()
        loss = 0.5 * ((p - 3.0) ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    torch.testing.assert_close(p.detach(), torch.tensor([expected], dtype=torch.float64), rtol=0, atol=1e-15)


def test_polyak_step_with_lower_bound_and_weight_decay_by_hand():
    """tau = ((1+lr*lam)(f - lb) + <d,x> - (1+lr*lam)<g,x>)_+ / |d|^2, then x / (1+lr*lam)."""
    p = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    lr, lam, lb = 5.0, 0.1, 0.25
    opt = Momo([p], lr=lr, beta=0.0, weight_decay=lam, lb=lb)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum() + p[0]
        loss.backward()
        return loss

    x = p.detach().clone()
    f = (x**2).sum() + x[0]
    g = 2 * x + torch.tensor([1.0, 0.0], dtype=torch.float64)
    # with beta = 0, d = g and gamma = <g, x> = <d, x>: the <.,x> terms leave (1 - (1+lr*lam)) <g, x>
    tau = min(lr, max((1 + lr * lam) * (f - lb) - lr * lam * (g @ x), 0.0) / (g @ g))
    opt.step(closure)
    torch.testing.assert_close(p.detach(), (x - tau * g) / (1 + lr * lam), rtol=1e-14, atol=0)


MOMO_CASES = [
    dict(lr=1.0, beta=0.9),
    dict(lr=0.5, beta=0.8, weight_decay=0.05, lb=-0.1),
    dict(lr=2.0, beta=0.9, bias_correction=True),
    dict(lr=1.0, beta=0.9, use_fstar=True),
    dict(lr=0.5, beta=0.8, weight_decay=0.05, lb=-0.1, use_fstar=True),
]
MOMO_ADAM_CASES = [
    dict(lr=0.05, betas=(0.9, 0.99)),
    dict(lr=0.05, betas=(0.8, 0.999), weight_decay=0.1, divide=True),
    dict(lr=0.05, weight_decay=0.1, divide=False, eps=1e-6),
    dict(lr=0.05, betas=(0.9, 0.99), use_fstar=True),
    dict(lr=0.05, weight_decay=0.1, divide=False, use_fstar=True),
]


@pytest.mark.parametrize("cls, kw", [(Momo, c) for c in MOMO_CASES if c.get("use_fstar")]
                         + [(MomoAdam, c) for c in MOMO_ADAM_CASES if c.get("use_fstar")])
def test_online_lower_bound_matches_official(cls, kw):
    # the estimate itself, step by step: it must move (else the cases test nothing)
    momo = pytest.importorskip("momo")
    data = batches()
    m1, m2 = make_model(), make_model()
    ours = cls(m1.parameters(), **kw)
    theirs = None
    estimates = set()
    for batch in data:
        train(m1, ours, [batch])
        if theirs is None:
            theirs = train_official(m2, lambda p: getattr(momo, cls.__name__)(p, **kw), [batch])
        else:
            train_official(m2, lambda p: theirs, [batch])
        assert ours.state["global"]["lb_estimate"] == pytest.approx(theirs.state["fstar"], abs=1e-12)
        assert ours.state["global"]["lb_estimate"] >= kw.get("lb", 0.0)
        estimates.add(round(ours.state["global"]["lb_estimate"], 9))
    assert len(estimates) > 3


@pytest.mark.parametrize("kw", MOMO_CASES)
def test_momo_matches_official(kw):
    momo = pytest.importorskip("momo")
    data = batches()
    m1, m2 = make_model(), make_model()
    train(m1, Momo(m1.parameters(), **kw), data)
    train_official(m2, lambda p: momo.Momo(p, **kw), data)
    assert_models_close(m1, m2, atol=1e-12)


@pytest.mark.parametrize("kw", MOMO_ADAM_CASES)
def test_momo_adam_matches_official(kw):
    momo = pytest.importorskip("momo")
    data = batches()
    m1, m2 = make_model(), make_model()
    train(m1, MomoAdam(m1.parameters(), **kw), data)
    train_official(m2, lambda p: momo.MomoAdam(p, **kw), data)
    assert_models_close(m1, m2, atol=1e-12)


@pytest.mark.parametrize("min_bytes", [None, 64])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("cls,kw", [(Momo, c) for c in MOMO_CASES] + [(MomoAdam, c) for c in MOMO_ADAM_CASES])
def test_foreach_matches_loop_with_groups(monkeypatch, cls, kw, fused, min_bytes):
    use_fused_adam(monkeypatch, fused)
    if min_bytes is not None:  # treat some tensors as large: torch.dot instead of segment sums
        monkeypatch.setattr(_base, "SCRATCH_MIN_BYTES", min_bytes)
    data = batches()
    results = []
    for foreach in (True, False):
        model = make_model()
        params = list(model.parameters())
        groups = [{"params": params[:2]}, {"params": params[2:], "lr": kw["lr"] / 2, "weight_decay": 0.02}]
        opt = cls(groups, foreach=foreach, **kw)
        train(model, opt, data)
        results.append((model, opt))
    # the multi-tensor path forms dot products with torch.dot and (MoMo-Adam) takes
    # its direction from the fused Adam kernel: equal to rounding
    (ma, oa), (mb, ob) = results
    assert_models_close(ma, mb, atol=ROUNDING_ATOL)
    for p, q in zip(ma.parameters(), mb.parameters()):
        for key in oa.state[p]:
            torch.testing.assert_close(oa.state[p][key], ob.state[q][key], rtol=0, atol=ROUNDING_ATOL)
    assert oa.state["global"]["step"] == ob.state["global"]["step"]
    assert abs(oa.state["global"]["loss_avg"] - ob.state["global"]["loss_avg"]) <= ROUNDING_ATOL


@pytest.mark.parametrize("use_fstar", [False, True])
@pytest.mark.parametrize("name", ["momo", "momo_adam"])
def test_state_dict_round_trip(name, use_fstar):
    # with use_fstar the lower-bound estimate travels in the global state
    data = batches(12)
    spec = {"name": name, "lr": 0.05, "use_fstar": use_fstar}
    model = make_model()
    opt = OPTIMIZERS.build(spec, model.parameters())
    train(model, opt, data[:5])
    saved = copy.deepcopy(opt.state_dict())
    weights = copy.deepcopy(model.state_dict())
    train(model, opt, data[5:])

    model2 = make_model(seed=3)
    model2.load_state_dict(weights)
    opt2 = OPTIMIZERS.build(spec, model2.parameters())
    opt2.load_state_dict(saved)
    assert ("lb_estimate" in opt2.state["global"]) == use_fstar
    train(model2, opt2, data[5:])
    assert_models_close(model, model2)


@pytest.mark.parametrize("cls", [Momo, MomoAdam])
def test_needs_closure_and_leaves_grads(cls):
    model = make_model()
    opt = cls(model.parameters())
    with pytest.raises(ValueError, match="closure"):
        opt.step()
    closure = closure_for(model, opt, batches(1)[0])
    closure()
    grads = [p.grad.clone() for p in model.parameters()]

    def same_closure():  # gradients are already there; just give the loss
        with torch.no_grad():
            return ((model(batches(1)[0][0]) - batches(1)[0][1]) ** 2).mean()

    opt.step(same_closure)
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)


def test_global_hyperparameters_must_agree_across_groups():
    params = list(make_model().parameters())
    with pytest.raises(ValueError, match="beta"):
        Momo([{"params": params[:2]}, {"params": params[2:], "beta": 0.5}])
    with pytest.raises(ValueError):
        Momo(params, beta=1.0)
    with pytest.raises(ValueError):
        MomoAdam(params, lr=-1.0)
