"""Shampoo with grafting: a closed form on a matrix with known factors, a brute-force
float64 simulation (numpy unfoldings, scipy fractional matrix powers), the graft
alone (= torch Adam/AdamW, = torch Adagrad), multi-tensor == loop, state round trip."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.linalg import fractional_matrix_power

from descentlab.optim import OPTIMIZERS
from descentlab.optim.shampoo import Shampoo

SHAPES = [(4, 3), (5,), (2, 3, 4)]
# each shape three times: with foreach, parameters of one shape step as a batch
REPEATED = [shape for shape in SHAPES for _ in range(3)]


def make_params(shapes=SHAPES, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True) for s in shapes]


def grad_sequence(steps, shapes=SHAPES, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(steps)]


def run(opt, params, grads):
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()


def test_closed_form_one_step_on_known_factors():
    """G = U diag(s) V^T, beta1 = 0: L = (1-b2) G G^T, R = (1-b2) G^T G, so
    L^{-1/4} G R^{-1/4} = U diag(s / ((1-b2) s^2 + eps)^{1/2}) V^T; the Adam graft is
    G / (|G| + eps) and the step has its norm."""
    u, _ = torch.linalg.qr(torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    v, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))
    s = torch.tensor([3.0, 1.0, 0.2], dtype=torch.float64)
    g = u @ torch.diag(s) @ v.T
    lr, b2, eps, epsilon = 0.1, 0.9, 1e-8, 1e-6
    p = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    opt = Shampoo([p], lr=lr, betas=(0.0, b2), eps=eps, epsilon=epsilon, start_preconditioning_step=1,
                  precondition_frequency=1)
    p.grad = g.clone()
    opt.step()
    direction = u @ torch.diag(s / ((1 - b2) * s**2 + epsilon).sqrt()) @ v.T
    graft_norm = (g / (g.abs() + eps)).norm()
    torch.testing.assert_close(p.detach(), -lr * graft_norm * direction / direction.norm(), rtol=1e-10, atol=1e-14)


def unfold(x, dim):
    return np.moveaxis(x, dim, 0).reshape(x.shape[dim], -1)


def fold_multiply(x, dim, mat):
    """mat applied along axis ``dim`` of x."""
    return np.moveaxis(np.tensordot(mat, np.moveaxis(x, dim, 0), axes=1), 0, dim)


def brute_force(shapes, grads, lr, b1, b2, eps, epsilon, wd, start, freq, max_dim, graft, params0):
    """The documented algorithm, one parameter at a time, in numpy float64."""
    out = []
    for i, shape in enumerate(shapes):
        x = params0[i].detach().numpy().copy()
        dims = [d for d, n in enumerate(shape) if 1 < n <= max_dim]
        factors = {d: np.zeros((shape[d], shape[d])) for d in dims}
        roots = {}
        m = np.zeros(shape)
        sq = np.zeros(shape)
        for t, gs in enumerate(grads, start=1):
            g = gs[i].numpy()
            m = b1 * m + (1 - b1) * g if b1 > 0 else g
            m_hat = m / (1 - b1**t) if b1 > 0 else g
            if graft == "adam":
                sq = b2 * sq + (1 - b2) * g * g
                graft_dir = m_hat / (np.sqrt(sq / (1 - b2**t)) + eps)
            else:
                sq = sq + g * g
                graft_dir = m_hat / (np.sqrt(sq) + eps)
            for d in dims:
                gram = unfold(g, d) @ unfold(g, d).T
                factors[d] = b2 * factors[d] + (1 - b2) * gram if b2 < 1 else factors[d] + gram
            if dims and t >= start and (t - start) % freq == 0:
                for d in dims:
                    shifted = factors[d] + epsilon * np.eye(shape[d])
                    roots[d] = np.real(fractional_matrix_power(shifted, -1.0 / (2 * len(dims))))
            step = graft_dir
            if dims and t >= start:
                pre = m_hat
                for d in dims:
                    pre = fold_multiply(pre, d, roots[d])
                step = pre * np.linalg.norm(graft_dir) / np.linalg.norm(pre)
            x = x * (1 - lr * wd) - lr * step
        out.append(x)
    return out


@pytest.mark.parametrize(
    "kw",
    [
        dict(lr=0.05, betas=(0.9, 0.99), eps=1e-8, epsilon=1e-4, weight_decay=0.01, start_preconditioning_step=3,
             precondition_frequency=4, max_preconditioner_dim=1024, grafting="adam"),
        dict(lr=0.1, betas=(0.0, 1.0), eps=1e-10, epsilon=1e-3, weight_decay=0.0, start_preconditioning_step=1,
             precondition_frequency=1, max_preconditioner_dim=3, grafting="adagrad"),
    ],
)
@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("shapes", [SHAPES, REPEATED], ids=["distinct", "repeated"])
def test_brute_force_float64_simulation(kw, foreach, shapes):
    """(4, 3) matrix, (5,) vector (full-matrix L^{-1/2}), (2, 3, 4) tensor (exponent -1/6;
    with max_preconditioner_dim=3 the 4- and 5-sized dimensions fall back to the graft)."""
    steps = 12
    grads = grad_sequence(steps, shapes)
    params = make_params(shapes)
    start = [p.detach().clone() for p in params]
    opt = Shampoo(params, foreach=foreach, **kw)
    run(opt, params, grads)
    expected = brute_force(shapes, grads, kw["lr"], kw["betas"][0], kw["betas"][1], kw["eps"], kw["epsilon"],
                           kw["weight_decay"], kw["start_preconditioning_step"], kw["precondition_frequency"],
                           kw["max_preconditioner_dim"], kw["grafting"], start)
    for p, x in zip(params, expected):
        np.testing.assert_allclose(p.detach().numpy(), x, rtol=1e-9, atol=1e-12)


def test_before_preconditioning_it_is_adamw():
    grads = grad_sequence(15)
    a, b = make_params(), make_params()
    run(Shampoo(a, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, start_preconditioning_step=100), a, grads)
    run(torch.optim.AdamW(b, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1), b, grads)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-14)


def test_before_preconditioning_adagrad_graft_is_adagrad():
    grads = grad_sequence(15)
    a, b = make_params(), make_params()
    run(Shampoo(a, lr=0.1, betas=(0.0, 1.0), eps=1e-10, grafting="adagrad", start_preconditioning_step=100), a, grads)
    run(torch.optim.Adagrad(b, lr=0.1, eps=1e-10), b, grads)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-14)


def test_roots_are_refreshed_only_every_precondition_frequency_steps():
    p = make_params([(3, 3)])[0]
    opt = Shampoo([p], start_preconditioning_step=2, precondition_frequency=3, epsilon=1e-3)
    roots = {}
    for t, gs in enumerate(grad_sequence(8, [(3, 3)]), start=1):
        p.grad = gs[0].clone()
        opt.step()
        if "root_0" in opt.state[p]:
            roots[t] = opt.state[p]["root_0"].clone()
    assert sorted(roots) == list(range(2, 9))
    assert torch.equal(roots[2], roots[4]) and not torch.equal(roots[4], roots[5])
    assert torch.equal(roots[5], roots[7]) and not torch.equal(roots[7], roots[8])
    factor = opt.state[p]["factor_0"].numpy()  # the step-8 root is (F_8 + eps)^(-1/4)
    expected = np.real(fractional_matrix_power(factor + 1e-3 * np.eye(3), -0.25))
    np.testing.assert_allclose(roots[8].numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize("shapes", [SHAPES, REPEATED], ids=["distinct", "repeated"])
def test_foreach_matches_loop_with_groups_and_missing_grads(shapes):
    """With repeated shapes, the missing grads put one parameter of a shape a step behind
    the others (then it steps apart from their batch). Batched products round apart from
    tensordot's, and the default epsilon (1e-12) lets the roots of the rank-deficient
    factors amplify that (measured 2.5e-12), so those agree to 1e-10, not 1e-14."""
    tol = 1e-14 if shapes is SHAPES else 1e-10
    grads = grad_sequence(25, shapes)
    results = []
    for foreach in (True, False):
        params = make_params(shapes)
        opt = Shampoo([{"params": params[:2]}, {"params": params[2:], "lr": 0.02, "grafting": "adagrad"}],
                      lr=0.05, weight_decay=0.01, start_preconditioning_step=4, precondition_frequency=5,
                      foreach=foreach)
        for t, gs in enumerate(grads):
            for i, (p, g) in enumerate(zip(params, gs)):
                p.grad = None if (i == 1 and t % 6 == 2) else g.clone()
            opt.step()
        results.append((params, opt))
    (pa, oa), (pb, ob) = results
    for a, b in zip(pa, pb):
        torch.testing.assert_close(a, b, rtol=0, atol=tol)
        assert oa.state[a].keys() == ob.state[b].keys()
        for key in oa.state[a]:
            if key != "step":
                torch.testing.assert_close(oa.state[a][key], ob.state[b][key], rtol=tol, atol=tol)


def test_state_dict_round_trip():
    grads = grad_sequence(14)
    params = make_params()
    spec = {"name": "shampoo", "lr": 0.05, "start_preconditioning_step": 2, "precondition_frequency": 3}
    opt = OPTIMIZERS.build(spec, params)
    run(opt, params, grads[:6])
    saved = copy.deepcopy(opt.state_dict())
    clone = [p.detach().clone().requires_grad_() for p in params]
    run(opt, params, grads[6:])
    opt2 = OPTIMIZERS.build(dict(spec, lr=1.0), clone)
    opt2.load_state_dict(saved)
    run(opt2, clone, grads[6:])
    for a, b in zip(params, clone):
        assert torch.equal(a, b)


def test_grads_untouched():
    params = make_params()
    opt = Shampoo(params, start_preconditioning_step=1, precondition_frequency=1)
    grads = grad_sequence(2)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
        for p, g in zip(params, gs):
            assert torch.equal(p.grad, g)


@pytest.mark.parametrize(
    "kw",
    [dict(lr=-1.0), dict(betas=(1.0, 0.9)), dict(betas=(0.9, 1.0)), dict(grafting="sgd"), dict(epsilon=0.0),
     dict(precondition_frequency=0), dict(max_preconditioner_dim=1.5)],
)
def test_bad_hyperparameters(kw):
    with pytest.raises(ValueError):
        Shampoo(make_params(), **kw)
