"""Study files: schema errors before any work, expansion, shared runs, groups."""

import copy
from pathlib import Path

import pytest
import yaml

from descentlab.plan import group_runs, plan
from descentlab.runs import Run
from descentlab.studies import StudyError, expand_study, load_study, study_paths

ROOT = Path(__file__).resolve().parents[1]
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
    "seeds": [0, 1, 2],
    "scales": {"smoke": {"set": {"steps": 4}, "seeds": [0]}, "cpu": {}, "paper": {"set": {"steps": 100}}},
    "axes": {  # applied in file order: the optimizer first, then its lr
        "opt": [{"label": "sgd", "set": {}}, {"label": "adam", "set": {"optimizer": {"name": "adam"}}}],
        "lr": [{"label": "0.1", "set": {"optimizer": {"lr": 0.1}}}, {"label": "0.2", "set": {"optimizer": {"lr": 0.2}}}],
    },
    "figures": [{"name": "curves", "kind": "learning_curves"}],
}


def write(tmp_path, study, name=None):
    path = tmp_path / f"{name or study['name']}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_shipped_studies_are_valid():
    for path in study_paths(ROOT / "config" / "studies", "all"):
        study = load_study(path)
        assert expand_study(study, "smoke") or not study.get("base")  # a study without base trains nothing


def test_expansion_is_the_product_of_axes_and_seeds(tmp_path):
    study = load_study(write(tmp_path, STUDY))
    runs = expand_study(study, "cpu")
    assert len(runs) == 2 * 2 * 3
    assert {r.spec["steps"] for r in runs} == {10}
    adam = [r for r in runs if r.labels["opt"] == "adam"]
    # a name change replaces the component (sgd's settings do not carry over),
    # and the later lr axis then sets adam's lr
    assert {(r.spec["optimizer"]["name"], r.spec["optimizer"]["lr"]) for r in adam} == {("adam", 0.1), ("adam", 0.2)}
    assert all(r.labels.keys() == {"lr", "opt", "seed"} for r in runs)
    smoke = expand_study(study, "smoke")
    assert len(smoke) == 4 and {r.spec["steps"] for r in smoke} == {4}


def test_identical_runs_from_axes_are_refused(tmp_path):
    study = copy.deepcopy(STUDY)
    study["axes"] = {"lr": [{"label": "a", "set": {}}, {"label": "b", "set": {}}]}
    with pytest.raises(StudyError, match="identical runs"):
        load_study(write(tmp_path, study))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s["base"]["optimizer"].update(name="adamm"), r"base.optimizer.name: 'adamm' is not one of .*did you mean 'adam'"),
        (lambda s: s["base"].update(stepz=3), "Additional properties are not allowed"),
        (lambda s: s["scales"].pop("paper"), "'paper' is a required property"),
        (lambda s: s["figures"][0].update(kind="pie"), "figures.0.kind"),
        (lambda s: s["base"]["optimizer"].update(momentun=0.9), r"does not take \['momentun'\]"),
        (lambda s: s["scales"]["paper"]["set"].update(steps=0), "scales.paper.set.steps"),
    ],
)
def test_bad_study_fails_with_a_clear_message(tmp_path, mutate, message):
    study = copy.deepcopy(STUDY)
    mutate(study)
    with pytest.raises(StudyError, match=message) as info:
        load_study(write(tmp_path, study))
    assert "toy.yaml" in str(info.value)


def test_name_must_match_file(tmp_path):
    with pytest.raises(StudyError, match="must match the file name"):
        load_study(write(tmp_path, STUDY, name="other"))


def test_unknown_study_selection_lists_the_valid_ones(tmp_path):
    write(tmp_path, STUDY)
    with pytest.raises(StudyError, match=r"unknown study \['nope'\].*toy"):
        study_paths(tmp_path, ["nope"])


def test_plan_shares_runs_between_studies_and_groups_seeds(tmp_path):
    other = copy.deepcopy(STUDY)
    other["name"] = "toy2"
    other["axes"] = {"lr": STUDY["axes"]["lr"]}  # the sgd runs of toy, again
    other["seeds"] = [0, 1, 2, 3]
    p = plan([write(tmp_path, STUDY), write(tmp_path, other)], "cpu", max_runs_per_job=3)
    assert len(p.study_runs["toy"]) == 12 and len(p.study_runs["toy2"]) == 8
    assert len(p.runs) == 12 + 2  # toy2 adds only its seed-3 runs
    assert {p.runs[r.run_id].study for r in p.study_runs["toy2"]} == {"toy", "toy2"}  # shared runs train in toy's jobs
    members = sorted(r for g in p.groups.values() for r in g)
    assert members == sorted(p.runs)  # every run in exactly one group
    # toy: one family of 12 runs -> 4 jobs of 3; toy2: its 2 own runs -> 1 job
    assert sorted(len(g) for g in p.groups.values()) == [2, 3, 3, 3, 3]
    assert len(p.datasets) == 1


def _run(ds, lr, seed, **extra):
    from descentlab.spec import canonical, run_id

    spec = canonical({"dataset": {"name": "gaussian_mixture", "n_samples": ds}, "optimizer": {"name": "sgd", "lr": lr}, "seed": seed, **extra})
    return Run(run_id(spec), spec, {"lr": lr, "seed": seed}, "s")


def test_groups_keep_seeds_together_and_split_by_dataset():
    runs = [_run(ds, lr, seed) for ds in (100, 200) for lr in (0.1, 0.2) for seed in (0, 1)]
    by_id = {r.run_id: (r.spec["dataset"]["n_samples"], r.spec["optimizer"]["lr"], r.spec["seed"]) for r in runs}

    def shapes(groups):
        return sorted(sorted(by_id[r] for r in g) for g in groups.values())

    assert shapes(group_runs(runs, max_runs_per_job=2)) == sorted(
        [sorted([(ds, lr, 0), (ds, lr, 1)]) for ds in (100, 200) for lr in (0.1, 0.2)])
    assert sorted(len(g) for g in group_runs(runs, max_runs_per_job=3).values()) == [2, 2, 2, 2]
    assert sorted(len(g) for g in group_runs(runs, max_runs_per_job=64).values()) == [4, 4]
    spread = group_runs(runs, max_runs_per_job=64, min_jobs_per_group=3)  # 4 runs -> 3 jobs, seeds split once
    assert sorted(len(g) for g in spread.values()) == [1, 1, 1, 1, 2, 2]


def test_runs_that_read_another_run_never_share_its_job():
    parent = _run(100, 0.1, 0, checkpoints=[5])
    child = _run(100, 0.1, 1, init={"run": parent.run_id, "step": 5, "restore": "weights", "exclude": []})
    groups = group_runs([parent, child], max_runs_per_job=64)
    assert sorted(map(len, groups.values())) == [1, 1]


def test_a_job_keeps_its_runs_when_other_studies_change(tmp_path):
    """Blast radius at the plan level: adding a study, or changing a value in
    one, leaves every job of the other studies as it was."""
    other = copy.deepcopy(STUDY)
    other["name"] = "toy2"
    other["base"]["dataset"]["n_samples"] = 300  # runs of its own (shared runs train in one study's jobs)
    before = plan([write(tmp_path, STUDY), write(tmp_path, other)], "cpu", max_runs_per_job=4)
    toy2_jobs = {g: m for g, m in before.groups.items() if g.startswith("toy2+")}

    third = copy.deepcopy(STUDY)
    third["name"] = "toy3"
    third["base"]["optimizer"]["lr"] = 0.3
    third["axes"]["lr"][0]["set"]["optimizer"]["lr"] = 0.15
    added = plan([write(tmp_path, STUDY), write(tmp_path, other), write(tmp_path, third)], "cpu", max_runs_per_job=4)
    assert all(added.groups[g] == m for g, m in before.groups.items())

    changed = copy.deepcopy(STUDY)
    changed["axes"]["lr"][1]["set"]["optimizer"]["lr"] = 0.25  # toy changes; toy2 must not notice
    after = plan([write(tmp_path, changed), write(tmp_path, other)], "cpu", max_runs_per_job=4)
    assert {g: m for g, m in after.groups.items() if g.startswith("toy2+")} == toy2_jobs
