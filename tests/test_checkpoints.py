"""Checkpoint files: clear errors for unreadable ones, markers for steps a diverged
run never reached, byte sizes in status.json, a small finished .resume/."""

import json
import logging

import pytest
import torch

from descentlab.runs import Run
from descentlab.checkpoints import (
    CorruptArtifact,
    DivergedCheckpoint,
    IncompatibleCheckpoint,
    load_into_model,
    load_state,
    load_weights,
    state_path,
    weights_path,
)
from descentlab.data import DATASETS
from descentlab.spec import canonical
from descentlab.spec import run_id as run_dir_id
from descentlab.train import train_run
from descentlab.train.loop import STATE_FILE, output_files

SPEC = {
    "dataset": {"name": "gaussian_mixture", "n_samples": 600, "dim": 8, "n_classes": 4},
    "model": {"name": "mlp", "width": 16, "depth": 2},
    "optimizer": {"name": "adam", "lr": 1e-2},
    "batch_size": 32,
    "steps": 40,
    "log_every": 5,
    "eval_every": 20,
    "checkpoints": [0, 20, 40],
}


@pytest.fixture(scope="module")
def data():
    return DATASETS.build(SPEC["dataset"])


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    train_run(SPEC, data, out)
    return out


def test_state_and_weights_files_are_written_and_listed(run_dir):
    listed = {p.relative_to(run_dir).as_posix() for p in output_files(run_dir, SPEC)}
    assert {"checkpoints/state_000020.pt", "checkpoints/step_000020.pt"} <= listed
    for path in output_files(run_dir, SPEC):
        assert path.exists(), path
    state = load_state(state_path(run_dir, 20))
    assert state["step"] == 20 and state["spec"]["optimizer"]["name"] == "adam" and state["run_id"] == run_dir_id(SPEC)
    assert set(state["optimizer"]["state"]) == {0, 1, 2, 3, 4, 5}  # Adam moments of every tensor
    weights = load_weights(weights_path(run_dir, 20))
    assert all(torch.equal(weights[k], state["model"][k]) for k in weights)  # Adam: eval == train weights


def test_missing_truncated_and_foreign_files_raise_corrupt_artifact(run_dir, tmp_path):
    with pytest.raises(CorruptArtifact, match=r"nothere\.pt: missing; rerun the training job"):
        load_weights(tmp_path / "nothere.pt")
    truncated = tmp_path / "final.pt"
    truncated.write_bytes((run_dir / "final.pt").read_bytes()[:-100])
    with pytest.raises(CorruptArtifact, match=r"final\.pt: cannot be read.*delete it and rerun"):
        load_weights(truncated)
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CorruptArtifact, match="text.pt: cannot be read"):
        load_state(text)
    with pytest.raises(CorruptArtifact, match="not a weights file"):
        load_weights(state_path(run_dir, 20))  # a state is not a state_dict of tensors
    with pytest.raises(CorruptArtifact, match="not a training-state file"):
        load_state(weights_path(run_dir, 20))


def test_run_ref_load_reports_a_truncated_final(run_dir, data, tmp_path):
    data.save(tmp_path / "data.pt")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "final.pt").write_bytes((run_dir / "final.pt").read_bytes()[:50])
    ref = Run("broken", canonical(SPEC), dir=broken, data=tmp_path / "data.pt")
    with pytest.raises(CorruptArtifact, match="broken/final.pt"):
        ref.load()
    model, _ = Run("ok", canonical(SPEC), dir=run_dir, data=tmp_path / "data.pt").load()
    assert all(torch.equal(v, load_weights(run_dir / "final.pt")[k]) for k, v in model.state_dict().items())


def test_incompatible_weights_name_the_tensor_and_both_shapes(run_dir, data):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    weights = load_weights(run_dir / "final.pt")
    with pytest.raises(IncompatibleCheckpoint, match=r"tensor '5.weight' has shape \(4, 16\), the model's has shape \(3, 16\)"):
        load_into_model(model, weights, run_dir / "final.pt")
    with pytest.raises(IncompatibleCheckpoint, match=r"has no tensor '1.bias'"):
        load_into_model(model, {k: v for k, v in weights.items() if k != "1.bias"}, "x.pt", exclude=["5."])
    with pytest.raises(IncompatibleCheckpoint, match=r"holds tensor 'extra'"):
        load_into_model(model, {**weights, "extra": torch.zeros(1)}, "x.pt", exclude=["5."])
    head = model[5].weight.detach().clone()
    load_into_model(model, weights, "x.pt", exclude=["5."])
    assert torch.equal(model[1].weight, weights["1.weight"]) and torch.equal(model[5].weight, head)


def test_status_records_the_byte_size_of_every_artifact(run_dir):
    status = json.loads((run_dir / "status.json").read_text())
    expected = {p.relative_to(run_dir).as_posix() for p in output_files(run_dir, SPEC)} - {"status.json"}
    assert set(status["files"]) == expected
    assert all(status["files"][name] == (run_dir / name).stat().st_size > 0 for name in expected)


def test_diverged_run_writes_markers_after_the_divergence(data, tmp_path):
    spec = dict(SPEC, optimizer={"name": "sgd", "lr": 1e6}, checkpoints=[0, 20, 40], log_every=1)
    result = train_run(spec, data, tmp_path)
    j = result.steps_completed
    assert result.status == "diverged" and 0 < j < 20
    for path in output_files(tmp_path, spec):
        assert path.exists(), path  # the declared outputs exist
    assert torch.equal(load_weights(weights_path(tmp_path, 0))["1.weight"], load_state(state_path(tmp_path, 0))["model"]["1.weight"])
    for k in (20, 40):
        with pytest.raises(DivergedCheckpoint, match=rf"diverged at step {j}; no weights at step {k}"):
            load_weights(weights_path(tmp_path, k))
        with pytest.raises(DivergedCheckpoint, match=rf"no weights at step {k}"):
            load_state(state_path(tmp_path, k))
    final = load_weights(tmp_path / "final.pt")  # the weights at the divergence, documented
    assert set(final) == set(load_weights(weights_path(tmp_path, 0)))
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "diverged" and status["diverged_at"] == j


def test_a_truncated_resume_state_is_discarded_with_a_warning(data, tmp_path, caplog):
    spec = dict(SPEC, resume_every=5, checkpoints=[])
    train_run(spec, data, tmp_path / "whole")
    state = tmp_path / "cut" / STATE_FILE
    state.parent.mkdir(parents=True)
    state.write_bytes(b"PK\x03\x04 torn")
    with caplog.at_level(logging.WARNING, logger="descentlab"):
        result = train_run(spec, data, tmp_path / "cut")
    assert result.resumed_from == 0
    assert any(str(state) in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert (tmp_path / "whole" / "metrics.parquet").read_bytes() == (tmp_path / "cut" / "metrics.parquet").read_bytes()


def test_finished_resume_area_is_small_and_still_rewrites_outputs(data, tmp_path):
    spec = dict(SPEC, resume_every=5)
    train_run(spec, data, tmp_path)
    record = torch.load(tmp_path / STATE_FILE, weights_only=True)
    assert record["finished"] and not {"optimizer", "model", "sampler"} & set(record)
    before = {p: p.read_bytes() for p in output_files(tmp_path, spec) if p.name != "status.json"}
    for path in output_files(tmp_path, spec):
        path.unlink()  # what the workflow does before re-running a job
    result = train_run(spec, data, tmp_path)
    assert result.train_seconds == 0.0 and result.resumed_from == 40
    assert all(p.read_bytes() == content for p, content in before.items())
    # the declared checkpoint files are hard links to .resume/, not copies
    assert (tmp_path / "checkpoints" / "state_000020.pt").stat().st_nlink == 2


def test_finished_record_without_its_files_trains_again(data, tmp_path):
    train_run(SPEC, data, tmp_path)
    before = load_weights(tmp_path / "final.pt")
    (tmp_path / ".resume" / "checkpoints" / "state_000020.pt").unlink()
    (tmp_path / "checkpoints" / "state_000020.pt").unlink()
    result = train_run(SPEC, data, tmp_path)
    assert result.train_seconds > 0 and result.resumed_from == 0
    assert load_state(state_path(tmp_path, 20))["step"] == 20
    after = load_weights(tmp_path / "final.pt")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_published_file_damaged_in_place_trains_again(data, tmp_path):
    """final.pt is a hard link to .resume/final.pt: truncating it in place damages
    both, so the run must train again rather than republish the damage."""
    train_run(SPEC, data, tmp_path)
    before = load_weights(tmp_path / "final.pt")
    final = tmp_path / "final.pt"
    with open(final, "r+b") as fh:  # in place: the same inode as the .resume copy
        fh.truncate(100)
    result = train_run(SPEC, data, tmp_path)
    assert result.train_seconds > 0 and result.resumed_from == 0
    after = load_weights(final)
    assert all(torch.equal(before[k], after[k]) for k in before)
