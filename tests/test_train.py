"""The training loop: exactness against a bare loop, determinism, divergence,
resume (simulated and with a real SIGKILL), artifacts."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from descentlab.data import DATASETS
from descentlab.models import build_model
from descentlab.train import train_run
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


@pytest.fixture(scope="module")
def data():
    return DATASETS.build(SPEC["dataset"])


def metrics(path):
    return pd.read_parquet(path / "metrics.parquet")


def weights(path):
    return torch.load(path / "final.pt", weights_only=True)


def test_matches_a_bare_pytorch_loop(data, tmp_path):
    """Same init, same batch order, same updates: identical weights, an
    independent check that the loop does exactly the optimizer's steps."""
    spec = dict(SPEC, schedule={"name": "constant"}, eval_every=0)
    train_run(spec, data, tmp_path)

    torch.manual_seed(0)
    model = build_model(spec["model"], data.input_shape, data.num_outputs)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    n, bs = data.size("train"), 32
    pos, perm = n, None
    for _ in range(60):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + bs]
        pos += bs
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(data.x["train"][idx]), data.y["train"][idx]).backward()
        opt.step()
    ours = weights(tmp_path)
    for name, value in model.state_dict().items():
        assert torch.equal(ours[name], value), name


def test_schedule_sets_the_learning_rate(data, tmp_path):
    spec = dict(SPEC, schedule={"name": "cosine", "warmup_steps": 10}, log_every=1, eval_every=0)
    train_run(spec, data, tmp_path)
    m = metrics(tmp_path)
    lr = m[m.metric == "lr"].set_index("step")["value"]
    # lr logged at step s is the one used for step s: warmup (s/10) then cosine to 0.
    assert lr[1] == pytest.approx(0.05 * 1 / 10) and lr[10] == pytest.approx(0.05)
    assert lr[35] == pytest.approx(0.05 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 24 / 50)).item()), rel=1e-6)


def test_deterministic_per_seed(data, tmp_path):
    train_run(SPEC, data, tmp_path / "a")
    train_run(SPEC, data, tmp_path / "b")
    train_run(dict(SPEC, seed=1), data, tmp_path / "c")
    pd.testing.assert_frame_equal(metrics(tmp_path / "a"), metrics(tmp_path / "b"))
    assert not metrics(tmp_path / "a").equals(metrics(tmp_path / "c"))


def test_artifacts_and_tidy_metrics(data, tmp_path):
    spec = dict(SPEC, checkpoints=[0, 20, 60], eval_splits=["train", "val", "test"])
    result = train_run(spec, data, tmp_path)
    assert result.status == "ok" and result.steps_completed == 60
    for path in output_files(tmp_path, spec):
        assert path.exists(), path
    m = metrics(tmp_path)
    assert list(m.columns) == ["step", "split", "metric", "value"]
    assert set(m.split) == {"train", "val", "test"}
    assert sorted(m[(m.split == "test") & (m.metric == "accuracy")].step) == [0, 20, 40, 60]
    assert sorted(m[(m.split == "train") & (m.metric == "loss")].step)[:3] == [5, 10, 15]  # running means
    assert sorted(m[(m.split == "train") & (m.metric == "full_loss")].step) == [0, 20, 40, 60]  # whole-set evals
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "ok" and status["steps_completed"] == 60
    final = weights(tmp_path)
    step60 = torch.load(checkpoint_path(tmp_path, 60), weights_only=True)
    assert all(torch.equal(final[k], step60[k]) for k in final)
    step0 = torch.load(checkpoint_path(tmp_path, 0), weights_only=True)
    torch.manual_seed(0)
    init = build_model(spec["model"], data.input_shape, data.num_outputs).state_dict()
    assert all(torch.equal(init[k], step0[k]) for k in init)


def test_divergence_is_recorded_not_raised(data, tmp_path):
    spec = dict(SPEC, optimizer={"name": "sgd", "lr": 1e6, "momentum": 0.9}, checkpoints=[60])
    result = train_run(spec, data, tmp_path)
    assert result.status == "diverged" and result.steps_completed < 60
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "diverged" and status["diverged_at"] == result.steps_completed
    m = metrics(tmp_path)
    assert m.step.max() == result.steps_completed and len(m) > 2  # metrics kept
    assert checkpoint_path(tmp_path, 60).exists()  # declared outputs exist


@pytest.mark.parametrize("stop_at", [20, 25])
def test_resume_gives_identical_results(data, tmp_path, stop_at):
    spec = dict(SPEC, optimizer={"name": "adam", "lr": 1e-2}, resume_every=5, checkpoints=[10, 40],
                schedule={"name": "cosine", "warmup_steps": 7}, log_every=3)
    train_run(spec, data, tmp_path / "whole")
    with pytest.raises(Interrupted):
        train_run(spec, data, tmp_path / "cut", stop_at=stop_at)
    assert not (tmp_path / "cut" / "status.json").exists()  # no partial artifact looks finished
    result = train_run(spec, data, tmp_path / "cut")
    assert stop_at <= result.resumed_from < 60 and result.resumed_from % 3 == 0  # a log step
    pd.testing.assert_frame_equal(metrics(tmp_path / "whole"), metrics(tmp_path / "cut"))
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finished_run_rewrites_outputs_without_training(data, tmp_path):
    train_run(SPEC, data, tmp_path)
    before = metrics(tmp_path)
    for path in output_files(tmp_path, SPEC):
        path.unlink()  # what the workflow does before re-running a job
    result = train_run(SPEC, data, tmp_path)
    assert result.resumed_from == 60 and result.train_seconds == 0.0
    pd.testing.assert_frame_equal(before, metrics(tmp_path))


def test_resume_state_of_another_spec_is_ignored(data, tmp_path):
    train_run(SPEC, data, tmp_path)
    other = dict(SPEC, steps=40)
    result = train_run(other, data, tmp_path)
    assert result.resumed_from == 0 and result.steps_completed == 40


def test_killed_process_resumes_where_it_stopped(tmp_path):
    """A real SIGKILL mid-run, then the same command again."""
    spec = dict(SPEC, steps=4000, resume_every=50, eval_every=500, log_every=50)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "descentlab.cli", "train", "--spec", str(spec_file), "--device", "cpu"]
    state = tmp_path / "cut" / ".resume" / "state.pt"
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "cut")], stdout=subprocess.PIPE)
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "status.json").exists(), "finished before it could be killed; raise steps"
    out = subprocess.run(cmd + ["--out", str(tmp_path / "cut")], capture_output=True, text=True, check=True)
    resumed_from = json.loads(out.stdout)["resumed_from"]
    assert 0 < resumed_from < 4000
    subprocess.run(cmd + ["--out", str(tmp_path / "whole")], capture_output=True, check=True)
    pd.testing.assert_frame_equal(metrics(tmp_path / "whole"), metrics(tmp_path / "cut"))


def test_resume_with_a_curvature_instrument_is_exact(data, tmp_path):
    """The instrument's warm-start vector travels with the resume point."""
    spec = dict(SPEC, steps=40, log_every=5, resume_every=10, eval_every=0, batch_size=10**6,
                instruments=[{"name": "top_eigenvalue", "every": 5, "n_examples": 100}])
    train_run(spec, data, tmp_path / "whole")
    with pytest.raises(Interrupted):
        train_run(spec, data, tmp_path / "cut", stop_at=20)
    train_run(spec, data, tmp_path / "cut")
    a, b = metrics(tmp_path / "whole"), metrics(tmp_path / "cut")
    assert (a.metric == "sharpness").sum() == 8  # steps 5, 10, ..., 40
    pd.testing.assert_frame_equal(a, b)
