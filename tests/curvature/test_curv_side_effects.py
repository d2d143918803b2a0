"""Every analysis leaves the model as it found it: parameters, buffers, modes, requires_grad, no .grad."""

import torch
from torch import nn

from descentlab.curvature import (
    FisherOperator,
    GGNOperator,
    HessianOperator,
    TopEigenvalue,
    adaptive_sharpness,
    bottom_eigenvalues,
    empirical_ntk,
    exact_hessian,
    ggn_trace,
    hessian_sharpness,
    hessian_trace,
    hutchinson,
    hutchpp,
    per_example_gradients,
    power_iteration,
    spectral_density,
    top_eigenvalues,
)
from descentlab.landscape import interpolation_path, loss_line, loss_surface, random_direction
from descentlab.losses import CrossEntropy


def test_no_analysis_changes_the_model(state_tools):
    model_state, assert_unchanged = state_tools
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        model[1].running_mean.fill_(0.2)
    model.train()
    x, y = torch.randn(12, 3, dtype=torch.float64), torch.randint(0, 2, (12,))
    lf = CrossEntropy()
    other = {k: v + 0.1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    assert random_direction(model)["0.weight"].shape == (4, 3)
    before = model_state(model)
    op = HessianOperator(model, lf, x, y, chunk_size=5)
    analyses = [
        lambda: top_eigenvalues(op, k=2), lambda: top_eigenvalues(op, k=2, method="lanczos"),
        lambda: bottom_eigenvalues(op), lambda: power_iteration(op, tol=1e-2),
        lambda: hutchinson(op, 5), lambda: hutchpp(op, 9), lambda: spectral_density(op, n_iter=5, n_runs=2),
        lambda: op.gradient(), lambda: op.loss(),
        lambda: GGNOperator(model, lf, x, y, batchnorm="train").matvec(torch.ones(op.shape[0]).numpy()),
        lambda: FisherOperator(model, lf, x, y).matvec(torch.ones(op.shape[0]).numpy()),
        lambda: exact_hessian(model, lf, x, y, batchnorm="train"),
        lambda: hessian_sharpness(model, lf, x, y, batchnorm="train"),
        lambda: adaptive_sharpness(model, lf, x, y, n_steps=2, batchnorm="train"),
        lambda: ggn_trace(model, lf, x, y), lambda: per_example_gradients(model, lf, x, y),
        lambda: hessian_trace(model, lf, x, y, rtol=0.5, min_probes=2),
        lambda: empirical_ntk(model, x), lambda: TopEigenvalue(every=1)(0, model, lf, x, y),
        lambda: loss_line(model, lf, x, y, alphas=[0.5]),
        lambda: loss_surface(model, lf, x, y, alphas=[0.5], betas=[0.1]),
        lambda: interpolation_path(model, model, other, lf, x, y, n_points=3, bn_data=x),
    ]
    for run in analyses:
        run()
        assert_unchanged(model, before)
