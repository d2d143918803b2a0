"""Weight averaging during training (descentlab.train.averagers), checked
against independent answers: closed forms (EMA's geometric sum, LAWA's mean
of the last k, the scaling rule's rho^kappa), swa_utils driven by hand in a
bare loop, EDM2's published gamma values and numerical quadrature, and a
directly tracked EMA for the post-hoc reconstruction."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.integrate import quad
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn, get_swa_multi_avg_fn, update_bn

from descentlab.train.averagers import (
    EMA,
    LAWA,
    PosthocEMA,
    SwitchEMA,
    gamma_to_sigma_rel,
    p_dot_p,
    posthoc_coefficients,
    reconstruct_posthoc_ema,
    scaled_decay,
    sigma_rel_to_gamma,
)
from descentlab.checkpoints import DivergedCheckpoint, read_torch_file
from descentlab.data import DATASETS
from descentlab.models import build_model
from descentlab.train import train_job, train_run
from descentlab.train.batched import why_not_batched
from descentlab.train.loop import Interrupted, checkpoint_path, output_files

SPEC = {
    "dataset": {"name": "gaussian_mixture", "n_samples": 600, "dim": 8, "n_classes": 4},
    "model": {"name": "mlp", "width": 16, "depth": 2},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "batch_size": 32,
    "steps": 60,
    "log_every": 5,
    "eval_every": 20,
}
BN_MODEL = {"name": "cnn", "channels": 4, "depth": 2, "batchnorm": True}


@pytest.fixture(scope="module")
def data():
    return DATASETS.build(SPEC["dataset"])


def load(path):
    return torch.load(path, weights_only=True)


def metrics(path):
    return pd.read_parquet(path / "metrics.parquet")


def set_params(module, values):
    with torch.no_grad():
        for p, v in zip(module.parameters(), values):
            p.copy_(v)


def random_trajectory(module, n, seed=0):
    """n + 1 parameter lists (float64) for ``module``: theta_0 .. theta_n."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=g, dtype=torch.float64) for p in module.parameters()] for _ in range(n + 1)]


# -- closed forms ---------------------------------------------------------------------------


def test_ema_after_n_steps_is_its_geometric_sum():
    """theta_e(n) = rho^n theta_0 + (1 - rho) sum_{i=1..n} rho^(n-i) theta_i."""
    module = torch.nn.Linear(3, 2).double()
    rho, n = 0.9, 25
    traj = random_trajectory(module, n)
    ema = EMA({"name": "ema", "decay": rho, "scale_with_batch": None}, module, batch_size=1)
    for thetas in traj:
        set_params(module, thetas)
        ema.observe(0, module, False)
    for j, p in enumerate(ema.average.module.parameters()):
        expected = rho**n * traj[0][j] + (1 - rho) * sum(rho ** (n - i) * traj[i][j] for i in range(1, n + 1))
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-12)


def test_ema_batch_scaling_rule():
    """Busbridge et al.: batch kappa*B takes rho^kappa; one step there decays a
    constant target's gap as kappa steps at B do."""
    assert scaled_decay(0.99, {"reference_batch": 32}, 128) == pytest.approx(0.99**4, rel=1e-15)
    assert scaled_decay(0.99, {"reference_batch": 128}, 32) == pytest.approx(0.99**0.25, rel=1e-15)
    assert scaled_decay(0.99, None, 128) == 0.99
    module = torch.nn.Linear(2, 1, bias=False).double()
    small = EMA({"name": "a", "decay": 0.99, "scale_with_batch": {"reference_batch": 8}}, module, batch_size=8)
    large = EMA({"name": "b", "decay": 0.99, "scale_with_batch": {"reference_batch": 8}}, module, batch_size=32)
    set_params(module, [torch.zeros(1, 2, dtype=torch.float64)])
    small.observe(0, module, False), large.observe(0, module, False)
    set_params(module, [torch.ones(1, 2, dtype=torch.float64)])
    for _ in range(4):
        small.observe(0, module, False)
    large.observe(0, module, False)
    torch.testing.assert_close(small.average.module.weight, large.average.module.weight, rtol=1e-14, atol=0)


def test_lawa_is_the_mean_of_the_last_k():
    module = torch.nn.Linear(3, 2).double()
    traj = random_trajectory(module, 30, seed=1)
    lawa = LAWA({"name": "lawa", "k": 4, "every": 3}, module)
    for step, thetas in enumerate(traj):
        set_params(module, thetas)
        lawa.observe(step, module, False)
    taken = [traj[s] for s in (18, 21, 24, 27, 30)][-4:]  # every 3 steps, step 0 not taken
    for j, value in enumerate(lawa.final().values()):
        torch.testing.assert_close(value, sum(t[j] for t in taken) / 4, rtol=0, atol=1e-14)


def test_switch_ema_copies_the_ema_into_the_model_at_epoch_ends():
    module = torch.nn.Linear(3, 2).double()
    traj = random_trajectory(module, 3, seed=2)
    switch = SwitchEMA({"name": "s", "decay": 0.5, "scale_with_batch": None}, module, batch_size=1)
    set_params(module, traj[0])
    switch.observe(0, module, False)
    set_params(module, traj[1])
    switch.observe(1, module, False)  # not an epoch end: the model keeps its weights
    assert torch.equal(module.weight, traj[1][0])
    set_params(module, traj[2])
    switch.observe(2, module, True)
    expected = 0.25 * traj[0][0] + 0.25 * traj[1][0] + 0.5 * traj[2][0]
    torch.testing.assert_close(module.weight.detach(), expected, rtol=0, atol=1e-14)


def test_integer_buffers_are_carried_not_averaged():
    """num_batches_tracked of every averager is the model's count; AveragedModel's
    own buffer averaging (use_buffers=True with the EMA function) truncates it."""
    bn = torch.nn.BatchNorm1d(3)
    ema = EMA({"name": "e", "decay": 0.999, "scale_with_batch": None}, bn, batch_size=1)
    lawa = LAWA({"name": "l", "k": 3, "every": 1}, bn)
    posthoc = PosthocEMA({"name": "p", "sigma_rels": [0.05], "snapshot_every": 1}, bn)
    torch_ema = AveragedModel(bn, multi_avg_fn=get_ema_multi_avg_fn(0.999), use_buffers=True)
    for step in range(1, 11):
        bn(torch.randn(5, 3))
        for averager in (ema, lawa, posthoc):
            averager.observe(step, bn, False)
        torch_ema.update_parameters(bn)
    assert int(bn.num_batches_tracked) == 10
    for weights in (ema.final(), lawa.final(), posthoc.final()["snapshots"][-1]["weights"]):
        assert weights["num_batches_tracked"].dtype == torch.int64
        assert int(weights["num_batches_tracked"]) == 10
    # The measured difference: each update truncates n * 0.999 + (n + 1) * 0.001 back to n,
    # so swa_utils' count stays at its first value.
    assert int(torch_ema.module.num_batches_tracked) == 1


# -- post-hoc EMA -----------------------------------------------------------------------------


def test_sigma_rel_and_gamma_match_the_edm2_values():
    """EDM2 (Karras et al. 2024, Sec. 3.1): sigma_rel 0.05 <-> gamma 16.97, 0.10 <-> 6.94."""
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.005)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.005)
    for gamma in (0.5, 3.0, 16.97, 100.0):
        assert sigma_rel_to_gamma(gamma_to_sigma_rel(gamma)) == pytest.approx(gamma, rel=1e-9)
    with pytest.raises(ValueError, match="no power-function profile"):
        sigma_rel_to_gamma(0.5)


def test_profile_inner_products_match_quadrature():
    for ta, ga, tb, gb in [(100.0, 6.94, 60.0, 16.97), (30.0, 0.5, 80.0, 3.0)]:
        def p(tau, t, g):
            return (g + 1) * tau**g / t ** (g + 1) if tau <= t else 0.0
        numeric = quad(lambda tau: p(tau, ta, ga) * p(tau, tb, gb), 0, min(ta, tb), limit=200)[0]
        assert float(p_dot_p(ta, ga, tb, gb)) == pytest.approx(numeric, rel=1e-8)


def test_a_profile_reconstructs_itself_from_its_own_snapshot():
    x = posthoc_coefficients([50.0, 100.0, 50.0, 100.0], [16.97, 16.97, 6.94, 6.94], 100.0, 6.94)
    np.testing.assert_allclose(x, [0, 0, 0, 1], atol=1e-6)


def test_posthoc_ema_reconstructs_a_directly_tracked_ema():
    """Snapshots of sigma_rel 0.05 and 0.10 every 25 of 1000 steps rebuild the
    tracked EMA of sigma_rel 0.075 to 1e-4 of its distance to the last iterate
    (measured: 2.5e-5); the nearest tracked profile is 100x further off."""
    model = torch.nn.Linear(20, 10).double()
    two = PosthocEMA({"name": "p", "sigma_rels": [0.05, 0.10], "snapshot_every": 25}, model)
    third = PosthocEMA({"name": "q", "sigma_rels": [0.075], "snapshot_every": 25}, model)
    g = torch.Generator().manual_seed(1)
    for step in range(1001):
        if step:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1 + 0.01)
        two.observe(step, model, False)
        third.observe(step, model, False)
    record = two.final()
    rebuilt = reconstruct_posthoc_ema(record, 0.075)
    direct = third.final()["snapshots"][-1]["weights"]
    last, nearest = model.state_dict(), record["snapshots"][-1]["weights"]  # sigma_rel 0.10 at step 1000

    def dist(a, b):
        return math.sqrt(sum(float(((a[k] - b[k]) ** 2).sum()) for k in a))

    assert dist(rebuilt, direct) < 1e-4 * dist(direct, last)
    assert dist(nearest, direct) > 100 * dist(rebuilt, direct)
    # an earlier step uses only the snapshots up to it
    at_500 = reconstruct_posthoc_ema(record, 0.075, step=500)
    assert dist(at_500, direct) > 10 * dist(rebuilt, direct)


# -- in the training loop ---------------------------------------------------------------------


def bare_sgd(spec, data, after_step):
    """The run's SGD steps by hand (as tests/test_train.py's bare loop), calling
    ``after_step(step, model, optimizer)`` at step 0 and after every step."""
    torch.manual_seed(spec["seed"])
    model = build_model(spec["model"], data.input_shape, data.num_outputs)
    opt = torch.optim.SGD(model.parameters(), lr=spec["optimizer"]["lr"], momentum=spec["optimizer"]["momentum"])
    gen = torch.Generator().manual_seed(spec["seed"])
    n, bs = data.size("train"), spec["batch_size"]
    pos, perm = n, None
    after_step(0, model, opt)
    for step in range(1, spec["steps"] + 1):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + bs]
        pos += bs
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(data.x["train"][idx]), data.y["train"][idx]).backward()
        opt.step()
        after_step(step, model, opt)
    return model


@pytest.mark.parametrize("model", [SPEC["model"], BN_MODEL], ids=["mlp", "bn_cnn"])
def test_swa_equals_swa_utils_driven_by_hand(data, tmp_path, model):
    """AveragedModel (the SWA mean as a lerp) updated at start, start + every, ...;
    SWALR created at start and stepped after every later step; update_bn over the
    training data in minibatches. AveragedModel's CPU default (another formula
    for the same mean) agrees to rounding."""
    start, every = 24, 4
    spec = dict(SPEC, model=model, seed=0, eval_every=0,
                averaging=[{"kind": "swa", "start": start, "every": every, "lr": 0.01, "anneal_steps": 10, "anneal": "linear"}])
    train_run(spec, data, tmp_path)
    swa, held = {}, {}

    def after_step(step, model, opt):
        if step == 0:
            swa["model"] = AveragedModel(model, multi_avg_fn=get_swa_multi_avg_fn())
            swa["default"] = AveragedModel(model)
        if step >= start and (step - start) % every == 0:
            swa["model"].update_parameters(model)
            swa["default"].update_parameters(model)
        if step == start:
            held["sched"] = SWALR(opt, swa_lr=0.01, anneal_epochs=10, anneal_strategy="linear")
        elif step > start:
            held["sched"].step()

    model = bare_sgd(spec, data, after_step)
    update_bn(data.x["train"].split(spec["batch_size"]), swa["model"].module)
    update_bn(data.x["train"].split(spec["batch_size"]), swa["default"].module)
    for name, value in load(tmp_path / "final.pt").items():
        assert torch.equal(value, model.state_dict()[name]), name
    expected = swa["model"].module.state_dict()
    ours = load(tmp_path / "final.swa.pt")
    assert ours.keys() == expected.keys()
    for name, value in ours.items():
        assert torch.equal(value, expected[name]), name
        torch.testing.assert_close(value, swa["default"].module.state_dict()[name], rtol=0, atol=1e-6)
    lr = metrics(tmp_path).query("metric == 'lr'").set_index("step")["value"]
    assert lr[20] == 0.05 and lr[60] == pytest.approx(0.01, rel=1e-12)


def test_cyclic_swa_lr_and_its_average_of_cycle_ends(data, tmp_path):
    """Izmailov et al. (2018) eq. 2: alpha(i) = (1 - t(i)) alpha_1 + t(i) alpha_2,
    t(i) = (mod(i - 1, c) + 1) / c, i counted from the SWA start; the models at
    the cycles' ends (and the start) averaged with equal weights."""
    start, c = 20, 8
    ends = list(range(start, 61, c))
    spec = dict(SPEC, log_every=1, checkpoints=ends,
                averaging=[{"kind": "swa", "start": start, "every": c, "schedule": "cyclic", "lr": 0.005, "lr_max": 0.05}])
    train_run(spec, data, tmp_path)
    lr = metrics(tmp_path).query("metric == 'lr'").set_index("step")["value"]
    for step in range(start + 1, 61):
        i = step - start
        t = ((i - 1) % c + 1) / c
        assert lr[step] == pytest.approx((1 - t) * 0.05 + t * 0.005, rel=1e-12), step
    assert lr[start] == 0.05  # the run's own lr up to the start
    taken = [load(checkpoint_path(tmp_path, s)) for s in ends]
    for name, value in load(tmp_path / "final.swa.pt").items():
        torch.testing.assert_close(value, sum(w[name] for w in taken) / len(taken), rtol=0, atol=1e-6)


def test_lawa_and_ema_in_a_run_match_the_checkpoints(data, tmp_path):
    """LAWA's final weights are the mean of the run's last k checkpoints at its
    steps; the EMA's are the geometric sum over the run's weights at every step."""
    every, k = 6, 3
    spec = dict(SPEC, steps=30, checkpoints=list(range(0, 31)),
                averaging=[{"kind": "lawa", "k": k, "every": every}, {"kind": "ema", "decay": 0.8}])
    train_run(spec, data, tmp_path)
    w = [load(checkpoint_path(tmp_path, s)) for s in range(31)]
    lawa = load(tmp_path / "final.lawa.pt")
    for name, value in lawa.items():
        torch.testing.assert_close(value, sum(w[s][name] for s in (18, 24, 30)) / k, rtol=0, atol=1e-6)
    ema = load(tmp_path / "final.ema.pt")
    for name, value in ema.items():
        expected = 0.8**30 * w[0][name].double() + 0.2 * sum(0.8 ** (30 - i) * w[i][name].double() for i in range(1, 31))
        torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-5)


def test_switch_ema_switches_at_epoch_ends(data, tmp_path):
    """The sampler's epochs hold n // batch_size steps; at their ends the model holds the EMA."""
    n = data.size("train")
    per_epoch = n // 32
    spec = dict(SPEC, steps=2 * per_epoch, checkpoints=[per_epoch, 2 * per_epoch - 1],
                averaging=[{"kind": "switch_ema", "decay": 0.9}])
    train_run(spec, data, tmp_path)
    final, averaged = load(tmp_path / "final.pt"), load(tmp_path / "final.switch_ema.pt")
    assert all(torch.equal(final[k], averaged[k]) for k in final)  # the last step ends epoch 2
    plain = dict(spec, averaging=[{"kind": "ema", "decay": 0.9}])
    train_run(plain, data, tmp_path / "plain")
    # up to the first epoch's end the two runs are one; after it they part
    a, b = load(checkpoint_path(tmp_path, per_epoch)), load(checkpoint_path(tmp_path / "plain", per_epoch))
    assert not all(torch.equal(a[k], b[k]) for k in a)
    ema_at_end = load(tmp_path / "plain" / "final.ema.pt")
    assert not all(torch.equal(load(tmp_path / "plain" / "final.pt")[k], ema_at_end[k]) for k in ema_at_end)


def test_averaged_metrics_are_recorded_under_their_names(data, tmp_path):
    spec = dict(SPEC, eval_splits=["train", "val"],
                averaging=[{"kind": "ema", "decay": 0.9}, {"kind": "ema", "name": "ema_slow", "decay": 0.99},
                           {"kind": "swa", "start": 30}, {"kind": "lawa", "every": 10, "k": 2},
                           {"kind": "posthoc_ema", "snapshot_every": 20}])
    train_run(spec, data, tmp_path)
    m = metrics(tmp_path)
    names = set(m.metric)
    for label in ("ema", "ema_slow", "swa", "lawa", "posthoc_ema_0.05", "posthoc_ema_0.1"):
        assert {f"loss@{label}", f"accuracy@{label}", f"full_loss@{label}"} <= names, label
    steps = lambda label: sorted(m[(m.split == "val") & (m.metric == f"loss@{label}")].step)  # noqa: E731
    assert steps("ema") == [0, 20, 40, 60]
    assert steps("swa") == [40, 60]  # from its start on
    assert steps("lawa") == [20, 40, 60]  # once it took a model
    # the run's own numbers do not depend on (non-switching) averagers
    train_run(dict(SPEC, eval_splits=["train", "val"]), data, tmp_path / "plain")
    plain = metrics(tmp_path / "plain")
    pd.testing.assert_frame_equal(m[~m.metric.str.contains("@")].reset_index(drop=True), plain)
    for path in output_files(tmp_path, spec):
        assert path.exists(), path
    record = read_torch_file(tmp_path / "final.posthoc_ema.pt")
    assert [s["step"] for s in record["snapshots"]] == [20, 20, 40, 40, 60, 60]


AVERAGERS = {
    "swa_constant": {"kind": "swa", "start": 15, "lr": 0.02, "anneal_steps": 20},
    "swa_cyclic": {"kind": "swa", "start": 10, "every": 6, "schedule": "cyclic", "lr": 0.01, "lr_max": 0.05},
    "ema": {"kind": "ema", "decay": 0.9, "scale_with_batch": {"reference_batch": 8}},
    "switch_ema": {"kind": "switch_ema", "decay": 0.9},
    "lawa": {"kind": "lawa", "k": 3, "every": 4},
    "posthoc_ema": {"kind": "posthoc_ema", "snapshot_every": 7},
}


def flat_weights(path):
    """A final file's tensors by name; a post-hoc EMA record's as <snapshot>.<step>.<name>."""
    obj = read_torch_file(path)
    if "snapshots" not in obj:
        return obj
    return {f"{i}.{s['step']}.{k}": v for i, s in enumerate(obj["snapshots"]) for k, v in s["weights"].items()}


@pytest.mark.parametrize("kind", sorted(AVERAGERS))
def test_each_averager_resumes_bit_for_bit(data, tmp_path, kind):
    spec = dict(SPEC, model=BN_MODEL, resume_every=5, log_every=3, eval_every=10, averaging=[AVERAGERS[kind]])
    train_run(spec, data, tmp_path / "whole")
    with pytest.raises(Interrupted):
        train_run(spec, data, tmp_path / "cut", stop_at=25)
    result = train_run(spec, data, tmp_path / "cut")
    assert 25 <= result.resumed_from < 60
    pd.testing.assert_frame_equal(metrics(tmp_path / "whole"), metrics(tmp_path / "cut"))
    for file in ("final.pt", f"final.{AVERAGERS[kind]['kind']}.pt"):
        a, b = flat_weights(tmp_path / "whole" / file), flat_weights(tmp_path / "cut" / file)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), file


def test_finished_run_rewrites_the_averager_files(data, tmp_path):
    spec = dict(SPEC, averaging=[{"kind": "ema"}])
    train_run(spec, data, tmp_path)
    before = load(tmp_path / "final.ema.pt")
    for path in output_files(tmp_path, spec):
        path.unlink()
    result = train_run(spec, data, tmp_path)
    assert result.train_seconds == 0.0
    after = load(tmp_path / "final.ema.pt")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_an_averager_that_took_nothing_leaves_a_marker(data, tmp_path):
    spec = dict(SPEC, optimizer={"name": "sgd", "lr": 1e6}, averaging=[{"kind": "swa", "start": 50}])
    result = train_run(spec, data, tmp_path)
    assert result.status == "diverged" and result.steps_completed < 50
    with pytest.raises(DivergedCheckpoint, match="averager final.swa.pt took no weights"):
        read_torch_file(tmp_path / "final.swa.pt")


def test_batched_training_batches_averaging_runs(data, tmp_path):
    """train_job batches runs with averagers (each observes its own rows of the
    stack; tests/test_batched.py checks them in float64 to 1e-10); their files are
    train_run's to float32 rounding."""
    with_avg = dict(SPEC, averaging=[{"kind": "ema", "decay": 0.9}])
    others = [dict(SPEC, seed=1), dict(SPEC, seed=2)]
    assert why_not_batched(with_avg) is None
    train_job([with_avg, *others], [data] * 3, [tmp_path / f"j{k}" for k in range(3)])
    train_run(with_avg, data, tmp_path / "alone")
    a, b = metrics(tmp_path / "j0"), metrics(tmp_path / "alone")
    assert a[["step", "split", "metric"]].equals(b[["step", "split", "metric"]]) and "loss@ema" in set(a.metric)
    assert (a.value - b.value).abs().max() < 1e-4
    for file in ("final.pt", "final.ema.pt"):
        a, b = load(tmp_path / "j0" / file), load(tmp_path / "alone" / file)
        assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a), file


def test_a_killed_process_with_every_averager_resumes_bit_for_bit(tmp_path):
    """A real SIGKILL mid-run (as tests/test_train.py's), every kind at once."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    averaging = [dict(a, name=k) for k, a in AVERAGERS.items()]
    spec = dict(SPEC, model=BN_MODEL, steps=3000, resume_every=50, eval_every=500, log_every=50, averaging=averaging)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "descentlab.cli", "train", "--spec", str(spec_file), "--device", "cpu"]
    state = tmp_path / "cut" / ".resume" / "state.pt"
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "cut")], stdout=subprocess.PIPE)
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "status.json").exists(), "finished before it could be killed; raise steps"
    out = subprocess.run(cmd + ["--out", str(tmp_path / "cut")], capture_output=True, text=True, check=True)
    assert 0 < json.loads(out.stdout)["resumed_from"] < 3000
    subprocess.run(cmd + ["--out", str(tmp_path / "whole")], capture_output=True, check=True)
    pd.testing.assert_frame_equal(metrics(tmp_path / "whole"), metrics(tmp_path / "cut"))
    for name in ["final.pt"] + [f"final.{k}.pt" for k in AVERAGERS]:
        a, b = flat_weights(tmp_path / "whole" / name), flat_weights(tmp_path / "cut" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_a_loss_that_reads_the_model_is_bound_to_the_averaged_weights(data, tmp_path):
    """norm_loss's penalty is of the weights evaluated: loss@ema at the last step
    equals the loss of final.ema.pt's weights computed afresh."""
    from descentlab.losses import build_loss
    from descentlab.train.evaluation import evaluate

    loss = {"name": "norm_loss", "base": {"name": "cross_entropy"}, "coefficient": 0.5}
    spec = dict(SPEC, loss=loss, averaging=[{"kind": "ema", "decay": 0.8}])
    train_run(spec, data, tmp_path)
    model = build_model(spec["model"], data.input_shape, data.num_outputs)
    model.load_state_dict(load(tmp_path / "final.ema.pt"))
    expected = evaluate(model, build_loss(loss, model=model), data.x["val"], data.y["val"], data.task)["loss"]
    m = metrics(tmp_path)
    ours = m[(m.step == 60) & (m.split == "val") & (m.metric == "loss@ema")].value.item()
    assert ours == pytest.approx(expected, rel=1e-6)
