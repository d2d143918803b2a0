"""Fisher-weighted averaging (Matena & Raffel 2022) and the diagonal Fisher, against closed forms."""

import pytest
import torch
import torch.nn.functional as F
from _merge_helpers import random_state, teacher_data, trained_mlp
from torch import nn

from descentlab.averaging import diagonal_fisher, fisher_merge, uniform_soup

D = torch.float64


def t(*v):
    return torch.tensor(v, dtype=D)


def test_equal_fishers_give_the_uniform_soup():
    states = [random_state(s, counter=s) for s in range(4)]
    fisher = {k: v.abs() for k, v in random_state(99).items()}
    out = fisher_merge(states, [fisher] * 4)
    soup = uniform_soup(states)
    for k in soup:
        torch.testing.assert_close(out[k], soup[k])


def test_fisher_merge_by_hand_with_the_floor():
    eps = 1e-6
    a, b = {"w": t(1.0, 2.0, 3.0, 4.0)}, {"w": t(5.0, 6.0, 7.0, 8.0)}
    fa, fb = {"w": t(1.0, 0.0, 3.0, 0.0)}, {"w": t(1.0, 2.0, 0.0, 0.0)}
    out = fisher_merge([a, b], [fa, fb], weights=[1.0, 3.0], epsilon=eps)
    expected = t((1 * 1 + 3 * 5) / 4,
                 (eps * 2 + 3 * 2 * 6) / (eps + 3 * 2),
                 (3 * 3 + 3 * eps * 7) / (3 + 3 * eps),
                 (1 * 4 + 3 * 8) / 4)  # no model has Fisher there: the floor gives the weighted mean
    torch.testing.assert_close(out["w"], expected)
    first = fisher_merge([a, b], [fa, fb], weights=[1.0, 3.0], epsilon=eps, floor="first")
    torch.testing.assert_close(first["w"], t(4.0, (eps * 2 + 6 * 6) / (eps + 6), 3.0, 4.0))
    with pytest.raises(ValueError, match="sum to zero"):
        fisher_merge([a, b], [fa, fb], epsilon=0.0)


def test_tensors_without_a_fisher_are_averaged_and_counters_carried():
    a, b = random_state(0, counter=4), random_state(1, counter=8)
    out = fisher_merge([a, b], [{"w": torch.ones(4, 3, dtype=D)}, {"w": 3 * torch.ones(4, 3, dtype=D)}])
    torch.testing.assert_close(out["w"], (a["w"] + 3 * b["w"]) / 4)
    torch.testing.assert_close(out["b"], (a["b"] + b["b"]) / 2)
    assert int(out["n"]) == 4 and out["n"].dtype == torch.int64
    with pytest.raises(ValueError, match="covers other tensors"):
        fisher_merge([a, b], [{"w": torch.ones(4, 3)}, {"b": torch.ones(4)}])
    with pytest.raises(ValueError, match=r"tensor 'w' has shape \(3,\)"):
        fisher_merge([a, b], [{"w": torch.ones(3)}, {"w": torch.ones(3)}])


def _linear_problem():
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    x = torch.randn(30, 4, dtype=D)
    y = torch.randint(0, 3, (30,))
    p = F.softmax(model(x), dim=1).detach()
    return model, x, y, p


def test_empirical_fisher_of_a_softmax_regression_in_closed_form():
    # grad_W -log p_y(x) = (p - e_y) x^T, grad_b = p - e_y
    model, x, y, p = _linear_problem()
    r = p - F.one_hot(y, 3).double()
    fisher = diagonal_fisher(model, x, y, kind="empirical", chunk_size=7)
    torch.testing.assert_close(fisher["weight"], (r[:, :, None] ** 2 * x[:, None, :] ** 2).mean(0))
    torch.testing.assert_close(fisher["bias"], (r ** 2).mean(0))
    total = diagonal_fisher(model, x, y, kind="empirical", reduction="sum")
    torch.testing.assert_close(total["weight"], 30 * fisher["weight"])


def test_exact_and_sampled_fisher_of_a_softmax_regression():
    # E_{y ~ p} (p_c - [y = c])^2 = p_c (1 - p_c)
    model, x, _, p = _linear_problem()
    v = p * (1 - p)
    exact = diagonal_fisher(model, x, kind="exact", chunk_size=8)
    torch.testing.assert_close(exact["weight"], (v[:, :, None] * x[:, None, :] ** 2).mean(0))
    torch.testing.assert_close(exact["bias"], v.mean(0))
    sampled = diagonal_fisher(model, x, kind="sampled", n_samples=4000, seed=3)
    for k in ("weight", "bias"):
        torch.testing.assert_close(sampled[k], exact[k], rtol=0.05, atol=1e-3)
    again = diagonal_fisher(model, x, kind="sampled", n_samples=4000, seed=3)
    assert all(torch.equal(sampled[k], again[k]) for k in sampled)
    with pytest.raises(ValueError, match="seed"):
        diagonal_fisher(model, x, kind="sampled")
    with pytest.raises(ValueError, match="needs the labels"):
        diagonal_fisher(model, x, kind="empirical")


def test_fisher_merge_of_trained_networks_runs_and_leaves_the_models_alone():
    models = [trained_mlp(seed=s, steps=60) for s in range(2)]
    x, y = teacher_data(n=64, seed=5)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
    fishers = [diagonal_fisher(m, x, y) for m in models]
    assert set(fishers[0]) == {k for k, _ in models[0].named_parameters()}
    merged = fisher_merge(models, fishers)
    for m, saved in zip(models, before):
        assert all(torch.equal(m.state_dict()[k], saved[k]) for k in saved)
    for k, v in merged.items():
        lo = torch.minimum(before[0][k], before[1][k])
        hi = torch.maximum(before[0][k], before[1][k])
        assert bool(((v >= lo - 1e-6) & (v <= hi + 1e-6)).all())  # elementwise convex combination
