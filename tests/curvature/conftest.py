"""Shared small problems and independent dense oracles for the curvature tests.

The oracles rebuild the network's forward pass by hand from a flat parameter
vector (no functional_call, no descentlab code) and differentiate it with
``torch.autograd.functional``.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

# Tiny tensors: one thread avoids OpenMP spin contention on the shared 2-core
# machine (measured 2.5 ms vs ~190 ms per HVP of the tiny problem).
torch.set_num_threads(1)


class TinyProblem:
    """Linear(d, h) -> tanh -> Linear(h, c) with cross-entropy, float64."""

    def __init__(self, n=23, d=4, h=6, c=3, seed=0, activation=torch.tanh):
        g = torch.Generator().manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, c)).double()
        with torch.no_grad():
            for p in self.model.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
        self.x = torch.randn(n, d, generator=g, dtype=torch.float64)
        self.y = torch.randint(0, c, (n,), generator=g)
        self.d, self.h, self.c = d, h, c
        self.shapes = [(h, d), (h,), (c, h), (c,)]

    def flat(self):
        return torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])

    def unpack(self, flat):
        out, i = [], 0
        for s in self.shapes:
            k = torch.Size(s).numel()
            out.append(flat[i : i + k].view(s))
            i += k
        return out

    def outputs(self, flat, x=None):
        w1, b1, w2, b2 = self.unpack(flat)
        x = self.x if x is None else x
        return torch.tanh(x @ w1.T + b1) @ w2.T + b2

    def loss(self, flat):
        return F.cross_entropy(self.outputs(flat), self.y)

    def dense_hessian(self):
        return torch.autograd.functional.hessian(self.loss, self.flat())

    def jacobian(self):
        """(N*C, P) by one autograd.grad per output scalar."""
        flat = self.flat().requires_grad_(True)
        out = self.outputs(flat).reshape(-1)
        rows = [torch.autograd.grad(o, flat, retain_graph=True)[0] for o in out]
        return torch.stack(rows)


@pytest.fixture
def tiny():
    return TinyProblem()


def model_state(model):
    """Everything an analysis must leave unchanged: tensors, modes, grads."""
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "modes": [m.training for m in model.modules()],
        "grads": [p.grad for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
    }


def assert_unchanged(model, before):
    after = model_state(model)
    for k, v in before["tensors"].items():
        assert torch.equal(v, after["tensors"][k]), f"{k} changed"
    assert before["modes"] == after["modes"]
    assert all(g is None for g in after["grads"]), ".grad left on the model"
    assert before["requires_grad"] == after["requires_grad"]


@pytest.fixture
def state_tools():
    return model_state, assert_unchanged
