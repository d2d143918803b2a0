"""Bad input is refused up front with a clear error: empty data, random models, degenerate BatchNorm chunks."""

import numpy as np
import pytest
import torch
from torch import nn

from descentlab.curvature import (FisherOperator, GGNOperator, HessianOperator, adaptive_sharpness, empirical_ntk,
                                  exact_hessian, ggn_trace, hessian_sharpness, jacobian, per_example_gradients)
from descentlab.losses import CrossEntropy


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def test_empty_data_is_refused_everywhere():
    model, loss = mlp(), CrossEntropy()
    x, y = torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    full_x = torch.randn(6, 4, dtype=torch.float64)
    calls = {
        "exact_hessian": lambda: exact_hessian(model, loss, x, y),
        "per_example_gradients": lambda: per_example_gradients(model, loss, x, y),
        "adaptive_sharpness": lambda: adaptive_sharpness(model, loss, x, y),
        "hessian_sharpness": lambda: hessian_sharpness(model, loss, x, y),
        "jacobian": lambda: jacobian(model, x),
        "empirical_ntk": lambda: empirical_ntk(model, x),
        "ggn_trace": lambda: ggn_trace(model, loss, x, y),
        **{cls.__name__: (lambda cls=cls: cls(model, loss, x, y))
           for cls in (HessianOperator, GGNOperator, FisherOperator)},
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"x has no examples \(first dimension 0\)"):
            call()
    with pytest.raises(ValueError, match=r"x2 has no examples"):
        empirical_ntk(model, full_x, x)


def dead_first_example_dropout_model():
    """Dropout after a ReLU that is dead on example 0 only: the first chunk of one example looks deterministic."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)).double()
    with torch.no_grad():
        model[0].bias.fill_(-1.0)
    x = torch.randn(6, 4, dtype=torch.float64) * 5
    x[0] = 0.0
    model.train()
    return model, x, torch.randint(0, 3, (6,))


def test_randomness_after_the_first_chunk_is_refused():
    model, x, y = dead_first_example_dropout_model()
    with torch.no_grad():  # the premise: example 0 alone is deterministic, the others are not
        assert torch.equal(model(x[:1]), model(x[:1]))
        assert not torch.equal(model(x[1:]), model(x[1:]))
    for cls in (HessianOperator, GGNOperator, FisherOperator):
        with pytest.raises(ValueError, match=r"not deterministic \(two evaluations of examples [1-5]:"):
            cls(model, CrossEntropy(), x, y, chunk_size=1)
    with pytest.raises(ValueError, match="not deterministic"):
        adaptive_sharpness(model, CrossEntropy(), x, y, chunk_size=1)
    assert model.training
    model.eval()
    HessianOperator(model, CrossEntropy(), x, y, chunk_size=1).matvec(np.ones(4 * 8 + 8 + 8 * 3 + 3))


def test_exact_hessian_refuses_dropout_like_the_operators():
    model = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.5), nn.Linear(5, 3)).double().train()
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 3, (9,))
    with pytest.raises(ValueError, match="not deterministic"):
        exact_hessian(model, CrossEntropy(), x, y)
    model.eval()
    assert exact_hessian(model, CrossEntropy(), x, y).shape == (4 * 5 + 5 + 5 * 3 + 3,) * 2


def test_train_mode_batchnorm_on_a_single_example_chunk_is_refused_up_front():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    for cls in (HessianOperator, GGNOperator, FisherOperator):
        with pytest.raises(ValueError, match=r"single example \(examples 9:10\).*chunk_size"):
            cls(model, CrossEntropy(), x, y, chunk_size=3, batchnorm="train")  # 3 + 3 + 3 + 1
        cls(model, CrossEntropy(), x, y, chunk_size=4, batchnorm="train").matvec(np.ones(53))  # 4 + 4 + 2
        cls(model, CrossEntropy(), x, y, chunk_size=3, batchnorm="eval").matvec(np.ones(53))
    with pytest.raises(ValueError, match="single example"):
        adaptive_sharpness(model, CrossEntropy(), x, y, chunk_size=3, batchnorm="train")
    with pytest.raises(ValueError, match="single example"):
        exact_hessian(model, CrossEntropy(), x[:1], y[:1], batchnorm="train")
