"""Landscape directions, grids, interpolation barriers and subspace training."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from descentlab.landscape import (
    RandomSubspace,
    barriers,
    direction_norms,
    interpolation_path,
    intrinsic_dimension,
    loss_line,
    loss_surface,
    random_direction,
)
from descentlab.losses import MSE, CrossEntropy


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3)).double()


def test_filter_normalisation_norms_and_zeroed_1d():
    model = _cnn()
    d = random_direction(model, seed=1)
    for name, w in model.named_parameters():
        if w.dim() > 1:  # ||d_i|| = ||w_i|| per output filter / neuron
            torch.testing.assert_close(d[name].reshape(w.shape[0], -1).norm(dim=1),
                                       w.detach().reshape(w.shape[0], -1).norm(dim=1))
        else:  # biases and BatchNorm affine parameters
            assert torch.count_nonzero(d[name]) == 0
    signs = torch.cat([torch.sign(v).reshape(-1) for v in d.values() if v.dim() > 1])
    assert abs(float(signs.mean())) < 0.15  # Gaussian, not U[0, 1) (loss-landscapes issue #4)
    kept = random_direction(model, seed=1, ignore=None)
    torch.testing.assert_close(kept["1.weight"], model[1].weight.detach())
    torch.testing.assert_close(kept["0.weight"], d["0.weight"])
    again = random_direction(model, seed=1)
    assert all(torch.equal(again[k], d[k]) for k in d)
    layer = random_direction(model, norm="layer", seed=1)
    assert layer["4.weight"].norm() == pytest.approx(model[4].weight.norm().item())
    norms = direction_norms(d)
    assert norms["0.weight"].shape == (4,)
    with pytest.raises(ValueError, match="norm"):
        random_direction(model, norm="unit")


def test_random_direction_leaves_frozen_parameters_at_zero():
    model = _cnn()
    free = random_direction(model, seed=1, ignore=None)
    model[0].weight.requires_grad_(False)  # a frozen filter bank
    model[1].weight.requires_grad_(False)  # a frozen 1-D parameter, which ignore=None would copy
    for ignore in (None, "biasbn"):
        d = random_direction(model, seed=1, ignore=ignore)
        assert torch.count_nonzero(d["0.weight"]) == 0 and torch.count_nonzero(d["1.weight"]) == 0
        assert d["0.weight"].shape == model[0].weight.shape
    # the trainable parameters get the same direction as before (same random stream)
    for name in ("0.bias", "1.bias", "4.weight", "4.bias"):
        torch.testing.assert_close(d[name], random_direction(_cnn(), seed=1)[name])
    torch.testing.assert_close(random_direction(model, seed=1, ignore=None)["4.weight"], free["4.weight"])


def _problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(25, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (25,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    return model, x, y


def _manual(model, x, y, offsets):
    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in m.named_parameters():
            for coef, d in offsets:
                p.add_(coef * d[name])
        out = m(x)
    return F.cross_entropy(out, y).item(), (out.argmax(1) == y).double().mean().item()


def test_loss_line_and_surface_against_manual_evaluation(state_tools):
    model_state, assert_unchanged = state_tools
    model, x, y = _problem()
    model.train()
    before = model_state(model)
    d1, d2 = random_direction(model, seed=3), random_direction(model, seed=4)
    line = loss_line(model, CrossEntropy(), x, y, d1, alphas=[-0.5, 0.0, 0.7], chunk_size=7)
    assert list(line.columns) == ["alpha", "loss", "accuracy", "error"]
    for _, row in line.iterrows():
        loss, acc = _manual(model, x, y, [(row.alpha, d1)])
        assert row.loss == pytest.approx(loss, rel=1e-12) and row.accuracy == pytest.approx(acc)
        assert row.error == pytest.approx(1 - acc)
    surf = loss_surface(model, CrossEntropy(), x, y, (d1, d2), alphas=[-1, 0, 1], betas=[0.0, 0.5], chunk_size=None)
    assert len(surf) == 6 and list(surf.columns) == ["alpha", "beta", "loss", "accuracy", "error"]
    row = surf[(surf.alpha == 1) & (surf.beta == 0.5)].iloc[0]
    assert row.loss == pytest.approx(_manual(model, x, y, [(1.0, d1), (0.5, d2)])[0], rel=1e-12)
    assert_unchanged(model, before)


def test_interpolation_barriers():
    # Convex problem (linear regression): the loss along any segment lies under the chord.
    g = torch.Generator().manual_seed(1)
    X, t = torch.randn(30, 3, generator=g, dtype=torch.float64), torch.randn(30, 1, generator=g, dtype=torch.float64)
    a, b = nn.Linear(3, 1).double(), nn.Linear(3, 1).double()
    path = interpolation_path(a, a, b, MSE(), X, t, n_points=11)
    assert path.loss.iloc[0] == pytest.approx(F.mse_loss(a(X), t).item())
    assert path.loss.iloc[-1] == pytest.approx(F.mse_loss(b(X), t).item())
    assert barriers(path)["loss_barrier"] == pytest.approx(0.0, abs=1e-12)
    # Midpoint of a network and its hidden-unit permutation: same function at both ends, a barrier between.
    model, x, y = _problem()
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    permuted = copy.deepcopy(model)
    with torch.no_grad():
        permuted[0].weight.copy_(model[0].weight[perm])
        permuted[0].bias.copy_(model[0].bias[perm])
        permuted[2].weight.copy_(model[2].weight[:, perm])
    path = interpolation_path(model, model, permuted, CrossEntropy(), x, y, n_points=11, chunk_size=4)
    assert path.loss.iloc[0] == pytest.approx(path.loss.iloc[-1])
    out = barriers(path)
    mid = {k: 0.5 * (v + permuted.state_dict()[k]) for k, v in model.state_dict().items()}
    mid_model = copy.deepcopy(model)
    mid_model.load_state_dict(mid)
    mid_loss = F.cross_entropy(mid_model(x), y).item()
    assert path.loss.iloc[5] == pytest.approx(mid_loss)
    assert out["loss_barrier"] >= mid_loss - path.loss.iloc[0] - 1e-12
    assert out["loss_barrier"] == pytest.approx(float((path.loss - path.loss.iloc[0]).max()))
    err = path.error.to_numpy()
    assert out["error_barrier"] == pytest.approx(float(np.max(err - 0.5 * (err[0] + err[-1]))))


def test_interpolation_recomputes_batchnorm_on_a_copy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
    x, y = torch.randn(40, 3, dtype=torch.float64) * 3 + 1, torch.randint(0, 2, (40,))
    stats = model[1].running_mean.clone()
    path = interpolation_path(model, model, model, CrossEntropy(), x, y, n_points=3, chunk_size=7, bn_data=x)
    assert torch.equal(model[1].running_mean, stats)  # the caller's model is untouched
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        h = model[0](x)
        ref[1].running_mean.copy_(h.mean(0))
        ref[1].running_var.copy_(h.var(0, unbiased=True))
        expected = F.cross_entropy(ref(x), y).item()
    assert path.loss.iloc[1] == pytest.approx(expected, rel=1e-10)


def test_random_subspace_wrapper():
    model, x, y = _problem()
    sub = RandomSubspace(model, dim=5, seed=0)
    assert [n for n, _ in sub.named_parameters()] == ["theta_d"]
    torch.testing.assert_close(sub(x), model(x))  # theta_d = 0 at the start
    torch.testing.assert_close(sub.projection.norm(dim=0), torch.ones(5, dtype=torch.float64))
    # chain rule oracle: d L / d theta_d = P^T grad_theta L
    loss = F.cross_entropy(sub(x), y)
    (g_d,) = torch.autograd.grad(loss, sub.theta_d)
    g_full = torch.cat([g.reshape(-1) for g in torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))])
    torch.testing.assert_close(g_d, sub.projection.T @ g_full)
    sub.eval()
    assert not model.training
    sub.train()
    assert model.training


def test_subspace_training_reaches_the_optimum_when_d_equals_D():
    g = torch.Generator().manual_seed(2)
    X, t = torch.randn(50, 4, generator=g, dtype=torch.float64), torch.randn(50, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(4, 1).double()
    best = F.mse_loss(torch.cat([X, torch.ones(50, 1, dtype=torch.float64)], 1)
                      @ torch.linalg.lstsq(torch.cat([X, torch.ones(50, 1, dtype=torch.float64)], 1), t).solution, t)
    for dim, reaches in ((5, True), (2, False)):
        sub = RandomSubspace(model, dim=dim, seed=1)
        opt = torch.optim.LBFGS(sub.parameters(), max_iter=200, tolerance_grad=1e-12, tolerance_change=0)

        def closure():
            opt.zero_grad()
            loss = F.mse_loss(sub(X), t)
            loss.backward()
            return loss

        opt.step(closure)
        final = F.mse_loss(sub(X), t).item()
        assert (final == pytest.approx(best.item(), rel=1e-8)) is reaches
    trained = sub.write_back()
    assert trained is model
    torch.testing.assert_close(model(X), sub(X))
    assert intrinsic_dimension([10, 50, 100], [0.5, 0.85, 0.95], baseline=0.98) == 100
    assert intrinsic_dimension([10, 50], [0.5, 0.6], baseline=0.98) is None
