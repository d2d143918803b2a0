"""Runs that start from other runs, as a study says them: parents by name,
resolved at parse time into run ids; every bad reference fails before any job."""

import copy

import pytest
import yaml

from descentlab.plan import plan
from descentlab.studies import StudyError, expand_study_lineage, load_study

DATA = {"name": "gaussian_mixture", "n_samples": 200, "dim": 6, "n_classes": 3}
STUDY = {
    "name": "tree",
    "title": "runs from runs",
    "papers": ["none"],
    "base": {
        "dataset": DATA,
        "model": {"name": "mlp", "width": 8},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "steps": 40,
        "init": {"parent": "pretrain", "step": 20, "restore": "optimizer"},
    },
    "parents": {"pretrain": {"set": {"steps": 30, "checkpoints": [10, 20]}}},
    "seeds": [1, 2],
    "scales": {"smoke": {}, "cpu": {}, "paper": {}},
    "axes": {"lr": [{"label": 0.1, "set": {"optimizer": {"lr": 0.1}}}, {"label": 0.05, "set": {"optimizer": {"lr": 0.05}}}]},
    "figures": [{"name": "curves", "kind": "learning_curves"}],
}


def write(tmp_path, study):
    path = tmp_path / f"{study['name']}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def expand(tmp_path, study, scale="cpu"):
    return expand_study_lineage(load_study(write(tmp_path, study)), scale)


def test_children_name_their_parent_by_id_and_share_it(tmp_path):
    runs = expand(tmp_path, STUDY)
    assert len(runs.sweep) == 4 and len(runs.parents) == 1
    parent = runs.parents[0]
    assert parent.role == "parent" and parent.spec["steps"] == 30 and parent.spec["init"] is None
    assert parent.spec["seed"] == 1  # the study's first seed unless the parent names one
    for child in runs.sweep:
        assert child.spec["init"] == {"run": parent.run_id, "step": 20, "restore": "optimizer", "exclude": []}


def test_changing_the_parent_changes_every_child(tmp_path):
    before = {r.labels["lr"]: r.run_id for r in expand(tmp_path, STUDY).sweep if r.labels["seed"] == 1}
    study = copy.deepcopy(STUDY)
    study["parents"]["pretrain"]["set"]["optimizer"] = {"lr": 0.2}
    after = {r.labels["lr"]: r.run_id for r in expand(tmp_path, study).sweep if r.labels["seed"] == 1}
    assert before.keys() == after.keys() and not set(before.values()) & set(after.values())


def test_chains_and_followed_axes(tmp_path):
    """A cooldown of a constant-lr run per width, fine-tuned on other data."""
    study = copy.deepcopy(STUDY)
    study["parents"] = {
        "constant": {"set": {"steps": 30, "checkpoints": [10, 20]}, "follow": ["width"]},
        "cooldown": {"set": {"steps": 25, "checkpoints": [25], "schedule": {"name": "linear"},
                             "init": {"parent": "constant", "step": 20, "restore": "optimizer"}}, "follow": ["width"]},
    }
    study["base"]["init"] = {"parent": "cooldown", "step": "final", "restore": "weights"}
    study["base"]["dataset"] = dict(DATA, seed=7)
    study["axes"] = {"width": [{"label": 8, "set": {"model": {"width": 8}}}, {"label": 16, "set": {"model": {"width": 16}}}]}
    runs = expand(tmp_path, study)
    parents = {(r.labels["parent"], r.labels["width"]): r for r in runs.parents}
    assert len(parents) == 4  # one constant run and one cooldown per width
    for width in (8, 16):
        constant, cooldown = parents[("constant", width)], parents[("cooldown", width)]
        assert cooldown.spec["init"]["run"] == constant.run_id and cooldown.spec["model"]["width"] == width
        children = [r for r in runs.sweep if r.labels["width"] == width]
        assert {c.spec["init"]["run"] for c in children} == {cooldown.run_id}
        assert {c.spec["init"]["step"] for c in children} == {25}  # "final": the parent's last step


def test_refined_schedule_reads_its_source_run(tmp_path):
    study = copy.deepcopy(STUDY)
    del study["base"]["init"]
    study["parents"] = {"source": {"set": {"instruments": [{"name": "grad_norm"}], "schedule": {"name": "constant"}}}}
    study["base"]["schedule"] = {"name": "refined", "grad_norms": {"parent": "source"}}
    runs = expand(tmp_path, study)
    (source,) = runs.parents
    assert all(r.spec["schedule"]["grad_norms"] == {"run": source.run_id} for r in runs.sweep)


def test_the_plan_trains_parents_first(tmp_path):
    p = plan([write(tmp_path, STUDY)], "cpu")
    (parent,) = p.study_parents["tree"]
    assert parent.run_id in p.runs and p.group_of[parent.run_id] != p.group_of[p.study_runs["tree"][0].run_id]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s["base"]["init"].update(parent="nope"), r"unknown parent 'nope'; the study's parents: \['pretrain'\]"),
        (lambda s: s["base"]["init"].update(step=15), r"needs the parent's training state at step 15.*saves only at its checkpoints \[10, 20\]"),
        (lambda s: s["base"]["init"].update(step=15, restore="weights"), r"saves no weights at step 15"),
        (lambda s: s["base"].update(steps=20), r"its steps \(20\) must exceed the branch step 20"),
        (lambda s: s["parents"]["pretrain"]["set"].update(init={"parent": "pretrain"}), r"parents form a cycle: pretrain -> pretrain"),
        (lambda s: s["parents"]["pretrain"].update(follow=["depth"]), r"follows axes \['depth'\]"),
        (lambda s: s["parents"]["pretrain"]["set"].update(model={"width": 16}), r"tensor '1.weight' has shape \[8, 6\] in the child but \[16, 6\] in the parent"),
        (lambda s: s["base"]["init"].update(restore="everything"), r"restore"),
    ],
)
def test_bad_references_fail_at_parse_time(tmp_path, mutate, message):
    study = copy.deepcopy(STUDY)
    mutate(study)
    with pytest.raises(StudyError, match=message) as info:
        load_study(write(tmp_path, study))
    assert "tree.yaml" in str(info.value)


def test_a_new_head_is_excluded_from_the_parents_weights(tmp_path):
    study = copy.deepcopy(STUDY)
    study["base"]["dataset"] = dict(DATA, n_classes=5)  # another task: a new output layer
    study["parents"]["pretrain"]["set"]["dataset"] = DATA
    with pytest.raises(StudyError, match=r"has shape \[5, 8\] in the child but \[3, 8\]"):
        load_study(write(tmp_path, study))
    study["base"]["init"].update(exclude=["5."], restore="weights", step="final")
    runs = expand(tmp_path, study)
    assert all(r.spec["init"]["exclude"] == ["5."] and r.spec["init"]["step"] == 30 for r in runs.sweep)
