"""hessian_trace (exact GGN trace + block-stratified estimate of tr(H - G)) against dense float64 Hessians.

The oracles differentiate ``torch.func.functional_call`` of the model with
``torch.autograd.functional`` (no descentlab code): H, and G = sum_i J_i^T H_out,i J_i.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from descentlab.curvature import hessian_trace
from descentlab.curvature.trace import _ResidualOperator


def flat_forward(model):
    """f(flat, x): the model's forward pass on a flat parameter vector (named_parameters order)."""
    named = dict(model.named_parameters())
    names, shapes = list(named), [p.shape for p in named.values()]
    sizes = [p.numel() for p in named.values()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in named.values()])

    def forward(flat, x):
        params = {n: t.view(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes)}
        return functional_call(model, params, (x,))

    return forward, flat0


def dense_h_and_g(model, loss, x, y):
    forward, flat0 = flat_forward(model)
    H = torch.autograd.functional.hessian(lambda w: loss(forward(w, x), y), flat0)
    J = torch.autograd.functional.jacobian(lambda w: forward(w, x).reshape(-1), flat0)
    out = forward(flat0, x).detach()
    H_out = torch.autograd.functional.hessian(lambda o: loss(o.view(out.shape), y), out.reshape(-1))
    return H, J.T @ H_out @ J


def ce(out, y):
    return F.cross_entropy(out, y)


def mse(out, y):
    return F.mse_loss(out, y)


def make(kind, seed=0, n=17):
    """Small float64 problems; BatchNorm models are put in eval mode with non-trivial running statistics."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[kind.split("-")[0]]
    if "bn" in kind:
        model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), act(), nn.Linear(5, 3)).double()
        with torch.no_grad():
            model[1].running_mean.uniform_(-0.5, 0.5, generator=g)
            model[1].running_var.uniform_(0.5, 2.0, generator=g)
            model[1].weight.uniform_(0.5, 1.5, generator=g)
        model.eval()
    else:
        model = nn.Sequential(nn.Linear(4, 6), act(), nn.Linear(6, 5), act(), nn.Linear(5, 3)).double()
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    if kind.endswith("mse"):
        return model, mse, x, 4 * torch.randn(n, 3, generator=g, dtype=torch.float64)  # large residuals
    return model, ce, x, torch.randint(0, 3, (n,), generator=g)


KINDS = ["relu-ce", "relu-mse", "relu-bn-ce", "tanh-ce", "tanh-mse", "tanh-bn-ce"]


@pytest.mark.parametrize("kind", KINDS)
def test_residual_operator_is_h_minus_g(kind):
    model, loss, x, y = make(kind)
    H, G = dense_h_and_g(model, loss, x, y)
    R = _ResidualOperator(model, loss, x, y, chunk_size=5).to_dense()  # chunks weighted like the mean
    torch.testing.assert_close(R, H - G, rtol=1e-9, atol=1e-11)
    if kind.startswith("tanh"):
        assert abs(float(torch.trace(H - G))) > 1e-2 * abs(float(torch.trace(H)))  # the residual matters here


@pytest.mark.parametrize("kind", [k for k in KINDS if k.startswith("relu")])
def test_piecewise_linear_nets_give_the_exact_trace_with_zero_error(kind):
    model, loss, x, y = make(kind)
    H, _ = dense_h_and_g(model, loss, x, y)
    res = hessian_trace(model, loss, x, y, rtol=1e-3, seed=3)
    assert res.estimate == pytest.approx(float(torch.trace(H)), rel=1e-10)
    assert np.all(res.samples == 0) and res.stderr == 0 and res.converged is True
    n_blocks = len(res.parts["blocks"])
    assert res.n_hvps == 5 * n_blocks and len(res.samples) == n_blocks  # 4 pilot probes, 1 fresh per block


@pytest.mark.parametrize("kind", [k for k in KINDS if k.startswith("tanh")])
def test_smooth_nets_meet_the_tolerance_within_their_standard_error(kind):
    model, loss, x, y = make(kind)
    H, _ = dense_h_and_g(model, loss, x, y)
    exact = float(torch.trace(H))
    res = hessian_trace(model, loss, x, y, rtol=3e-2, seed=1)
    # planned from a 4-probe pilot (3 degrees of freedom): the realised standard error can exceed the plan
    assert res.converged is True and res.stderr <= 3 * 3e-2 * abs(res.estimate)
    assert res.stderr > 0 and res.n_hvps > 5 * len(res.parts["blocks"])  # probes went past the minimum
    assert abs(res.estimate - exact) <= 4 * res.stderr
    blocks = res.parts["blocks"]
    assert res.parts["ggn"] + sum(b[0] for b in blocks.values()) == pytest.approx(res.estimate, rel=1e-12)
    assert sum(b[2] + b[3] for b in blocks.values()) == res.n_hvps
    assert sum(b[3] for b in blocks.values()) == len(res.samples)


def test_unbiased_over_many_seeds_where_the_residual_is_not_zero():
    model, loss, x, y = make("tanh-ce", seed=2)
    H, G = dense_h_and_g(model, loss, x, y)
    exact = float(torch.trace(H))
    assert abs(exact - float(torch.trace(G))) > 0.05 * abs(exact)
    residual = exact - float(torch.trace(G))
    for blocks, probes in (("module", 2), ("all", 20)):  # fixed budget: exactly unbiased
        est = np.array([hessian_trace(model, loss, x, y, rtol=None, min_probes=probes, blocks=blocks,
                                      seed=s).estimate for s in range(300)])
        se = est.std(ddof=1) / math.sqrt(len(est))
        assert 0 < 3 * se < 0.5 * abs(residual)  # resolution: a bias of half the residual would show
        assert abs(est.mean() - exact) <= 3 * se, (blocks, est.mean(), exact, se)
    # the adaptive stop: its bias, if any, is below the resolution of 200 runs
    runs = [hessian_trace(model, loss, x, y, rtol=0.05, seed=1000 + s) for s in range(200)]
    est = np.array([r.estimate for r in runs])
    se = est.std(ddof=1) / math.sqrt(len(est))
    assert 3 * se < 0.2 * abs(residual) and np.median([r.n_hvps for r in runs]) > 12  # past the minimum
    assert abs(est.mean() - exact) <= 3 * se, (est.mean(), exact, se)
    assert all(r.converged for r in runs)


def test_stratified_blocks_beat_whole_vector_probes_here():
    """Cross-block terms of H - G add variance that per-module probes avoid (same products)."""
    model, loss, x, y = make("tanh-ce", seed=2)
    per_module = [hessian_trace(model, loss, x, y, rtol=None, min_probes=2, seed=s) for s in range(60)]
    n = per_module[0].n_hvps
    whole = [hessian_trace(model, loss, x, y, rtol=None, min_probes=n, blocks="all", seed=s) for s in range(60)]
    assert whole[0].n_hvps == n
    assert np.std([r.estimate for r in per_module]) < np.std([r.estimate for r in whole])


def test_budget_exhausted_is_reported():
    model, loss, x, y = make("tanh-ce")
    res = hessian_trace(model, loss, x, y, rtol=1e-9, max_hvps=20)
    assert res.converged is False and res.n_hvps <= 20 and res.stderr > 1e-9 * abs(res.estimate)
    assert res.n_hvps >= 20 - len(res.parts["blocks"])  # the budget is used, up to rounding per block
    fixed = hessian_trace(model, loss, x, y, rtol=None, min_probes=3)
    assert fixed.converged is None and fixed.n_hvps == 3 * len(fixed.parts["blocks"])


def test_bad_input_is_refused():
    model, loss, x, y = make("tanh-ce")
    for rtol in (0, -1e-3, float("nan"), float("inf"), "0.01"):
        with pytest.raises(ValueError, match="rtol must be a finite number > 0"):
            hessian_trace(model, loss, x, y, rtol=rtol)
    with pytest.raises(ValueError, match="blocks must be one of"):
        hessian_trace(model, loss, x, y, blocks="layer")
    with pytest.raises(ValueError, match="min_probes must be an integer >= 2"):
        hessian_trace(model, loss, x, y, min_probes=1)
    with pytest.raises(ValueError, match=r"max_hvps=14 is below the 15 products of the first stage"):
        hessian_trace(model, loss, x, y, max_hvps=14)
    with pytest.raises(ValueError, match=r"max_hvps=11 is below the 12 products"):
        hessian_trace(model, loss, x, y, rtol=None, max_hvps=11)
    with pytest.raises(ValueError, match=r"x has no examples \(first dimension 0\)"):
        hessian_trace(model, loss, x[:0], y[:0])
    with pytest.raises(ValueError, match="mean of per-example losses"):
        hessian_trace(model, nn.CrossEntropyLoss(reduction="sum"), x, y)
    dropout = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3)).double().train()
    with pytest.raises(ValueError, match="not deterministic"):
        hessian_trace(dropout, loss, x, y)
