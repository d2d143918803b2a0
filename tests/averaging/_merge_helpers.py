"""Small models, data and state dicts for the merge tests."""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from descentlab.models import cnn, mlp


def teacher_data(n: int = 512, dim: int = 8, classes: int = 3, seed: int = 0, data_seed: int | None = None,
                 scale: float = 1.0, shift: float = 0.0):
    """Gaussian inputs (times ``scale``, plus ``shift``) labelled by the random linear teacher of ``seed``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(classes, dim, generator=g)
    gx = torch.Generator().manual_seed(seed if data_seed is None else data_seed + 7919)
    x = torch.randn(n, dim, generator=gx) * scale + shift
    y = (x @ w.T + 0.3 * torch.randn(n, classes, generator=gx)).argmax(1)
    return x, y


def train(model, x, y, steps: int = 200, lr: float = 1e-2, seed: int = 0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return model


def trained_mlp(seed: int = 0, width: int = 32, steps: int = 200):
    torch.manual_seed(seed)
    x, y = teacher_data()
    return train(mlp((8,), 3, width=width, depth=2), x, y, steps=steps, seed=seed)


def bn_cnn(input_shape=(1, 6, 6), seed: int = 0, channels: int = 5):
    """A project CNN with BatchNorm and non-trivial running statistics, in eval mode."""
    torch.manual_seed(seed)
    model = cnn(input_shape, 3, channels=channels, depth=2, batchnorm=True)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
            m.num_batches_tracked.fill_(7)
    return model.eval()


def random_state(seed: int, shapes=None, counter: int | None = None, dtype=torch.float64) -> dict:
    g = torch.Generator().manual_seed(seed)
    shapes = shapes or {"w": (4, 3), "b": (4,)}
    out = {k: torch.randn(s, generator=g, dtype=dtype) for k, s in shapes.items()}
    if counter is not None:
        out["n"] = torch.tensor(counter, dtype=torch.long)
    return out


class TrackedInputs:
    """A re-iterable source of state dicts that counts how many earlier inputs are still alive
    (referenced anywhere) each time it makes the next one: the merge's peak of held inputs."""

    def __init__(self, make, n: int):
        self.make, self.n = make, n
        self.refs: list[weakref.ref] = []
        self.peak_alive = 0
        self.reads = 0

    def alive(self) -> int:
        # No gc.collect(): reference counting frees a dropped input at once, and an input kept
        # alive by a reference cycle counts as held (the conservative side). gc.collect() under
        # load cost seconds per call.
        return sum(r() is not None for r in self.refs)

    def __iter__(self):
        for i in range(self.n):
            self.peak_alive = max(self.peak_alive, self.alive())
            state = self.make(i)
            self.refs.append(weakref.ref(next(iter(state.values()))))
            self.reads += 1
            yield state
            del state
