"""The in-training TopEigenvalue instrument, called directly as the training loop would."""

import numpy as np
import pytest
import torch
from torch import nn

from descentlab.curvature.instruments import TopEigenvalue
from descentlab.losses import CrossEntropy


def _dense_top(model, x, y):
    params = list(model.parameters())
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def loss_of(flat):  # Linear -> Dropout(eval: identity) -> Tanh -> Linear, rebuilt by hand
        w1, b1, w2, b2 = (t.view(s) for t, s in zip(torch.split(flat, sizes), shapes))
        return nn.functional.cross_entropy(torch.tanh(x @ w1.T + b1) @ w2.T + b2, y)

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    return np.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, flat).numpy()).max()


def test_top_eigenvalue_instrument(state_tools):
    model_state, assert_unchanged = state_tools
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Dropout(0.3), nn.Tanh(), nn.Linear(7, 3)).double()
    model.train()  # the loop calls instruments mid-training: dropout is on
    x, y = torch.randn(50, 5, dtype=torch.float64), torch.randint(0, 3, (50,))
    inst = TopEigenvalue(every=3, n_examples=20, tol=1e-10)
    before = model_state(model)
    assert inst(1, model, CrossEntropy(), x, y) == {}
    out = inst(0, model, CrossEntropy(), x, y)
    assert_unchanged(model, before)
    assert set(out) == {"sharpness", "sharpness_residual", "sharpness_hvps"}
    idx = inst.indices
    assert len(idx) == 20 and len(set(idx.tolist())) == 20
    assert out["sharpness"] == pytest.approx(_dense_top(model, x[idx], y[idx]), rel=1e-8)
    cold = out["sharpness_hvps"]
    # warm start from the previous eigenvector at unchanged weights: converges in fewer products
    again = inst(3, model, CrossEntropy(), x, y)
    assert again["sharpness"] == pytest.approx(out["sharpness"], rel=1e-8)
    assert again["sharpness_hvps"] < cold
    # after a weight change the same subset is used
    with torch.no_grad():
        model[0].weight.mul_(1.5)
    before = model_state(model)
    later = inst(6, model, CrossEntropy(), x, y)
    assert torch.equal(inst.indices, idx)
    assert later["sharpness"] == pytest.approx(_dense_top(model, x[idx], y[idx]), rel=1e-8)
    assert_unchanged(model, before)
    assert inst(7, model, CrossEntropy(), x, y) == {}


def test_instrument_arguments():
    with pytest.raises(ValueError, match="every"):
        TopEigenvalue(every=0)
    with pytest.raises(ValueError, match="n_examples"):
        TopEigenvalue(n_examples=0)
    with pytest.raises(ValueError, match="method"):
        TopEigenvalue(method="power")


@pytest.mark.parametrize("method", ["eigsh", "lanczos"])
def test_instrument_methods_agree(method):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 7), nn.Dropout(0.3), nn.Tanh(), nn.Linear(7, 3)).double().eval()
    x, y = torch.randn(30, 5, dtype=torch.float64), torch.randint(0, 3, (30,))
    out = TopEigenvalue(every=1, tol=1e-10, method=method)(0, model, CrossEntropy(), x, y)
    assert out["sharpness"] == pytest.approx(_dense_top(model, x, y), rel=1e-8)


def test_top_eigenvalue_instrument_skips_a_diverging_run():
    # SGD at a too-large lr blows the weights up between two log steps; the
    # instrument used to crash the whole training job (NaN tolerance in the
    # determinism check) instead of letting the loop mark the run diverged
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    x, y = torch.randn(50, 5), torch.randint(0, 3, (50,))
    inst = TopEigenvalue(every=1)
    assert "sharpness" in inst(1, model, CrossEntropy(), x, y)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    assert inst(2, model, CrossEntropy(), x, y) == {}
    with torch.no_grad():
        model[0].weight[0, 0] = float("inf")
    assert inst(3, model, CrossEntropy(), x, y) == {}


def test_top_eigenvalue_instrument_skips_finite_weights_whose_outputs_overflow():
    # SGD at lr 3 in the batch-size-curvature study: every weight still finite,
    # but the logits overflow to inf - inf = nan; the determinism check's
    # tolerance became nan and crashed the training job
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    x, y = torch.randn(50, 5), torch.randint(0, 3, (50,))
    with torch.no_grad():
        model[0].weight.fill_(1e30)
        model[0].bias.zero_()
        model[2].weight[:, 0], model[2].weight[:, 1] = 1e30, -1e30
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert torch.isnan(model(x)).any()
    assert TopEigenvalue(every=1)(0, model, CrossEntropy(), x, y) == {}
