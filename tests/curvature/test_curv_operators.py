"""HessianOperator, GGNOperator, FisherOperator against dense float64 oracles and closed forms."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from descentlab.curvature import FisherOperator, GGNOperator, HessianOperator, exact_hessian
from descentlab.losses import MSE, CrossEntropy, LabelSmoothing


def dense(op):
    eye = np.eye(op.shape[0])
    return torch.from_numpy(op.matmat(eye))


def test_hessian_matches_autograd_dense_and_chunking_is_exact(tiny):
    H = tiny.dense_hessian()
    full = HessianOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y, dtype=torch.float64)
    ragged = HessianOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y, chunk_size=7)  # 23 = 7+7+7+2
    cached_ragged = HessianOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y, chunk_size=5, cache_graph=True)
    assert not ragged.cache_graph and full.cache_graph
    for op in (full, ragged, cached_ragged):
        torch.testing.assert_close(dense(op), H, rtol=1e-10, atol=1e-12)
    assert full.n_matvecs == H.shape[0]
    # first-order quantities
    flat = tiny.flat().requires_grad_(True)
    loss = tiny.loss(flat)
    (g,) = torch.autograd.grad(loss, flat)
    torch.testing.assert_close(ragged.gradient(), g)
    torch.testing.assert_close(full.gradient(), g)
    assert ragged.loss() == pytest.approx(loss.item(), rel=1e-12)
    # exact_hessian (torch.func) against the autograd.functional oracle
    torch.testing.assert_close(exact_hessian(tiny.model, CrossEntropy(), tiny.x, tiny.y), H)


def test_float32_operator_close_to_float64(tiny):
    H = tiny.dense_hessian()
    op = HessianOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y, dtype=torch.float32)
    v = np.random.default_rng(0).standard_normal(op.shape[0])
    hv = op.matvec(v)
    assert hv.dtype == np.float32 and op.dtype == np.float32
    ref = H.numpy() @ v
    assert np.linalg.norm(hv - ref) / np.linalg.norm(ref) < 1e-5


def test_linear_regression_mse_closed_form():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(31, 5, generator=g, dtype=torch.float64)
    y = torch.randn(31, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(5, 1, bias=False).double()
    op = HessianOperator(model, MSE(), X, y, chunk_size=8)
    torch.testing.assert_close(dense(op), 2.0 / 31 * X.T @ X)
    # The loss is quadratic in the weights and the network linear: GGN == Hessian.
    torch.testing.assert_close(dense(GGNOperator(model, MSE(), X, y, chunk_size=8)), 2.0 / 31 * X.T @ X)


def test_softmax_cross_entropy_linear_model_closed_form():
    g = torch.Generator().manual_seed(2)
    N, d, C = 17, 3, 4
    X = torch.randn(N, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    model = nn.Linear(d, C, bias=False).double()
    with torch.no_grad():
        P = torch.softmax(X @ model.weight.T, dim=1)
    # H = (1/N) sum_i (diag p_i - p_i p_i^T) kron x_i x_i^T, weight flattened row-major (class, feature)
    H = sum(torch.kron(torch.diag(p) - torch.outer(p, p), torch.outer(x, x)) for p, x in zip(P, X)) / N
    for op_cls in (HessianOperator, GGNOperator, FisherOperator):
        torch.testing.assert_close(dense(op_cls(model, CrossEntropy(), X, y, chunk_size=5)), H)


@pytest.mark.parametrize("loss_name", ["ce", "mse"])
def test_ggn_matches_explicit_jacobian_products(tiny, loss_name):
    J = tiny.jacobian()  # (N*C, P)
    if loss_name == "ce":
        loss_fn, targets = CrossEntropy(), tiny.y
        ref_loss = lambda z: F.cross_entropy(z.view(-1, tiny.c), tiny.y)
    else:
        targets = torch.randn(len(tiny.x), tiny.c, dtype=torch.float64)
        loss_fn = MSE()
        ref_loss = lambda z: ((z.view(-1, tiny.c) - targets) ** 2).mean()
    with torch.no_grad():
        z = tiny.outputs(tiny.flat()).reshape(-1)
    H_out = torch.autograd.functional.hessian(ref_loss, z)  # (N*C, N*C), block diagonal
    G = J.T @ H_out @ J
    for chunk in (None, 6):
        op = GGNOperator(tiny.model, loss_fn, tiny.x, targets, chunk_size=chunk)
        torch.testing.assert_close(dense(op), G, rtol=1e-10, atol=1e-12)
    # The GGN is PSD for a convex loss; the Hessian of this tanh net is not.
    assert torch.linalg.eigvalsh(G).min() > -1e-10


def test_true_fisher_by_enumerating_labels(tiny):
    """F = (1/N) sum_i sum_y p(y|x_i) g_iy g_iy^T with g_iy = grad log p(y|x_i): every label enumerated."""
    flat = tiny.flat().requires_grad_(True)
    logp = torch.log_softmax(tiny.outputs(flat), dim=1)
    N, P = logp.shape[0], flat.numel()
    F_ref = torch.zeros(P, P, dtype=torch.float64)
    for i in range(N):
        for c in range(tiny.c):
            (gic,) = torch.autograd.grad(logp[i, c], flat, retain_graph=True)
            F_ref += logp[i, c].exp().detach() * torch.outer(gic, gic)
    F_ref /= N
    op = FisherOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y, chunk_size=10)
    torch.testing.assert_close(dense(op), F_ref, rtol=1e-10, atol=1e-12)
    # Gaussian likelihood with variance s: F = J^T J / (N s)
    J = tiny.jacobian()
    gauss = FisherOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y, likelihood="gaussian", variance=2.0)
    torch.testing.assert_close(dense(gauss), J.T @ J / (N * 2.0))
    with pytest.raises(ValueError, match="likelihood"):
        FisherOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y, likelihood="poisson")


def test_fisher_likelihood_follows_the_loss(tiny):
    """MSE -> Gaussian with variance C/2 (so F = GGN = 2/(N C) J^T J); cross-entropy -> categorical; others raise."""
    J = tiny.jacobian()
    N, C = len(tiny.x), tiny.c
    targets = torch.randn(N, C, dtype=torch.float64)
    for loss_fn in (MSE(), nn.MSELoss(), F.mse_loss):
        fisher = dense(FisherOperator(tiny.model, loss_fn, tiny.x, targets, chunk_size=6))
        torch.testing.assert_close(fisher, 2.0 / (N * C) * J.T @ J, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(fisher, dense(GGNOperator(tiny.model, loss_fn, tiny.x, targets)),
                                   rtol=1e-10, atol=1e-12)
    # class-index targets under MSE against the one-hot vector: the same Gaussian
    torch.testing.assert_close(dense(FisherOperator(tiny.model, MSE(), tiny.x, tiny.y)), 2.0 / (N * C) * J.T @ J)
    # C counts every output number of an example: (N, 2, 3) outputs have C = 6
    model = nn.Sequential(nn.Linear(tiny.d, 6), nn.Tanh(), nn.Linear(6, 6), nn.Unflatten(1, (2, 3))).double()
    t3 = torch.randn(N, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(dense(FisherOperator(model, MSE(), tiny.x, t3)),
                               dense(GGNOperator(model, MSE(), tiny.x, t3)), rtol=1e-10, atol=1e-12)
    # cross-entropy in its three spellings: the categorical Fisher = GGN
    G = dense(GGNOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y))
    for loss_fn in (CrossEntropy(), nn.CrossEntropyLoss(), F.cross_entropy):
        torch.testing.assert_close(dense(FisherOperator(tiny.model, loss_fn, tiny.x, tiny.y)), G,
                                   rtol=1e-10, atol=1e-12)
    # losses that are no likelihood's mean negative log-likelihood, or not with one variance: explicit only
    for loss_fn, y in ((LabelSmoothing(0.1), tiny.y), (nn.CrossEntropyLoss(label_smoothing=0.1), tiny.y),
                       (nn.MSELoss(reduction="sum"), targets), (MSE(k=2.0), tiny.y),
                       (lambda z, t: ((z - t) ** 4).mean(), targets)):
        with pytest.raises(ValueError, match="cannot tell which likelihood"):
            FisherOperator(tiny.model, loss_fn, tiny.x, y)
    with pytest.raises(ValueError, match="needs a variance"):
        FisherOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y, likelihood="gaussian")
    with pytest.raises(ValueError, match="gaussian likelihood only"):
        FisherOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y, variance=2.0)
    with pytest.raises(ValueError, match="positive"):
        FisherOperator(tiny.model, MSE(), tiny.x, targets, variance=0.0)


def test_model_left_unchanged_by_every_operator(state_tools):
    model_state, assert_unchanged = state_tools
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)).double()
    model.train()  # BatchNorm in training mode, no dropout: deterministic
    model[3].weight.requires_grad_(False)  # a frozen parameter stays frozen and out of the operator
    x, y = torch.randn(20, 4, dtype=torch.float64), torch.randint(0, 3, (20,))
    before = model_state(model)
    for cls in (HessianOperator, GGNOperator, FisherOperator):
        for bn in ("eval", "train"):
            op = cls(model, CrossEntropy(), x, y, chunk_size=8, batchnorm=bn)
            assert op.shape == (4 * 5 + 5 + 5 + 5 + 3,) * 2
            op.matvec(np.ones(op.shape[0]))
            if cls is HessianOperator:
                op.gradient(), op.loss()
            assert_unchanged(model, before)


def test_batchnorm_choice_is_explicit(state_tools):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        model[1].running_mean.fill_(0.3)
        model[1].running_var.fill_(2.0)
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 2, (16,))
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(flat, train):
        w1, b1, g, b, w2, b2 = torch.split(flat, [12, 4, 4, 4, 8, 2])
        h = x @ w1.view(4, 3).T + b1
        if train:
            mu, var = h.mean(0), h.var(0, unbiased=False)
        else:
            mu, var = model[1].running_mean, model[1].running_var
        h = (h - mu) / torch.sqrt(var + model[1].eps) * g + b
        return F.cross_entropy(torch.tanh(h) @ w2.view(2, 4).T + b2, y)

    for mode in ("eval", "train"):
        H = torch.autograd.functional.hessian(lambda f: loss_of(f, mode == "train"), flat0)
        op = HessianOperator(model, CrossEntropy(), x, y, batchnorm=mode)
        torch.testing.assert_close(dense(op), H)
        torch.testing.assert_close(exact_hessian(model, CrossEntropy(), x, y, batchnorm=mode), H)
    with pytest.raises(ValueError, match="batchnorm"):
        HessianOperator(model, CrossEntropy(), x, y, batchnorm="frozen")


def test_dropout_in_training_mode_is_refused():
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3)).double()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    model.train()
    for cls in (HessianOperator, GGNOperator, FisherOperator):
        with pytest.raises(ValueError, match="not deterministic"):
            cls(model, CrossEntropy(), x, y)
    assert model.training
    model.eval()
    HessianOperator(model, CrossEntropy(), x, y).matvec(np.ones(8 * 4 + 8 + 3 * 8 + 3))


def test_operator_is_a_snapshot(tiny):
    """Training the model further does not change an operator already built (graph reuse stays valid)."""
    op = HessianOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y)
    v = np.random.default_rng(3).standard_normal(op.shape[0])
    before = op.matvec(v)
    with torch.no_grad():
        for p in tiny.model.parameters():
            p.add_(1.0)
    np.testing.assert_array_equal(op.matvec(v), before)


def test_bad_arguments(tiny):
    with pytest.raises(ValueError, match="dtype"):
        HessianOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y, dtype=torch.float16)
    with pytest.raises(ValueError, match="chunk_size"):
        HessianOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y, chunk_size=0)
    with pytest.raises(ValueError, match="examples"):
        HessianOperator(tiny.model, CrossEntropy(), tiny.x, tiny.y[:-1])
