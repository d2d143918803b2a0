"""The registry's Muon step (batched Newton-Schulz, ``muon.muon_update``) against
torch.optim.Muon stepping one matrix at a time: to bfloat16 rounding (bit for
bit but for rare bmm-versus-mm roundings) with torch's bfloat16 iterations, for
float32 and bfloat16 parameters; to 1e-12 with the iterations run in float64 on
both sides."""

from __future__ import annotations

import pytest
import torch

from torch.optim._muon import _adjust_lr

from descentlab.optim.muon import MuonAdamW, newton_schulz_batched

# several matrices per shape (batched together), tall, wide and square, and a
# lone one; adamw_first_last=False so that all go to Muon
SHAPES = [(6, 4)] * 3 + [(4, 6)] * 3 + [(5, 5)] * 2 + [(9, 3)]


def run(factory, dtype, steps=6, skip=()):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for s in SHAPES]
    optimizer = factory(params)
    for t in range(steps):
        for k, p in enumerate(params):
            g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
            p.grad = None if (t, k) in skip else g  # a missing gradient: the parameter sits out
        optimizer.step()
    return params


HPARAMS = [
    dict(lr=0.02, momentum=0.95, weight_decay=0.1),
    dict(lr=0.05, momentum=0.9, weight_decay=0.0, nesterov=False, adjust_lr_fn="match_rms_adamw"),
    dict(lr=0.01, ns_steps=3, ns_coefficients=(3.0, -3.2, 1.2), eps=1e-5),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hp", HPARAMS)
def test_equals_torch_muon_to_bfloat16_rounding(dtype, hp):
    # bmm and mm may round a bfloat16 product differently (seen: one entry of
    # one matrix of a batch, 1e-5 after a step with lr 0.05): per step, at most
    # one bfloat16 ulp of a unit entry of the orthogonalised update times the lr
    if dtype == torch.bfloat16 and not hp.get("nesterov", True):
        pytest.skip("torch's Muon normalises its bfloat16 momentum buffer in place (see below)")
    skip, steps = {(2, 0), (3, 5)}, 6
    ours = run(lambda ps: MuonAdamW(ps, adamw_first_last=False, **hp), dtype, steps, skip)
    ref = run(lambda ps: torch.optim.Muon(ps, **hp), dtype, steps, skip)
    largest_lr = max(_adjust_lr(hp["lr"], hp.get("adjust_lr_fn"), s) for s in SHAPES)
    unequal = 0
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=steps * largest_lr * 2**-8)
        unequal += not torch.equal(a, b)
    assert unequal <= 1  # bit for bit but for such a rounding


def test_bfloat16_momentum_buffer_is_the_momentum():
    # torch's Muon (2.13) with bfloat16 parameters and nesterov=False: grad.bfloat16()
    # returns the buffer itself, whose Newton-Schulz normalisation div_ then
    # rescales it in place (norm ~1 after each step). Ours keeps B = mu B + g.
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(4, 6, generator=gen).bfloat16() for _ in range(3)]
    norms = {}
    for name, factory in [("ours", lambda ps: MuonAdamW(ps, adamw_first_last=False, nesterov=False, momentum=0.9)),
                          ("torch", lambda ps: torch.optim.Muon(ps, nesterov=False, momentum=0.9))]:
        p = torch.zeros(4, 6, dtype=torch.bfloat16, requires_grad=True)
        optimizer = factory([p])
        expected = torch.zeros(4, 6, dtype=torch.bfloat16)
        for g in grads:
            p.grad = g.clone()
            optimizer.step()
            expected.lerp_(g, 0.1)
        buffer = optimizer.state[p]["momentum_buffer"]
        norms[name] = float(buffer.float().norm())
        assert torch.equal(buffer, expected) == (name == "ours")
    assert abs(norms["torch"] - 1) < 0.01 and abs(norms["ours"] - 1) > 0.1


@pytest.mark.parametrize("hp", HPARAMS)
def test_equals_torch_muon_in_float64(monkeypatch, hp):
    # torch's Muon casts to bfloat16 whatever the dtype: let that cast keep float64
    # on its side and iterate in float64 on ours, so rounding cannot hide an error
    monkeypatch.setattr(torch.Tensor, "bfloat16", lambda self: self.clone())
    monkeypatch.setattr(MuonAdamW, "ns_dtype", torch.float64)
    ours = run(lambda ps: MuonAdamW(ps, adamw_first_last=False, **hp), torch.float64)
    ref = run(lambda ps: torch.optim.Muon(ps, **hp), torch.float64)
    for a, b in zip(ours, ref):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_newton_schulz_orthogonalises_and_rejects_bad_input():
    # float64, many steps of the cubic iteration (a, b, c) = (1.5, -0.5, 0): X -> the
    # orthogonal polar factor U V^T of each matrix (an independent closed form)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 5, 3, generator=gen, dtype=torch.float64)
    out = newton_schulz_batched(x, (1.5, -0.5, 0.0), 60, 1e-7, torch.float64)
    u, _, vh = torch.linalg.svd(x, full_matrices=False)
    torch.testing.assert_close(out, u @ vh, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="ns_steps"):
        newton_schulz_batched(x, (1.5, -0.5, 0.0), 100, 1e-7)
    with pytest.raises(ValueError, match="ns_coefficients"):
        newton_schulz_batched(x, (1.5, -0.5), 5, 1e-7)
    with pytest.raises(ValueError, match="stack of matrices"):
        newton_schulz_batched(x[0], (1.5, -0.5, 0.0), 5, 1e-7)
