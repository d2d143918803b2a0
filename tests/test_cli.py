"""The command line: help, registry listings, study checks, bad specs."""

import json
from pathlib import Path

import pytest

from descentlab.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "train" in out and "check" in out and "list" in out


def test_list_prints_registry_names(capsys):
    assert main(["list", "optimizers"]) == 0
    names = capsys.readouterr().out.split()
    assert {"sgd", "adamw", "lion", "sam", "sfadamw", "shampoo"} <= set(names)
    assert main(["list", "analyses"]) == 0
    assert "hessian_spectrum" in capsys.readouterr().out.split()


def test_check_validates_the_shipped_studies(capsys):
    assert main(["check", *map(str, sorted((ROOT / "config" / "studies").glob("*.yaml")))]) == 0
    assert "optimizer-curves.yaml: ok" in capsys.readouterr().out


def test_train_refuses_a_bad_spec_before_any_work(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"optimizer": {"name": "adamm", "lr": 0.1}}))
    assert main(["train", "--spec", str(spec), "--out", str(tmp_path / "run")]) == 2
    assert "did you mean 'adam'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_writes_a_run(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("dataset: {name: gaussian_mixture, n_samples: 200}\nsteps: 10\nmodel: {name: mlp, width: 8}\n")
    assert main(["train", "--spec", str(spec), "--out", str(tmp_path / "run"), "--device", "cpu", "--progress", "off"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "ok" and result["steps"] == 10
    assert (tmp_path / "run" / "status.json").exists()
