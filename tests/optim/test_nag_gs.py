"""NAG-GS: the paper's Algorithm 1 written out on a quadratic, the official README's
value, the spectral-radius stability map for gamma = mu, the measured gap to the
official PyTorch class, multi-tensor == loop and the state round trip."""

from __future__ import annotations

import copy

import pytest
import torch

from descentlab.optim import OPTIMIZERS
from descentlab.optim.nag_gs import NAGGS

SHAPES = [(3, 4), (5,), (2, 3, 2)]


def quadratic_run(curvatures, x0, steps, **kw):
    """Our optimizer on f(x) = 1/2 sum c_i x_i^2; returns the iterates after each step."""
    x = x0.clone().requires_grad_()
    opt = NAGGS([x], **kw)
    out = []
    for _ in range(steps):
        x.grad = curvatures * x.detach()
        opt.step()
        out.append(x.detach().clone())
    return out, opt


def test_matches_algorithm_1_written_out():
    """gamma_{k+1} = (gamma_k + alpha mu)/(1+alpha); x_{k+1} = (x_k + alpha v_k)/(1+alpha);
    v_{k+1} = (v_k + (alpha mu/gamma_{k+1}) x_{k+1} - (alpha/gamma_{k+1}) grad f(x_{k+1}))
              / (1 + alpha mu/gamma_{k+1}); v_0 = x_0."""
    gen = torch.Generator().manual_seed(0)
    c = torch.rand(6, generator=gen, dtype=torch.float64) * 4 + 0.1
    x0 = torch.randn(6, generator=gen, dtype=torch.float64)
    alpha, mu, gamma0, steps = 0.3, 0.5, 2.0, 30
    ours, opt = quadratic_run(c, x0, steps, lr=alpha, mu=mu, gamma=gamma0)
    x, v, gamma = x0.clone(), x0.clone(), gamma0
    gamma = (gamma + alpha * mu) / (1 + alpha)
    x = (x + alpha * v) / (1 + alpha)  # x_1 (= x_0)
    for k in range(steps):
        v = (v + (alpha * mu / gamma) * x - (alpha / gamma) * c * x) / (1 + alpha * mu / gamma)
        gamma = (gamma + alpha * mu) / (1 + alpha)
        x = (x + alpha * v) / (1 + alpha)
        torch.testing.assert_close(ours[k], x, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(opt.state[opt.param_groups[0]["params"][0]]["v"], v, rtol=1e-13, atol=1e-15)


def test_official_readme_value():
    """README (Optax nag_gs, float32): f = x.x from ones(3), alpha 0.05, mu 1, gamma 1.5,
    200 calls -> -6.888961e-05 per coordinate. Optax's first call only sets gamma_1, so
    that is our iterate after 199 steps."""
    ours, _ = quadratic_run(torch.full((3,), 2.0, dtype=torch.float64), torch.ones(3, dtype=torch.float64),
                            200, lr=0.05, mu=1.0, gamma=1.5)
    expected = torch.full((3,), -6.888961e-05, dtype=torch.float64)
    torch.testing.assert_close(ours[198], expected, rtol=2e-5, atol=0)
    assert not torch.allclose(ours[199], expected, rtol=2e-4, atol=0)


def _official_pytorch_naggs(c, x0, steps, alpha, mu, gamma):
    """skolai/nag-gs ``nag_gs`` (PyTorch): b from the gamma *before* its update."""
    x, v, out = x0.clone(), x0.clone(), []
    for _ in range(steps):
        g = c * x
        a, b = alpha / (alpha + 1), alpha * mu / (alpha * mu + gamma)
        gamma = (1 - a) * gamma + a * mu
        v = v * (1 - b) + x * b - g * (b / mu)
        x = x * (1 - a) + v * a
        out.append(x)
    return out


def test_gap_to_official_pytorch_class_is_the_gamma_lag():
    c, x0 = torch.full((3,), 2.0, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    same, _ = quadratic_run(c, x0, 50, lr=0.05, mu=1.0, gamma=1.0)
    for a, b in zip(same, _official_pytorch_naggs(c, x0, 50, 0.05, 1.0, 1.0)):  # gamma_0 = mu: equal
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    ours, _ = quadratic_run(c, x0, 50, lr=0.05, mu=1.0, gamma=1.5)
    gap = max((a - b).abs().max().item() for a, b in zip(ours, _official_pytorch_naggs(c, x0, 50, 0.05, 1.0, 1.5)))
    assert 3e-3 < gap < 5e-3  # measured 4.07e-3 (at step 28, x ~ 0.38)


def iteration_matrix(alpha, mu, lam):
    """gamma = mu on f = lam/2 x^2, state (x_{k+1}, v_k) -> (x_{k+2}, v_{k+1}), by hand:
    v' = (v + alpha (1 - lam/mu) x)/(1+alpha), x' = (x + alpha v')/(1+alpha)."""
    s = 1.0 / (1.0 + alpha)
    v_row = torch.tensor([alpha * (1 - lam / mu) * s, s], dtype=torch.float64)
    x_row = torch.tensor([s, 0.0], dtype=torch.float64) + alpha * s * v_row
    return torch.stack([x_row, v_row])


@pytest.mark.parametrize("lam", [0.5, 4.0, 20.0])
def test_stability_map_spectral_radius(lam):
    """Our run is the hand-derived linear map, and it decays or blows up as that map's
    spectral radius says (radii here: 1/(1+alpha) = 0.2 .. 0.95 stable, 2.4 .. 24.6 unstable)."""
    mu, steps = 0.5, 60
    seen = set()
    for alpha in (0.05, 0.2, 0.5, 1.0, 2.0, 4.0):
        m = iteration_matrix(alpha, mu, lam)
        rho = torch.linalg.eigvals(m).abs().max().item()
        x0 = torch.tensor([1.0], dtype=torch.float64)
        iterates, opt = quadratic_run(torch.tensor([lam], dtype=torch.float64), x0, steps, lr=alpha, mu=mu, gamma=mu)
        state = torch.stack([iterates[-1][0], opt.state[opt.param_groups[0]["params"][0]]["v"][0]])
        # state_n = M^n state_0 with state_0 = (x_1, v_0) = (1, 1)
        expected = torch.linalg.matrix_power(m, steps) @ torch.ones(2, dtype=torch.float64)
        torch.testing.assert_close(state, expected, rtol=1e-9, atol=1e-30)
        size = state.abs().max().item()
        if rho < 0.96:
            assert size < 0.5
            seen.add("stable")
        else:
            assert rho > 2.0 and size > 1e10
            seen.add("unstable")
    assert seen == ({"stable"} if lam == 0.5 else {"stable", "unstable"})


def test_papers_optimal_step_minimises_the_worst_spectral_radius():
    """For gamma = mu and eigenvalues in [mu, L] the authors' notebook (skolai/nag-gs,
    notebooks/quadratic-and-non-convex-cases.ipynb, ``alpha2``) takes
    alpha* = (mu + gamma + 2 sqrt(gamma L)) / (L - mu). On the hand-derived map it
    minimises the worst radius, which is 1/(1+alpha*), and our run contracts that fast."""
    mu, big = 0.5, 20.0
    alpha_star = (2 * mu + 2 * (mu * big) ** 0.5) / (big - mu)
    lams = torch.linspace(mu, big, 101, dtype=torch.float64).tolist()

    def worst(alpha):
        return max(torch.linalg.eigvals(iteration_matrix(alpha, mu, lam)).abs().max().item() for lam in lams)

    rho_star = worst(alpha_star)
    assert rho_star == pytest.approx(1 / (1 + alpha_star), rel=1e-6)
    for factor in (0.8, 0.95, 1.05, 1.25):
        assert worst(alpha_star * factor) > rho_star
    c = torch.tensor(lams[::10], dtype=torch.float64)
    iterates, _ = quadratic_run(c, torch.ones_like(c), 60, lr=alpha_star, mu=mu, gamma=mu)
    # at lambda = L the map is (nearly) a Jordan block at alpha*: error ~ n rho^n
    assert iterates[-1].abs().max().item() < 100 * 60 * rho_star**60


def test_foreach_matches_loop_with_groups_and_missing_grads():
    gen = torch.Generator().manual_seed(1)
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES] for _ in range(25)]
    results = []
    for foreach in (True, False):
        torch.manual_seed(0)
        params = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in SHAPES]
        opt = NAGGS([{"params": params[:2]}, {"params": params[2:], "lr": 0.2, "gamma": 3.0}],
                    lr=0.1, mu=0.3, foreach=foreach)
        for t, gs in enumerate(grads):
            for i, (p, g) in enumerate(zip(params, gs)):
                p.grad = None if (i == 0 and t % 5 == 3) else g.clone()
            opt.step()
        results.append((params, opt))
    (pa, oa), (pb, ob) = results
    for a, b in zip(pa, pb):
        assert torch.equal(a, b)
        assert torch.equal(oa.state[a]["v"], ob.state[b]["v"]) and oa.state[a]["gamma"] == ob.state[b]["gamma"]
        assert torch.equal(a.grad, b.grad)


def test_state_dict_round_trip():
    gen = torch.Generator().manual_seed(2)
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES] for _ in range(10)]
    torch.manual_seed(0)
    params = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in SHAPES]

    def run(opt, ps, seq):
        for gs in seq:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            opt.step()

    opt = OPTIMIZERS.build({"name": "nag_gs", "lr": 0.1}, params)
    run(opt, params, grads[:4])
    saved = copy.deepcopy(opt.state_dict())
    clone = [p.detach().clone().requires_grad_() for p in params]
    run(opt, params, grads[4:])
    opt2 = OPTIMIZERS.build({"name": "nag_gs", "lr": 0.7}, clone)
    opt2.load_state_dict(saved)
    run(opt2, clone, grads[4:])
    for a, b in zip(params, clone):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kw", [dict(lr=0.0), dict(mu=-1.0), dict(gamma=0.0)])
def test_bad_hyperparameters(kw):
    with pytest.raises(ValueError):
        NAGGS([torch.zeros(2, requires_grad=True)], **kw)
