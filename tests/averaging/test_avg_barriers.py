"""Paths through models as tidy tables, barriers by hand, and BatchNorm statistics reset at each point."""

import copy

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from _merge_helpers import bn_cnn, teacher_data, trained_mlp

from descentlab.averaging import barrier_table, interpolate, layer_names, path_table, recompute_batchnorm
from descentlab.landscape import evaluate


def test_barrier_is_the_largest_excess_over_the_line_between_the_end_values():
    path = pd.DataFrame({"segment": 0, "split": "test", "alpha": [0.0, 0.25, 0.5, 0.75, 1.0],
                         "loss": [1.0, 2.5, 3.0, 2.0, 2.0], "error": [0.10, 0.30, 0.20, 0.15, 0.30]})
    row = barrier_table(path).iloc[0]
    # loss line 1 + alpha: excesses 0, 1.25, 1.5, 0.25, 0
    assert row["loss_barrier"] == pytest.approx(1.5) and row["loss_barrier_alpha"] == 0.5
    # error line 0.1 + 0.2 alpha: excesses 0, 0.15, 0, -0.1, 0
    assert row["error_barrier"] == pytest.approx(0.15) and row["error_barrier_alpha"] == 0.25
    with pytest.raises(ValueError, match="must include alpha = 0 and alpha = 1"):
        barrier_table(path[path["alpha"] < 1])


def test_path_table_through_three_models_is_tidy_and_its_ends_are_the_models():
    models = [trained_mlp(seed=s, steps=40) for s in range(3)]
    x, y = teacher_data(n=128, seed=3)
    xv, yv = teacher_data(n=64, seed=4)
    splits = {"train": (x, y), "valid": (xv, yv)}
    path = path_table(models[0], models, splits, F.cross_entropy, n_points=5)
    assert list(path.columns) == ["segment", "alpha", "split", "loss", "accuracy", "error", "loss_excess",
                                  "error_excess"]
    assert len(path) == 2 * 5 * 2
    for segment in (0, 1):
        for split, (xs, ys) in splits.items():
            rows = path[(path["segment"] == segment) & (path["split"] == split)].sort_values("alpha")
            for alpha, m in ((0.0, models[segment]), (1.0, models[segment + 1])):
                got = rows[rows["alpha"] == alpha].iloc[0]
                assert got["loss"] == pytest.approx(evaluate(m, F.cross_entropy, xs, ys)["loss"], rel=1e-6)
            mid = rows[rows["alpha"] == 0.5].iloc[0]
            state = interpolate(models[segment], models[segment + 1], 0.5)
            assert mid["loss"] == pytest.approx(evaluate(models[0], F.cross_entropy, xs, ys, params=state)["loss"],
                                                rel=1e-6)
    table = barrier_table(path)
    assert len(table) == 4 and set(table["split"]) == {"train", "valid"}
    with pytest.raises(ValueError, match="at least two models"):
        path_table(models[0], models[:1], splits, F.cross_entropy)
    with pytest.raises(ValueError, match="n_points must be >= 3"):
        path_table(models[0], models, splits, F.cross_entropy, n_points=2)


def test_batchnorm_reset_recomputes_the_statistics_of_the_data():
    model = bn_cnn((1, 6, 6), seed=0)
    x = torch.randn(50, 36) * 2 + 1
    inputs = {}
    bns = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}

    def hook(name):
        def record(module, args):
            inputs[name] = args[0].detach()
        return record

    work = copy.deepcopy(model)
    # the BatchNorm inputs of the network with its recomputed statistics: recorded in a train-mode pass
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in work.named_modules() if n in bns]
    recompute_batchnorm(work, x)
    for h in handles:
        h.remove()
    for name in bns:
        bn = dict(work.named_modules())[name]
        z = inputs[name].transpose(0, 1).reshape(inputs[name].shape[1], -1)
        torch.testing.assert_close(bn.running_mean, z.mean(1))
        torch.testing.assert_close(bn.running_var, z.var(1, unbiased=True))
    assert not work.training
    # the path's end points use the recomputed statistics when bn_data is given
    y = torch.randint(0, 3, (50,))
    plain = path_table(model, [model, model], {"t": (x, y)}, F.cross_entropy, n_points=3)
    reset = path_table(model, [model, model], {"t": (x, y)}, F.cross_entropy, n_points=3, bn_data=x)
    assert reset["loss"].iloc[0] == pytest.approx(evaluate(work, F.cross_entropy, x, y)["loss"], rel=1e-6)
    assert reset["loss"].iloc[0] != pytest.approx(plain["loss"].iloc[0], rel=1e-3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in bn_cnn((1, 6, 6), seed=0).state_dict().items())


def test_layerwise_path_moves_only_the_listed_layers():
    a, b = trained_mlp(seed=0, steps=40), trained_mlp(seed=1, steps=40)
    x, y = teacher_data(n=128, seed=3)
    splits = {"train": (x, y)}
    every = path_table(a, [a, b], splits, F.cross_entropy, n_points=3, layers=layer_names(a))
    plain = path_table(a, [a, b], splits, F.cross_entropy, n_points=3)
    pd.testing.assert_frame_equal(every, plain)
    only_first = path_table(a, [a, b], splits, F.cross_entropy, n_points=3, layers=["1"])
    hybrid = {**a.state_dict(), "1.weight": b.state_dict()["1.weight"], "1.bias": b.state_dict()["1.bias"]}
    end = only_first[only_first["alpha"] == 1.0].iloc[0]
    assert end["loss"] == pytest.approx(evaluate(a, F.cross_entropy, x, y, params=hybrid)["loss"], rel=1e-6)
    with pytest.raises(ValueError, match="layers the model does not have"):
        path_table(a, [a, b], splits, F.cross_entropy, n_points=3, layers=["9"])
