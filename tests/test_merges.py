"""The merge stage (descentlab.merges): planning, content-addressed ids, parse-time
errors, and merged models computed from real (tiny) runs, checked against
independent answers (the mean of the inputs' tensors, a model evaluated by hand)."""

import copy
import json

import pandas as pd
import pytest
import torch
import yaml

from descentlab.averaging import load_state
from descentlab.data import DATASETS
from descentlab.merges import MERGE_RULES, Merge, MergeError, compute_merge, merge_id
from descentlab.plan import plan
from descentlab.studies import StudyError, load_study
from descentlab.train import train_runs
from descentlab.train.evaluation import evaluate
from descentlab.train.training import build_run_model

DATA = {"name": "gaussian_mixture", "n_samples": 300, "dim": 8, "n_classes": 3}
STUDY = {
    "name": "soup",
    "title": "t",
    "papers": ["none"],
    "base": {"dataset": DATA, "model": {"name": "mlp", "width": 8}, "optimizer": {"name": "sgd", "lr": 0.1},
             "steps": 20, "eval_every": 0, "log_every": 10,
             "init": {"parent": "pre", "step": "final", "restore": "weights"}},
    "parents": {"pre": {"set": {"steps": 30}, "seed": 9}},
    "seeds": [0, 1],
    "scales": {"smoke": {}, "cpu": {}, "paper": {}},
    "axes": {"ft": [{"label": "a", "set": {"optimizer": {"lr": 0.05}}},
                    {"label": "b", "set": {"optimizer": {"lr": 0.2}}},
                    {"label": "c", "set": {"optimizer": {"lr": 0.1, "weight_decay": 0.01}}}]},
    "merges": [
        {"name": "uniform-soup", "rule": "uniform", "per": ["seed"]},
        {"name": "greedy-soup", "rule": "greedy", "per": ["seed"], "options": {"split": "val"}},
        {"name": "stock", "rule": "model_stock", "runs": {"where": "ft != 'c'"}, "per": ["seed"]},
    ],
    "figures": [{"name": "curves", "kind": "learning_curves"}],
}


def write(tmp_path, study):
    path = tmp_path / f"{study['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def planned(tmp_path, study=STUDY, scale="cpu"):
    return plan([write(tmp_path, study)], scale, results=tmp_path / "results")


def test_one_merged_model_per_declaration_and_seed(tmp_path):
    p = planned(tmp_path)
    merges = p.merges.of_study("soup")
    assert [(m.name, m.labels["seed"], len(m.inputs)) for m in merges] == [
        ("uniform-soup", 0, 3), ("uniform-soup", 1, 3), ("greedy-soup", 0, 3), ("greedy-soup", 1, 3),
        ("stock", 0, 2), ("stock", 1, 2)]
    runs = {r.run_id: r for r in p.study_runs["soup"]}
    for m in merges:
        assert all(runs[rid].labels["seed"] == m.labels["seed"] for rid in m.inputs)
        assert m.base == {"run": runs[m.inputs[0]].spec["init"]["run"], "step": 30}
        assert m.dir == tmp_path / "results" / "merges" / m.merge_id
        assert m.labels == {"merge": m.name, "rule": m.rule, "seed": m.labels["seed"]}
    stock_inputs = {runs[rid].labels["ft"] for m in merges if m.name == "stock" for rid in m.inputs}
    assert stock_inputs == {"a", "b"}
    assert set(p.merges.jobs) == {("soup", "uniform-soup"), ("soup", "greedy-soup"), ("soup", "stock")}


def test_the_id_is_the_hash_of_rule_options_and_inputs(tmp_path):
    ids = ["r1", "r2"]
    assert merge_id("ties", {"density": 0.2}, ids) == merge_id("ties", {"density": 0.2}, list(ids))
    assert merge_id("ties", {"density": 0.2}, ids) != merge_id("ties", {"density": 0.3}, ids)
    assert merge_id("ties", {"density": 0.2}, ids) != merge_id("ties", {"density": 0.2}, ids[::-1])
    assert merge_id("ties", {}, ids) != merge_id("dare", {}, ids)
    assert merge_id("ties", {"density": 1.0}, ids) == merge_id("ties", {"density": 1}, ids)  # canonical numbers
    # Renaming a declaration keeps its models; changing one's options renames only its models.
    renamed = copy.deepcopy(STUDY)
    renamed["merges"][0]["name"] = "soup-renamed"
    renamed["merges"][1]["options"]["metric"] = "loss"
    before = {m.name: m.merge_id for m in planned(tmp_path / "a").merges.of_study("soup")}
    after = {m.name: m.merge_id for m in planned(tmp_path / "b", renamed).merges.of_study("soup")}
    assert after["soup-renamed"] == before["uniform-soup"] and after["stock"] == before["stock"]
    assert after["greedy-soup"] != before["greedy-soup"]


def test_two_declarations_of_one_model_compute_it_once(tmp_path):
    study = copy.deepcopy(STUDY)
    study["merges"].append({"name": "uniform-again", "rule": "uniform", "per": ["seed"]})
    p = planned(tmp_path, study)
    assert p.merges.jobs[("soup", "uniform-again")] == []
    assert len(p.merges.declared("soup", "uniform-again")) == 2
    assert all(p.merges.owner[m.merge_id] == ("soup", "uniform-soup") for m in p.merges.declared("soup", "uniform-again"))


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s["merges"].append({"name": "x", "rule": "unifrom"}), "did you mean 'uniform'"),
    (lambda s: s["merges"].append({"name": "x", "rule": "ties", "options": {"densty": 0.2}}), r"does not take \['densty'\]"),
    (lambda s: s["merges"].append({"name": "x", "rule": "uniform", "runs": {"where": "lr > 1"}}), "cannot be evaluated"),
    (lambda s: s["merges"].append({"name": "x", "rule": "uniform", "runs": {"where": "ft == 'zzz'"}}), "selects no runs"),
    (lambda s: s["merges"].append({"name": "x", "rule": "uniform", "runs": [{"ft": "zzz"}]}), "no run has labels"),
    (lambda s: s["merges"].append({"name": "x", "rule": "uniform", "per": ["lr"]}), r"per names labels \['lr'\]"),
    (lambda s: s["merges"].append({"name": "uniform-soup", "rule": "greedy"}), "merge names must be unique"),
])
def test_bad_merges_fail_at_parse_time(tmp_path, mutate, message):
    study = copy.deepcopy(STUDY)
    mutate(study)
    with pytest.raises(StudyError, match=message):
        load_study(write(tmp_path, study))


def test_inputs_of_other_architectures_fail_at_parse_time(tmp_path):
    study = copy.deepcopy(STUDY)
    study["base"].pop("init")
    study.pop("parents")
    study["merges"] = [{"name": "uniform-soup", "rule": "uniform", "per": ["seed"]}]
    study["axes"]["ft"][2]["set"]["model"] = {"width": 16}
    with pytest.raises(StudyError, match=r"merge 'uniform-soup'.*must share an architecture.*'width': 16"):
        load_study(write(tmp_path, study))


def test_rules_that_move_from_the_pretrained_model_need_a_shared_parent(tmp_path):
    study = copy.deepcopy(STUDY)
    study["base"].pop("init")
    study.pop("parents")
    study["merges"] = [{"name": "t", "rule": "ties"}]
    with pytest.raises(StudyError, match="rule 'ties' moves from the pretrained weights"):
        load_study(write(tmp_path, study))
    study["merges"] = [{"name": "u", "rule": "uniform"}]
    load_study(write(tmp_path, study))  # a uniform soup needs none


def test_the_schema_enum_is_the_registry():
    from descentlab.studies import study_schema

    schema = study_schema()
    assert schema["properties"]["merges"]["items"]["properties"]["rule"]["enum"] == MERGE_RULES.names()
    assert {"uniform", "greedy", "diwa", "fisher", "model_stock", "task_arithmetic", "ties", "dare",
            "gradient_matching"} <= set(MERGE_RULES.names())


# -- computing, from real runs --------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The study's plan with its parent and runs trained (no workflow)."""
    tmp = tmp_path_factory.mktemp("merges")
    p = plan([write(tmp, STUDY)], "cpu", results=tmp / "results")
    data = DATASETS.build(DATA)
    parents = p.study_parents["soup"]
    train_runs([r.spec for r in parents], data, [r.dir for r in parents], runs_dir=tmp / "results" / "runs")
    runs = p.study_runs["soup"]
    train_runs([r.spec for r in runs], data, [r.dir for r in runs], runs_dir=tmp / "results" / "runs")
    for r in parents + runs:
        data.save(r.data)
    return p, data


def by_name(p, name, seed=0):
    return next(m for m in p.merges.of_study("soup") if m.name == name and m.labels["seed"] == seed)


def test_uniform_soup_is_the_mean_and_is_evaluated_like_a_run(trained):
    p, data = trained
    m = by_name(p, "uniform-soup")
    record = compute_merge(Merge.from_dict(json.loads(json.dumps(m.to_dict()))))
    assert record["status"] == "ok"
    merged = torch.load(m.dir / "final.pt", weights_only=True)
    inputs = [load_state(m.runs_dir / rid / "final.pt") for rid in m.inputs]
    for k in merged:
        torch.testing.assert_close(merged[k], torch.stack([s[k] for s in inputs]).mean(0))
    run = m.as_run()
    assert run.role == "merge" and run.status == "ok" and run.labels["merge"] == "uniform-soup"
    metrics = run.metrics()
    assert set(metrics.columns) == {"step", "split", "metric", "value"}
    model = build_run_model(m.spec, data)
    model.load_state_dict(merged)
    expected = evaluate(model, torch.nn.functional.cross_entropy, data.x["test"], data.y["test"], "classification")
    got = metrics[(metrics["split"] == "test") & (metrics["metric"] == "accuracy")]
    assert got["step"].tolist() == [20] and got["value"].tolist() == [pytest.approx(expected["accuracy"])]
    spec = json.loads((m.dir / "spec.json").read_text())
    assert spec["inputs"] == m.inputs and spec["rule"] == "uniform"
    loaded, _ = run.load()  # the merged model loads like a run's
    assert torch.equal(loaded.state_dict()[next(iter(merged))], next(iter(merged.values())))


def test_greedy_soup_is_not_below_the_best_input_on_its_split(trained):
    p, data = trained
    m = by_name(p, "greedy-soup", seed=1)
    compute_merge(m)
    history = pd.read_csv(m.dir / "greedy.csv")
    best_single = max(
        float(pd.read_parquet(m.runs_dir / rid / "metrics.parquet").query("split == 'val' and metric == 'accuracy'")
              .sort_values("step")["value"].iloc[-1]) for rid in m.inputs)
    soup_val = m.as_run().metrics().query("split == 'val' and metric == 'accuracy'")["value"].iloc[0]
    assert soup_val >= best_single
    assert history["run_id"].iloc[0] in m.inputs and bool(history["accepted"].iloc[0])


def test_model_stock_moves_from_the_parent(trained):
    from descentlab.averaging import model_stock

    p, _ = trained
    m = by_name(p, "stock")
    compute_merge(m)
    parent = m.runs_dir / m.base["run"] / "final.pt"
    expected = model_stock(parent, [m.runs_dir / rid / "final.pt" for rid in m.inputs])
    merged = torch.load(m.dir / "final.pt", weights_only=True)
    assert all(torch.equal(merged[k], expected[k]) for k in expected)


def copied_runs(m, tmp_path):
    """A copy of the merge's input runs (and the parent's) that a test may damage."""
    runs_dir = tmp_path / "runs"
    for rid in m.inputs + [m.base["run"]]:
        (runs_dir / rid).mkdir(parents=True)
        for name in ("final.pt", "status.json"):
            (runs_dir / rid / name).write_bytes((m.runs_dir / rid / name).read_bytes())
    return runs_dir


def test_inputs_whose_tensors_differ_fail_before_any_merging(trained, tmp_path):
    p, _ = trained
    m = copy.deepcopy(by_name(p, "uniform-soup", seed=1))
    runs_dir = copied_runs(m, tmp_path)
    state = load_state(runs_dir / m.inputs[1] / "final.pt")
    last = [k for k in state if k.endswith("weight")][-1]
    state[last] = torch.zeros(5, 8)  # a 5-class head on the 3-class task
    torch.save(state, runs_dir / m.inputs[1] / "final.pt")
    m.runs_dir, m.dir = runs_dir, tmp_path / "merged"
    with pytest.raises(MergeError, match=rf"tensor '{last}' has shape \(5, 8\), the reference's has shape \(3, 8\)"):
        compute_merge(m)
    assert not (m.dir / "final.pt").exists() and not (m.dir / "status.json").exists()


def test_a_diverged_input_marks_the_merge_diverged(trained, tmp_path):
    p, _ = trained
    m = copy.deepcopy(by_name(p, "uniform-soup", seed=1))
    runs_dir = copied_runs(m, tmp_path)
    status = json.loads((runs_dir / m.inputs[0] / "status.json").read_text())
    (runs_dir / m.inputs[0] / "status.json").write_text(json.dumps(dict(status, status="diverged")))
    m.runs_dir, m.dir = runs_dir, tmp_path / "merged"
    assert compute_merge(m)["status"] == "diverged"
    assert m.as_run().status == "diverged" and m.as_run().metrics().empty
