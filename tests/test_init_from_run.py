"""Runs that grow from other runs (spec key ``init``) and run references."""

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from descentlab.checkpoints import (
    CorruptArtifact,
    DivergedCheckpoint,
    IncompatibleCheckpoint,
    load_state,
    load_weights,
    state_path,
    weights_path,
)
from descentlab.data import DATASETS
from descentlab.models import build_model
from descentlab.optim import OPTIMIZERS, build_optimizer
from descentlab.schedules import refined_from_norms, wsd
from descentlab.spec import SpecError, run_id, spec_hash, validate
from descentlab.train import train_run, train_runs
from descentlab.train.loop import Interrupted
from descentlab.train.from_run import GROUP_STATE_KEYS

DATASET = {"name": "gaussian_mixture", "n_samples": 600, "dim": 8, "n_classes": 4}
PARENT = {
    "dataset": DATASET,
    "model": {"name": "mlp", "width": 16, "depth": 2},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "batch_size": 32,
    "steps": 200,
    "log_every": 10,
    "eval_every": 50,
    "eval_splits": ["train", "val"],
    "checkpoints": [100],
}


@pytest.fixture(scope="module")
def data():
    return DATASETS.build(DATASET)


def metrics(path):
    return pd.read_parquet(path / "metrics.parquet")


def final(path):
    return load_weights(path / "final.pt")


def same_weights(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def train(spec, data, runs, **kwargs):
    """Train into <runs>/<run id>, as the workflow lays runs out; return the directory."""
    out = runs / run_id(spec)
    assert train_run(spec, data, out, **kwargs).run_id == out.name
    return out


def child_of(parent, **init):
    return {"run": run_id(parent), **init}


@pytest.mark.parametrize("change", [
    {},  # SGD with momentum
    {"optimizer": {"name": "adam", "lr": 1e-2}},
    {"optimizer": {"name": "sfadamw", "lr": 1e-2}},
    {"model": {"name": "cnn", "channels": 4, "batchnorm": True}, "optimizer": {"name": "sfsgd", "lr": 0.1}},
])
def test_restore_all_continues_the_parent_exactly(data, tmp_path, change):
    parent = {**PARENT, **change, "resume_every": 30}
    pdir = train(parent, data, tmp_path)
    child = dict(parent, init=child_of(parent, step=100, restore="all"))
    cdir = train(child, data, tmp_path)
    assert same_weights(final(cdir), final(pdir))
    p, c = metrics(pdir), metrics(cdir)
    assert c.step.min() == 100 and set(c[c.step == 100].metric) == {"full_loss", "full_accuracy", "loss", "accuracy"}
    assert set(c[c.step == 100].split) == {"train", "val"}  # its own start evaluation only
    pd.testing.assert_frame_equal(p[p.step > 100].reset_index(drop=True), c[c.step > 100].reset_index(drop=True))


def test_restore_all_from_a_checkpoint_off_the_log_grid(data, tmp_path):
    """The open loss window travels with the state: still exact."""
    parent = dict(PARENT, steps=60, checkpoints=[25])
    pdir = train(parent, data, tmp_path)
    cdir = train(dict(parent, init=child_of(parent, step=25, restore="all")), data, tmp_path)
    assert same_weights(final(cdir), final(pdir))
    p, c = metrics(pdir), metrics(cdir)
    pd.testing.assert_frame_equal(p[p.step > 25].reset_index(drop=True), c[c.step > 25].reset_index(drop=True))


def test_forks_with_new_seeds_start_equal_then_differ(data, tmp_path):
    pdir = train(PARENT, data, tmp_path)
    children = [dict(PARENT, seed=s, checkpoints=[100], init=child_of(PARENT, step=100, restore="optimizer")) for s in (1, 2)]
    dirs = [train(c, data, tmp_path) for c in children]
    parent_state = load_state(state_path(pdir, 100))
    for d in dirs:
        state = load_state(state_path(d, 100))
        assert same_weights(state["model"], parent_state["model"])  # equal at the fork
        assert state["step"] == 100
    assert not same_weights(final(dirs[0]), final(dirs[1]))  # then differ
    assert not same_weights(final(dirs[0]), final(pdir))
    assert metrics(dirs[0]).step.min() == 100


def test_optimizer_fork_with_the_parents_seed_differs_only_through_data_order(data, tmp_path):
    minibatch = dict(PARENT, steps=150)
    pdir = train(minibatch, data, tmp_path)
    cdir = train(dict(minibatch, init=child_of(minibatch, step=100, restore="optimizer")), data, tmp_path)
    assert not same_weights(final(cdir), final(pdir))  # new data order from step 100
    full_batch = dict(PARENT, steps=150, batch_size=10**6)  # no data order: exactly the parent
    pdir = train(full_batch, data, tmp_path)
    cdir = train(dict(full_batch, init=child_of(full_batch, step=100, restore="optimizer")), data, tmp_path)
    assert same_weights(final(cdir), final(pdir))


def test_optimizer_fork_applies_the_childs_hyperparameters(data, tmp_path):
    """Against a bare loop: the parent's weights and momentum buffers, torch SGD
    at the child's lr and momentum, full batch from step 100 to 140."""
    parent = dict(PARENT, batch_size=10**6)
    pdir = train(parent, data, tmp_path)
    child = dict(parent, steps=140, optimizer={"name": "sgd", "lr": 0.02, "momentum": 0.5},
                 init=child_of(parent, step=100, restore="optimizer"))
    cdir = train(child, data, tmp_path)
    state = load_state(state_path(pdir, 100))
    model = build_model(parent["model"], data.input_shape, data.num_outputs)
    model.load_state_dict(state["model"])
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.5)
    opt.load_state_dict(state["optimizer"])
    opt.param_groups[0].update(lr=0.02, momentum=0.5)
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(data.x["train"]), data.y["train"]).backward()
        opt.step()
    assert same_weights(final(cdir), model.state_dict())
    lr = metrics(cdir).query("metric == 'lr'")
    assert (lr.value == 0.02).all() and lr.step.min() == 110


def test_group_state_keys_cover_every_optimizers_running_group_values():
    """Group values that change while stepping (lr aside) must be in GROUP_STATE_KEYS,
    or a fork would overwrite the parent's running state with a fresh one."""
    for name in OPTIMIZERS.names():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
        opt = build_optimizer(model.parameters(), {"name": name})
        before = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in opt.param_groups]
        x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward(create_graph=bool(getattr(opt, "create_graph", False)))
            return loss

        for _ in range(3):
            opt.step(closure)
        for method in ("eval", "train"):
            if callable(getattr(opt, method, None)):
                getattr(opt, method)()
        changed = {k for g, b in zip(opt.param_groups, before) for k in g
                   if k != "params" and (k not in b or repr(g[k]) != repr(b[k]))}
        assert changed <= GROUP_STATE_KEYS, (name, changed - GROUP_STATE_KEYS)


def test_fine_tune_children_with_a_new_head_on_another_dataset(data, tmp_path):
    pdir = train(PARENT, data, tmp_path)
    other = {"name": "gaussian_mixture", "n_samples": 300, "dim": 8, "n_classes": 3, "seed": 5}
    other_data = DATASETS.build(other)
    parent_final = final(pdir)
    finals = []
    for lr in (0.01, 0.03, 0.1):
        child = dict(PARENT, dataset=other, steps=30, seed=7, checkpoints=[0], optimizer={"name": "adam", "lr": lr},
                     init=child_of(PARENT, step=200, restore="weights", exclude=["5."]))
        cdir = train(child, other_data, tmp_path)
        start = load_weights(weights_path(cdir, 0))
        torch.manual_seed(7)
        fresh = build_model(PARENT["model"], other_data.input_shape, 3).state_dict()
        for name, value in start.items():
            assert torch.equal(value, fresh[name] if name.startswith("5.") else parent_final[name]), name
        assert metrics(cdir).step.min() == 0
        finals.append(final(cdir))
    assert not same_weights(finals[0], finals[1]) and not same_weights(finals[1], finals[2])
    no_exclude = dict(PARENT, dataset=other, steps=30, checkpoints=[], init=child_of(PARENT, step=200, restore="weights"))
    with pytest.raises(IncompatibleCheckpoint, match=r"final\.pt: tensor '5.weight' has shape \(4, 16\), the model's has shape \(3, 16\)"):
        train(no_exclude, other_data, tmp_path)


def test_restore_weights_from_a_step_file_starts_a_fresh_run(data, tmp_path):
    pdir = train(PARENT, data, tmp_path)
    child = dict(PARENT, seed=3, steps=20, checkpoints=[0], init=child_of(PARENT, step=100, restore="weights"))
    cdir = train(child, data, tmp_path)
    assert same_weights(load_weights(weights_path(cdir, 0)), load_weights(weights_path(pdir, 100)))
    lr = metrics(cdir).query("metric == 'lr'")
    assert lr.step.tolist() == [10, 20]


def test_cooldown_branches_from_each_checkpoint_continue_the_schedule(data, tmp_path):
    """A constant-lr parent; WSD cooldowns from each checkpoint. With restore all,
    each branch is exactly the run trained with that WSD schedule from the start."""
    parent = dict(PARENT, steps=120, checkpoints=[40, 80, 120], schedule={"name": "constant", "warmup_steps": 10})
    pdir = train(parent, data, tmp_path)
    for k in (40, 80, 120):
        cooldown = {"name": "wsd", "warmup_steps": 10, "cooldown_steps": 20}
        branch = dict(parent, steps=k + 20, checkpoints=[], schedule=cooldown)
        cdir = train(dict(branch, init=child_of(parent, step=k, restore="all")), data, tmp_path)
        whole = train(branch, data, tmp_path)
        assert same_weights(final(cdir), final(whole))
        c, w = metrics(cdir), metrics(whole)
        pd.testing.assert_frame_equal(c[c.step > k].reset_index(drop=True), w[w.step > k].reset_index(drop=True))
        # with restore optimizer (new data order) the schedule still continues at k
        forked = train(dict(branch, seed=9, init=child_of(parent, step=k, restore="optimizer")), data, tmp_path)
        lr = metrics(forked).query("metric == 'lr'").set_index("step").value
        multiplier = wsd(k + 20, warmup_steps=10, cooldown_steps=20)
        assert lr.index.tolist() == [k + 10, k + 20]
        assert all(lr[s] == pytest.approx(0.05 * multiplier(s - 1)) for s in lr.index)
    assert (pdir / "checkpoints" / "state_000120.pt").exists()


def test_refined_schedule_reads_its_source_run(data, tmp_path):
    source = dict(PARENT, steps=60, checkpoints=[], instruments=[{"name": "grad_norm"}])
    sdir = train(source, data, tmp_path)
    child = dict(PARENT, steps=50, checkpoints=[], log_every=1, schedule={"name": "refined", "grad_norms": {"run": run_id(source)}})
    validate(child)  # parses without the source run: the schedule is built by the training job
    cdir = train(child, data, tmp_path)
    norms = metrics(sdir).query("metric == 'grad_norm'").sort_values("step")
    expected = refined_from_norms(norms.value.to_numpy(), 50, steps=norms.step.to_numpy(dtype=np.float64))
    lr = metrics(cdir).query("metric == 'lr'").sort_values("step")
    np.testing.assert_allclose(lr.value.to_numpy(), 0.05 * expected, rtol=1e-12)
    missing = dict(child, schedule={"name": "refined", "grad_norms": {"run": "no-such-run"}})
    with pytest.raises(FileNotFoundError, match="no-such-run/metrics.parquet"):
        train(missing, data, tmp_path)


def test_a_parent_that_diverged_before_the_step_gives_a_diverged_child(data, tmp_path):
    parent = dict(PARENT, optimizer={"name": "sgd", "lr": 1e6}, log_every=1, checkpoints=[0, 100])
    pdir = train(parent, data, tmp_path)
    j = json.loads((pdir / "status.json").read_text())["diverged_at"]
    assert j < 100
    for restore in ("weights", "optimizer"):
        child = dict(parent, checkpoints=[100, 200], init=child_of(parent, step=100, restore=restore))
        result = train_run(child, data, tmp_path / run_id(child))
        status = json.loads((tmp_path / run_id(child) / "status.json").read_text())
        assert result.status == status["status"] == "diverged"
        assert status["reason"] == f"parent {run_id(parent)} diverged at step {j}, before step 100"
        assert metrics(tmp_path / run_id(child)).empty
        with pytest.raises(DivergedCheckpoint, match="did not train"):
            load_weights(tmp_path / run_id(child) / "final.pt")
        with pytest.raises(DivergedCheckpoint, match="no weights at step 200"):
            load_state(state_path(tmp_path / run_id(child), 200))


def test_missing_and_unreadable_parent_files_are_named(data, tmp_path):
    pdir = train(PARENT, data, tmp_path)
    not_saved = dict(PARENT, steps=250, checkpoints=[], init=child_of(PARENT, step=150, restore="optimizer"))
    with pytest.raises(CorruptArtifact, match=r"state_000150\.pt: missing"):
        train(not_saved, data, tmp_path)
    (pdir / "checkpoints" / "state_000100.pt").write_bytes(b"\x00" * 10)
    torn = dict(PARENT, steps=250, init=child_of(PARENT, step=100, restore="all"))
    with pytest.raises(CorruptArtifact, match=r"state_000100\.pt: cannot be read"):
        train(torn, data, tmp_path)
    nowhere = dict(PARENT, init={"run": "no-such-run", "step": 1, "restore": "weights"})
    with pytest.raises(FileNotFoundError, match="no-such-run does not exist"):
        train(nowhere, data, tmp_path)


def test_restore_optimizer_needs_the_parents_optimizer(data, tmp_path):
    train(PARENT, data, tmp_path)
    child = dict(PARENT, steps=250, optimizer={"name": "adam"}, init=child_of(PARENT, step=100, restore="optimizer"))
    with pytest.raises(IncompatibleCheckpoint, match="optimizer state of 'sgd', the run uses 'adam'"):
        train(child, data, tmp_path)


@pytest.mark.parametrize("init, steps, checkpoints, message", [
    ({"run": "p", "step": "final", "restore": "weights"}, 10, [], "init.step must be a non-negative integer"),
    ({"run": "p", "step": 5, "restore": "everything"}, 10, [], "init.restore must be one of weights, optimizer, all"),
    ({"run": "p", "step": 5}, 10, [], r"missing keys \['restore'\]"),
    ({"run": "p", "step": 5, "restore": "weights", "seed": 1}, 10, [], r"unknown keys \['seed'\]"),
    ({"run": "p", "step": 5, "restore": "optimizer", "exclude": ["5."]}, 10, [], "exclude needs restore: weights"),
    ({"run": "p", "step": 10, "restore": "all"}, 10, [], "steps .the last step. must be > 10"),
    ({"run": "p", "step": 5, "restore": "all"}, 10, [2, 7], r"checkpoints \[2\] come before"),
    ({"run": "", "step": 5, "restore": "weights"}, 10, [], "init.run must be a run id"),
    ("p", 10, [], "init must be null or"),
])
def test_init_is_validated(init, steps, checkpoints, message):
    with pytest.raises(SpecError, match=message):
        validate(dict(PARENT, steps=steps, checkpoints=checkpoints, init=init))


def test_init_exclude_defaults_to_empty_and_run_references_are_checked():
    a = dict(PARENT, init={"run": "p", "step": 5, "restore": "weights"})
    b = dict(PARENT, init={"run": "p", "step": 5, "restore": "weights", "exclude": []})
    assert spec_hash(a) == spec_hash(b)
    assert validate(a)["init"]["exclude"] == []
    with pytest.raises(SpecError, match="a run reference is"):
        validate(dict(PARENT, schedule={"name": "refined", "grad_norms": {"run": "x", "metric": "y"}}))


def test_a_child_killed_mid_run_resumes_exactly(data, tmp_path):
    """The resume point of a child carries its own state; the parent is not read again."""
    pdir = train(PARENT, data, tmp_path)
    child = dict(PARENT, seed=4, steps=180, resume_every=20, checkpoints=[100, 180],
                 init=child_of(PARENT, step=100, restore="optimizer"))
    whole = train(child, data, tmp_path / "whole", runs_dir=tmp_path)
    cut = tmp_path / "cut" / run_id(child)
    with pytest.raises(Interrupted):
        train_run(child, data, cut, runs_dir=tmp_path, stop_at=130)
    (pdir / "checkpoints" / "state_000100.pt").unlink()  # a resumed child no longer needs it
    result = train_run(child, data, cut, runs_dir=tmp_path)
    assert 130 <= result.resumed_from < 180
    pd.testing.assert_frame_equal(metrics(whole), metrics(cut))
    assert same_weights(final(whole), final(cut))
    assert same_weights(load_state(state_path(whole, 100))["model"], load_state(state_path(cut, 100))["model"])


def test_train_runs_trains_a_parent_then_its_child(data, tmp_path):
    parent = dict(PARENT, steps=60, checkpoints=[30])
    child = dict(parent, init=child_of(parent, step=30, restore="all"))
    results = train_runs([parent, child], data, [tmp_path / "runs" / run_id(s) for s in (parent, child)], runs_dir=tmp_path / "runs")
    assert [r.resumed_from for r in results] == [0, 30]
    assert same_weights(final(results[0].out_dir), final(results[1].out_dir))
