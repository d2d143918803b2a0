"""AdaHessian: closed forms on a diagonal quadratic, E[z * Hz] = diag H by exact
enumeration, a brute-force trajectory with a dense Hessian and the official update
formula (amirgholami/adahessian), pytorch-optimizer, multi-tensor == loop, seeded
probes and the state round trip."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from descentlab.optim import OPTIMIZERS
from descentlab.optim.adahessian import AdaHessian, hessian_vector_products, rademacher_like

STEPS = 20

# The closures call backward(create_graph=True), as AdaHessian asks; torch warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")


class TinyConvNet(nn.Module):
    """A 4-D conv kernel (spatial averaging), a 2-D weight and 1-D biases: 23 parameters."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, kernel_size=2)
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        h = torch.tanh(self.conv(x)).mean(dim=(2, 3))
        return self.fc(h)


def make_model(seed=0, cls=TinyConvNet):
    torch.manual_seed(seed)
    return cls().double()


def make_mlp():
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def batches(steps=STEPS, seed=1, shape=(5, 1, 3, 3)):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=gen, dtype=torch.float64),
             torch.randn(shape[0], 2, generator=gen, dtype=torch.float64)) for _ in range(steps)]


def loss_fn(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def train(model, opt, data):
    for batch in data:
        def closure():
            opt.zero_grad()
            loss = loss_fn(model, batch)
            loss.backward(create_graph=True)
            return loss

        opt.step(closure)


def assert_models_close(a, b, atol=0.0):
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=atol)


@pytest.mark.parametrize("foreach", [True, False])
def test_diagonal_quadratic_one_step_is_p_minus_lr_p(foreach):
    """0.5 sum c_i p_i^2, betas 0, eps 0: m = c p, D = |c| (also after spatial averaging when
    c is constant over a kernel's spatial dims), so the step is lr * c p / c = lr * p."""
    gen = torch.Generator().manual_seed(0)
    vec = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(2, 3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    c_vec = torch.rand(5, generator=gen, dtype=torch.float64) + 0.5
    c_kernel = (torch.rand(2, 3, 1, 1, generator=gen, dtype=torch.float64) + 0.5).expand(2, 3, 2, 2)
    start = [vec.detach().clone(), kernel.detach().clone()]
    lr = 0.3
    opt = AdaHessian([vec, kernel], lr=lr, betas=(0.0, 0.0), eps=0.0, seed=3, foreach=foreach)

    def closure():
        opt.zero_grad()
        loss = 0.5 * (c_vec * vec**2).sum() + 0.5 * (c_kernel * kernel**2).sum()
        loss.backward(create_graph=True)
        return loss

    opt.step(closure)
    for p, p0 in zip([vec, kernel], start):
        torch.testing.assert_close(p.detach(), p0 - lr * p0, rtol=1e-15, atol=0)


def _flat_loss(model, batch):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]

    def f(flat):
        chunks, i = {}, 0
        for n, s in zip(names, shapes):
            k = s.numel()
            chunks[n] = flat[i:i + k].view(s)
            i += k
        return loss_fn(lambda x: functional_call(model, chunks, (x,)), batch)

    return f


def test_hutchinson_expectation_is_the_hessian_diagonal_exactly():
    """Averaging z * Hz over all 2^n sign vectors gives diag H exactly (n = 9 parameters)."""
    model = make_model(cls=make_mlp).double()
    model[0] = nn.Linear(2, 2).double()
    model[2] = nn.Linear(2, 1).double()
    batch = (torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64))
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    assert n == 9
    loss = loss_fn(model, batch)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    total = torch.zeros(n, dtype=torch.float64)
    for signs in itertools.product((-1.0, 1.0), repeat=n):
        z = torch.tensor(signs, dtype=torch.float64)
        probes = list(torch.split(z, [p.numel() for p in params]))
        probes = [q.view_as(p) for q, p in zip(probes, params)]
        hvs = hessian_vector_products(params, grads, probes, retain_graph=True)
        total += torch.cat([(q * h).flatten() for q, h in zip(probes, hvs)])
    flat = torch.cat([p.detach().flatten() for p in params])
    dense = hessian(_flat_loss(model, batch))(flat)
    torch.testing.assert_close(total / 2**n, torch.diagonal(dense), rtol=1e-12, atol=1e-14)


def test_rademacher_probes_are_signs_and_seeded():
    params = [torch.zeros(3, 4, dtype=torch.float64), torch.zeros(7, dtype=torch.float64)]
    a = rademacher_like(params, torch.Generator().manual_seed(5))
    b = rademacher_like(params, torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(set(x.unique().tolist()) <= {-1.0, 1.0} for x in a)


def test_rademacher_single_draw_equals_a_draw_per_parameter():
    # One draw split into views must give the numbers of one draw per parameter
    # (what the official code and the brute-force test do), for mixed dtypes too.
    shapes = [(3, 4), (7,), (2, 3, 2, 2), (40000,)]
    for dtypes in ([torch.float64] * 4, [torch.float32, torch.float64, torch.float32, torch.float64]):
        params = [torch.zeros(s, dtype=d) for s, d in zip(shapes, dtypes)]
        ours = rademacher_like(params, torch.Generator().manual_seed(9))
        gen = torch.Generator().manual_seed(9)
        for p, z in zip(params, ours):
            expected = torch.randint(0, 2, p.shape, generator=gen, dtype=p.dtype) * 2 - 1
            assert z.shape == p.shape and z.dtype == p.dtype and torch.equal(z, expected)


def test_brute_force_trajectory_with_official_update_formula():
    """Dense Hessian (torch.func.hessian) times the same seeded probes, then the official
    update written out: D = |Hz| (mean over kernel dims 2, 3), v = EMA(D^2),
    p - lr (m/bc1/((sqrt v)^k / sqrt(bc2)^k + eps) + wd p)."""
    lr, (b1, b2), eps, wd, k, seed = 0.1, (0.9, 0.99), 1e-4, 0.01, 0.5, 11
    data = batches(8)
    model = make_model()
    opt = AdaHessian(model.parameters(), lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd,
                     hessian_power=k, seed=seed)
    ref_model = make_model()
    shapes = [p.shape for p in ref_model.parameters()]
    w = [p.detach().clone() for p in ref_model.parameters()]
    m = [torch.zeros_like(x) for x in w]
    v = [torch.zeros_like(x) for x in w]
    gen = torch.Generator().manual_seed(seed)
    for t, batch in enumerate(data, start=1):
        flat = torch.cat([x.flatten() for x in w])
        f = _flat_loss(ref_model, batch)
        g_flat = torch.func.grad(f)(flat)
        h_dense = hessian(f)(flat)
        probes = [torch.randint(0, 2, s, generator=gen, dtype=torch.float64) * 2 - 1 for s in shapes]
        hz = torch.split(h_dense @ torch.cat([z.flatten() for z in probes]), [s.numel() for s in shapes])
        g = torch.split(g_flat, [s.numel() for s in shapes])
        for i, s in enumerate(shapes):
            d = hz[i].view(s).abs()
            if len(s) == 4:
                d = d.mean(dim=[2, 3], keepdim=True)
            m[i] = b1 * m[i] + (1 - b1) * g[i].view(s)
            v[i] = b2 * v[i] + (1 - b2) * d * d
            denom = v[i].sqrt() ** k / (1 - b2**t) ** (0.5 * k) + eps
            w[i] = w[i] - lr * (m[i] / (1 - b1**t) / denom + wd * w[i])
        train(model, opt, [batch])
        for p, x in zip(model.parameters(), w):
            torch.testing.assert_close(p.detach(), x, rtol=1e-11, atol=1e-13)


def test_matches_pytorch_optimizer_on_linear_layers():
    """po has no spatial averaging: compare on 1-D/2-D parameters only, with its probes
    drawn from the global RNG seeded like our generator."""
    po = pytest.importorskip("pytorch_optimizer")
    data = batches(shape=(6, 3))
    m1, m2 = make_model(cls=make_mlp), make_model(cls=make_mlp)
    ours = AdaHessian(m1.parameters(), lr=0.1, betas=(0.9, 0.99), eps=1e-4, weight_decay=0.01, seed=4)
    theirs = po.AdaHessian(m2.parameters(), lr=0.1, betas=(0.9, 0.99), eps=1e-4, weight_decay=0.01,
                           weight_decouple=True)
    train(m1, ours, data)
    torch.manual_seed(4)
    train(m2, theirs, data)
    assert_models_close(m1, m2, atol=1e-12)


def test_foreach_matches_loop_with_groups():
    data = batches()
    results = []
    for foreach in (True, False):
        model = make_model()
        params = list(model.parameters())
        groups = [{"params": params[:2], "hessian_power": 0.5},
                  {"params": params[2:], "lr": 0.05, "weight_decay": 0.1}]
        opt = AdaHessian(groups, lr=0.1, foreach=foreach, seed=2)
        train(model, opt, data)
        results.append((model, opt))
    (ma, oa), (mb, ob) = results
    assert_models_close(ma, mb)
    for p, q in zip(ma.parameters(), mb.parameters()):
        for key in ("exp_avg", "exp_hessian_diag_sq"):
            assert torch.equal(oa.state[p][key], ob.state[q][key])


def test_state_dict_round_trip_includes_the_probe_generator():
    data = batches(10)
    model = make_model()
    opt = OPTIMIZERS.build({"name": "adahessian", "lr": 0.1, "seed": 9}, model.parameters())
    train(model, opt, data[:4])
    saved = copy.deepcopy(opt.state_dict())
    weights = copy.deepcopy(model.state_dict())
    train(model, opt, data[4:])

    model2 = make_model(seed=5)
    model2.load_state_dict(weights)
    opt2 = OPTIMIZERS.build({"name": "adahessian", "lr": 0.1, "seed": 123}, model2.parameters())
    opt2.load_state_dict(saved)
    train(model2, opt2, data[4:])
    assert_models_close(model, model2)


def test_seed_decides_the_run_not_the_global_rng():
    data = batches(5)
    runs = []
    for seed, global_seed in ((1, 0), (1, 99), (2, 0)):
        model = make_model()
        torch.manual_seed(global_seed)
        train(model, AdaHessian(model.parameters(), seed=seed), data)
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_needs_create_graph_and_keeps_grad_values():
    model = make_model()
    opt = AdaHessian(model.parameters())
    batch = batches(1)[0]

    def plain_closure():
        opt.zero_grad()
        loss = loss_fn(model, batch)
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="create_graph"):
        opt.step(plain_closure)
    assert AdaHessian.create_graph is True
    opt.zero_grad()
    loss_fn(model, batch).backward(create_graph=True)
    grads = [p.grad.detach().clone() for p in model.parameters()]
    opt.step()
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g) and p.grad.grad_fn is None


@pytest.mark.parametrize("kw", [dict(lr=-1.0), dict(hessian_power=0.0), dict(hessian_power=1.5),
                                dict(betas=(0.9, 1.0)), dict(seed=1.5)])
def test_bad_hyperparameters(kw):
    with pytest.raises(ValueError):
        AdaHessian(make_model().parameters(), **kw)
