"""Optimizer values the constructor rejects fail in spec validation (the dry run,
`descentlab check`), naming where, the key and the value, not inside a job."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from descentlab import spec as spec_module
from descentlab.cli import main
from descentlab.optim import OPTIMIZERS
from descentlab.spec import SpecError, validate
from descentlab.studies import StudyError, load_study

ROOT = Path(__file__).resolve().parents[1]
_contract = importlib.util.spec_from_file_location("_contract_table", ROOT / "tests" / "optim" / "test_contract.py")
CONTRACT = importlib.util.module_from_spec(_contract)
_contract.loader.exec_module(CONTRACT)

WHERE = "toy.yaml (scale cpu, {'lr': 'x'}, seed 0)"


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_registered_optimizer_passes_with_valid_values(name):
    validate({"optimizer": {"name": name}})  # its defaults
    validate({"optimizer": {"name": name, **CONTRACT.CONTRACT_HPARAMS.get(name, {})}})


@pytest.mark.parametrize("name", OPTIMIZERS.names())
@pytest.mark.parametrize("lr", [-1, "abc"])
def test_a_bad_learning_rate_fails_naming_where_key_and_value(name, lr):
    with pytest.raises(SpecError) as err:
        validate({"optimizer": {"name": name, "lr": lr}}, where=WHERE)
    message = str(err.value)
    assert message.startswith(f"{WHERE}: optimizer.lr = {lr!r} is rejected by {name!r}: ")
    assert re.search(r"(Type|Value)Error: .+", message)  # the constructor's own message


@pytest.mark.parametrize(
    "optimizer, key, constructor_message",
    [
        ({"name": "adam", "lr": 1e-3, "betas": [1.5, 0.999]}, "betas", "Invalid beta parameter at index 0"),
        ({"name": "adamw", "lr": 1e-3, "weight_decay": -0.1}, "weight_decay", "Invalid weight_decay value"),
        ({"name": "sgd", "lr": 0.1, "momentum": -0.5}, "momentum", "Invalid momentum value"),
        ({"name": "lion", "lr": 1e-4, "betas": [0.9, 1.0]}, "betas", "beta"),
        ({"name": "sam", "lr": 0.1, "rho": -1}, "rho", "Invalid rho"),
        ({"name": "amsgrad", "lr": 1e-3, "no_such_option": 1}, "no_such_option", "unexpected keyword"),
    ],
)
def test_other_rejected_values_name_their_key(optimizer, key, constructor_message):
    with pytest.raises(SpecError, match=rf"optimizer\.{key} = .* is rejected by '{optimizer['name']}': .*{constructor_message}"):
        validate({"optimizer": optimizer}, where=WHERE)


def test_several_bad_values_name_the_whole_optimizer():
    with pytest.raises(SpecError, match=r"optimizer \{.*'lr': -1.*\} cannot be built: ValueError: Invalid"):
        validate({"optimizer": {"name": "adam", "lr": -1, "weight_decay": -1}}, where=WHERE)


def test_each_distinct_optimizer_is_built_once(monkeypatch):
    calls = []
    real = spec_module._optimizer_error
    monkeypatch.setattr(spec_module, "_OPTIMIZER_CHECKS", {})
    monkeypatch.setattr(spec_module, "_optimizer_error", lambda opt: calls.append(opt) or real(opt))
    for seed in range(5):
        validate({"optimizer": {"name": "adam", "lr": 1e-3}, "seed": seed, "steps": 100 + seed})
    validate({"optimizer": {"lr": 0.001, "name": "adam"}})  # same spec, other key order
    assert len(calls) == 1
    validate({"optimizer": {"name": "adam", "lr": 2e-3}})
    assert len(calls) == 2


STUDY = {
    "name": "toy",
    "title": "toy",
    "papers": ["none"],
    "base": {
        "dataset": {"name": "gaussian_mixture", "n_samples": 200},
        "model": {"name": "mlp", "width": 8},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "steps": 10,
    },
    "scales": {"smoke": {}, "cpu": {}, "paper": {}},
    "axes": {"lr": [{"label": "fine", "set": {}}, {"label": "negative", "set": {"optimizer": {"lr": -0.1}}}]},
    "figures": [{"name": "curves", "kind": "learning_curves"}],
}


def test_a_study_with_a_negative_lr_fails_its_check(tmp_path, capsys):
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(STUDY, sort_keys=False))
    with pytest.raises(StudyError, match=rf"{re.escape(str(path))} \(scale smoke, \{{'lr': 'negative'\}}, seed 0\): "
                       r"optimizer\.lr = -0\.1 is rejected by 'sgd': ValueError: Invalid learning rate: -0\.1"):
        load_study(path)
    assert main(["check", str(path)]) != 0
    assert "optimizer.lr = -0.1" in capsys.readouterr().err


CHECK_ALL = """
import sys, torch
from descentlab.optim import OPTIMIZERS
from descentlab.spec import validate
for name in OPTIMIZERS.names():
    validate({"optimizer": {"name": name}})
print("torch._dynamo" in sys.modules, hasattr(torch.optim.Optimizer.add_param_group.__wrapped__, "__dynamo_disable"))
"""


def test_the_check_does_not_import_dynamo_and_leaves_torch_as_it_was():
    """The first optimizer build imports torch._dynamo (seconds of parse time);
    the check avoids it and leaves add_param_group's wrapper untouched."""
    out = subprocess.run([sys.executable, "-c", CHECK_ALL], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    assert out.stdout.split() == ["False", "False"]
