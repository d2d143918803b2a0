"""EXAdam: paths agree, maximize, golden trajectories of the official code, pytorch-optimizer."""

import math

import pytest
import torch

from descentlab.optim import _base
from descentlab.optim.exadam import EXAdam

from _problems import (ROUNDING_ATOL, assert_golden, compare_maximize, compare_paths, grad_stream,
                       make_params, max_abs_diff, run_golden, run_on_stream)

HP = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)

# Parameters after 10 steps of the official AhmedMostafa16/EXAdam code on the
# golden problem of _problems.py (lr=1e-2, weight_decay=0.1, other defaults):
# V1 = first commit 9ff8463 (log step size), V2 = HEAD 989d7b6 (constant).
# The official file uses ``np`` without importing numpy; it was run with np injected.
EXADAM_V1 = [
    [
        0.7686159390795364, 0.5579713617543245, 0.22797335587845893,
        -0.23086571884967486, -0.8676940749313751, -1.247064874748931,
        -0.6510565378646557, 0.2834281389803299, 1.0110582604986482,
        1.0074625388698935, 0.44401347439614364, 0.023513085799073283,
    ],
    [
        0.45774495847848157, 0.1963454312783327, -0.5549677133252069,
        -1.0797438620282733, -1.0335054939519706,
    ],
]
EXADAM_V2 = [
    [
        0.7700701563607233, 0.5192668374955771, 0.181399075675291,
        -0.1921307706958251, -0.8226322081946604, -1.291136919734189,
        -0.6911255089647279, 0.2367114701621263, 1.0491381775528819,
        1.053936554728068, 0.40266487594046596, -0.018462403543877084,
    ],
    [
        0.4131970198737111, 0.24117598259343778, -0.5153300611157824,
        -1.0332135501742998, -1.0716746991924029,
    ],
]


# The multi-tensor path rewrites d1 and d2 (exadam_direction): equal to rounding.
FLOAT32_TOL = dict(rtol=1e-5, atol=1e-6)


def compare_all_paths() -> None:
    compare_paths(EXAdam, HP, atol=ROUNDING_ATOL)
    compare_paths(EXAdam, dict(HP, log_step_size=True), atol=ROUNDING_ATOL)
    # d1, d2 are skipped once beta^t is below half an ulp of 1 (exact): small
    # betas get there within the run, in float64 and float32.
    compare_paths(EXAdam, dict(HP, betas=(0.2, 0.4)), steps=60, atol=ROUNDING_ATOL)
    compare_paths(EXAdam, dict(HP, betas=(0.2, 0.4)), steps=60, dtype=torch.float32, **FLOAT32_TOL)


def test_paths_agree():
    compare_all_paths()


def test_maximize():
    compare_maximize(EXAdam, HP)
    compare_maximize(EXAdam, HP, foreach=False)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("log_step_size, expected", [(True, EXADAM_V1), (False, EXADAM_V2)])
def test_matches_official_code(foreach, log_step_size, expected):
    actual = run_golden(lambda p: EXAdam(p, lr=1e-2, weight_decay=0.1, log_step_size=log_step_size,
                                         foreach=foreach), steps=10, scale=1.0)
    assert_golden(actual, expected)


def test_matches_pytorch_optimizer():
    po = pytest.importorskip("pytorch_optimizer")
    stream = grad_stream(steps=20)
    ours, theirs = make_params(), make_params()
    run_on_stream(EXAdam(ours, **HP), ours, stream)
    run_on_stream(po.EXAdam(theirs, **HP), theirs, stream)
    assert max_abs_diff(ours, theirs) <= 1e-14


def test_first_step_by_hand():
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-3
    g = torch.tensor([0.3, -2.0, 1e-2], dtype=torch.float64)
    m, v = (1 - b1) * g, (1 - b2) * g * g
    d1 = 1 + b2 * v / (v + eps)
    d2 = 1 + b1 * m * m / (m * m + eps)
    expected = -lr * (d1 * m / (1 - b1) + d1 * g / (1 - b1)) / (torch.sqrt(d2 * v / (1 - b2)) + eps)
    for log_step_size, factor in [(False, 1.0), (True, math.log(2.0))]:  # ln(sqrt(2) sqrt(2))
        p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        p.grad = g.clone()
        EXAdam([p], lr=lr, eps=eps, log_step_size=log_step_size).step()
        torch.testing.assert_close(p.detach(), factor * expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("min_bytes", [0, 64])
def test_paths_agree_for_large_and_small_tensors(monkeypatch, min_bytes):
    # Tensors of at least SCRATCH_MIN_BYTES go block by block, the others are
    # concatenated (the test tensors are far below the default): force the
    # first for all tensors (0), then a mix of large and small ones (64).
    monkeypatch.setattr(_base, "SCRATCH_MIN_BYTES", min_bytes)
    compare_all_paths()


@pytest.mark.parametrize("block_bytes", [32, 40])
def test_paths_agree_block_by_block(monkeypatch, block_bytes):
    # Large contiguous CPU tensors are updated a block at a time: force that for
    # every tensor, with blocks of 4 or 5 float64 elements (uneven last blocks,
    # tensors with different block counts in one step).
    monkeypatch.setattr(_base, "SCRATCH_MIN_BYTES", 0)
    monkeypatch.setattr(_base, "BLOCK_BYTES", block_bytes)
    compare_all_paths()


def test_strided_tensors_take_the_plain_multi_tensor_path(monkeypatch):
    monkeypatch.setattr(_base, "SCRATCH_MIN_BYTES", 0)
    params = [torch.randn(6, 4, dtype=torch.float64).t().requires_grad_() for _ in range(2)]
    reference = [p.detach().clone().requires_grad_() for p in params]
    stream = grad_stream([(4, 6), (4, 6)], steps=5)
    run_on_stream(EXAdam(params, foreach=True, **HP), params, stream)
    run_on_stream(EXAdam(reference, foreach=False, **HP), reference, stream)
    assert not params[0].is_contiguous()
    assert max_abs_diff(params, reference) <= ROUNDING_ATOL
