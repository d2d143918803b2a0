"""Weight matching (Git Re-Basin): permutations keep the function; a network and a permuted copy of
itself have a large barrier before matching and none after; interpolation helpers."""

import copy

import pytest
import torch
import torch.nn.functional as F
from _merge_helpers import bn_cnn, teacher_data, trained_mlp
from torch import nn

from descentlab.averaging import (align, aligned, apply_permutation, barrier_table, interpolate, interpolate_layerwise, layer_names,
                                  path_table, random_permutation, sequential_spec, uniform_soup, weight_matching)
from descentlab.models import mlp


def _loaded(model, state):
    out = copy.deepcopy(model)
    out.load_state_dict(state)
    return out.eval()


@pytest.mark.parametrize("kind", ["mlp", "cnn1d_bn", "cnn2d_bn"])
def test_a_permuted_network_computes_the_same_function(kind):
    if kind == "mlp":
        torch.manual_seed(0)
        model, x = mlp((8,), 3, width=16, depth=3).eval(), torch.randn(20, 8)
    elif kind == "cnn1d_bn":
        model, x = bn_cnn((12,), seed=1), torch.randn(20, 12)
    else:
        model, x = bn_cnn((1, 6, 6), seed=2), torch.randn(20, 36)
    spec = sequential_spec(model)
    perms = random_permutation(spec, seed=4)
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    permuted = apply_permutation(spec, perms, model)
    assert any(not torch.equal(permuted[k], v) for k, v in model.state_dict().items())
    torch.testing.assert_close(_loaded(model, permuted)(x), model(x), rtol=1e-5, atol=1e-6)
    if kind != "mlp":  # BatchNorm's statistics moved with their channels, the counter stayed
        bn = next(k for k in permuted if k.endswith("running_mean"))
        assert not torch.equal(permuted[bn], model.state_dict()[bn])
        assert all(torch.equal(permuted[k], v) for k, v in model.state_dict().items() if k.endswith("tracked"))


@pytest.mark.parametrize("kind", ["mlp", "cnn2d_bn"])
def test_weight_matching_undoes_a_permutation(kind):
    model = trained_mlp(seed=0, width=24) if kind == "mlp" else bn_cnn((1, 6, 6), seed=3)
    spec = sequential_spec(model)
    permuted = apply_permutation(spec, random_permutation(spec, seed=7), model)
    found = weight_matching(spec, model.state_dict(), permuted, seed=1)
    aligned = apply_permutation(spec, found, permuted)
    for k, v in model.state_dict().items():
        assert torch.equal(aligned[k], v), k
    via_align = align(model, model.state_dict(), permuted, seed=1)
    assert all(torch.equal(via_align[k], v) for k, v in model.state_dict().items())


def test_permuted_copy_has_a_large_barrier_before_matching_and_none_after():
    model = trained_mlp(seed=0, width=32, steps=300)
    x, y = teacher_data(n=512)
    spec = sequential_spec(model)
    permuted = apply_permutation(spec, random_permutation(spec, seed=2), model)
    splits = {"train": (x, y)}
    before = barrier_table(path_table(model, [model, permuted], splits, F.cross_entropy, n_points=11))
    aligned = apply_permutation(spec, weight_matching(spec, model, permuted), permuted)
    after = barrier_table(path_table(model, [model, aligned], splits, F.cross_entropy, n_points=11))
    assert before["loss_barrier"].item() > 0.3 and before["error_barrier"].item() > 0.1
    assert abs(after["loss_barrier"].item()) < 1e-6 and abs(after["error_barrier"].item()) < 1e-9


def test_permuted_bn_cnn_barrier_with_batchnorm_reset():
    torch.manual_seed(0)
    x = torch.randn(256, 36)
    y = (x[:, :18].sum(1) > x[:, 18:].sum(1)).long()
    model = bn_cnn((1, 6, 6), seed=5, channels=8)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    spec = sequential_spec(model)
    permuted = apply_permutation(spec, random_permutation(spec, seed=9), model)
    aligned = apply_permutation(spec, weight_matching(spec, model, permuted), permuted)
    kwargs = dict(splits={"train": (x, y)}, loss_fn=F.cross_entropy, n_points=5, bn_data=x)
    before = barrier_table(path_table(model, [model, permuted], **kwargs))
    after = barrier_table(path_table(model, [model, aligned], **kwargs))
    assert before["loss_barrier"].item() > 0.1
    assert abs(after["loss_barrier"].item()) < 1e-5


def test_weight_matching_never_lowers_the_objective_between_independent_networks():
    a, b = trained_mlp(seed=0, width=16, steps=80), trained_mlp(seed=1, width=16, steps=80)
    spec = sequential_spec(a)
    aligned = apply_permutation(spec, weight_matching(spec, a, b), b)

    def objective(s):
        return sum(float((a.state_dict()[k] * s[k]).sum()) for k in spec.matched)

    assert objective(aligned) > objective(b.state_dict())


def test_unsupported_modules_are_named():
    with pytest.raises(ValueError, match=r"module '1' \(LayerNorm\) is not supported"):
        sequential_spec(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="needs an nn.Sequential"):
        sequential_spec(nn.Linear(3, 4))
    with pytest.raises(ValueError, match="pool them first"):
        sequential_spec(nn.Sequential(nn.Unflatten(1, (1, 4, 4)), nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(),
                                      nn.Linear(32, 2)))


def test_linear_and_layerwise_interpolation_by_hand():
    a = {"0.weight": torch.zeros(2, 2), "0.bias": torch.zeros(2), "1.weight": torch.ones(2), "n": torch.tensor(3)}
    b = {"0.weight": torch.ones(2, 2), "0.bias": torch.full((2,), 2.0), "1.weight": torch.full((2,), 3.0),
         "n": torch.tensor(9)}
    mid = interpolate(a, b, 0.25)
    assert torch.equal(mid["0.bias"], torch.full((2,), 0.5)) and int(mid["n"]) == 3
    assert layer_names(a) == ["0", "1"]
    out = interpolate_layerwise(a, b, {"0": 1.0, "1": 0.5})
    assert torch.equal(out["0.weight"], b["0.weight"]) and torch.equal(out["1.weight"], torch.full((2,), 2.0))
    with pytest.raises(ValueError, match=r"no alpha for layers \['1'\]"):
        interpolate_layerwise(a, b, {"0": 1.0})
    with pytest.raises(ValueError, match="layers the model does not have"):
        interpolate_layerwise(a, b, {"2": 1.0}, default=0.0)


def test_aligned_inputs_feed_a_streaming_merge():
    """Two permuted copies of a network average back to the network once aligned, not before."""
    model = trained_mlp(seed=0, width=16, steps=60)
    spec = sequential_spec(model)
    copies = [apply_permutation(spec, random_permutation(spec, seed=s), model) for s in (1, 2)]
    soup = uniform_soup(aligned(model, model, iter(copies)))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(soup[k], v)
    naive = uniform_soup(copies)
    assert not torch.allclose(naive["1.weight"], model.state_dict()["1.weight"])
