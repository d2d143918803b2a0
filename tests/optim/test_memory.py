"""Persistent memory of the multi-tensor paths: state plus one work buffer of
``_base.BLOCK_BYTES`` per device, nothing else held between steps; and the
chunked paths (packed small tensors, blocks of large ones) equal to the
reference path whatever the work buffer's size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from descentlab.optim import OPTIMIZERS, _base
from descentlab.optim.adamp import AdamP
from descentlab.optim.ademamix import AdEMAMix
from descentlab.optim.diffgrad import DiffGrad
from descentlab.optim.exadam import EXAdam
from descentlab.optim.grams import Grams
from descentlab.optim.mars import MARS

from _problems import ROUNDING_ATOL, compare_paths

# every optimizer whose fast path used to keep full-size scratch buffers
CHUNKED = [
    (Grams, dict(lr=1e-2, weight_decay=0.1)),
    (DiffGrad, dict(lr=1e-2, weight_decay=0.1)),
    (DiffGrad, dict(lr=1e-2)),
    (AdEMAMix, dict(lr=1e-2, weight_decay=0.1, alpha_warmup=10, beta3_warmup=10)),
    (MARS, dict(lr=1e-2, lr_1d=1e-2, weight_decay=0.1, gamma=0.5)),
    (MARS, dict(lr=1e-2, lr_1d=1e-2, mars_type="lion", optimize_1d=True)),
    (AdamP, dict(lr=1e-2, weight_decay=0.1)),
    (AdamP, dict(lr=1e-2, weight_decay=0.1, nesterov=True)),
    (EXAdam, dict(lr=1e-2, weight_decay=0.1)),
]
# shapes whose tensors are split into blocks, packed together, or both
SHAPES = ((6, 5), (7,), (3, 2, 2, 2), (1,), (40, 3), (2, 50))


@pytest.mark.parametrize("block_bytes", [64, 200, 1 << 20])
@pytest.mark.parametrize("cls, hp", CHUNKED, ids=lambda x: getattr(x, "__name__", ""))
def test_chunked_paths_agree_with_the_reference(monkeypatch, cls, hp, block_bytes):
    # 64 bytes: a 2-slot chunk holds 4 float64, so most tensors go in blocks;
    # 200: some packed together, some split; 1 MiB: everything in one chunk.
    monkeypatch.setattr(_base, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(_base, "SCRATCH_MIN_BYTES", 0)  # EXAdam and Lion: blocks for all
    compare_paths(cls, hp, steps=12, shapes=SHAPES, atol=ROUNDING_ATOL)
    compare_paths(cls, hp, steps=12, shapes=SHAPES, scale=0.05, atol=ROUNDING_ATOL)


def models():
    return {
        "mlp": lambda: nn.Sequential(nn.Linear(256, 600), nn.ReLU(), nn.Linear(600, 300)),
        "many small": lambda: nn.Sequential(*[nn.Linear(7, 7) for _ in range(60)]),
        "odd layouts": lambda: nn.Sequential(nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(16, 3)),
    }


# state tensors per parameter (besides the 0-dim step counters)
STATE_COPIES = {"grams": 2, "diffgrad": 3, "ademamix": 3, "mars": 3, "adamp": 2, "exadam": 2, "lion": 1}


@pytest.mark.parametrize("model", list(models()))
@pytest.mark.parametrize("name", sorted(STATE_COPIES))
@pytest.mark.parametrize("hp", [{}, {"weight_decay": 0.1}])
def test_between_steps_only_state_and_one_work_buffer_are_held(name, model, hp):
    torch.manual_seed(0)
    net = models()[model]()
    if model == "odd layouts":  # a channels_last kernel, and gradients of another layout
        net = net.to(memory_format=torch.channels_last)
    params = list(net.parameters())
    optimizer = OPTIMIZERS.build({"name": name, "lr": 1e-3, **hp}, params)
    for step in range(3):
        for p in params:
            g = torch.randn_like(p)
            p.grad = g.t().contiguous().t() if step == 1 and g.dim() == 2 else g
        optimizer.step()
    state_bytes, other = _base.held_bytes(optimizer)
    numel = sum(p.numel() for p in params)
    steps = sum(1 for p in params if "step" in optimizer.state[p]) * 4  # 0-dim float32 counters
    assert state_bytes == STATE_COPIES[name] * numel * 4 + steps
    # the work buffer, and the 0-dim step tensor the fused Adam kernel reads
    assert other <= _base.BLOCK_BYTES + 4, f"{other} bytes held besides the state"


def test_held_bytes_counts_state_and_buffers_once():
    p = torch.zeros(10, requires_grad=True)
    p.grad = torch.zeros(10)
    optimizer = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    optimizer.step()
    buffer = torch.zeros(100)
    optimizer.__dict__["_cache"] = {"a": buffer, "b": [buffer[:5], (buffer[5:],)]}  # views: once
    assert _base.held_bytes(optimizer) == (40, 400)


def test_large_tensors_keep_only_one_work_buffer():
    # Many large tensors of different sizes: still one buffer (the old block
    # buffers were kept per distinct size and added up to parameter copies).
    params = [torch.zeros(n, requires_grad=True) for n in (300_000, 400_000, 500_000, 70_000)]
    optimizer = EXAdam(params, lr=1e-3)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()
    assert 0 < _base.held_bytes(optimizer)[1] <= _base.BLOCK_BYTES + 4  # and the fused kernel's step


def adamp_run(params, foreach, nesterov, orthogonal_to, steps=8):
    """AdamP on gradients orthogonal to each row of w ("channel") or to w as a
    whole ("layer") on even steps, so that the projection fires; returns how
    many projections of each kind the reference's choice saw."""
    from descentlab.optim import adamp

    gen = torch.Generator().manual_seed(3)
    optimizer = AdamP(params, lr=1e-2, weight_decay=0.1, nesterov=nesterov, foreach=foreach)
    seen = []
    for t in range(steps):
        for p in params:
            g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if t % 2 == 0 and p.dim() > 1:
                w, g2 = p.detach().reshape(p.shape[0], -1), g.reshape(p.shape[0], -1)
                if orthogonal_to == "channel":
                    g2 = g2 - w * (w * g2).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True)
                else:
                    g2 = g2 - w * (w * g2).sum() / (w * w).sum()
                g = g2.reshape(p.shape)
            p.grad = g
            if p.dim() > 1:
                seen.append(adamp.radial_choice(p.detach(), g, 0.1, 1e-8, torch.empty(p[0].numel(),
                                                                                       dtype=p.dtype))[0])
        optimizer.step()
    return seen


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("orthogonal_to", ["channel", "layer"])
@pytest.mark.parametrize("block_bytes", [200, 480, 1 << 20])
def test_adamp_projections_of_tensors_split_into_blocks(monkeypatch, nesterov, orthogonal_to, block_bytes):
    # 200 bytes: 12 float64 per slot, (12, 5) goes 2 rows a block and (3, 20)
    # has rows longer than a slot (whole, fresh buffers); 480: 30 per slot.
    monkeypatch.setattr(_base, "BLOCK_BYTES", block_bytes)
    shapes = ((12, 5), (3, 20), (6, 2, 2, 2), (9,))
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    runs = []
    for foreach in (False, True):
        params = [x.clone().requires_grad_() for x in start]
        seen = adamp_run(params, foreach, nesterov, orthogonal_to)
        runs.append(params)
    assert seen.count(orthogonal_to) >= 4  # the projection under test did fire
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=0, atol=ROUNDING_ATOL)
