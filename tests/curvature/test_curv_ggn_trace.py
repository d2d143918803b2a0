"""ggn_trace against a brute-force tr(J^T H_out J) where the Linear-only fast path's assumptions fail.

The oracle writes each network's forward pass by hand from a flat parameter
vector, takes the full (N*C, P) output Jacobian and the (N*C, N*C) Hessian of
the loss in the outputs with ``torch.autograd.functional`` (float64), and
returns tr(J^T H_out J).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import descentlab.curvature.trace_exact as trace_exact
from descentlab.curvature import GGNOperator, ggn_trace
from descentlab.losses import MSE, CrossEntropy


def brute_ggn_trace(forward, flat, loss):
    z = forward(flat).detach()
    J = torch.autograd.functional.jacobian(lambda f: forward(f).reshape(-1), flat)
    H = torch.autograd.functional.hessian(lambda o: loss(o.view(z.shape)), z.reshape(-1))
    return float(torch.trace(J.T @ H @ J))


def fill(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(11)
    return torch.randn(13, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (13,), generator=g)


@pytest.fixture
def fast_path_calls(monkeypatch):
    """How many chunks the Linear-only fast path answered (kernel not None)."""
    calls = []
    original = trace_exact._linear_kernel

    def spy(*args):
        kernel = original(*args)
        calls.append(kernel is not None)
        return kernel

    monkeypatch.setattr(trace_exact, "_linear_kernel", spy)
    return calls


def test_frozen_weight_with_trainable_bias(data, fast_path_calls):
    """The bias of a layer whose weight is frozen is a parameter of the GGN (fast path dropped it)."""
    x, y = data
    model = fill(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double(), 0)
    model[2].weight.requires_grad_(False)
    w2 = model[2].weight.detach()

    def forward(flat):
        w1, b1, b2 = torch.split(flat, [20, 5, 3])
        return torch.relu(x @ w1.view(5, 4).T + b1) @ w2.T + b2

    flat = torch.cat([model[0].weight.reshape(-1), model[0].bias, model[2].bias]).detach()
    ref = brute_ggn_trace(forward, flat, lambda z: F.cross_entropy(z, y))
    assert ggn_trace(model, CrossEntropy(), x, y, chunk_size=5).estimate == pytest.approx(ref, rel=1e-10)
    assert fast_path_calls == []  # detected before the forward pass

    # a trainable weight with a frozen bias keeps the fast path, and it is right
    model = fill(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double(), 1)
    model[2].bias.requires_grad_(False)
    b2 = model[2].bias.detach()

    def forward2(flat):
        w1, b1, w2 = torch.split(flat, [20, 5, 15])
        return torch.relu(x @ w1.view(5, 4).T + b1) @ w2.view(3, 5).T + b2

    flat = torch.cat([model[0].weight.reshape(-1), model[0].bias, model[2].weight.reshape(-1)]).detach()
    ref = brute_ggn_trace(forward2, flat, lambda z: F.cross_entropy(z, y))
    assert ggn_trace(model, CrossEntropy(), x, y, chunk_size=5).estimate == pytest.approx(ref, rel=1e-10)
    assert fast_path_calls == [True] * 3


class TwiceApplied(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden, self.out = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(torch.tanh(self.hidden(x)))))


def test_linear_applied_twice_and_tied_weights(data, fast_path_calls):
    """A weight used twice has cross terms in its Jacobian that the per-layer factorisation misses."""
    x, y = data
    model = fill(TwiceApplied().double(), 2)

    def forward(flat):
        w, b, wo, bo = torch.split(flat, [16, 4, 12, 3])
        w = w.view(4, 4)
        return torch.tanh(torch.tanh(x @ w.T + b) @ w.T + b) @ wo.view(3, 4).T + bo

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    ref = brute_ggn_trace(forward, flat, lambda z: F.cross_entropy(z, y))
    assert ggn_trace(model, CrossEntropy(), x, y, chunk_size=5).estimate == pytest.approx(ref, rel=1e-10)
    assert fast_path_calls == [False] * 3  # the second call of the layer was seen

    # two Linear modules sharing one weight (tied): refused before the forward pass
    tied = fill(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3)).double(), 3)
    tied[2].weight = tied[0].weight

    def forward_tied(flat):
        w, b1, b2, wo, bo = torch.split(flat, [16, 4, 4, 12, 3])
        w = w.view(4, 4)
        return torch.tanh(torch.tanh(x @ w.T + b1) @ w.T + b2) @ wo.view(3, 4).T + bo

    flat = torch.cat([p.detach().reshape(-1) for p in tied.parameters()])
    ref = brute_ggn_trace(forward_tied, flat, lambda z: F.cross_entropy(z, y))
    assert ggn_trace(tied, CrossEntropy(), x, y).estimate == pytest.approx(ref, rel=1e-10)
    assert fast_path_calls == [False] * 3


def test_outputs_with_several_dimensions_per_example(data):
    """MSE on (N, 2, 3) outputs (Linear-only net) and per-pixel cross-entropy on (N, C, H, W)."""
    x, _ = data
    g = torch.Generator().manual_seed(4)
    model = fill(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Unflatten(1, (2, 3))).double(), 4)
    target = torch.randn(13, 2, 3, generator=g, dtype=torch.float64)

    def forward(flat):
        w1, b1, w2, b2 = torch.split(flat, [24, 6, 36, 6])
        return (torch.tanh(x @ w1.view(6, 4).T + b1) @ w2.view(6, 6).T + b2).view(-1, 2, 3)

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    ref = brute_ggn_trace(forward, flat, lambda z: ((z - target) ** 2).mean())
    assert ggn_trace(model, MSE(), x, target, chunk_size=4).estimate == pytest.approx(ref, rel=1e-10)

    images = torch.randn(7, 2, 3, 3, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (7, 3, 3), generator=g)
    conv = fill(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 4, 1)).double(), 5)

    def forward_conv(flat):
        w1, b1, w2, b2 = torch.split(flat, [54, 3, 12, 4])
        h = torch.tanh(F.conv2d(images, w1.view(3, 2, 3, 3), b1, padding=1))
        return F.conv2d(h, w2.view(4, 3, 1, 1), b2)

    flat = torch.cat([p.detach().reshape(-1) for p in conv.parameters()])
    ref = brute_ggn_trace(forward_conv, flat, lambda z: F.cross_entropy(z, labels))
    est = ggn_trace(conv, nn.CrossEntropyLoss(), images, labels, chunk_size=3).estimate
    assert est == pytest.approx(ref, rel=1e-10)
    # and the same number from the GGN operator, which handled these shapes already
    op = GGNOperator(conv, nn.CrossEntropyLoss(), images, labels)
    dense_trace = sum(float(op.matvec(e)[i]) for i, e in enumerate(torch.eye(op.shape[0]).numpy()))
    assert dense_trace == pytest.approx(ref, rel=1e-10)


def test_loss_that_is_not_a_mean_of_examples_is_refused(data):
    x, _ = data
    model = fill(nn.Sequential(nn.Linear(4, 3)).double(), 6)
    target = torch.randn(13, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="mean of per-example losses"):
        ggn_trace(model, nn.MSELoss(reduction="sum"), x, target)
