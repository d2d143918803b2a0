"""Where mergekit (0.1.5, REFERENCES 4.4) departs from the papers, measured on hand-made cases.

mergekit is not installed: its rules are computed here from their documented definitions
(``sparsify.magnitude``/``random`` with ``rescale_norm="l1"``, ``generalized_task_arithmetic``'s
sign consensus "sum" with ``normalize=True``, ``task_arithmetic`` with weight 1 and no normalisation),
next to ours, which follow the papers.
"""

import itertools

import torch

from descentlab.averaging import dare, dare_keep_masks, task_arithmetic, ties_merge

D = torch.float64


def t(*v):
    return torch.tensor(v, dtype=D)


def mergekit_ties(base, taus, density):
    """mergekit's TIES: per-tensor top-k (k = int(density * numel)), sign of the summed deltas (0 -> +),
    mean over the agreeing models (divisor 0 -> 1), base + mixed."""
    out = {}
    for name in base:
        deltas = []
        for tau in taus:
            v = tau[name]
            k = int(density * v.numel())
            keep = torch.zeros_like(v, dtype=torch.bool)
            keep[v.abs().topk(k).indices] = True
            deltas.append(v * keep)
        deltas = torch.stack(deltas)
        majority = torch.where(deltas.sum(0) >= 0, 1.0, -1.0).to(D)
        mask = (deltas.sign() == majority).to(D)
        divisor = mask.sum(0)
        divisor[divisor == 0] = 1
        out[name] = base[name] + (deltas * mask).sum(0) / divisor
    return out


def test_ties_global_trim_versus_mergekit_per_tensor_trim():
    base = {"big": torch.zeros(4, dtype=D), "small": torch.zeros(4, dtype=D)}
    taus = [{"big": t(10, -8, 6, 1), "small": t(0.3, -0.2, 0.1, 0.05)},
            {"big": t(-9, 7, 2, 5), "small": t(-0.4, 0.1, 0.3, -0.2)}]
    ours = ties_merge(base, [{k: base[k] + tau[k] for k in base} for tau in taus], density=0.5)
    # The paper ranks all 8 entries of a task vector together: each keeps its 4 "big" entries and
    # nothing of "small". Signs of the sums (1, -1, 8, 6): disjoint means 10, -8, (6 + 2) / 2, (1 + 5) / 2.
    torch.testing.assert_close(ours["big"], t(10, -8, 4, 3))
    torch.testing.assert_close(ours["small"], t(0, 0, 0, 0))
    # mergekit keeps the top 2 of each tensor: "big" loses 6, 1, 2, 5 and "small" keeps its largest.
    theirs = mergekit_ties(base, taus, density=0.5)
    torch.testing.assert_close(theirs["big"], t(10, -8, 0, 0))
    torch.testing.assert_close(theirs["small"], t(-0.4, -0.2, 0.3, 0))
    diff = torch.cat([ours[k] - theirs[k] for k in base])
    # measured: the two rules differ by up to 4 (L2 distance 5.03) on this case
    assert float(diff.abs().max()) == 4.0
    assert abs(float(diff.norm()) - 25.29 ** 0.5) < 1e-12


def mergekit_dare_rescale(tau, keep):
    """mergekit 0.1.5's DARE: the kept entries scaled so the tensor keeps its L1 norm (unscaled if empty)."""
    kept = tau * keep
    after = kept.abs().sum()
    return kept if after < 1e-7 else kept * (tau.abs().sum() / after)


def test_dare_rescaling_by_one_over_one_minus_p_versus_mergekit_l1_norm():
    tau = t(1, -2, 3, -4)
    keep = torch.tensor([True, False, True, False])
    # by hand, drop p = 0.5: the paper scales survivors by 1 / (1 - p) = 2: (2, 0, 6, 0);
    # mergekit matches the L1 norm 10 of tau from the survivors' 4: a factor 2.5, (2.5, 0, 7.5, 0)
    torch.testing.assert_close(tau * keep / 0.5, t(2, 0, 6, 0))
    torch.testing.assert_close(mergekit_dare_rescale(tau, keep), t(2.5, 0, 7.5, 0))
    # ours uses 1 / (1 - p) whatever the mask
    seeded = dare({"w": tau}, 0.5, seed=3)["w"]
    mask = dare_keep_masks({"w": tau}, 0.5, seed=3)["w"]
    torch.testing.assert_close(seeded, tau * mask * 2)


def test_dare_expectation_is_the_task_vector_and_mergekit_is_biased():
    """Exact expectations over all 16 equally likely masks at p = 0.5."""
    tau = t(1, -2, 3, -4)
    ours = torch.zeros(4, dtype=D)
    theirs = torch.zeros(4, dtype=D)
    for bits in itertools.product([False, True], repeat=4):
        keep = torch.tensor(bits)
        ours += tau * keep / 0.5 / 16
        theirs += mergekit_dare_rescale(tau, keep) / 16
    torch.testing.assert_close(ours, tau)
    # measured: mergekit's expectation pulls every entry towards the mean magnitude, and the empty
    # mask loses 1/16 of the mass: (1.449, -2.151, 2.679, -3.096) instead of (1, -2, 3, -4)
    torch.testing.assert_close(theirs, t(1.4486607, -2.1507937, 2.6793155, -3.0962302), rtol=0, atol=1e-6)
    assert float((theirs - tau).abs().max()) > 0.9


def test_task_arithmetic_lambda_versus_mergekit_sum():
    base = {"w": t(1, 1)}
    models = [{"w": t(2, 0)}, {"w": t(3, 3)}]          # task vectors (1, -1) and (2, 2)
    mergekit_sum = base["w"] + t(1, -1) + t(2, 2)       # weight 1 each, no normalisation
    torch.testing.assert_close(task_arithmetic(base, models, lam=1.0)["w"], mergekit_sum)
    # the paper scales the sum by a lambda chosen on held-out data; at lambda = 0.4 the
    # difference from mergekit's sum is (1 - 0.4) * sum tau = (1.8, 0.6)
    diff = mergekit_sum - task_arithmetic(base, models, lam=0.4)["w"]
    torch.testing.assert_close(diff, t(1.8, 0.6))
