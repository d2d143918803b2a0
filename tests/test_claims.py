"""Claims as checks: the check kinds against hand-made tables and scipy, and
what a study file may say."""

import copy

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from descentlab.claims import (
    ClaimError,
    all_rows,
    caption_text,
    evaluate_claims,
    markdown_table,
    paired,
    t_interval,
    update_readme,
)
from descentlab.studies import StudyError, load_study


def test_all_rows_holds_only_when_every_row_does():
    table = pd.DataFrame({"lr": [0.1, 0.2, 0.5], "ratio": [0.97, 1.05, 0.80], "seed": [0, 0, 0]})
    out = all_rows(table, holds_if="abs(ratio - 1) <= 0.15", report="ratio", label=["lr"])
    assert not out.holds and "0.5: 0.8 !" in out.numbers and out.seeds == 1
    assert all_rows(table, holds_if="abs(ratio - 1) <= 0.15", where="lr < 0.5").holds
    assert not all_rows(table, holds_if="ratio > 0", where="lr > 1").holds  # no rows: nothing shown, nothing holds
    with pytest.raises(ClaimError, match="columns"):
        all_rows(table, holds_if="nope > 1")


def test_all_rows_shows_a_value_repeated_on_every_seed_once_and_counts_the_seeds():
    # the best fraction comes from means over seeds: the same on each seed's row
    table = pd.DataFrame({"fraction": [0.1, 0.1, 0.1, 0.2], "best": [0.1, 0.1, 0.1, 0.1], "seed": [0, 1, 2, 0]})
    out = all_rows(table, holds_if="best < 0.4", where="fraction == best", report="best")
    assert out.holds and out.numbers == "best: 0.1" and out.seeds == 3
    mixed = all_rows(table, holds_if="fraction < 0.15", report="fraction", label=["seed"])
    assert not mixed.holds and mixed.numbers == "fraction: 0: 0.1; 1: 0.1; 2: 0.1; 0: 0.2 !"


def test_t_interval_matches_scipy():
    rng = np.random.default_rng(0)
    d = rng.normal(0.3, 1.0, size=7)
    mean, low, high = t_interval(list(d), 0.9)
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.9)
    assert mean == pytest.approx(d.mean()) and low == pytest.approx(ci.low) and high == pytest.approx(ci.high)


def test_paired_is_judged_on_matched_seeds():
    rows = []
    for seed, (soup, best) in enumerate([(0.80, 0.78), (0.82, 0.79), (0.81, 0.80), (0.83, 0.80)]):
        rows += [{"method": "soup", "seed": seed, "acc": soup}, {"method": "best", "seed": seed, "acc": best}]
    rows.append({"method": "soup", "seed": 9, "acc": 0.0})  # no partner: not a pair
    table = pd.DataFrame(rows)
    out = paired(table, column="acc", by="method", a="soup", b="best")
    d = np.array([0.02, 0.03, 0.01, 0.03])
    ci = stats.ttest_rel(d + 1, np.ones(4)).confidence_interval()
    assert out.holds and out.seeds == 4 and f"{ci.low:.4g}" in out.numbers
    assert not paired(table, column="acc", by="method", a="best", b="soup").holds
    assert paired(table, column="acc", by="method", a="best", b="soup", greater=False).holds
    assert not paired(table, column="acc", by="method", a="soup", b="best", margin=0.05).holds


def test_paired_within_groups_needs_every_group():
    rows = []
    for task, gain in (("a", 0.1), ("b", -0.1)):
        for seed in range(3):
            rows += [{"task": task, "m": "x", "seed": seed, "v": 1 + gain + 0.01 * seed}, {"task": task, "m": "y", "seed": seed, "v": 1.0}]
    table = pd.DataFrame(rows)
    assert not paired(table, column="v", by="m", a="x", b="y", within=["task"]).holds
    assert paired(table, column="v", by="m", a="x", b="y", within=["task"], where="task == 'a'").holds


def test_evaluate_caption_and_readme():
    summary = pd.DataFrame({"lr": [0.1, 0.2], "ratio": [1.0, 0.5]})
    claims = [
        {"id": "at-threshold", "text": "sharpness reaches 2/lr", "check": "all_rows",
         "options": {"holds_if": "ratio > 0.85", "report": "ratio", "label": ["lr"]},
         "otherwise": "too short a run for lr 0.2"},
        {"id": "some", "text": "some lr reaches it", "check": "all_rows", "options": {"holds_if": "ratio > 0.85", "where": "lr < 0.15"}},
    ]
    table = evaluate_claims(claims, summary, {}, study="s", figure="f", scale="cpu")
    assert list(table.holds) == ["no", "yes"] and table.note[0] == "too short a run for lr 0.2" and table.note[1] == ""
    text = caption_text(table)
    assert "DOES NOT HOLD: sharpness reaches 2/lr. too short a run" in text and "HOLDS: some lr" in text
    md = markdown_table(table)
    readme = "intro\n<!-- claims:begin -->\nstale table\n<!-- claims:end -->\nrest\n"
    new = update_readme(readme, md, "header")
    assert "stale table" not in new and "| s | f | sharpness reaches 2/lr | no |" in new and new.endswith("<!-- claims:end -->\nrest\n")
    with pytest.raises(ClaimError, match="reads table 'nope'"):
        evaluate_claims([dict(claims[0], options={"table": "nope", "holds_if": "x"})], summary, {}, study="s", figure="f", scale="cpu")


STUDY = {
    "name": "toy", "title": "toy", "papers": ["none"],
    "base": {"dataset": {"name": "gaussian_mixture", "n_samples": 200}, "model": {"name": "mlp", "width": 8}, "steps": 10},
    "scales": {"smoke": {}, "cpu": {}, "paper": {}},
    "figures": [{"name": "curves", "kind": "learning_curves",
                 "claims": [{"id": "c", "text": "t", "check": "all_rows", "options": {"holds_if": "x > 0"}}]}],
}


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(check="vibes"), r"claims.0.check: 'vibes' is not one of"),
    (lambda c: c["options"].update(typo=1), r"claim 'c' \(all_rows\): does not take \['typo'\]"),
    (lambda c: c["options"].pop("holds_if"), r"needs \['holds_if'\]"),
    (lambda c: c["options"].update(table="tuned"), r"reads table 'tuned', which figure 'curves' does not read"),
])
def test_bad_claims_fail_at_parse_time(tmp_path, mutate, message):
    study = copy.deepcopy(STUDY)
    mutate(study["figures"][0]["claims"][0])
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(StudyError, match=message):
        load_study(path)


def test_caption_counts_seeds_as_whole_numbers():
    summary = pd.DataFrame({"seed": [0, 1, 2], "v": [1.0, 2.0, 3.0]})
    one = [{"id": "a", "text": "positive", "check": "all_rows", "options": {"holds_if": "v > 0"}}]
    none = [{"id": "b", "text": "no seed column", "check": "all_rows", "options": {"holds_if": "x > 0"}}]
    table = pd.concat([evaluate_claims(one, summary, {}, study="s", figure="f", scale="cpu"),
                       evaluate_claims(none, pd.DataFrame({"x": [1]}), {}, study="s", figure="f", scale="cpu")])
    text = caption_text(table)
    assert "HOLDS (n = 3 seeds): positive." in text and "HOLDS: no seed column." in text


def test_cli_writes_the_readme_table_from_a_claims_csv(tmp_path):
    from descentlab.cli import main

    table = pd.concat([
        evaluate_claims([{"id": "a", "text": "with seeds", "check": "all_rows", "options": {"holds_if": "v > 0"}}],
                        pd.DataFrame({"seed": [0, 1], "v": [1.0, 2.0]}), {}, study="s", figure="f", scale="cpu"),
        evaluate_claims([{"id": "b", "text": "no seeds", "check": "all_rows", "options": {"holds_if": "v > 5"}}],
                        pd.DataFrame({"v": [1.0]}), {}, study="s", figure="f", scale="cpu"),
    ])
    csv = tmp_path / "claims.csv"
    table.to_csv(csv, index=False)  # the seeds column is read back as text with an empty cell
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- claims:begin -->\n<!-- claims:end -->\n")
    assert main(["claims", str(csv), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "1 of 2 claims hold at scale cpu" in text and "| s | f | with seeds | yes | 2 |" in text and "| no seeds | no |  |" in text
