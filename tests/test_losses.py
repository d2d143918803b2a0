"""Losses against hand formulas (plain-Python math on tiny cases), torch and pytorch-optimizer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from descentlab.losses import (
    LOSSES,
    build_loss,
    check_classification,
    dice_loss,
    focal_loss,
    gmadl,
    log_partition_penalty,
    madl,
    mse,
    norm_penalty,
    spherical_z_loss,
    squentropy,
    z_loss_penalty,
)
from descentlab.registry import UnknownNameError

D = torch.float64
Z = [[1.0, -0.5, 2.0], [0.3, 0.8, -1.2]]  # 2 x 3 logits
Y = [2, 0]


def logits(rows=Z, grad=False):
    return torch.tensor(rows, dtype=D, requires_grad=grad)


def labels(values=Y):
    return torch.tensor(values)


def lse(row):
    return math.log(sum(math.exp(v) for v in row))


def softmax(row):
    total = sum(math.exp(v) for v in row)
    return [math.exp(v) / total for v in row]


def ce(row, y):
    return lse(row) - row[y]


def grad_of(loss_fn, rows=Z, targets=None):
    z = logits(rows, grad=True)
    loss_fn(z, labels() if targets is None else targets).backward()
    return z.grad


# -- registry --------------------------------------------------------------------------------------


def test_registry_has_all_losses():
    expected = {"cross_entropy", "label_smoothing", "mse", "squentropy", "focal", "dice", "z_loss",
                "log_partition_penalty", "spherical_z_loss", "madl", "gmadl", "norm_loss"}
    assert expected <= set(LOSSES.names())
    with pytest.raises(UnknownNameError, match="did you mean 'focal'"):
        build_loss({"name": "focall"})


# -- cross-entropy, label smoothing (torch overlap) ------------------------------------------------


def test_cross_entropy_hand_and_torch():
    value = build_loss({"name": "cross_entropy"})(logits(), labels())
    hand = sum(ce(r, y) for r, y in zip(Z, Y)) / 2
    assert value.item() == pytest.approx(hand, rel=1e-14)
    assert torch.equal(value, F.cross_entropy(logits(), labels()))


def test_label_smoothing_hand_and_torch():
    eps = 0.2
    value = build_loss({"name": "label_smoothing", "smoothing": eps})(logits(), labels())
    hand = sum((1 - eps) * ce(r, y) + eps * sum(lse(r) - v for v in r) / 3 for r, y in zip(Z, Y)) / 2
    assert value.item() == pytest.approx(hand, rel=1e-14)
    torch.testing.assert_close(value, F.cross_entropy(logits(), labels(), label_smoothing=eps), rtol=0, atol=0)


# -- MSE with Hui-Belkin rescaling -----------------------------------------------------------------


def test_mse_default_is_unchanged():
    onehot = F.one_hot(labels(), 3).to(D)
    assert torch.equal(build_loss({"name": "mse"})(logits(), labels()), F.mse_loss(logits(), onehot))
    target = torch.randn(2, 3, dtype=D)
    assert torch.equal(build_loss("mse")(logits(), target), F.mse_loss(logits(), target))


def test_mse_rescaled_value_and_gradient():
    k, M = 3.0, 2.5
    value = build_loss({"name": "mse", "k": k, "M": M})(logits(), labels())
    hand = sum(
        (k * (r[y] - M) ** 2 + sum(v**2 for j, v in enumerate(r) if j != y)) / 3 for r, y in zip(Z, Y)
    ) / 2
    assert value.item() == pytest.approx(hand, rel=1e-14)
    grad = grad_of(lambda z, t: mse(z, t, k, M))
    for i, (r, y) in enumerate(zip(Z, Y)):
        for j, v in enumerate(r):
            expected = 2 * (k * (v - M) if j == y else v) / (2 * 3)
            assert grad[i, j].item() == pytest.approx(expected, rel=1e-13)


def test_mse_errors():
    with pytest.raises(ValueError, match="k and M apply to class-index targets"):
        mse(logits(), torch.zeros(2, 3, dtype=D), k=2.0)
    with pytest.raises(ValueError, match="k must be > 0"):
        build_loss({"name": "mse", "k": 0})


# -- squentropy ------------------------------------------------------------------------------------


def test_squentropy_value_and_gradient():
    value = build_loss("squentropy")(logits(), labels())
    hand = sum(ce(r, y) + sum(v**2 for j, v in enumerate(r) if j != y) / 2 for r, y in zip(Z, Y)) / 2
    assert value.item() == pytest.approx(hand, rel=1e-14)
    grad = grad_of(squentropy)
    for i, (r, y) in enumerate(zip(Z, Y)):
        p = softmax(r)
        for j, v in enumerate(r):
            expected = (p[j] - (j == y)) / 2 + (0.0 if j == y else 2 * v / (2 * 2))
            assert grad[i, j].item() == pytest.approx(expected, rel=1e-12)


def test_squentropy_square_weight_and_two_classes():
    value = squentropy(logits(), labels(), square_weight=0.0)
    torch.testing.assert_close(value, F.cross_entropy(logits(), labels()), rtol=0, atol=0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        squentropy(torch.zeros(2, 1, dtype=D), torch.zeros(2, dtype=torch.long))


# -- focal -----------------------------------------------------------------------------------------


def test_focal_softmax_value():
    gamma, alpha = 2.0, [0.25, 0.5, 2.0]
    value = build_loss({"name": "focal", "gamma": gamma, "alpha": alpha})(logits(), labels())
    hand = 0.0
    for r, y in zip(Z, Y):
        p_t = softmax(r)[y]
        hand += -alpha[y] * (1 - p_t) ** gamma * math.log(p_t)
    assert value.item() == pytest.approx(hand / 2, rel=1e-13)


def test_focal_gamma_zero_is_alpha_weighted_cross_entropy():
    alpha = [0.25, 0.5, 2.0]
    value = focal_loss(logits(), labels(), gamma=0.0, alpha=alpha)
    per_example = F.cross_entropy(logits(), labels(), weight=torch.tensor(alpha, dtype=D), reduction="none")
    torch.testing.assert_close(value, per_example.mean(), rtol=1e-15, atol=0)
    torch.testing.assert_close(focal_loss(logits(), labels(), gamma=0.0), F.cross_entropy(logits(), labels()),
                               rtol=1e-15, atol=0)
    torch.testing.assert_close(focal_loss(logits(), labels(), gamma=0.0, alpha=0.25),
                               0.25 * F.cross_entropy(logits(), labels()), rtol=1e-15, atol=0)


def test_focal_binary_sigmoid_form():
    z = logits()
    t = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=D)
    value = focal_loss(z, t, gamma=2.0, alpha=0.25)
    hand = 0.0
    for r, tr in zip(Z, t.tolist()):
        for v, y in zip(r, tr):
            p = 1 / (1 + math.exp(-v))
            p_t = p if y == 1 else 1 - p
            a_t = 0.25 if y == 1 else 0.75
            hand += -a_t * (1 - p_t) ** 2 * math.log(p_t)
    assert value.item() == pytest.approx(hand / 6, rel=1e-13)


def test_focal_binary_matches_pytorch_optimizer():
    po = pytest.importorskip("pytorch_optimizer.loss.focal")
    torch.manual_seed(0)
    z = torch.randn(4, 3, dtype=D)
    t = (torch.rand(4, 3, dtype=D) > 0.5).to(D)
    torch.testing.assert_close(focal_loss(z, t, gamma=2.0), po.FocalLoss(alpha=1.0, gamma=2.0)(z, t),
                               rtol=1e-14, atol=0)


def test_focal_errors():
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        build_loss({"name": "focal", "gamma": -1})
    with pytest.raises(ValueError, match="needs 3 weights"):
        focal_loss(logits(), labels(), alpha=[1.0, 2.0])
    with pytest.raises(ValueError, match="float alpha in \\[0, 1\\]"):
        focal_loss(logits(), torch.zeros(2, 3, dtype=D), alpha=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="float \\(binary\\) targets must have the outputs' shape"):
        focal_loss(logits(), torch.zeros(2, dtype=D))


# -- Dice ------------------------------------------------------------------------------------------


def test_dice_value_by_hand():
    s = 0.5
    value = build_loss({"name": "dice", "smooth": s})(logits(), labels())
    probs = [softmax(r) for r in Z]
    scores = []
    for c in range(3):
        inter = sum(p[c] for p, y in zip(probs, Y) if y == c)
        card = sum(p[c] for p in probs) + sum(1 for y in Y if y == c)
        scores.append((2 * inter + s) / (card + s))
    assert value.item() == pytest.approx(1 - sum(scores) / 3, rel=1e-13)


def test_dice_perfect_prediction_is_zero():
    y = torch.tensor([0, 2, 1, 2])
    onehot = F.one_hot(y, 3).to(D)
    assert dice_loss(onehot, y, from_logits=False).item() == 0.0
    assert dice_loss(onehot, y, smooth=0.0, from_logits=False).item() == 0.0
    assert dice_loss(200.0 * onehot, y).item() == pytest.approx(0.0, abs=1e-15)
    # an absent class (no 1s anywhere) counts as perfect with smoothing, even at smooth = 0
    y2 = torch.tensor([0, 0, 2, 2])
    assert dice_loss(F.one_hot(y2, 3).to(D), y2, smooth=0.0, from_logits=False).item() == 0.0
    # and a wrong prediction is not 0
    assert dice_loss(F.one_hot(torch.tensor([1, 2, 0, 2]), 3).to(D), y, from_logits=False).item() > 0.3


def test_dice_matches_pytorch_optimizer_when_every_class_is_present():
    po = pytest.importorskip("pytorch_optimizer.loss.dice")
    torch.manual_seed(1)
    z = torch.randn(6, 3, dtype=D)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    for s in (0.0, 1.0):
        theirs = po.DiceLoss(mode="multiclass", label_smooth=s, eps=1e-300)(z, y)
        torch.testing.assert_close(dice_loss(z, y, smooth=s), theirs, rtol=1e-14, atol=1e-15)
    # and on segmentation-shaped inputs (N, C, H, W) with (N, H, W) labels
    z4 = torch.randn(2, 3, 4, 5, dtype=D)
    y4 = torch.randint(0, 3, (2, 4, 5))
    y4[0, 0, :3] = torch.tensor([0, 1, 2])
    theirs = po.DiceLoss(mode="multiclass", label_smooth=1.0, eps=1e-300)(z4, y4)
    torch.testing.assert_close(dice_loss(z4, y4), theirs, rtol=1e-14, atol=1e-15)


def test_dice_errors():
    with pytest.raises(ValueError, match="targets must be class indices of shape \\(2,\\)"):
        dice_loss(logits(), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer class indices"):
        dice_loss(logits(), torch.zeros(2, dtype=D))
    with pytest.raises(TypeError, match="floating point"):
        dice_loss(torch.zeros(2, 3, dtype=torch.long), labels())
    with pytest.raises(ValueError, match="smooth must be >= 0"):
        build_loss({"name": "dice", "smooth": -1})


# -- log-partition penalty (PaLM's "z-loss") --------------------------------------------------------


def test_log_partition_penalty_value_gradient_and_nesting():
    c = 1e-2
    loss = build_loss({"name": "log_partition_penalty", "base": {"name": "cross_entropy"}, "coefficient": c})
    hand = sum(ce(r, y) + c * lse(r) ** 2 for r, y in zip(Z, Y)) / 2
    assert loss(logits(), labels()).item() == pytest.approx(hand, rel=1e-14)
    grad = grad_of(loss)
    for i, (r, y) in enumerate(zip(Z, Y)):
        p = softmax(r)
        for j in range(3):
            expected = (p[j] - (j == y)) / 2 + c * 2 * lse(r) * p[j] / 2
            assert grad[i, j].item() == pytest.approx(expected, rel=1e-12)
    wrapped = build_loss({"name": "log_partition_penalty", "base": {"name": "focal", "gamma": 0.0},
                          "coefficient": c})
    assert wrapped(logits(), labels()).item() == pytest.approx(hand, rel=1e-14)
    assert log_partition_penalty(logits()).item() == pytest.approx(sum(lse(r) ** 2 for r in Z) / 2, rel=1e-14)


def test_log_partition_penalty_errors():
    with pytest.raises(ValueError, match="coefficient must be >= 0"):
        build_loss({"name": "log_partition_penalty", "coefficient": -1.0})
    with pytest.raises(TypeError, match="base must be a loss spec"):
        build_loss({"name": "log_partition_penalty", "base": 3})
    with pytest.raises(ValueError, match="log_partition_penalty: outputs must be \\(N, C\\)"):
        build_loss("log_partition_penalty")(torch.zeros(2, dtype=D), labels())


def test_z_loss_is_a_deprecated_alias_naming_the_new_names():
    spec = {"name": "z_loss", "base": {"name": "cross_entropy"}, "coefficient": 1e-2}
    with pytest.warns(DeprecationWarning, match="'log_partition_penalty'.*'spherical_z_loss'"):
        old = build_loss(spec)
    new = build_loss({**spec, "name": "log_partition_penalty"})
    assert torch.equal(old(logits(), labels()), new(logits(), labels()))
    with pytest.warns(DeprecationWarning, match="use log_partition_penalty"):
        assert torch.equal(z_loss_penalty(logits()), log_partition_penalty(logits()))
    with pytest.raises(ValueError, match="z_loss: outputs must be \\(N, C\\)"):  # errors use the name given
        with pytest.warns(DeprecationWarning):
            loss = build_loss("z_loss")
        loss(torch.zeros(2, dtype=D), labels())


# -- spherical Z-loss (de Brébisson & Vincent, arXiv 1604.08859) ------------------------------------


def spherical_z_brute_force(rows, ys, a, b):
    """(1/N) sum_i (1/a) log(1 + exp(a (b - z_iy))), z = (o - mu) / sigma, sigma^2 = (1/C) sum o^2 - mu^2."""
    total = 0.0
    for row, y in zip(rows, ys):
        c = len(row)
        mu = sum(row) / c
        sigma = math.sqrt(sum(v * v for v in row) / c - mu * mu)
        z_y = (row[y] - mu) / sigma
        total += math.log1p(math.exp(a * (b - z_y))) / a
    return total / len(rows)


@pytest.mark.parametrize("a, b", [(1.0, 1.0), (0.1, 2.0), (3.0, -0.5), (20.0, 1.2)])
def test_spherical_z_loss_matches_brute_force(a, b):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(6, 5, dtype=D, generator=gen)
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    expected = spherical_z_brute_force(z.tolist(), y.tolist(), a, b)
    loss = build_loss({"name": "spherical_z_loss", "a": a, "b": b})
    assert loss(z, y).item() == pytest.approx(expected, rel=1e-12)
    assert spherical_z_loss(z, y, a, b).item() == pytest.approx(expected, rel=1e-12)
    assert build_loss("spherical_z_loss")(z, y).item() == pytest.approx(
        spherical_z_brute_force(z.tolist(), y.tolist(), 1.0, 1.0), rel=1e-12)


def test_spherical_z_loss_is_shift_and_scale_invariant_unlike_cross_entropy():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(8, 6, dtype=D, generator=gen)
    y = torch.randint(0, 6, (8,), generator=gen)
    exact = build_loss({"name": "spherical_z_loss", "a": 2.0, "b": 1.5, "eps": 0.0})
    loss = build_loss({"name": "spherical_z_loss", "a": 2.0, "b": 1.5})  # eps = 1e-12 on sigma^2 ~ 1
    base = exact(z, y)
    shifts = torch.randn(8, 1, dtype=D, generator=gen) * 10  # a constant per example
    for scale in (1e-2, 0.3, 7.0, 1e3):
        torch.testing.assert_close(exact(scale * z + shifts, y), base, rtol=1e-12, atol=0)
        # eps / sigma^2 <= 1e-8 here: invariant up to that
        torch.testing.assert_close(loss(scale * z + shifts, y), base, rtol=1e-8, atol=0)
    assert not torch.isclose(F.cross_entropy(7.0 * z, y), F.cross_entropy(z, y))
    # equal logits (sigma = 0): eps makes z = 0, so softplus(a b) / a
    flat = torch.full((2, 4), 3.0, dtype=D)
    assert loss(flat, torch.tensor([0, 3])).item() == pytest.approx(math.log1p(math.exp(3.0)) / 2.0, rel=1e-12)


def test_spherical_z_loss_gradient_and_errors():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(4, 3, dtype=D, generator=gen, requires_grad=True)
    y = torch.tensor([0, 2, 1, 2])
    assert torch.autograd.gradcheck(lambda t: spherical_z_loss(t, y, 1.5, 0.5), (z,))
    # the gradient of a shift- and scale-invariant function is orthogonal to 1 and to o
    spherical_z_loss(z, y, 1.5, 0.5, eps=0.0).backward()
    torch.testing.assert_close(z.grad.sum(dim=1), torch.zeros(4, dtype=D), rtol=0, atol=1e-15)
    torch.testing.assert_close((z.grad * z.detach()).sum(dim=1), torch.zeros(4, dtype=D), rtol=0, atol=1e-15)
    for kwargs, message in (({"a": 0.0}, "a must be > 0"), ({"b": math.inf}, "b must be finite"),
                            ({"eps": -1.0}, "eps must be >= 0")):
        with pytest.raises(ValueError, match=message):
            build_loss({"name": "spherical_z_loss", **kwargs})
    with pytest.raises(ValueError, match="needs at least 2 classes"):
        spherical_z_loss(torch.zeros(2, 1, dtype=D), torch.tensor([0, 0]))


# -- MADL, GMADL -----------------------------------------------------------------------------------


R = [0.02, -0.01, 0.03, -0.04]  # realised returns
RHAT = [0.01, 0.02, -0.005, -0.01]  # forecasts


def test_madl_value_and_zero_gradient():
    forecasts = torch.tensor(RHAT, dtype=D, requires_grad=True)
    value = build_loss("madl")(forecasts, torch.tensor(R, dtype=D))
    hand = -sum(math.copysign(1, r * f) * abs(r) for r, f in zip(R, RHAT)) / 4
    assert value.item() == pytest.approx(hand, rel=1e-14)
    value.backward()
    assert torch.equal(forecasts.grad, torch.zeros(4, dtype=D))  # documented: sign() has zero gradient


@pytest.mark.parametrize("a, b", [(1000.0, 2.0), (50.0, 1.0)])
def test_gmadl_value_and_gradient(a, b):
    forecasts = torch.tensor(RHAT, dtype=D, requires_grad=True)
    value = build_loss({"name": "gmadl", "a": a, "b": b})(forecasts, torch.tensor(R, dtype=D))
    sig = [1 / (1 + math.exp(-a * r * f)) for r, f in zip(R, RHAT)]
    hand = -sum((s - 0.5) * abs(r) ** b for s, r in zip(sig, R)) / 4
    assert value.item() == pytest.approx(hand, rel=1e-13)
    value.backward()
    expected = [-s * (1 - s) * a * r * abs(r) ** b / 4 for s, r in zip(sig, R)]
    torch.testing.assert_close(forecasts.grad, torch.tensor(expected, dtype=D), rtol=1e-12, atol=0)


def test_gmadl_large_a_approaches_madl():
    r, f = torch.tensor(R, dtype=D), torch.tensor(RHAT, dtype=D)
    assert gmadl(f, r, a=1e9, b=1.0).item() == pytest.approx(0.5 * madl(f, r).item(), rel=1e-9)


def test_return_loss_errors():
    r = torch.tensor(R, dtype=D)
    with pytest.raises(ValueError, match="madl: targets must have the outputs' shape"):
        madl(r.reshape(4, 1), r)
    with pytest.raises(TypeError, match="gmadl: targets must be floating point"):
        gmadl(r, torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match="a must be > 0"):
        build_loss({"name": "gmadl", "a": 0})


# -- norm loss -------------------------------------------------------------------------------------


def tiny_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 2), nn.Flatten(), nn.Linear(8, 3)).to(D)
    return model


def test_norm_penalty_value_and_ranger21_gradient():
    model = tiny_model()
    lam = 0.3
    penalty = norm_penalty(model, lam)
    conv, lin = model[0].weight, model[2].weight
    hand = 0.0
    for w in (conv, lin):
        for row in w.detach().reshape(w.shape[0], -1).tolist():
            hand += (1 - math.sqrt(sum(v * v for v in row))) ** 2
    assert penalty.item() == pytest.approx(lam * hand, rel=1e-13)
    penalty.backward()
    for w in (conv, lin):
        norms = w.detach().flatten(1).norm(dim=1).reshape(-1, *[1] * (w.ndim - 1))
        ranger21 = 2 * lam * (1 - 1 / norms) * w.detach()  # Ranger21's norm-loss correction
        torch.testing.assert_close(w.grad, ranger21, rtol=1e-12, atol=1e-15)
    assert model[0].bias.grad is None and model[2].bias.grad is None
    with_vectors = norm_penalty(model, lam, skip_vectors=False)
    extra = sum((1 - b.detach().norm().item()) ** 2 for b in (model[0].bias, model[2].bias))
    assert with_vectors.item() == pytest.approx(lam * (hand + extra), rel=1e-13)


def test_norm_loss_through_registry():
    model = tiny_model()
    x, y = torch.randn(4, 1, 3, 3, dtype=D), torch.tensor([0, 1, 2, 1])
    spec = {"name": "norm_loss", "base": {"name": "cross_entropy"}, "coefficient": 0.1}
    loss = build_loss(spec, model=model)
    value = loss(model(x), y)
    expected = F.cross_entropy(model(x), y) + norm_penalty(model, 0.1)
    torch.testing.assert_close(value, expected, rtol=1e-15, atol=0)
    assert list(loss.parameters()) == [] and loss.state_dict() == {}
    # nested inside log_partition_penalty, the model is still bound
    nested = build_loss({"name": "log_partition_penalty", "base": spec, "coefficient": 1e-3}, model=model)
    expected = expected + 1e-3 * log_partition_penalty(model(x))
    torch.testing.assert_close(nested(model(x), y), expected, rtol=1e-14, atol=0)
    with pytest.raises(RuntimeError, match="no model bound"):
        build_loss(spec)(model(x), y)
    with pytest.raises(ValueError, match="no weight matrices"):
        norm_penalty(nn.Sequential(nn.Identity()))


# -- gradcheck in float64 --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        lambda z, y: mse(z, y, 2.0, 3.0),
        squentropy,
        lambda z, y: focal_loss(z, y, gamma=2.0, alpha=[0.3, 1.0, 2.0]),
        lambda z, y: focal_loss(z, y, gamma=0.5),
        lambda z, y: dice_loss(z, y, smooth=0.5),
        build_loss({"name": "log_partition_penalty", "coefficient": 0.1}),
        build_loss({"name": "spherical_z_loss", "a": 2.0, "b": 0.5}),
        build_loss({"name": "label_smoothing", "smoothing": 0.2}),
    ],
)
def test_gradcheck_classification(fn):
    torch.manual_seed(0)
    z = torch.randn(4, 3, dtype=D, requires_grad=True)
    y = torch.tensor([0, 2, 1, 2])
    assert torch.autograd.gradcheck(lambda t: fn(t, y), (z,))
    assert torch.autograd.gradgradcheck(lambda t: fn(t, y), (z,))


def test_gradcheck_binary_focal_gmadl_norm():
    torch.manual_seed(0)
    z = torch.randn(3, 2, dtype=D, requires_grad=True)
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=D)
    assert torch.autograd.gradcheck(lambda a: focal_loss(a, t, 2.0, 0.25), (z,))
    r = torch.tensor(R, dtype=D)
    f = torch.tensor(RHAT, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: gmadl(a, r, a=50.0, b=1.5), (f,))
    w = torch.randn(3, 4, dtype=D, requires_grad=True)

    class Holder(nn.Module):  # exposes the gradcheck input as the model's only parameter
        def __init__(self, weight):
            super().__init__()
            self.weight = weight

        def parameters(self, recurse=True):
            return iter([self.weight])

    def penalty(weight):
        return norm_penalty(Holder(weight), 0.7)

    assert torch.autograd.gradcheck(penalty, (w,))


# -- shape and dtype errors for every classification loss ------------------------------------------


@pytest.mark.parametrize("name", ["cross_entropy", "label_smoothing", "mse", "squentropy", "focal",
                                  "log_partition_penalty", "spherical_z_loss"])
def test_classification_errors(name):
    loss = build_loss(name)
    with pytest.raises(ValueError, match=f"{name}: outputs must be \\(N, C\\) logits"):
        loss(torch.zeros(2, 3, 4, dtype=D), labels())
    with pytest.raises(ValueError, match=f"{name}: targets must be \\(N,\\) class indices with N=2"):
        loss(logits(), torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match=f"{name}: outputs must be floating point"):
        loss(torch.zeros(2, 3, dtype=torch.long), labels())
    if name not in ("mse", "focal"):  # float targets mean regression / binary there
        with pytest.raises(TypeError, match=f"{name}: targets must be integer class indices"):
            loss(logits(), torch.zeros(2, dtype=D))


def test_check_classification_accepts_int32():
    check_classification(logits(), torch.tensor([0, 1], dtype=torch.int32), "x")
    assert build_loss("squentropy")(logits(), torch.tensor(Y, dtype=torch.int32)).item() == pytest.approx(
        squentropy(logits(), labels()).item()
    )
