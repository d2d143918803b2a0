"""AdamP / SGDP: paths agree, maximize, official ``adamp`` package, reduction to AdamW / SGD."""

import pytest
import torch

from descentlab.optim.adamp import SGDP, AdamP, project_radial

from _problems import (ROUNDING_ATOL, compare_maximize, compare_paths, grad_stream, make_params,
                       run_on_stream, use_fused_adam)

SHAPES = ((4, 3), (5,), (3, 2, 2, 2))
ADAMP_HP = dict(lr=1e-2, weight_decay=0.1)
SGDP_HP = dict(lr=1e-2, weight_decay=0.1, momentum=0.9)


def orthogonal_run(optimizer, params, steps=20, seed=3):
    """Gradients orthogonal to each output channel of the current weight on even
    steps (scale-invariant layers: the projection fires), plain random on odd ones."""
    gen = torch.Generator().manual_seed(seed)
    for t in range(steps):
        for p in params:
            g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if t % 2 == 0 and p.dim() > 1:
                w = p.detach().reshape(p.shape[0], -1)
                g2 = g.reshape(p.shape[0], -1)
                g = (g2 - w * (w * g2).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True)).reshape(p.shape)
            p.grad = g
        optimizer.step()


def run_both(ours_factory, ref_factory, steps=20):
    ours, ref = make_params(SHAPES), make_params(SHAPES)
    orthogonal_run(ours_factory(ours), ours, steps)
    orthogonal_run(ref_factory(ref), ref, steps)
    return ours, ref


def adamp_atol(nesterov: bool) -> float:
    """Without Nesterov the multi-tensor path takes its direction from the fused Adam kernel."""
    return 0.0 if nesterov else ROUNDING_ATOL


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("nesterov", [False, True])
def test_adamp_paths_agree(monkeypatch, nesterov, fused):
    use_fused_adam(monkeypatch, fused)
    hp = dict(ADAMP_HP, nesterov=nesterov)
    ours, ref = run_both(lambda p: AdamP(p, foreach=True, **hp), lambda p: AdamP(p, foreach=False, **hp))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=adamp_atol(nesterov))
    compare_paths(AdamP, hp, shapes=SHAPES, atol=adamp_atol(nesterov))


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgdp_paths_agree(nesterov):
    hp = dict(SGDP_HP, nesterov=nesterov)
    ours, ref = run_both(lambda p: SGDP(p, foreach=True, **hp), lambda p: SGDP(p, foreach=False, **hp))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    compare_paths(SGDP, hp, shapes=SHAPES)
    official = dict(hp, project_buffer=True)
    ours, ref = run_both(lambda p: SGDP(p, foreach=True, **official),
                         lambda p: SGDP(p, foreach=False, **official))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_maximize():
    for cls, hp in [(AdamP, ADAMP_HP), (SGDP, SGDP_HP)]:
        compare_maximize(cls, hp)
        compare_maximize(cls, hp, foreach=False)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("nesterov", [False, True])
def test_matches_official_adamp(foreach, nesterov):
    adamp = pytest.importorskip("adamp")
    hp = dict(ADAMP_HP, nesterov=nesterov)
    ours, ref = run_both(lambda p: AdamP(p, foreach=foreach, **hp), lambda p: adamp.AdamP(p, **hp))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("nesterov", [False, True])
def test_matches_official_sgdp(foreach, nesterov):
    # The official SGDP (no Nesterov) projects its momentum buffer in place; the
    # paper does not. project_buffer=True reproduces the official code.
    adamp = pytest.importorskip("adamp")
    hp = dict(SGDP_HP, nesterov=nesterov)
    ours, ref = run_both(lambda p: SGDP(p, foreach=foreach, project_buffer=True, **hp),
                         lambda p: adamp.SGDP(p, **hp))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)


def test_paper_sgdp_keeps_the_buffer_unprojected():
    # Paper (Algorithm 1): q_t = Pi(p_t) is applied, p_t stays. With Nesterov the
    # official code agrees; without, it differs (measured in the report).
    adamp = pytest.importorskip("adamp")
    ours, ref = run_both(lambda p: SGDP(p, nesterov=True, **SGDP_HP),
                         lambda p: adamp.SGDP(p, nesterov=True, **SGDP_HP))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)
    params = make_params(SHAPES)
    opt = SGDP(params, **SGDP_HP)
    gen = torch.Generator().manual_seed(5)
    w = params[0].detach().clone()
    g = torch.randn(w.shape, generator=gen, dtype=w.dtype)
    g -= w * (w * g).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True)
    u = torch.randn(w.shape, generator=gen, dtype=w.dtype)  # a buffer with a radial part
    params[0].grad = g
    opt.step()
    opt.state[params[0]]["momentum_buffer"].copy_(u)
    params[0].grad = torch.zeros_like(g)  # zero is orthogonal to w: projection fires
    opt.step()
    assert torch.equal(opt.state[params[0]]["momentum_buffer"], 0.9 * u)


def test_projection_removes_the_radial_part():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    g = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    g -= w * (w * g).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True)  # g orthogonal to w rows
    update = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    projected, ratio = project_radial(w, g, update, delta=0.1, wd_ratio=0.25, eps=0.0)
    assert ratio == 0.25
    torch.testing.assert_close((projected * w).sum(1), torch.zeros(4, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    # a gradient aligned with w is not scale-invariant: nothing changes
    same, ratio = project_radial(w, w.clone(), update, delta=0.1, wd_ratio=0.25, eps=1e-8)
    assert ratio == 1.0 and same is update


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("shapes, delta", [(((5,), (1,)), 0.1), (((4, 3), (3, 2, 2, 2)), 0.0)])
def test_adamp_without_projection_is_adamw(foreach, shapes, delta):
    # 1-D parameters are never projected; delta = 0 switches the projection off.
    stream = grad_stream(shapes, steps=20)
    ours, ref = make_params(shapes), make_params(shapes)
    run_on_stream(AdamP(ours, delta=delta, foreach=foreach, **ADAMP_HP), ours, stream)
    run_on_stream(torch.optim.AdamW(ref, **ADAMP_HP), ref, stream)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("foreach", [False, True])
def test_sgdp_without_projection_is_sgd(foreach):
    # SGDP's buffer starts at 0 with dampening 0: b_1 = g, as torch's SGD; no decay here.
    shapes = ((5,), (4, 3))
    stream = grad_stream(shapes, steps=20)
    ours, ref = make_params(shapes), make_params(shapes)
    run_on_stream(SGDP(ours, lr=1e-2, momentum=0.9, nesterov=True, delta=0.0, foreach=foreach),
                  ours, stream)
    run_on_stream(torch.optim.SGD(ref, lr=1e-2, momentum=0.9, nesterov=True, foreach=False), ref, stream)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


def test_rejects_bad_hyperparameters():
    p = [torch.zeros(2, 2, requires_grad=True)]
    with pytest.raises(ValueError, match="delta"):
        AdamP(p, delta=-0.1)
    with pytest.raises(ValueError, match="nesterov"):
        SGDP(p, nesterov=True)
    with pytest.raises(ValueError, match="momentum"):
        SGDP(p, momentum=1.5)


def mixed_run(optimizer, params, steps=12, seed=4):
    """Per step, each parameter's gradient is orthogonal to its rows (channel view
    fires), to the whole weight (layer view fires) or random (neither), so that
    one batch of same-shape tensors mixes all three cases."""
    gen = torch.Generator().manual_seed(seed)
    for t in range(steps):
        for i, p in enumerate(params):
            g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            mode = (t + i) % 3
            if p.dim() > 1 and mode < 2:
                rows = p.shape[0] if mode == 0 else 1
                w, g2 = p.detach().reshape(rows, -1), g.reshape(rows, -1)
                g = (g2 - w * (w * g2).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True)).reshape(p.shape)
            p.grad = g
        optimizer.step()


@pytest.mark.parametrize("cls, hp", [
    (AdamP, dict(ADAMP_HP, nesterov=False)), (AdamP, dict(ADAMP_HP, nesterov=True)),
    (SGDP, dict(SGDP_HP, nesterov=True)), (SGDP, dict(SGDP_HP, project_buffer=True)),
])
def test_paths_agree_on_many_tensors_of_one_shape(cls, hp):
    # The multi-tensor path projects same-shape tensors as one batch.
    shapes = ((4, 3),) * 5 + ((3, 2, 2, 2),) * 3 + ((5,), (6, 4))
    runs = []
    for foreach in (False, True):
        params = make_params(shapes)
        mixed_run(cls(params, foreach=foreach, **hp), params)
        runs.append(params)
    atol = adamp_atol(hp["nesterov"]) if cls is AdamP else 0.0
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_dot_products_are_products_summed(dtype):
    # The multi-tensor path forms w * g in a spare buffer and sums it where the
    # reference calls linalg.vecdot: the two must agree bit for bit.
    gen = torch.Generator().manual_seed(6)
    for shape in [(4, 3), (64, 27), (1024, 512), (1, 300000)]:
        w = torch.randn(shape, generator=gen, dtype=dtype)
        g = torch.randn(shape, generator=gen, dtype=dtype)
        assert torch.equal(torch.linalg.vecdot(w, g, dim=1), (w * g).sum(1))
