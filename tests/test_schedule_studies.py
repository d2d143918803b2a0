"""The schedule studies' pieces (wsd-vs-cosine, decay-to-zero): parents that
follow the seed, schedules described from specs, final losses, power laws
fitted to subsets, and the figures' summaries, each against numbers worked
out by hand."""

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from descentlab.analyses.schedules_studies import (
    describe_schedule, final_value, fit_subsets, predictions, schedule_finals, tokens_seen,
)
from descentlab.data import SplitData
from descentlab.plots.schedules_studies import cooldown_summary, d2z_summary, schedule_label, wsd_scaling_laws
from descentlab.runs import Run
from descentlab.schedules import build_schedule
from descentlab.studies import StudyError, expand_study_lineage, load_study

DATA = {"name": "gaussian_mixture", "n_samples": 200, "dim": 6, "n_classes": 3}
STUDY = {
    "name": "branches",
    "title": "cooldowns from constant runs",
    "papers": ["none"],
    "base": {"dataset": DATA, "model": {"name": "mlp", "width": 8}, "optimizer": {"name": "sgd", "lr": 0.1}, "steps": 40},
    "parents": {"constant": {"follow": ["seed"], "set": {"steps": 40, "checkpoints": [20, 30]}}},
    "seeds": [3, 4, 5],
    "scales": {"smoke": {}, "cpu": {}, "paper": {}},
    "axes": {"run": [
        {"label": "cosine", "set": {"schedule": {"name": "cosine", "final_factor": 0.1}}},
        {"label": "wsd", "set": {"schedule": {"name": "wsd", "cooldown_steps": 10},
                                 "init": {"parent": "constant", "step": 30, "restore": "all"}}},
        {"label": "wsd long", "set": {"schedule": {"name": "wsd", "cooldown_steps": 20},
                                      "init": {"parent": "constant", "step": 20, "restore": "all"}}},
    ]},
    "figures": [{"name": "curves", "kind": "learning_curves"}],
}


def expand(tmp_path, study):
    path = tmp_path / f"{study['name']}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return expand_study_lineage(load_study(path), "cpu")


# -- parents that follow the seed ---------------------------------------------------------


def test_a_parent_that_follows_the_seed_is_one_run_per_seed_with_that_seed(tmp_path):
    runs = expand(tmp_path, STUDY)
    parents = {p.run_id: p for p in runs.parents}
    assert sorted(p.spec["seed"] for p in parents.values()) == [3, 4, 5]
    for child in runs.sweep:
        if child.spec["init"] is not None:
            assert parents[child.spec["init"]["run"]].spec["seed"] == child.spec["seed"]
    # the two branches of one seed share their parent
    by_seed = {}
    for child in runs.sweep:
        if child.spec["init"] is not None:
            by_seed.setdefault(child.spec["seed"], set()).add(child.spec["init"]["run"])
    assert all(len(ids) == 1 for ids in by_seed.values())


def test_without_following_the_seed_every_child_shares_the_first_seeds_parent(tmp_path):
    study = copy.deepcopy(STUDY)
    study["parents"]["constant"].pop("follow")
    runs = expand(tmp_path, study)
    assert [p.spec["seed"] for p in runs.parents] == [3]


def test_following_the_seed_and_naming_one_is_an_error(tmp_path):
    study = copy.deepcopy(STUDY)
    study["parents"]["constant"]["seed"] = 1
    with pytest.raises(StudyError, match="follows the seed and gives its own seed 1"):
        expand(tmp_path, study)


# -- schedules as trained -------------------------------------------------------------------


def test_describe_schedule_reads_the_wsd_cooldown_and_the_branch_step():
    spec = {"steps": 400, "schedule": {"name": "wsd", "cooldown_steps": 80, "cooldown": "sqrt"},
            "init": {"run": "x", "step": 320, "restore": "all"}}
    row = describe_schedule(spec)
    assert row == {"schedule": "wsd", "final_factor": 0.0, "cooldown": "1-sqrt", "cooldown_fraction": 0.2, "branch_step": 320}
    # by fraction: int(0.1 * 250) = 25 cooldown steps of 250
    row = describe_schedule({"steps": 250, "schedule": {"name": "wsd", "cooldown_fraction": 0.1, "cooldown": "linear"}, "init": None})
    assert row["cooldown_fraction"] == 0.1 and row["cooldown"] == "linear" and row["branch_step"] == 0
    assert describe_schedule({"steps": 9, "schedule": {"name": "constant"}, "init": None})["final_factor"] == 1.0
    with pytest.raises(ValueError, match="'step' is not one of"):
        describe_schedule({"steps": 9, "schedule": {"name": "step", "milestones": [3]}, "init": None})


def test_the_cooldown_fraction_is_where_the_schedule_starts_to_fall():
    """The wsd multiplier stays at 1 until steps * (1 - cooldown_fraction)."""
    spec = {"steps": 400, "schedule": {"name": "wsd", "cooldown_steps": 80}, "init": None}
    multiplier = build_schedule(spec["schedule"], spec["steps"])
    first_below = next(s for s in range(400) if multiplier(s) < 1.0)
    assert first_below == 321 and describe_schedule(spec)["cooldown_fraction"] == pytest.approx(1 - 320 / 400)


def test_schedule_labels():
    assert schedule_label({"schedule": "linear", "final_factor": 0.0}) == "D2Z"
    assert schedule_label({"schedule": "cosine", "final_factor": 0.1}) == "cosine 10x"
    assert schedule_label({"schedule": "linear", "final_factor": 0.1}) == "linear 10x"
    assert schedule_label({"schedule": "wsd", "cooldown": "1-sqrt", "final_factor": 0.0}) == "WSD 1-sqrt"


def test_tokens_and_final_value():
    assert tokens_seen({"steps": 75, "batch_size": 8, "dataset": {"name": "charlm", "block_size": 32}}) == 19200
    with pytest.raises(ValueError, match="no block_size"):
        tokens_seen({"steps": 75, "batch_size": 8, "dataset": {"name": "mnist1d"}})
    metrics = pd.DataFrame({"step": [100, 0, 50, 100], "split": ["val", "val", "val", "train"],
                            "metric": ["loss"] * 4, "value": [1.5, 4.0, 2.0, 9.9]})
    assert final_value(metrics) == 1.5
    assert math.isnan(final_value(metrics, "test"))


def _fake_run(tmp_path, name, spec, data_path, status="ok", loss=2.0, seed=0):
    directory = tmp_path / name
    directory.mkdir()
    (directory / "status.json").write_text(json.dumps({"status": status}))
    pd.DataFrame({"step": [0, spec["steps"]], "split": ["val", "val"], "metric": ["loss", "loss"],
                  "value": [5.0, loss]}).to_parquet(directory / "metrics.parquet")
    return Run(name, dict(spec, seed=seed), {"run": name, "seed": seed}, "s", "sweep", directory, data_path)


def test_schedule_finals_counts_parameters_and_tokens_and_marks_diverged_runs(tmp_path):
    data = SplitData(x={s: torch.zeros(4, 16, dtype=torch.long) for s in ("train", "val", "test")},
                     y={s: torch.zeros(4, 16, dtype=torch.long) for s in ("train", "val", "test")},
                     task="classification", num_outputs=10, input_shape=(16,), info={})
    data.save(tmp_path / "data.pt")
    spec = {"dataset": {"name": "charlm", "block_size": 16}, "model": {"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 8},
            "batch_size": 4, "steps": 50, "schedule": {"name": "linear", "final_factor": 0.0}, "init": None}
    runs = [_fake_run(tmp_path, "a", spec, tmp_path / "data.pt", loss=1.75),
            _fake_run(tmp_path, "b", spec, tmp_path / "data.pt", status="diverged", seed=1)]
    table = schedule_finals(runs)
    # by hand: tied embedding 10*8, positions 16*8, one block (2 norms of 8 weights, qkv 8*24, proj 8*8,
    # mlp 8*32 + 32*8), final norm 8 (no biases)
    params = 80 + 128 + 8 + 192 + 64 + 8 + 256 + 256 + 8
    assert table["params"].tolist() == [params, params]
    assert table["tokens"].tolist() == [50 * 4 * 16] * 2 and table["tpp"].iloc[0] == pytest.approx(3200 / params)
    assert table["final_val_loss"].iloc[0] == 1.75 and math.isnan(table["final_val_loss"].iloc[1])
    assert table["status"].tolist() == ["ok", "diverged"] and table["seed"].tolist() == [0, 1]


# -- power laws -------------------------------------------------------------------------------


def test_fit_subsets_recovers_known_power_laws():
    tokens = np.array([1e4, 2e4, 4e4, 8e4, 1.6e5])
    rows = []
    for seed in range(2):
        for t in tokens:
            rows.append({"schedule": "cosine", "seed": seed, "status": "ok", "tokens": t, "final_val_loss": 1.5 + 40.0 * t ** -0.5})
            rows.append({"schedule": "wsd", "seed": seed, "status": "ok", "tokens": t, "final_val_loss": 1.4 + 90.0 * t ** -0.6})
    rows.append({"schedule": "wsd", "seed": 0, "status": "diverged", "tokens": 3e4, "final_val_loss": float("nan")})
    fits = fit_subsets(pd.DataFrame(rows), {"cosine": "schedule == 'cosine'", "WSD": "schedule == 'wsd'"})
    cosine, wsd = fits.set_index("fit").loc["cosine"], fits.set_index("fit").loc["WSD"]
    assert (cosine["E"], cosine["A"], cosine["alpha"]) == pytest.approx((1.5, 40.0, 0.5), rel=1e-4)
    assert (wsd["E"], wsd["A"], wsd["alpha"]) == pytest.approx((1.4, 90.0, 0.6), rel=1e-4)
    assert wsd["n_points"] == 10 and cosine["seeds"] == 2 and wsd["n_at_best"] >= 1
    pred = predictions(fits, [1e4]).set_index("fit")["predicted_loss"]
    assert pred["cosine"] == pytest.approx(1.5 + 40.0 * 1e4 ** -0.5, rel=1e-6)
    with pytest.raises(ValueError, match="2 distinct tokens values"):
        fit_subsets(pd.DataFrame(rows[:4]), {"few": "schedule == 'cosine'"})


def test_scaling_law_figure_reports_the_gap_between_the_laws():
    fits = pd.DataFrame([
        {"fit": "cosine", "query": "schedule == 'cosine'", "E": 1.0, "A": 10.0, "alpha": 0.5, "x_min": 100.0, "x_max": 400.0},
        {"fit": "WSD", "query": "schedule == 'wsd'", "E": 1.1, "A": 10.0, "alpha": 0.5, "x_min": 100.0, "x_max": 400.0},
    ])
    finals = pd.DataFrame([{"schedule": s, "tokens": t, "final_val_loss": 2.0, "status": "ok", "seed": 0}
                           for s in ("cosine", "wsd") for t in (100.0, 400.0)])
    _, _, summary = wsd_scaling_laws(None, None, {"finals": finals, "laws": fits})
    assert summary["tokens"].tolist() == [100.0, 400.0]
    assert summary["predicted_cosine"].tolist() == pytest.approx([2.0, 1.5])
    assert summary["predicted_gap"].tolist() == pytest.approx([0.1, 0.1])


# -- figure summaries ---------------------------------------------------------------------------


def _wsd_rows(losses):
    return pd.DataFrame([{"run_id": f"{f}-{s}", "seed": s, "status": "ok", "schedule": "wsd", "cooldown": "1-sqrt",
                          "cooldown_fraction": f, "branch_step": 0, "steps": 400, "final_val_loss": loss}
                         for f, per_seed in losses.items() for s, loss in enumerate(per_seed)])


def test_cooldown_summary_finds_the_best_fraction_and_flags_the_edge():
    finals = _wsd_rows({0.05: [2.0, 2.1], 0.2: [1.9, 1.9], 0.8: [1.95, 1.96]})
    summary = cooldown_summary(finals)
    assert summary["best_fraction"].unique().tolist() == [0.2] and not summary["best_on_edge"].any()
    summary = cooldown_summary(_wsd_rows({0.05: [2.0, 2.1], 0.2: [1.9, 1.9], 0.8: [1.8, 1.9]}))
    assert summary["best_fraction"].iloc[0] == 0.8 and summary["best_on_edge"].all()
    with pytest.raises(ValueError, match="no WSD runs of 100 steps"):
        cooldown_summary(finals, steps=100)


def test_d2z_summary_gain_is_the_percent_of_the_10x_loss():
    rows = []
    for steps, tpp, d2z, cos in ((75, 2.0, 3.0, 2.97), (1500, 40.0, 2.0, 2.05)):
        for seed in (0, 1):
            rows.append({"run_id": f"d{steps}{seed}", "seed": seed, "status": "ok", "schedule": "linear", "final_factor": 0.0,
                         "steps": steps, "tokens": 0, "params": 1, "tpp": tpp, "final_val_loss": d2z})
            rows.append({"run_id": f"c{steps}{seed}", "seed": seed, "status": "ok", "schedule": "cosine", "final_factor": 0.1,
                         "steps": steps, "tokens": 0, "params": 1, "tpp": tpp, "final_val_loss": cos})
    summary = d2z_summary(pd.DataFrame(rows))
    d2z = summary[summary["schedule_label"] == "D2Z"].set_index(["steps", "seed"])
    assert d2z.loc[(75, 0), "gain_percent"] == pytest.approx(100 * (2.97 - 3.0) / 2.97)
    assert d2z.loc[(1500, 1), "gain_percent"] == pytest.approx(100 * 0.05 / 2.05)
    assert d2z.loc[(75, 0), "length_end"] == "shortest" and d2z.loc[(1500, 0), "length_end"] == "longest"
    with pytest.raises(ValueError, match="no runs with schedule"):
        d2z_summary(pd.DataFrame(rows), b="cosine")
