"""The run spec's ``averaging`` list: checked at parse time (spec and study
files) with errors naming the entry, key and value; canonical form and run ids."""

import pytest
import yaml

from descentlab.spec import SpecError, canonical, run_id, validate
from descentlab.studies import StudyError, expand_study, load_study
from descentlab.train.outputs import output_files

SPEC = {
    "dataset": {"name": "gaussian_mixture", "n_samples": 200},
    "model": {"name": "mlp", "width": 8},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "steps": 100,
}


def test_specs_without_averaging_keep_their_run_ids():
    """The key is left out of the canonical form when empty, so runs named before
    it existed keep their names (the id below is this spec's before the change)."""
    assert "averaging" not in canonical(SPEC)
    assert run_id(SPEC) == run_id(dict(SPEC, averaging=[])) == "gaussian_mixture-mlp-sgd-lr0.1-s0-5af6cef4"


def test_defaults_are_filled_so_equal_averagers_name_one_run():
    short = dict(SPEC, averaging=[{"kind": "ema"}])
    explicit = dict(SPEC, averaging=[{"kind": "ema", "name": "ema", "decay": 0.999, "scale_with_batch": None}])
    assert run_id(short) == run_id(explicit) != run_id(SPEC)
    assert run_id(dict(SPEC, averaging=[{"kind": "ema", "decay": 0.99}])) != run_id(short)
    assert validate(short)["averaging"] == explicit["averaging"]


def test_every_kind_validates_with_its_documented_keys():
    spec = dict(SPEC, averaging=[
        {"kind": "swa", "start": 50, "lr": 0.05, "schedule": "constant", "anneal_steps": 5},
        {"kind": "swa", "name": "swa_cyclic", "start": 50, "every": 5, "lr": 0.01, "lr_max": 0.1, "schedule": "cyclic"},
        {"kind": "ema", "decay": 0.999, "scale_with_batch": {"reference_batch": 32}},
        {"kind": "lawa", "k": 5, "every": 10},
        {"kind": "switch_ema", "decay": 0.99},
        {"kind": "posthoc_ema", "sigma_rels": [0.05, 0.10], "snapshot_every": 10},
    ])
    validate(spec)
    names = {p.name for p in output_files("out", spec)}
    assert {"final.swa.pt", "final.swa_cyclic.pt", "final.ema.pt", "final.lawa.pt", "final.switch_ema.pt",
            "final.posthoc_ema.pt"} <= names


@pytest.mark.parametrize("entry, message", [
    ({"decay": 0.9}, r"averaging\[0\]: each entry is a mapping with a 'kind'"),
    ({"kind": "swag"}, r"averaging\[0\]: kind = 'swag' is unknown; kinds: swa, ema"),
    ({"kind": "ema", "beta": 0.9}, r"averaging\[0\] \(ema\): unknown key\(s\) \['beta'\]"),
    ({"kind": "ema", "decay": 1.0}, r"averaging\[0\] \(ema\): decay = 1 must be a number in \(0, 1\)"),
    ({"kind": "ema", "decay": "0.9"}, r"decay = '0.9' must be a number"),
    ({"kind": "ema", "scale_with_batch": {"reference": 32}}, r"scale_with_batch = \{'reference': 32\} must be null or"),
    ({"kind": "ema", "scale_with_batch": {"reference_batch": 0}}, r"scale_with_batch.reference_batch = 0 must be a positive integer"),
    ({"kind": "swa"}, r"averaging\[0\] \(swa\): missing required key\(s\) \['start'\]"),
    ({"kind": "swa", "start": 101}, r"start = 101 must be an integer step in \[0, steps=100\]"),
    ({"kind": "swa", "start": 10, "every": 0}, r"every = 0 must be a positive integer"),
    ({"kind": "swa", "start": 10, "schedule": "cosine"}, r"schedule = 'cosine' must be one of constant, cyclic"),
    ({"kind": "swa", "start": 10, "lr": -0.1}, r"lr = -0.1 must be a positive number"),
    ({"kind": "swa", "start": 10, "schedule": "cyclic", "lr": 0.1}, r"schedule = 'cyclic' needs lr .* and lr_max"),
    ({"kind": "swa", "start": 10, "schedule": "cyclic", "lr": 0.1, "lr_max": 0.01}, r"lr_max = 0.01 must be >= lr = 0.1"),
    ({"kind": "swa", "start": 10, "lr": 0.1, "lr_max": 0.2}, r"lr_max = 0.2 is for schedule 'cyclic' only"),
    ({"kind": "swa", "start": 10, "lr": 0.1, "anneal": "step"}, r"anneal = 'step' must be one of cos, linear"),
    ({"kind": "swa", "start": 10, "anneal_steps": 5}, r"anneal_steps/anneal shape the SWA lr; give lr"),
    ({"kind": "lawa", "k": 5}, r"averaging\[0\] \(lawa\): missing required key\(s\) \['every'\]"),
    ({"kind": "lawa", "k": 0, "every": 5}, r"k = 0 must be a positive integer"),
    ({"kind": "lawa", "every": 500}, r"every = 500 exceeds steps=100"),
    ({"kind": "posthoc_ema", "snapshot_every": 10, "sigma_rels": []}, r"sigma_rels = \[\] must be a non-empty list"),
    ({"kind": "posthoc_ema", "snapshot_every": 10, "sigma_rels": [0.05, 0.05]}, r"must be a non-empty list of distinct"),
    ({"kind": "posthoc_ema", "snapshot_every": 10, "sigma_rels": [0.05, 0.6]}, r"sigma_rels holds 0.6: .*no power-function profile"),
    ({"kind": "posthoc_ema", "snapshot_every": 0}, r"snapshot_every = 0 must be a positive integer"),
    ({"kind": "ema", "name": "my ema"}, r"name = 'my ema' must be letters"),
])
def test_bad_entries_name_the_entry_key_and_value(entry, message):
    with pytest.raises(SpecError, match=message):
        validate(dict(SPEC, averaging=[entry]), where="study x, run y")


def test_two_averagers_need_distinct_names():
    with pytest.raises(SpecError, match=r"averaging\[1\] \(ema\): name = 'ema' is also averaging\[0\]'s"):
        validate(dict(SPEC, averaging=[{"kind": "ema"}, {"kind": "ema", "decay": 0.99}]))
    validate(dict(SPEC, averaging=[{"kind": "ema"}, {"kind": "ema", "name": "ema2", "decay": 0.99}]))


def test_averaging_must_be_a_list():
    with pytest.raises(SpecError, match="averaging must be a list"):
        validate(dict(SPEC, averaging={"kind": "ema"}))


def _study(tmp_path, averaging):
    study = {"name": "toy", "title": "toy", "papers": ["none"], "base": dict(SPEC, averaging=averaging), "seeds": [0],
             "scales": {"smoke": {"set": {"steps": 20}}, "cpu": {}, "paper": {}},
             "figures": [{"name": "curves", "kind": "learning_curves"}]}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_a_study_declares_averagers_and_bad_ones_fail_at_parse_time(tmp_path):
    study = load_study(_study(tmp_path, [{"kind": "ema", "decay": 0.99}, {"kind": "swa", "start": 10}]))
    assert [e["kind"] for e in expand_study(study, "cpu")[0].spec["averaging"]] == ["ema", "swa"]
    with pytest.raises(StudyError, match="kind"):  # the schema's enum
        load_study(_study(tmp_path, [{"kind": "swag"}]))
    with pytest.raises((StudyError, SpecError), match=r"start = 50 must be an integer step in \[0, steps=20\]"):
        load_study(_study(tmp_path, [{"kind": "swa", "start": 50}]))  # fine at cpu scale, not at smoke
