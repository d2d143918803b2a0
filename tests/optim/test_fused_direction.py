"""The shared Adam direction (``_base.adam_direction``) and block-wise helpers,
against the formula written out in float64, over memory layouts."""

import math

import pytest
import torch

from descentlab.optim import _base
from descentlab.optim.diffgrad import DiffGrad
from descentlab.optim.grams import Grams

from _problems import ROUNDING_ATOL, run_on_stream, use_fused_adam


class Owner:
    """Stands in for an optimizer: adam_direction keeps its buffers on it."""


def expected_direction(g, m, v, step, beta1, beta2, eps):
    m_new = beta1 * m + (1 - beta1) * g
    v_new = beta2 * v + (1 - beta2) * g * g
    u = (m_new / (1 - beta1**step)) / ((v_new / (1 - beta2**step)).sqrt() + eps)
    return u, m_new, v_new


def layouts():
    """(name, parameter, gradient): a gradient whose memory order differs from
    the parameter's must not reach the fused kernel, which walks raw memory."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    return [
        ("contiguous", rand(4, 3), rand(4, 3)),
        ("transposed gradient", rand(4, 3), rand(3, 4).t()),
        ("transposed parameter and gradient", rand(3, 4).t(), rand(3, 4).t()),
        ("transposed parameter", rand(3, 4).t(), rand(4, 3)),
        ("channels_last", rand(2, 3, 2, 2).to(memory_format=torch.channels_last),
         rand(2, 3, 2, 2).to(memory_format=torch.channels_last)),
        ("strided parameter", rand(4, 6)[:, ::2], rand(4, 3)),
        ("size-1 dimension with another stride", rand(2, 1, 5),
         rand(2, 5).unsqueeze(1).as_strided((2, 1, 5), (5, 1, 1))),
    ]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("name, param, grad", layouts(), ids=[c[0] for c in layouts()])
def test_direction_matches_the_formula_in_every_layout(monkeypatch, fused, name, param, grad):
    use_fused_adam(monkeypatch, fused)
    beta1, beta2, eps, owner = 0.9, 0.99, 1e-8, Owner()
    m = torch.zeros_like(param, memory_format=torch.preserve_format)
    v = torch.zeros_like(param, memory_format=torch.preserve_format)
    m_ref, v_ref = torch.zeros_like(param), torch.zeros_like(param)
    gen = torch.Generator().manual_seed(1)
    for step in range(1, 6):
        # fresh values each step, in grad's memory layout
        g = torch.empty_strided(grad.shape, grad.stride(), dtype=grad.dtype)
        g.copy_(grad * torch.randn(grad.shape, generator=gen, dtype=grad.dtype))
        (u,) = _base.adam_direction(owner, [param], [g], [m], [v], step, beta1, beta2, eps)
        u_ref, m_ref, v_ref = expected_direction(g, m_ref, v_ref, step, beta1, beta2, eps)
        torch.testing.assert_close(u, u_ref, rtol=1e-13, atol=0)
        torch.testing.assert_close(m, m_ref, rtol=1e-14, atol=0)
        torch.testing.assert_close(v, v_ref, rtol=1e-14, atol=0)


def test_fusable_indices_keeps_the_kernel_from_mismatched_layouts():
    owner = Owner()
    params = [torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(4, 6)[:, ::2], torch.zeros(5, dtype=torch.int64)]
    grads = [torch.zeros(4, 3), torch.zeros(3, 4).t(), torch.zeros(4, 3), torch.zeros(5, dtype=torch.int64)]
    assert _base.fusable_indices(owner, params, grads) == [0]
    assert _base.fusable_indices(owner, params, [g.contiguous() for g in grads]) == [0, 1]
    # strides of size-1 dimensions do not matter (autograd gives such gradients)
    w = torch.zeros(2, 1, 5)
    g = torch.zeros(2, 5).unsqueeze(1).as_strided((2, 1, 5), (5, 1, 1))
    assert w.stride() != g.stride()
    assert _base.fusable_indices(Owner(), [w], [g]) == [0]


@pytest.mark.parametrize("cls", [Grams, DiffGrad])
def test_transposed_gradients_give_the_reference_update(cls):
    # p.grad with another memory order than p (assigned by hand): the multi-tensor
    # path must still agree with the reference path.
    gen = torch.Generator().manual_seed(2)
    stream = [[torch.randn(3, 4, generator=gen, dtype=torch.float64).t() for _ in range(2)] for _ in range(8)]
    runs = []
    for foreach in (True, False):
        params = [torch.randn(4, 3, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
                  .requires_grad_() for k in range(2)]
        run_on_stream(cls(params, lr=1e-2, weight_decay=0.1, foreach=foreach), params, stream)
        runs.append(params)
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=0, atol=ROUNDING_ATOL)


def test_is_dense():
    assert _base.is_dense(torch.zeros(3, 4).t())
    assert _base.is_dense(torch.zeros(2, 3, 4, 5).to(memory_format=torch.channels_last))
    assert not _base.is_dense(torch.zeros(3, 1).expand(3, 4))
    assert not _base.is_dense(torch.zeros(4, 6)[:, ::2])


@pytest.mark.parametrize("numel, block_bytes", [(10, 32), (10, 1 << 20), (8, 32)])
def test_blocks_cover_each_tensor_once_in_aligned_pieces(monkeypatch, numel, block_bytes):
    monkeypatch.setattr(_base, "BLOCK_BYTES", block_bytes)
    a = torch.arange(numel, dtype=torch.float64)
    b = -torch.arange(numel, dtype=torch.float64)
    seen = []
    for (x, y), (buffer,) in _base.blocks(Owner(), (a, b), ("work",)):
        assert x.shape == y.shape == buffer.shape and x.data_ptr() != buffer.data_ptr()
        assert torch.equal(x, -y)
        seen += x.tolist()
    assert seen == a.tolist()
    assert math.ceil(numel / max(1, block_bytes // 8)) == len(list(_base.blocks(Owner(), (a,), ())))
