"""The run index (results/runs/index.csv)."""

import pandas as pd
import pytest

from descentlab.runindex import index_table, write_index


def test_no_runs_give_an_index_with_a_header(tmp_path):
    """Studies without training runs (e.g. amsgrad-counterexample alone) used
    to crash the run_index job: an empty table has no run_id to sort by."""
    path = tmp_path / "runs" / "index.csv"
    write_index([], str(path))
    assert path.read_text() == "run_id\n"
    table = pd.read_csv(path)
    assert list(table.columns) == ["run_id"] and len(table) == 0


def test_runs_are_flattened_and_sorted(tmp_path):
    runs = [
        {"run_id": "b", "optimizer": {"name": "sgd", "lr": 0.1}, "seed": 1},
        {"run_id": "a", "optimizer": {"name": "adam", "lr": 0.001, "betas": [0.9, 0.99]}, "seed": 0},
    ]
    path = tmp_path / "index.csv"
    write_index(runs, str(path))
    table = pd.read_csv(path)
    assert list(table["run_id"]) == ["a", "b"]
    assert list(table["optimizer.name"]) == ["adam", "sgd"]
    assert list(table["optimizer.lr"]) == [0.001, 0.1]
    assert table.loc[0, "optimizer.betas"] == "[0.9, 0.99]"
    assert pd.isna(table.loc[1, "optimizer.betas"])


def test_an_entry_without_run_id_is_an_error():
    with pytest.raises(ValueError, match=r"entries \[1\] have no run_id"):
        index_table([{"run_id": "a"}, {"seed": 0}])
