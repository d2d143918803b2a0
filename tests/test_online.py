"""The AMSGrad counterexample: our scalar Adam equals torch's, and the
paper's conclusion holds."""

import numpy as np
import pytest
import torch

from descentlab.analyses import ANALYSES
from descentlab.analyses.online import adam_scalar, counterexample_gradients


@pytest.mark.parametrize("amsgrad", [False, True])
def test_scalar_adam_matches_torch_step_by_step(amsgrad):
    rng = np.random.default_rng(0)
    grads = rng.standard_normal(500) * np.where(np.arange(500) % 7 == 0, 30.0, 1.0)
    lrs = 0.1 / np.sqrt(np.arange(1, 501))
    ours = adam_scalar(grads, lrs, betas=(0.9, 0.99), eps=1e-8, amsgrad=amsgrad, bounds=(-1.0, 1.0))
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([x], betas=(0.9, 0.99), eps=1e-8, amsgrad=amsgrad, foreach=False)
    theirs = []
    for g, lr in zip(grads, lrs):
        opt.param_groups[0]["lr"] = float(lr)
        x.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        with torch.no_grad():
            x.clamp_(-1.0, 1.0)
        theirs.append(x.item())
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)


def test_gradients_of_the_counterexample():
    g = counterexample_gradients(303, 1010.0, 10.0, 101)
    assert g[0] == 1010.0 and g[101] == 1010.0 and g[1] == -10.0
    assert g[:101].sum() == pytest.approx(10.0)  # positive: the optimum is x = -1


def test_adam_drifts_to_the_worst_point_and_amsgrad_does_not():
    table = ANALYSES.get("adam_counterexample")([], steps=200_000, records=50)
    last = table.sort_values("step").groupby("method").last()
    assert last.loc["Adam", "x"] > 0.95  # near +1, the worst point
    assert last.loc["AMSGrad", "x"] < -0.95  # near -1, the optimum
    assert last.loc["AMSGrad", "average_regret"] < last.loc["Adam", "average_regret"] / 2
    amsgrad = table[table.method == "AMSGrad"].sort_values("step")
    assert amsgrad.average_regret.iloc[-1] < amsgrad.average_regret.iloc[len(amsgrad) // 2]


def test_regret_floor_is_the_average_regret_of_sitting_at_the_worst_point():
    from descentlab.analyses.online import regret_floor

    steps = 101 * 1000
    g = counterexample_gradients(steps, 1010.0, 10.0, 101)
    brute = float(np.sum(g * (1.0 - (-1.0)))) / steps  # x_t = +1 forever, x* = -1
    assert regret_floor(1010.0, 10.0, 101) == pytest.approx(brute, rel=1e-12)
    assert regret_floor(1010.0, 10.0, 101) == pytest.approx(20 / 101)
    table = ANALYSES.get("adam_counterexample")([], steps=200_000, records=50)
    assert np.allclose(table.regret_floor, 20 / 101, rtol=1e-12)
    last = table.sort_values("step").groupby("method").last()
    assert last.loc["Adam", "average_regret"] > last.loc["Adam", "regret_floor"]
