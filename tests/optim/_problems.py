"""Shared helpers for the optimizer tests: parameter sets, gradient streams, runners."""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

# 2-D, 1-D, 4-D (conv-like) and a scalar-like 1-element tensor: every branch
# that depends on ndim (AdamP projection, MARS vs its 1-D AdamW) is exercised.
SHAPES: tuple[tuple[int, ...], ...] = ((4, 3), (5,), (3, 2, 2, 2), (1,))


def make_params(shapes: Sequence[tuple[int, ...]] = SHAPES, seed: int = 0,
                dtype: torch.dtype = torch.float64) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def grad_stream(shapes: Sequence[tuple[int, ...]] = SHAPES, steps: int = 25, seed: int = 1,
                scale: float = 1.0, dtype: torch.dtype = torch.float64) -> list[list[Tensor]]:
    """Fresh random gradients for each step (independent of the parameters)."""
    gen = torch.Generator().manual_seed(seed)
    return [[scale * torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
            for _ in range(steps)]


def clone_params(params: Sequence[Tensor]) -> list[Tensor]:
    return [p.detach().clone().requires_grad_() for p in params]


def run_on_stream(optimizer: torch.optim.Optimizer, params: Sequence[Tensor],
                  stream: Sequence[Sequence[Tensor]],
                  after_step: Callable[[int], None] | None = None) -> None:
    """Feed a fixed gradient stream: p.grad = copy of g, then step()."""
    for t, grads in enumerate(stream):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
        if after_step is not None:
            after_step(t)


def tensor_state(optimizer: torch.optim.Optimizer, params: Sequence[Tensor]) -> list[dict[str, Any]]:
    return [copy.deepcopy(dict(optimizer.state[p])) for p in params]


def assert_states_equal(a: list[dict[str, Any]], b: list[dict[str, Any]], *,
                        rtol: float = 0.0, atol: float = 0.0) -> None:
    assert len(a) == len(b)
    for sa, sb in zip(a, b):
        assert sa.keys() == sb.keys()
        for key in sa:
            va, vb = sa[key], sb[key]
            if isinstance(va, Tensor):
                torch.testing.assert_close(va, vb, rtol=rtol, atol=atol, msg=lambda m: f"{key}: {m}")
            else:
                assert va == vb, key


# Multi-tensor paths that round in another order than the reference path (torch's
# fused Adam kernel in ``_base._adam_direction``, reassociated arithmetic) agree
# with it to 1e-12 in float64.
ROUNDING_ATOL = 1e-12


def use_fused_adam(monkeypatch, fused: bool) -> None:
    """Let ``_adam_direction`` use torch's fused kernel, or force its foreach fallback."""
    from descentlab.optim import _base
    if not fused:
        monkeypatch.setattr(_base, "FUSED_ADAM_DEVICES", frozenset())


def compare_paths(cls: type, hparams: dict[str, Any], steps: int = 25, scale: float = 1.0,
                  shapes: Sequence[tuple[int, ...]] = SHAPES, seed: int = 0,
                  rtol: float = 0.0, atol: float = 0.0, dtype: torch.dtype = torch.float64) -> None:
    """Reference (foreach=False) and multi-tensor paths agree (float64 by default), state included."""
    stream = grad_stream(shapes, steps, seed=seed + 1, scale=scale, dtype=dtype)
    runs = []
    for foreach in (False, True):
        params = make_params(shapes, seed=seed, dtype=dtype)
        opt = cls(params, foreach=foreach, **hparams)
        run_on_stream(opt, params, stream)
        runs.append((params, tensor_state(opt, params), opt))
    (pa, sa, oa), (pb, sb, ob) = runs
    for x, y in zip(pa, pb):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)
    assert_states_equal(sa, sb, rtol=rtol, atol=atol)
    for ga, gb in zip(oa.param_groups, ob.param_groups):
        for key in ga:
            if key not in ("params", "foreach"):
                if isinstance(ga[key], float):
                    assert abs(ga[key] - gb[key]) <= atol + rtol * abs(gb[key]), key
                else:
                    assert ga[key] == gb[key], key


def compare_maximize(cls: type, hparams: dict[str, Any], steps: int = 10, foreach: bool = True) -> None:
    """maximize=True on +g equals maximize=False on -g, exactly; p.grad is untouched."""
    stream = grad_stream(steps=steps)
    minimized = make_params()
    run_on_stream(cls(minimized, foreach=foreach, **hparams), minimized,
                  [[-g for g in grads] for grads in stream])
    maximized = make_params()
    opt = cls(maximized, foreach=foreach, maximize=True, **hparams)
    run_on_stream(opt, maximized, stream)
    for x, y in zip(minimized, maximized):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    for p, g in zip(maximized, stream[-1]):
        assert torch.equal(p.grad, g)


def max_abs_diff(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    return max(float((x.detach() - y.detach()).abs().max()) for x, y in zip(a, b))


# --- RNG-free problem for golden trajectories --------------------------------
# Golden numbers in the tests were produced by running the official code of a
# method (outside this repository) on exactly this problem: cos-initialised
# parameters of shapes GOLDEN_SHAPES and sin gradients, float64.
GOLDEN_SHAPES: tuple[tuple[int, ...], ...] = ((4, 3), (5,))


def golden_params() -> list[Tensor]:
    out = []
    for k, shape in enumerate(GOLDEN_SHAPES):
        n = int(torch.tensor(shape).prod())
        values = torch.cos(0.7 * torch.arange(n, dtype=torch.float64) + k)
        out.append(values.reshape(shape).requires_grad_())
    return out


def golden_grads(t: int, scale: float) -> list[Tensor]:
    out = []
    for k, shape in enumerate(GOLDEN_SHAPES):
        n = int(torch.tensor(shape).prod())
        values = torch.sin(1.3 * torch.arange(n, dtype=torch.float64) + 0.9 * t + 2 * k)
        out.append((scale * values).reshape(shape))
    return out


def run_golden(optimizer_factory: Callable[[list[Tensor]], torch.optim.Optimizer],
               steps: int, scale: float) -> list[list[float]]:
    params = golden_params()
    optimizer = optimizer_factory(params)
    run_on_stream(optimizer, params, [golden_grads(t, scale) for t in range(steps)])
    return [p.detach().flatten().tolist() for p in params]


def assert_golden(actual: list[list[float]], expected: list[list[float]], tol: float = 1e-13) -> None:
    for a, e in zip(actual, expected):
        torch.testing.assert_close(torch.tensor(a, dtype=torch.float64),
                                   torch.tensor(e, dtype=torch.float64), rtol=tol, atol=tol)


# A tiny float64 regression problem, shared by the closure-based optimizer tests.
def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()


def regression_batches(steps: int = 20, seed: int = 1) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, 3, generator=gen, dtype=torch.float64),
             torch.randn(6, 2, generator=gen, dtype=torch.float64)) for _ in range(steps)]


def closure_for(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: tuple[Tensor, Tensor]) -> Callable[[], Tensor]:
    x, y = batch

    def closure() -> Tensor:
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    return closure
