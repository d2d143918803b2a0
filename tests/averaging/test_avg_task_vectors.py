"""Task arithmetic, TIES, DARE, Model Stock and the gradient-matching merge against their papers'
definitions, computed by hand on hand-made tensors."""

import math

import numpy as np
import pytest
import torch

from descentlab.averaging import (dare, dare_keep_masks, dare_merge, gradient_matching_merge, model_stock,
                                  stock_ratio, task_arithmetic, ties_merge, ties_threshold)

D = torch.float64


def t(*values):
    return torch.tensor(values, dtype=D)


BASE = {"a": t(1.0, 1.0, 1.0), "b": t(2.0, 2.0), "n": torch.tensor(5)}
TAUS = [{"a": t(4.0, -1.0, 0.5), "b": t(-3.0, 0.2)},
        {"a": t(-2.0, 3.0, -0.1), "b": t(1.0, -5.0)},
        {"a": t(1.0, 2.0, -6.0), "b": t(0.3, 0.1)}]


def finetuned(taus=TAUS, base=BASE):
    return [{"a": base["a"] + tau["a"], "b": base["b"] + tau["b"], "n": torch.tensor(9)} for tau in taus]


def test_task_arithmetic_is_theta0_plus_lambda_times_the_sum():
    out = task_arithmetic(BASE, finetuned(), lam=0.4)
    torch.testing.assert_close(out["a"], t(1 + 0.4 * 3.0, 1 + 0.4 * 4.0, 1 + 0.4 * -5.6))
    torch.testing.assert_close(out["b"], t(2 + 0.4 * -1.7, 2 + 0.4 * -4.7))
    assert int(out["n"]) == 5  # integer tensors come from theta_0


def test_ties_follows_the_paper_with_a_global_trim():
    # d = 5 entries per task vector, density 0.4: each keeps its 2 largest |tau| over BOTH tensors:
    # tau_1 keeps a0 = 4, b0 = -3; tau_2 keeps b1 = -5, a1 = 3; tau_3 keeps a2 = -6, a1 = 2.
    # elected signs (sign of the trimmed sum): a = (+, +, -), b = (-, -)
    # disjoint means: a = (4, (3 + 2) / 2, -6), b = (-3, -5)
    out = ties_merge(BASE, finetuned(), density=0.4, lam=0.5)
    torch.testing.assert_close(out["a"], t(1 + 0.5 * 4, 1 + 0.5 * 2.5, 1 + 0.5 * -6))
    torch.testing.assert_close(out["b"], t(2 + 0.5 * -3, 2 + 0.5 * -5))
    assert int(out["n"]) == 5


def test_ties_disjoint_mean_drops_entries_of_the_other_sign():
    # density 1 (no trim): a1 = -1 + 3 + 2 > 0 so -1 is left out: mean of 3 and 2
    out = ties_merge(BASE, finetuned(), density=1.0)
    torch.testing.assert_close(out["a"], t(1 + (4 + 1) / 2, 1 + (3 + 2) / 2, 1 + (-0.1 - 6) / 2))
    # b0 = -3 + 1 + 0.3 < 0: only -3 agrees; b1 = 0.2 - 5 + 0.1 < 0: only -5
    torch.testing.assert_close(out["b"], t(2 - 3.0, 2 - 5.0))


def test_ties_zero_sum_takes_the_majority_sign_and_threshold_ties_survive():
    base = {"a": t(0.0, 0.0, 0.0)}
    models = [{"a": t(2.0, 1.0, 1.0)}, {"a": t(-2.0, 1.0, 1.0)}]
    # entry 0 sums to 0: the majority of the elected signs (0, +, +) is +, so only the +2 is kept
    torch.testing.assert_close(ties_merge(base, models, density=1.0)["a"], t(2.0, 1.0, 1.0))
    # threshold = the k = floor(4 * 0.25) = 1st largest |tau| = 1: all three entries of magnitude 1 are kept
    assert ties_threshold({"a": t(1.0, 1.0, 1.0, 0.5)}, 0.25) == 1.0
    out = ties_merge({"a": torch.zeros(4, dtype=D)}, [{"a": t(1.0, -1.0, 1.0, 0.5)}], density=0.25)
    torch.testing.assert_close(out["a"], t(1.0, -1.0, 1.0, 0.0))  # one model: each entry elects its own sign
    with pytest.raises(ValueError, match="density"):
        ties_merge(base, models, density=0.0)


def _expected_masks(shapes, drop, seed, index):
    """The documented mask: a generator seeded from SeedSequence([seed, index]), torch.rand per tensor
    in state-dict order, keep where u >= drop."""
    s = int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0])
    g = torch.Generator().manual_seed(s)
    return {k: torch.rand(shape, generator=g) >= drop for k, shape in shapes.items()}


def test_dare_with_a_fixed_seed_reproduces_the_expected_masks():
    drop, seed = 0.6, 11
    shapes = {"a": (3,), "b": (2,)}
    expected = [_expected_masks(shapes, drop, seed, i) for i in range(3)]
    for i, tau in enumerate(TAUS):
        masks = dare_keep_masks(tau, drop, seed, i)
        for k in shapes:
            assert torch.equal(masks[k], expected[i][k])
    out = dare_merge(BASE, finetuned(), drop=drop, seed=seed, lam=0.7)
    for k in ("a", "b"):
        by_hand = BASE[k] + 0.7 * sum(TAUS[i][k] * expected[i][k] / (1 - drop) for i in range(3))
        torch.testing.assert_close(out[k], by_hand)
    again = dare_merge(BASE, finetuned(), drop=drop, seed=seed, lam=0.7)
    other = dare_merge(BASE, finetuned(), drop=drop, seed=seed + 1, lam=0.7)
    assert all(torch.equal(out[k], again[k]) for k in out)
    assert not all(torch.equal(out[k], other[k]) for k in ("a", "b"))


def test_dare_keeps_a_fraction_one_minus_drop():
    tau = {"w": torch.ones(200_000, dtype=D)}
    kept = float(dare_keep_masks(tau, 0.3, seed=0)["w"].double().mean())
    assert abs(kept - 0.7) < 5 * math.sqrt(0.21 / 200_000)


def test_dare_is_unbiased_over_seeds():
    tau = {"w": t(1.0, -2.0, 0.5, 3.0, -0.25)}
    drop, n = 0.5, 4000
    mean = sum(dare(tau, drop, seed=s)["w"] for s in range(n)) / n
    # each entry: tau * Bernoulli(1 - p) / (1 - p), standard deviation |tau| sqrt(p / (1 - p))
    tolerance = 5 * tau["w"].abs() * math.sqrt(drop / (1 - drop) / n)
    assert bool(((mean - tau["w"]).abs() <= tolerance).all()), (mean, tau["w"])


def test_dare_then_ties_elect_and_disjoint_mean():
    drop, seed = 0.4, 5
    masks = [_expected_masks({"a": (3,), "b": (2,)}, drop, seed, i) for i in range(3)]
    out = dare_merge(BASE, finetuned(), drop=drop, seed=seed, combine="ties", lam=1.0)
    for k in ("a", "b"):
        rescaled = torch.stack([TAUS[i][k] * masks[i][k] / (1 - drop) for i in range(3)])
        sign = torch.sign(rescaled.sum(0))
        assert bool((sign != 0).all())  # this seed elects no zero sum
        agree = (torch.sign(rescaled) == sign) & (rescaled != 0)
        merged = (rescaled * agree).sum(0) / agree.sum(0).clamp(min=1)
        torch.testing.assert_close(out[k], BASE[k] + merged)
    with pytest.raises(ValueError, match=r"drop .* must be in \[0, 1\)"):
        dare_merge(BASE, finetuned(), drop=1.0, seed=0)


def test_model_stock_ratio_for_two_models_by_hand():
    base = {"w": t(1.0, 1.0), "b": t(0.0, 0.0), "n": torch.tensor(2)}
    s3 = math.sqrt(3.0)
    models = [{"w": t(2.0, 1.0), "b": t(1.0, 0.0), "n": torch.tensor(8)},
              {"w": t(1.5, 1 + s3 / 2), "b": t(0.0, 3.0), "n": torch.tensor(8)}]
    out, ratios = model_stock(base, models, return_ratios=True)
    # w: task vectors (1, 0) and (1/2, sqrt(3)/2), cos = 1/2, t = 2 (1/2) / (1 + 1/2) = 2/3
    assert ratios["w"][0] == pytest.approx(0.5) and ratios["w"][1] == pytest.approx(2 / 3)
    torch.testing.assert_close(out["w"], t(1 + (2 / 3) * 0.75, 1 + (2 / 3) * s3 / 4))
    # b: orthogonal task vectors, cos = 0, t = 0: the pretrained weights
    assert ratios["b"][1] == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(out["b"], t(0.0, 0.0))
    assert int(out["n"]) == 2
    carried = model_stock(base, models, carry=["w"])
    assert torch.equal(carried["w"], base["w"]) and torch.equal(carried["b"], out["b"])
    assert stock_ratio(1.0, 5) == pytest.approx(1.0)  # identical task vectors: the plain average
    with pytest.raises(ValueError, match="tensor 'w'.*undefined"):
        model_stock(base, [{**models[0]}, {"w": t(0.0, 1.0), "b": t(2.0, 2.0), "n": torch.tensor(1)}])


def test_model_stock_uses_the_mean_pairwise_cosine_for_more_models():
    base = {"w": torch.zeros(3, dtype=D)}
    vs = [t(1.0, 0.0, 0.0), t(0.0, 2.0, 0.0), t(3.0, 3.0, 0.0)]
    cos = [0.0, 1 / math.sqrt(2), 1 / math.sqrt(2)]  # pairs (0, 1), (0, 2), (1, 2)
    mean_cos = sum(cos) / 3
    ratio = 3 * mean_cos / (1 + 2 * mean_cos)
    out, ratios = model_stock(base, [{"w": v} for v in vs], return_ratios=True)
    assert ratios["w"][0] == pytest.approx(mean_cos)
    torch.testing.assert_close(out["w"], ratio * sum(vs) / 3)


def test_gradient_matching_merge_by_hand():
    base = {"w": t(1.0, 2.0)}
    models = [{"w": t(2.0, 1.0)}, {"w": t(3.0, 5.0)}]      # tau_1 = (1, -1), tau_2 = (2, 3)
    hessians = [{"w": t(1.0, 4.0)}, {"w": t(3.0, 0.0)}]
    h0, alpha = 0.5, [1.0, 0.5]
    out = gradient_matching_merge(base, models, hessians, prior_precision=h0, alphas=alpha)
    expected = []
    for j, (taus, hs) in enumerate([((1.0, 2.0), (1.0, 3.0)), ((-1.0, 3.0), (4.0, 0.0))]):
        hbar = h0 + alpha[0] * hs[0] + alpha[1] * hs[1]
        expected.append(base["w"][j].item() + sum(alpha[i] * (h0 + hs[i]) / hbar * taus[i] for i in range(2)))
    torch.testing.assert_close(out["w"], t(*expected))


def test_gradient_matching_limits_are_task_arithmetic_and_fisher_averaging():
    from descentlab.averaging import fisher_merge
    models = [{"w": t(2.0, 1.0, 0.0)}, {"w": t(3.0, 5.0, -1.0)}]
    base = {"w": t(1.0, 2.0, 0.5)}
    zero = [{"w": torch.zeros(3, dtype=D)}] * 2
    ta = gradient_matching_merge(base, models, zero, prior_precision=2.0, alphas=[0.3, 0.3])
    torch.testing.assert_close(ta["w"], task_arithmetic(base, models, lam=0.3)["w"])
    hs = [{"w": t(1.0, 4.0, 2.0)}, {"w": t(3.0, 0.5, 2.0)}]
    gm = gradient_matching_merge(base, models, hs, prior_precision=0.0, alphas=[0.5, 0.5])
    torch.testing.assert_close(gm["w"], fisher_merge(models, hs, epsilon=0.0)["w"])
    with pytest.raises(ValueError, match="has no tensor 'w'"):
        gradient_matching_merge(base, models, [{}, {}], prior_precision=1.0)
    with pytest.raises(ValueError, match="fewer Hessians"):
        gradient_matching_merge(base, models, hs[:1], prior_precision=1.0)


def test_dare_then_a_ties_trim_is_ties_on_the_dared_models():
    drop, seed = 0.3, 8
    dared = [dare(tau, drop, seed, i) for i, tau in enumerate(TAUS)]
    expected = ties_merge(BASE, finetuned(dared), density=0.4, lam=0.8)
    out = dare_merge(BASE, finetuned(), drop=drop, seed=seed, combine="ties", density=0.4, lam=0.8)
    for k in ("a", "b"):
        torch.testing.assert_close(out[k], expected[k])
    with pytest.raises(ValueError, match="only with combine='ties'"):
        dare_merge(BASE, finetuned(), drop=drop, seed=seed, density=0.5)


def test_carried_floating_tensors_come_from_the_pretrained_model():
    for out in (task_arithmetic(BASE, finetuned(), carry=["b"]),
                ties_merge(BASE, finetuned(), density=0.4, carry=["b"]),
                dare_merge(BASE, finetuned(), drop=0.5, seed=0, carry=["b"]),
                dare_merge(BASE, finetuned(), drop=0.5, seed=0, combine="ties", carry=["b"])):
        assert torch.equal(out["b"], BASE["b"])
        assert not torch.equal(out["a"], BASE["a"])
    # carried names are left out of TIES' global trim: "a" alone keeps floor(3 * 0.4) = 1 entry per vector
    out = ties_merge(BASE, finetuned(), density=0.4, carry=["b"])
    torch.testing.assert_close(out["a"], t(1 + 4.0, 1 + 3.0, 1 - 6.0))  # kept: 4 | 3 | -6
    with pytest.raises(ValueError, match="carry names tensors the models do not have"):
        task_arithmetic(BASE, finetuned(), carry=["zzz"])
