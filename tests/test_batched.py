"""Batched training (descentlab.train.batched) against training one run at a
time (train_run), the independent answer: in float64 the two agree to 1e-10
after 100 steps, for every optimizer and for a BatchNorm CNN; each run keeps
its own files, divergence and resume point."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from descentlab.data import DATASETS, SplitData, build_dataset
from descentlab.train import train_run
from descentlab.train.batched import batch_key, train_batched, train_job, why_not_batched
from descentlab.spec import validate
from descentlab.train.loop import Interrupted

MLP = {
    "dataset": {"name": "gaussian_mixture", "n_samples": 400, "dim": 8, "n_classes": 4},
    "model": {"name": "mlp", "width": 12, "depth": 2},
    "batch_size": 16,
    "steps": 100,
    "log_every": 10,
    "eval_every": 50,
    "eval_splits": ["train", "val"],
}
CNN = dict(MLP, dataset={"name": "digits"}, model={"name": "cnn", "channels": 4, "depth": 2, "batchnorm": True})

# Every optimizer of the registry with a working lr (the optimizer benchmark's
# settings); the lr is multiplied per run.
OPTIMIZERS = {
    "sgd": {"lr": 0.05, "momentum": 0.9},
    "adam": {"lr": 0.001},
    "adamw": {"lr": 0.001, "weight_decay": 0.01},
    "adamw_decoupled": {"lr": 0.001, "weight_decay": 0.01},
    "amsgrad": {"lr": 0.001},
    "nadam": {"lr": 0.002},
    "radam": {"lr": 0.001},
    "adagrad": {"lr": 0.01},
    "adafactor": {"lr": 0.01},
    "adagrad_norm": {"lr": 0.5},
    "adamp": {"lr": 0.001},
    "sgdp": {"lr": 0.05, "momentum": 0.9},
    "diffgrad": {"lr": 0.001},
    "grams": {"lr": 0.001},
    "exadam": {"lr": 0.001},
    "mars": {"lr": 0.003},
    "ademamix": {"lr": 0.001, "betas": [0.9, 0.999, 0.999], "alpha_warmup": 100, "beta3_warmup": 100},
    "lion": {"lr": 0.0003},
    "momo": {"lr": 1.0},
    "momo_adam": {"lr": 0.01},
    "nag_gs": {"lr": 0.05},
    "sfadamw": {"lr": 0.0025, "warmup_steps": 30},
    "sfsgd": {"lr": 1.0, "warmup_steps": 30},
    "shampoo": {"lr": 0.001},
    "muon": {"lr": 0.02},
    "adahessian": {"lr": 0.15},
}
SHARPNESS_AWARE = {"sam": {"lr": 0.05, "momentum": 0.9, "rho": 0.05}, "asam": {"lr": 0.05, "momentum": 0.9, "rho": 0.5, "eta": 0.01}}


def float64(data: SplitData) -> SplitData:
    return SplitData({k: v.double() for k, v in data.x.items()}, dict(data.y), data.task, data.num_outputs, data.input_shape, data.info)


@pytest.fixture(scope="module")
def mlp_data():
    return float64(DATASETS.build(MLP["dataset"]))


@pytest.fixture(scope="module")
def cnn_data():
    return float64(DATASETS.build(CNN["dataset"]))


@pytest.fixture
def f64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def sweep(base, name, hyper, wd_key=None):
    """Three runs: different seeds, learning rates, schedules (and weight decays)."""
    schedules = [{"name": "constant"}, {"name": "cosine", "warmup_steps": 10}, {"name": "linear"}]
    specs = []
    for k, (seed, mult) in enumerate([(0, 1.0), (1, 3.0), (2, 0.3)]):
        opt = dict(hyper, name=name, lr=hyper["lr"] * mult)
        if wd_key:
            opt[wd_key] = [0.0, 0.01, 0.1][k]
        specs.append(dict(base, seed=seed, optimizer=opt, schedule=schedules[k]))
    return specs


def final(path):
    return torch.load(path / "final.pt", weights_only=True)


def assert_same_runs(dirs_a, dirs_b, tol):
    for a, b in zip(dirs_a, dirs_b):
        wa, wb = final(a), final(b)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.allclose(wa[k].double(), wb[k].double(), rtol=tol, atol=tol, equal_nan=True), (a.name, k, (wa[k] - wb[k]).abs().max())
        ma, mb = pd.read_parquet(a / "metrics.parquet"), pd.read_parquet(b / "metrics.parquet")
        assert ma[["step", "split", "metric"]].equals(mb[["step", "split", "metric"]])
        close = (ma.value - mb.value).abs() <= tol * (1 + ma.value.abs())
        assert (close | (ma.value.isna() & mb.value.isna())).all(), a.name
        sa, sb = json.loads((a / "status.json").read_text()), json.loads((b / "status.json").read_text())
        for key in ("run_id", "status", "steps_completed", "diverged_at"):
            assert sa[key] == sb[key], key
        assert sa["files"].keys() == sb["files"].keys()


def check_equivalent(specs, data, tmp_path, tol=1e-10, **kwargs):
    alone = [tmp_path / f"alone{k}" for k in range(len(specs))]
    together = [tmp_path / f"batched{k}" for k in range(len(specs))]
    for spec, out in zip(specs, alone):
        train_run(spec, data, out)
    train_batched(specs, data, together, **kwargs)
    assert_same_runs(alone, together, tol)


# the optimizers whose sweep also varies weight decay per run (a per-run value of the stacked update)
WD_KEY = {name: "weight_decay" for name in (
    "sgd", "adam", "adamw", "adamw_decoupled", "lion", "radam", "nadam", "adagrad", "amsgrad",
    "diffgrad", "grams", "exadam", "ademamix", "shampoo", "muon", "momo", "momo_adam", "sfadamw", "sfsgd", "mars", "adafactor")}


def test_the_sweeps_cover_every_optimizer_of_the_registry():
    from descentlab.optim import OPTIMIZERS as REGISTRY

    assert set(REGISTRY.names()) == set(OPTIMIZERS) | set(SHARPNESS_AWARE)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_matches_one_by_one_in_float64(name, mlp_data, tmp_path, f64, monkeypatch):
    if name == "muon":
        # Muon orthogonalises in bfloat16 whatever the dtype: the shared instance's
        # update (p + lr * (shadow - p)) differs from p - lr * d by a rounding of p's
        # size, which bfloat16 Newton-Schulz grows to 1e-2 in 100 steps (1e-16 after 12)
        from descentlab.optim import MuonAdamW
        monkeypatch.setattr(MuonAdamW, "ns_dtype", torch.float64)
    check_equivalent(sweep(MLP, name, OPTIMIZERS[name], WD_KEY.get(name)), mlp_data, tmp_path)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_per_run_optimizer_path_matches_too(name, mlp_data, tmp_path, f64):
    """The exact path every optimizer can take, also for the ones with a stacked update."""
    check_equivalent(sweep(MLP, name, OPTIMIZERS[name], WD_KEY[name]), mlp_data, tmp_path, stacked_updates=False)


@pytest.mark.parametrize("name", ["sgd", "adamw", "adamp", "adafactor", "mars", "momo_adam"])
def test_batchnorm_cnn_matches_one_by_one_in_float64(name, cnn_data, tmp_path, f64):
    check_equivalent(sweep(CNN, name, OPTIMIZERS[name], WD_KEY.get(name)), cnn_data, tmp_path)


def test_float32_differs_far_less_than_seeds(tmp_path):
    data = DATASETS.build(MLP["dataset"])
    specs = [dict(MLP, seed=s, optimizer={"name": "adam", "lr": 0.003}) for s in range(3)]
    alone = [train_run(s, data, tmp_path / f"a{k}") for k, s in enumerate(specs)]
    train_batched(specs, data, [tmp_path / f"b{k}" for k in range(3)])
    val = lambda d: pd.read_parquet(d).query("split == 'val' and metric == 'loss'").value.iloc[-1]  # noqa: E731
    a = [val(r.out_dir / "metrics.parquet") for r in alone]
    b = [val(tmp_path / f"b{k}" / "metrics.parquet") for k in range(3)]
    spread = max(a) - min(a)
    assert spread > 1e-3
    assert max(abs(x - y) for x, y in zip(a, b)) < spread / 100


def test_a_diverging_run_is_masked_without_touching_the_others(mlp_data, tmp_path, f64):
    specs = [dict(MLP, seed=0, optimizer={"name": "sgd", "lr": 0.05}), dict(MLP, seed=1, optimizer={"name": "sgd", "lr": 1e200}),
             dict(MLP, seed=2, optimizer={"name": "adam", "lr": 0.01})]
    check_equivalent(specs, mlp_data, tmp_path)
    status = json.loads((tmp_path / "batched1" / "status.json").read_text())
    assert status["status"] == "diverged" and status["diverged_at"] < 100
    assert json.loads((tmp_path / "batched0" / "status.json").read_text())["status"] == "ok"


def test_runs_of_different_lengths_and_log_schedules(mlp_data, tmp_path, f64):
    specs = [dict(MLP, seed=0, optimizer={"name": "adam", "lr": 0.01}, steps=60, log_every=7, checkpoints=[0, 30, 60]),
             dict(MLP, seed=1, optimizer={"name": "adam", "lr": 0.01}, eval_every=25)]
    check_equivalent(specs, mlp_data, tmp_path)
    assert (tmp_path / "batched0" / "checkpoints").is_dir()


@pytest.mark.parametrize("options", [{"mars_type": "lion", "lr": 3e-4}, {"optimize_1d": True}, {"gamma": 0.0, "lr_1d": 0.01}])
def test_mars_variants_match_one_by_one_in_float64(options, mlp_data, tmp_path, f64):
    check_equivalent(sweep(MLP, "mars", dict(OPTIMIZERS["mars"], **options), "weight_decay"), mlp_data, tmp_path)


@pytest.mark.parametrize("name", ["momo", "momo_adam", "nag_gs", "adagrad_norm", "sfadamw", "sfsgd", "mars", "adafactor"])
def test_rowwise_runs_that_stop_early_leave_the_others_exact(name, mlp_data, tmp_path, f64):
    """A run that finishes early leaves its rows; the others step a subset of the rows."""
    specs = sweep(MLP, name, OPTIMIZERS[name], WD_KEY.get(name))
    specs[0] = dict(specs[0], steps=60, checkpoints=[30, 60])
    specs[1] = dict(specs[1], steps=80)
    check_equivalent(specs, mlp_data, tmp_path)


@pytest.mark.parametrize("name", ["adamw", "ademamix", "adamp", "shampoo", "adahessian", "muon", "momo_adam", "nag_gs", "adagrad_norm", "sfadamw", "mars", "adafactor"])
def test_a_killed_batch_resumes_every_run_exactly(name, cnn_data, mlp_data, tmp_path, f64):
    # muon on the MLP: the CNN has no hidden matrix, so no Muon group
    base, data = (MLP, mlp_data) if name == "muon" else (CNN, cnn_data)
    specs = [dict(s, resume_every=20, checkpoints=[50]) for s in sweep(base, name, OPTIMIZERS[name], WD_KEY.get(name))]
    dirs = [tmp_path / f"b{k}" for k in range(3)]
    train_batched(specs, data, [tmp_path / f"ref{k}" for k in range(3)])
    with pytest.raises(Interrupted):
        train_batched(specs, data, dirs, stop_at=40)
    results = train_batched(specs, data, dirs)
    assert [r.resumed_from for r in results] == [40, 40, 40]
    for k in range(3):
        ref, got = final(tmp_path / f"ref{k}"), final(dirs[k])
        assert all(torch.equal(ref[n], got[n]) for n in ref)
        a = pd.read_parquet(tmp_path / f"ref{k}" / "metrics.parquet")
        assert a.equals(pd.read_parquet(dirs[k] / "metrics.parquet"))


@pytest.mark.parametrize("name", ["adamw", "momo", "momo_adam", "nag_gs", "adagrad_norm", "sfadamw", "sfsgd", "mars", "adafactor"])
def test_batched_state_files_are_the_runs_own(name, mlp_data, tmp_path, f64):
    """state_<k>.pt of a batched run continues alone exactly as the run alone's does."""
    specs = [dict(s, checkpoints=[40]) for s in sweep(MLP, name, OPTIMIZERS[name], WD_KEY.get(name))]
    train_batched(specs, mlp_data, [tmp_path / f"b{k}" for k in range(3)])
    train_run(specs[1], mlp_data, tmp_path / "a1")
    a = torch.load(tmp_path / "a1" / "checkpoints" / "state_000040.pt", weights_only=False)
    b = torch.load(tmp_path / "b1" / "checkpoints" / "state_000040.pt", weights_only=False)
    groups_a, groups_b = a["optimizer"]["param_groups"], b["optimizer"]["param_groups"]
    assert [g.keys() for g in groups_a] == [g.keys() for g in groups_b]
    for ga, gb in zip(groups_a, groups_b):  # AdaGrad-Norm's b_sq, a sum of squared norms, to rounding
        assert {k: v for k, v in ga.items() if k != "b_sq"} == {k: v for k, v in gb.items() if k != "b_sq"}
        assert gb.get("b_sq", 0.0) == pytest.approx(ga.get("b_sq", 0.0), rel=1e-12)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for i, state in a["optimizer"]["state"].items():
        assert state.keys() == b["optimizer"]["state"][i].keys(), i
        for key, value in state.items():
            other = b["optimizer"]["state"][i][key]
            if isinstance(value, torch.Tensor):
                assert other.shape == value.shape and other.dtype == value.dtype, key
                assert torch.allclose(value, other, rtol=0, atol=1e-12), key
            else:  # NAG-GS's gamma, MoMo's step and loss average
                assert other == pytest.approx(value, rel=1e-12), key


def assert_job_is_one_by_one(specs, datas, tmp_path):
    """The runs a job wrote to j<k> against each trained alone (train_run) into a<k>, to 1e-10."""
    for k, spec in enumerate(specs):
        train_run(spec, datas[k], tmp_path / f"a{k}")
    n = len(specs)
    assert_same_runs([tmp_path / f"a{k}" for k in range(n)], [tmp_path / f"j{k}" for k in range(n)], 1e-10)


def test_train_job_batches_compatible_runs_and_trains_the_rest_alone(mlp_data, cnn_data, tmp_path, f64, caplog):
    mlp = sweep(MLP, "adam", OPTIMIZERS["adam"])
    norm_loss = {"name": "norm_loss", "base": {"name": "cross_entropy"}, "coefficient": 0.1}
    specs = mlp[:2] + [dict(MLP, seed=5, optimizer=OPTIMIZERS["adam"] | {"name": "adam"}, loss=norm_loss)] + sweep(CNN, "sgd", OPTIMIZERS["sgd"])[:2]
    datas = [mlp_data] * 3 + [cnn_data] * 2
    assert why_not_batched(specs[2]) is not None and why_not_batched(specs[0]) is None
    seen = []
    with caplog.at_level("INFO", logger="descentlab"):
        results = train_job(specs, datas, [tmp_path / f"j{k}" for k in range(5)], on_result=lambda k, r: seen.append(k))
    assert sorted(seen) == list(range(5)) and [r.status for r in results] == ["ok"] * 5
    assert "j2 trains alone: loss 'norm_loss' reads the model's parameters" in caplog.text  # the job log says why
    assert "2 runs train as one batch: j0, j1" in caplog.text and "2 runs train as one batch: j3, j4" in caplog.text
    assert_job_is_one_by_one(specs, datas, tmp_path)


def test_split_evenly_makes_the_fewest_even_consecutive_parts():
    from descentlab.train.batched import max_stack, split_evenly

    assert split_evenly(list(range(5)), None) == [list(range(5))]
    assert split_evenly(list(range(5)), 5) == [list(range(5))]
    assert split_evenly(list(range(59)), 32) == [list(range(30)), list(range(30, 59))]
    for n in range(1, 80):
        for most in (1, 3, 32):
            parts = split_evenly(list(range(n)), most)
            assert sum(parts, []) == list(range(n)) and len(parts) == -(-n // most)
            assert max(map(len, parts)) <= most and max(map(len, parts)) - min(map(len, parts)) <= 1
    assert max_stack("cpu") == 32 and max_stack("cuda") is None


def test_train_job_cuts_a_batch_larger_than_the_devices_stack(mlp_data, tmp_path, f64, caplog, monkeypatch):
    from descentlab.train import batched

    monkeypatch.setattr(batched, "CPU_MAX_STACK", 2)
    specs = sweep(MLP, "momo", OPTIMIZERS["momo"])[:1] + sweep(MLP, "adam", OPTIMIZERS["adam"])
    with caplog.at_level("INFO", logger="descentlab"):
        train_job(specs, [mlp_data] * 4, [tmp_path / f"j{k}" for k in range(4)])
    # the runs of one optimizer next to each other (adam before momo), in stacks of at most 2
    assert "2 runs train as one batch: j1, j2" in caplog.text and "2 runs train as one batch: j3, j0" in caplog.text
    assert_job_is_one_by_one(specs, [mlp_data] * 4, tmp_path)


def test_train_job_stacks_runs_of_one_length(mlp_data, tmp_path, f64, caplog):
    # a finished run's row would be computed until the stack's longest run ends
    short, long = sweep(MLP, "adam", OPTIMIZERS["adam"])[:2], sweep(MLP, "adam", OPTIMIZERS["adam"])[:2]
    long = [dict(spec, steps=2 * spec["steps"]) for spec in long]
    specs = [short[0], long[0], short[1], long[1]]
    assert batch_key(specs[0], 0, "cpu") != batch_key(specs[1], 0, "cpu")
    with caplog.at_level("INFO", logger="descentlab"):
        train_job(specs, [mlp_data] * 4, [tmp_path / f"j{k}" for k in range(4)])
    assert "2 runs train as one batch: j0, j2" in caplog.text and "2 runs train as one batch: j1, j3" in caplog.text
    assert_job_is_one_by_one(specs, [mlp_data] * 4, tmp_path)


def test_train_job_without_batching_is_train_run(mlp_data, tmp_path, f64):
    specs = sweep(MLP, "adam", OPTIMIZERS["adam"])[:2]
    train_job(specs, [mlp_data] * 2, [tmp_path / "j0", tmp_path / "j1"], batched=False)
    for k, spec in enumerate(specs):
        train_run(spec, mlp_data, tmp_path / f"a{k}")
        assert all(torch.equal(final(tmp_path / f"a{k}")[n], v) for n, v in final(tmp_path / f"j{k}").items())


@pytest.mark.parametrize("name", sorted(SHARPNESS_AWARE))
def test_sam_and_asam_batched_closure_matches_one_by_one(name, mlp_data, cnn_data, tmp_path, f64):
    """Two batched passes a step, each run perturbed by its own gradient's norm; the
    BatchNorm CNN sees both forward passes in its running statistics, as alone."""
    check_equivalent(sweep(MLP, name, SHARPNESS_AWARE[name]), mlp_data, tmp_path / "mlp")
    check_equivalent(sweep(CNN, name, SHARPNESS_AWARE[name])[:2], cnn_data, tmp_path / "cnn")


def test_sam_runs_batch_only_with_sam_runs(mlp_data, tmp_path):
    specs = [dict(MLP, optimizer=dict(SHARPNESS_AWARE["sam"], name="sam")), dict(MLP, optimizer={"name": "adam", "lr": 1e-3})]
    with pytest.raises(ValueError, match="SAM/ASAM runs batch only with SAM/ASAM runs"):
        train_batched(specs, mlp_data, [tmp_path / "a", tmp_path / "b"])


def test_adahessian_batched_closure_matches_one_by_one_through_batchnorm(cnn_data, tmp_path, f64):
    """The Hessian-vector products of the BatchNorm CNN (kernel averaging per run)
    from one double backward through the batched forward."""
    check_equivalent(sweep(CNN, "adahessian", OPTIMIZERS["adahessian"], "weight_decay"), cnn_data, tmp_path)


def test_adahessian_batched_closure_draws_each_runs_own_probes(mlp_data, tmp_path, f64):
    """Runs differing only in their probe seed end apart, each as it would alone; a
    diverging AdaHessian run leaves the batch without touching the others."""
    specs = [dict(MLP, seed=0, optimizer={"name": "adahessian", "lr": 0.15, "seed": s}) for s in (0, 1)]
    specs.append(dict(MLP, seed=2, optimizer={"name": "adahessian", "lr": 1e200}))
    check_equivalent(specs, mlp_data, tmp_path)
    a, b = final(tmp_path / "batched0"), final(tmp_path / "batched1")
    assert any((a[n] - b[n]).abs().max() > 1e-3 for n in a)
    assert json.loads((tmp_path / "batched2" / "status.json").read_text())["status"] == "diverged"
    assert json.loads((tmp_path / "batched0" / "status.json").read_text())["status"] == "ok"


def test_adahessian_runs_batch_only_with_adahessian_runs(mlp_data, tmp_path, f64):
    specs = [dict(MLP, seed=s, optimizer=dict(OPTIMIZERS[name], name=name)) for name in ("adahessian", "adam") for s in (0, 1)]
    assert why_not_batched(specs[0]) is None
    assert batch_key(specs[0], 0, "cpu") == batch_key(specs[1], 0, "cpu") != batch_key(specs[2], 0, "cpu")
    with pytest.raises(ValueError, match="AdaHessian runs batch only with AdaHessian runs"):
        train_batched(specs[1:3], mlp_data, [tmp_path / "a", tmp_path / "b"])
    train_job(specs, [mlp_data] * 4, [tmp_path / f"j{k}" for k in range(4)])
    assert_job_is_one_by_one(specs, [mlp_data] * 4, tmp_path)


def test_config_switch_is_documented_and_on_by_default():
    import jsonschema
    import yaml

    from descentlab.studies import SCHEMA_DIR

    schema = yaml.safe_load((SCHEMA_DIR / "config.schema.yaml").read_text())
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["batched_training"] is True and schema["properties"]["batched_training"]["default"] is True
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(dict(config, batched_training="yes"), schema)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "adamw_decoupled", "amsgrad", "nadam", "radam", "adagrad",
                                  "lion", "diffgrad", "grams", "exadam", "ademamix"])
def test_elementwise_optimizers_take_the_stacked_update(name, mlp_data, f64):
    """So the float64 tests above check the stacked update for these, not the per-run path."""
    from descentlab.train.stacked_update import stacked_update_key
    from descentlab.train.training import Training

    runs = [Training(validate(spec), mlp_data, torch.device("cpu")) for spec in sweep(MLP, name, OPTIMIZERS[name], WD_KEY[name])]
    keys = {stacked_update_key(run) for run in runs}  # the sweep's lrs and weight decays are per-run values
    assert len(keys) == 1 and None not in keys
    run = Training(validate(dict(MLP, optimizer={"name": "adamp", "lr": 1e-3})), mlp_data, torch.device("cpu"))
    assert stacked_update_key(run) is None


@pytest.mark.parametrize("name", ["adamp", "sgdp", "shampoo", "muon"])
def test_per_tensor_optimizers_share_one_instance(name, mlp_data, f64):
    """So the float64 tests above check the shared-instance update for these."""
    from descentlab.train.shared_update import shared_update_key
    from descentlab.train.stacked_update import stacked_update_key
    from descentlab.train.training import Training

    runs = [Training(validate(spec), mlp_data, torch.device("cpu")) for spec in sweep(MLP, name, OPTIMIZERS[name], WD_KEY.get(name))]
    keys = {shared_update_key(run) for run in runs}
    assert len(keys) == 1 and None not in keys and stacked_update_key(runs[0]) is None
    if name in ("adamp", "sgdp"):  # their weight decay is not a plain 1 - lr * wd: alone
        decayed = Training(validate(dict(MLP, optimizer=dict(OPTIMIZERS[name], name=name, weight_decay=0.1))), mlp_data, torch.device("cpu"))
        assert shared_update_key(decayed) is None


@pytest.mark.parametrize("name", ["momo", "momo_adam", "nag_gs", "adagrad_norm", "sfadamw", "sfsgd", "mars", "adafactor"])
def test_optimizers_with_per_run_reductions_step_their_rows_together(name, mlp_data, f64):
    """So the float64 tests above check the rowwise update for these."""
    from descentlab.train.batched import _update_groups
    from descentlab.train.rowwise_update import ROWWISE, rowwise_update_key
    from descentlab.train.stack import ModelStack
    from descentlab.train.training import Training

    runs = [Training(validate(spec), mlp_data, torch.device("cpu")) for spec in sweep(MLP, name, OPTIMIZERS[name], WD_KEY.get(name))]
    keys = {rowwise_update_key(run) for run in runs}  # the sweep's lrs and weight decays are per-run values
    assert len(keys) == 1 and None not in keys
    updates = _update_groups(runs, ModelStack(runs, None), stacked_updates=True)
    assert [type(u) for u in updates] == [ROWWISE[type(runs[0].optimizer)]]
    maximizing = Training(validate(dict(MLP, optimizer={"name": "adagrad_norm", "lr": 0.5, "maximize": True})), mlp_data, torch.device("cpu"))
    assert rowwise_update_key(maximizing) is None


def test_children_of_a_parent_match_one_by_one(mlp_data, tmp_path, f64):
    """Runs started from another run's checkpoint (init), each restore mode, at their own start steps."""
    from descentlab.spec import run_id

    parent = dict(MLP, seed=0, optimizer={"name": "adam", "lr": 0.003}, checkpoints=[40], steps=60)
    runs = tmp_path / "runs"
    train_run(parent, mlp_data, runs / run_id(parent))
    children = [
        dict(MLP, seed=1, optimizer={"name": "adam", "lr": 0.001}, init={"run": run_id(parent), "step": 40, "restore": "weights"}),
        dict(MLP, seed=2, optimizer={"name": "adam", "lr": 0.01}, init={"run": run_id(parent), "step": 40, "restore": "optimizer"}),
        dict(MLP, seed=0, optimizer={"name": "adam", "lr": 0.003}, init={"run": run_id(parent), "step": 40, "restore": "all"}),
        dict(MLP, seed=3, optimizer={"name": "adam", "lr": 0.003}, init={"run": run_id(parent), "step": 40, "restore": "all"}),
    ]
    for k, spec in enumerate(children):
        train_run(spec, mlp_data, runs / f"alone{k}")
    results = train_batched(children, mlp_data, [runs / f"batched{k}" for k in range(4)])
    assert [r.resumed_from for r in results] == [0, 40, 40, 40]
    assert_same_runs([runs / f"alone{k}" for k in range(4)], [runs / f"batched{k}" for k in range(4)], 1e-10)


def test_mixed_losses_instruments_and_label_noise_match_one_by_one(tmp_path, f64):
    """Different losses per run (each run's loss on its slice of the batched outputs), the
    grad_norm instrument (reads each run's gradient rows) and a label-noise dataset."""
    dataset = dict(MLP["dataset"], label_noise=0.2)
    data = float64(build_dataset(dataset))
    base = dict(MLP, dataset=dataset, instruments=[{"name": "grad_norm", "every": 5}])
    specs = [dict(base, seed=0, optimizer={"name": "sgd", "lr": 0.05}, loss={"name": "label_smoothing", "smoothing": 0.1}),
             dict(base, seed=1, optimizer={"name": "adam", "lr": 0.003}),
             dict(base, seed=2, optimizer={"name": "adamp", "lr": 0.003}, loss={"name": "mse"})]
    check_equivalent(specs, data, tmp_path)
    m = pd.read_parquet(tmp_path / "batched1" / "metrics.parquet")
    assert (m.metric == "grad_norm").sum() == 20


def test_curvature_instrument_matches_one_by_one(mlp_data, tmp_path, f64):
    """top_eigenvalue differentiates each run's own model (its rows) and must leave
    the gradient rows in place for the step's update."""
    base = dict(MLP, steps=40, instruments=[{"name": "top_eigenvalue", "every": 10, "n_examples": 64}])
    specs = [dict(base, seed=s, optimizer={"name": n, "lr": lr}) for s, (n, lr) in enumerate([("sgd", 0.05), ("adam", 0.003), ("adamp", 0.003)])]
    check_equivalent(specs, mlp_data, tmp_path, tol=1e-8)
    m = pd.read_parquet(tmp_path / "batched0" / "metrics.parquet")
    assert (m.metric == "sharpness").sum() == 4


@pytest.mark.parametrize("batched", [True, False])
def test_the_training_job_script(batched, tmp_path):
    """scripts/train.py as Snakemake runs it (a stand-in ``snakemake`` object): the
    switch decides, every run is written, the manifest lists them, the log says which."""
    import runpy
    from types import SimpleNamespace

    from descentlab.runs import Run
    from descentlab.spec import run_id

    data = DATASETS.build(MLP["dataset"])
    data.save(tmp_path / "data.pt")
    specs = [dict(MLP, steps=20, seed=s, optimizer={"name": "adam", "lr": 0.003 * (s + 1)}) for s in range(3)]
    runs = [Run(run_id(s), validate(s), dir=tmp_path / "runs" / run_id(s), data=tmp_path / "data.pt").to_dict() for s in specs]
    smk = SimpleNamespace(
        log=[str(tmp_path / "train.log")], output=[str(tmp_path / "manifest.json")], threads=1,
        params=SimpleNamespace(runs=runs, device="cpu"), wildcards=SimpleNamespace(group="g0"),
        config={"batched_training": batched},
    )
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "train.py"), init_globals={"snakemake": smk})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [r["run_id"] for r in manifest["runs"]] == [run_id(s) for s in specs]
    assert all((tmp_path / "runs" / run_id(s) / "status.json").is_file() for s in specs)
    assert f"batched training {'on' if batched else 'off'}" in (tmp_path / "train.log").read_text()


# -- the direct batched forward (no vmap) and the batched evaluation ---------------------------

def direct_models():
    from torch import nn

    from descentlab.models import build_model

    return {
        "mlp": lambda: build_model({"name": "mlp", "width": 7, "depth": 2, "activation": "gelu"}, (10,), 3),
        "mlp_no_bias": lambda: build_model({"name": "mlp", "width": 5, "depth": 1, "bias": False}, (10,), 3),
        "cnn2d_bn": lambda: build_model({"name": "cnn", "channels": 4, "depth": 2, "batchnorm": True}, (1, 6, 6), 3),
        "cnn1d_bn": lambda: build_model({"name": "cnn", "channels": 3, "depth": 2, "batchnorm": True, "activation": "tanh"}, (10,), 3),
        "mixed": lambda: nn.Sequential(
            nn.Unflatten(1, (2, 5)), nn.Conv1d(2, 4, 3, stride=2, padding=1, groups=2), nn.BatchNorm1d(4, momentum=0.3),
            nn.SiLU(), nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Unflatten(1, (1, 2, 3)),
            nn.Conv2d(1, 2, 2, padding=1, dilation=1), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8, 3)),
    }


@pytest.mark.parametrize("name", sorted(direct_models()))
@pytest.mark.parametrize("batched_x", [True, False])
def test_direct_forward_matches_each_runs_module_in_float64(name, batched_x, f64):
    """Outputs, gradients, BatchNorm running statistics (train mode) and eval-mode
    outputs of R runs at once, against each run's own module."""
    from descentlab.train.direct_forward import DirectForward, unsupported_reason

    R, N = 3, 5
    models = []
    for r in range(R):
        torch.manual_seed(r)
        model = direct_models()[name]()
        with torch.no_grad():  # running statistics that differ per run
            for n, b in model.named_buffers():
                if b.is_floating_point():
                    b.add_(torch.rand_like(b))
        models.append(model)
    assert unsupported_reason(models[0]) is None
    direct = DirectForward(models[0])
    torch.manual_seed(10)
    x = torch.randn(R, N, 10 if name != "cnn2d_bn" else 36) if batched_x else torch.randn(N, 10 if name != "cnn2d_bn" else 36)
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).requires_grad_(True) for n, _ in models[0].named_parameters()}
    buffers = {n: torch.stack([dict(m.named_buffers())[n] for m in models]).clone() for n, _ in models[0].named_buffers()}
    out = direct(params, buffers, x, batched_x, training=True)
    (out ** 2).sum().backward()
    for r, model in enumerate(models):
        own = model(x[r] if batched_x else x)
        (own ** 2).sum().backward()
        assert torch.allclose(out[r], own, rtol=1e-12, atol=1e-12)
        for n, p in model.named_parameters():
            assert torch.allclose(params[n].grad[r], p.grad, rtol=1e-10, atol=1e-12), n
        for n, b in model.named_buffers():
            assert torch.allclose(buffers[n][r], b.to(buffers[n].dtype), rtol=1e-12, atol=1e-12), n
        model.eval()
        with torch.no_grad():
            evaluated = direct({n: v.detach() for n, v in params.items()}, buffers, x, batched_x, training=False)
            assert torch.allclose(evaluated[r], model(x[r] if batched_x else x), rtol=1e-12, atol=1e-12)


def test_models_without_a_direct_form_take_vmap_and_say_why():
    from torch import nn

    from descentlab.train.direct_forward import DirectForward, unsupported_reason

    cases = {
        "not an nn.Sequential": nn.Linear(3, 2),
        "in place": nn.Sequential(nn.Linear(3, 2), nn.ReLU(inplace=True)),
        "momentum None": nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2, momentum=None)),
        "MaxPool1d has no direct batched form": nn.Sequential(nn.Unflatten(1, (1, 3)), nn.MaxPool1d(2)),
        "padding_mode 'circular'": nn.Sequential(nn.Unflatten(1, (1, 3)), nn.Conv1d(1, 1, 3, padding=1, padding_mode="circular")),
        "Flatten over dims 2..-1": nn.Sequential(nn.Flatten(2)),
    }
    for words, model in cases.items():
        assert words in unsupported_reason(model)
        with pytest.raises(ValueError, match="DirectForward"):
            DirectForward(model)


@pytest.mark.parametrize("name", ["adamw", "adahessian"])
def test_the_vmap_path_still_matches_one_by_one(name, cnn_data, tmp_path, f64, monkeypatch):
    """Models DirectForward cannot take train through vmap: the BatchNorm CNN forced there."""
    import descentlab.train.stack as stack_module

    monkeypatch.setattr(stack_module, "unsupported_reason", lambda model: "forced for the test")
    seen = []
    original = stack_module.ModelStack.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(self.direct)

    monkeypatch.setattr(stack_module.ModelStack, "__init__", spy)
    check_equivalent(sweep(CNN, name, OPTIMIZERS[name], "weight_decay")[:2], cnn_data, tmp_path)
    assert seen == [None]


def test_batched_losses_are_each_runs_own_loss(f64):
    """The one-call cross-entropy of all runs, and the vmapped other losses, against
    each run's loss module; the loss's own input checks still apply."""
    from descentlab.losses import build_loss
    from descentlab.train.stack import ModelStack
    from descentlab.train.training import Training

    data = float64(DATASETS.build(MLP["dataset"]))
    for loss in ({"name": "cross_entropy"}, {"name": "label_smoothing", "smoothing": 0.2}):
        runs = [Training(validate(dict(MLP, seed=s, loss=loss, optimizer={"name": "sgd", "lr": 0.1})), data, torch.device("cpu")) for s in range(3)]
        stack = ModelStack(runs, runs[0].loss_fn)
        xb, yb = data.x["train"][:12].reshape(3, 4, -1), data.y["train"][:12].reshape(3, 4)
        losses = stack.losses(stack.outputs(xb, batched_x=True), yb, batched_y=True)
        for r, run in enumerate(runs):
            assert torch.allclose(losses[r], run.loss_fn(run.model(xb[r]), yb[r]), rtol=1e-12, atol=0)
        with pytest.raises(TypeError, match="integer class indices"):
            stack.losses(stack.outputs(xb, batched_x=True), yb.double(), batched_y=True)
    assert type(build_loss({"name": "cross_entropy"})).__name__ == "CrossEntropy"


def test_an_evaluation_batched_evaluation_did_not_prepare_is_the_runs_own(mlp_data, f64):
    """A run asked to evaluate at a step prepare() did not cover evaluates alone, same rows."""
    from descentlab.train.batched_eval import BatchedEvaluation
    from descentlab.train.stack import ModelStack
    from descentlab.train.training import Training

    def runs():
        return [Training(validate(dict(MLP, seed=s, optimizer={"name": "sgd", "lr": 0.1})), mlp_data, torch.device("cpu")) for s in range(2)]

    alone, batched = runs(), runs()
    for run in alone:
        run.evaluate()
    evaluation = BatchedEvaluation(ModelStack(batched, batched[0].loss_fn), batched)
    evaluation.attach()
    batched[0].evaluate()  # nothing prepared: alone
    evaluation.prepare([1])
    batched[1].evaluate()  # prepared, batched
    evaluation.detach()
    assert "evaluate" not in batched[0].__dict__
    for a, b in zip(alone, batched):
        assert [r[:3] for r in a.rows] == [r[:3] for r in b.rows]
        assert all(abs(x[3] - y[3]) <= 1e-12 for x, y in zip(a.rows, b.rows))


AVERAGING = {
    "swa": [{"kind": "swa", "start": 40, "lr": 0.02, "anneal_steps": 20}],
    "swa_cyclic-lawa": [{"kind": "swa", "start": 30, "every": 6, "schedule": "cyclic", "lr": 0.01, "lr_max": 0.05},
                        {"kind": "lawa", "k": 3, "every": 4}],
    "ema-switch_ema-posthoc": [{"kind": "ema", "decay": 0.9}, {"kind": "switch_ema", "name": "switch", "decay": 0.8},
                               {"kind": "posthoc_ema", "snapshot_every": 7}],
}


@pytest.mark.parametrize("kinds", sorted(AVERAGING))
def test_runs_with_weight_averagers_match_one_by_one_in_float64(kinds, cnn_data, tmp_path, f64):
    """Averagers observe each run's own model (its rows of the stack), through BatchNorm
    (SWA recomputes the statistics of its average), and are evaluated as alone."""
    specs = [dict(s, averaging=AVERAGING[kinds]) for s in sweep(CNN, "sgd", OPTIMIZERS["sgd"], "weight_decay")]
    assert why_not_batched(validate(specs[0])) is None
    check_equivalent(specs, cnn_data, tmp_path)
    metrics = pd.read_parquet(tmp_path / "batched0" / "metrics.parquet")
    assert metrics.metric.str.contains("@").any()  # the averagers' evaluations are there


def test_a_killed_batch_with_averagers_resumes_every_run_exactly(mlp_data, tmp_path, f64):
    specs = [dict(s, resume_every=20, averaging=AVERAGING["ema-switch_ema-posthoc"]) for s in sweep(MLP, "adam", OPTIMIZERS["adam"])]
    dirs = [tmp_path / f"b{k}" for k in range(3)]
    train_batched(specs, mlp_data, [tmp_path / f"ref{k}" for k in range(3)])
    with pytest.raises(Interrupted):
        train_batched(specs, mlp_data, dirs, stop_at=40)
    train_batched(specs, mlp_data, dirs)
    assert_same_runs([tmp_path / f"ref{k}" for k in range(3)], dirs, 0.0)


def test_batched_evaluation_in_cache_sized_chunks_matches_each_runs_own(cnn_data, f64, monkeypatch):
    import descentlab.train.batched_eval as batched_eval
    from descentlab.train.stack import ModelStack
    from descentlab.train.training import Training

    specs = sweep(dict(CNN, eval_splits=["train", "val"]), "sgd", {"lr": 0.05})
    runs = [Training(validate(spec), cnn_data, torch.device("cpu")) for spec in specs]
    for run in runs:  # a few steps, so the BatchNorm running statistics are not their initial ones
        for _ in range(3):
            run.take_step()
    evaluation = batched_eval.BatchedEvaluation(ModelStack(runs, runs[0].loss_fn), runs)
    x = cnn_data.x["val"]
    per_run = 4 * 8 * 8  # the CNN's widest layer output on one 8x8 digit: 4 channels
    assert evaluation.chunk_size(x, 3) == batched_eval.CPU_CHUNK_ELEMENTS // (3 * per_run)
    monkeypatch.setattr(batched_eval, "CPU_CHUNK_ELEMENTS", 3 * per_run * 40)  # chunks of 40 examples: several per split
    assert evaluation.chunk_size(x, 3) == 40 and x.shape[0] > 3 * 40
    evaluation.prepare([0, 1, 2])
    evaluation.attach()
    for run in runs:
        run.evaluate()  # what prepare computed
    evaluation.detach()
    for run in runs:
        batched_rows, run.rows = run.rows, []
        run.evaluate()  # the run's own evaluate(), evaluate()'s 4,096-example chunks
        assert [row[:3] for row in batched_rows] == [row[:3] for row in run.rows]
        assert [row[3] for row in batched_rows] == pytest.approx([row[3] for row in run.rows], abs=1e-12, rel=1e-12)
