"""AdamWDecoupled: the paper's AdamW (decay scaled by the schedule multiplier,
not by the lr), against a float64 hand computation, torch's AdamW with
weight_decay / lr, and through descentlab's training loop."""

import math

import pytest
import torch

from descentlab.data import DATASETS
from descentlab.models import build_model
from descentlab.optim import OPTIMIZERS, AdamWDecoupled
from descentlab.schedules import build_schedule
from descentlab.train import train_run


def multipliers(steps: int) -> list[float]:
    """A warm-up then cosine schedule multiplier, eta_1..eta_steps (not constant)."""
    return [min(1.0, (t + 1) / 4) * 0.5 * (1 + math.cos(math.pi * t / steps)) for t in range(steps)]


def quadratic_grad(theta: list[float], t: int) -> list[float]:
    """Gradient of 1/2 sum c_i (x_i - b_i)^2 plus a step-dependent term, as floats."""
    c, b = [1.0, 10.0, 0.1], [0.5, -2.0, 3.0]
    return [ci * (x - bi) + 0.01 * math.sin(t + i) for i, (ci, x, bi) in enumerate(zip(c, theta, b))]


def test_matches_the_papers_algorithm_2_by_hand_in_float64():
    alpha, wd, (beta1, beta2), eps, steps = 0.05, 0.02, (0.9, 0.999), 1e-8, 12
    etas = multipliers(steps)
    theta0 = [1.0, -0.5, 2.0]
    # Loshchilov & Hutter, Algorithm 2: theta_t = theta_{t-1} - eta_t (alpha m_hat / (sqrt v_hat + eps) + wd theta_{t-1})
    theta, m, v = list(theta0), [0.0] * 3, [0.0] * 3
    for t in range(1, steps + 1):
        g = quadratic_grad(theta, t)
        m = [beta1 * mi + (1 - beta1) * gi for mi, gi in zip(m, g)]
        v = [beta2 * vi + (1 - beta2) * gi * gi for vi, gi in zip(v, g)]
        m_hat = [mi / (1 - beta1**t) for mi in m]
        v_hat = [vi / (1 - beta2**t) for vi in v]
        eta = etas[t - 1]
        theta = [x - eta * (alpha * mh / (math.sqrt(vh) + eps) + wd * x) for x, mh, vh in zip(theta, m_hat, v_hat)]

    for foreach in (False, True):
        p = torch.nn.Parameter(torch.tensor(theta0, dtype=torch.float64))
        opt = AdamWDecoupled([p], lr=alpha, betas=(beta1, beta2), eps=eps, weight_decay=wd, foreach=foreach)
        for t in range(1, steps + 1):
            opt.param_groups[0]["lr"] = alpha * etas[t - 1]  # as descentlab's training loop sets it
            p.grad = torch.tensor(quadratic_grad(p.detach().tolist(), t), dtype=torch.float64)
            opt.step()
        # torch's Adam divides by sqrt(v)/sqrt(bc2) + eps, the paper by sqrt(v_hat) + eps: the same
        torch.testing.assert_close(p.detach(), torch.tensor(theta, dtype=torch.float64), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_equals_torch_adamw_with_the_decay_divided_by_the_lr_under_a_schedule(amsgrad):
    alpha, wd, steps = 3e-2, 0.1, 30
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2)).double()
    twin = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2)).double()
    twin.load_state_dict(net.state_dict())
    x, y = torch.randn(20, 5, dtype=torch.float64), torch.randn(20, 2, dtype=torch.float64)
    ours = AdamWDecoupled(net.parameters(), lr=alpha, weight_decay=wd, amsgrad=amsgrad)
    theirs = torch.optim.AdamW(twin.parameters(), lr=alpha, weight_decay=wd / alpha, amsgrad=amsgrad)
    etas = multipliers(steps)
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, lambda k: etas[min(k, steps - 1)]) for o in (ours, theirs)]
    for _ in range(steps):
        for model, opt in ((net, ours), (twin, theirs)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        for s in schedules:
            s.step()
    for a, b in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert ours.param_groups[0]["weight_decay"] == wd  # restored after each step


@pytest.mark.parametrize("lr", [1e-3, 1e-1])
def test_with_zero_gradients_the_decay_follows_the_schedule_and_not_the_lr(lr):
    # Zero gradients leave Adam's step 0, so p_T = p_0 prod_t (1 - eta_t wd) whatever the lr;
    # torch.optim.AdamW would give p_0 prod_t (1 - lr eta_t wd) instead.
    wd, steps = 0.05, 10
    etas = multipliers(steps)
    p = torch.nn.Parameter(torch.full((3,), 2.0, dtype=torch.float64))
    opt = OPTIMIZERS.build({"name": "adamw_decoupled", "lr": lr, "weight_decay": wd}, [p])
    for eta in etas:
        opt.param_groups[0]["lr"] = lr * eta
        p.grad = torch.zeros_like(p)
        opt.step()
    expected = 2.0 * math.prod(1 - eta * wd for eta in etas)
    torch.testing.assert_close(p.detach(), torch.full((3,), expected, dtype=torch.float64), rtol=1e-14, atol=0)


def test_through_the_training_loop_equals_torch_adamw_with_a_lambda_lr():
    """descentlab's loop sets group["lr"] = base * multiplier: the decay must follow that multiplier."""
    spec = {
        "dataset": {"name": "gaussian_mixture", "n_samples": 600, "dim": 8, "n_classes": 4},
        "model": {"name": "mlp", "width": 16, "depth": 2},
        "optimizer": {"name": "adamw_decoupled", "lr": 0.01, "weight_decay": 0.05},
        "schedule": {"name": "cosine", "warmup_steps": 5},
        "batch_size": 32, "steps": 40, "log_every": 5, "eval_every": 0,
    }
    data = DATASETS.build(spec["dataset"])
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        train_run(spec, data, Path(tmp))
        ours = torch.load(Path(tmp) / "final.pt", weights_only=True)

    torch.manual_seed(0)
    model = build_model(spec["model"], data.input_shape, data.num_outputs)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.05 / 0.01)
    multiplier = build_schedule(spec["schedule"], spec["steps"])
    gen = torch.Generator().manual_seed(0)
    n, bs = data.size("train"), 32
    pos, perm = n, None
    for step in range(spec["steps"]):
        opt.param_groups[0]["lr"] = 0.01 * multiplier(step)
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + bs]
        pos += bs
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(data.x["train"][idx]), data.y["train"][idx]).backward()
        opt.step()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ours[name], value, rtol=1e-5, atol=1e-7)


def test_bad_hyperparameters_are_named():
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="weight_decay"):
        AdamWDecoupled([p], weight_decay=-1.0)
    with pytest.raises(ValueError, match="needs lr > 0"):
        AdamWDecoupled([p], lr=0.0, weight_decay=0.1)
