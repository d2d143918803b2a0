"""Run specs: canonical form, hashing, run ids, validation; the registry type."""

import pytest

from descentlab.registry import Registry, UnknownNameError
from descentlab.spec import (
    DEFAULT_SPEC,
    SpecError,
    canonical,
    data_id,
    deep_merge,
    run_id,
    spec_hash,
    validate,
)

SPEC = {
    "dataset": {"name": "gaussian_mixture", "n_samples": 400},
    "model": {"name": "mlp", "width": 16},
    "optimizer": {"name": "adam", "lr": 1e-3},
    "steps": 20,
}


def test_hash_ignores_key_order_and_explicit_defaults():
    reordered = {"steps": 20, "optimizer": {"lr": 1e-3, "name": "adam"}, "model": {"width": 16, "name": "mlp"},
                 "dataset": {"n_samples": 400, "name": "gaussian_mixture"}}
    explicit = dict(SPEC, batch_size=DEFAULT_SPEC["batch_size"], seed=0, loss={"name": "cross_entropy"})
    assert spec_hash(SPEC) == spec_hash(reordered) == spec_hash(explicit)


def test_integral_floats_hash_like_ints():
    assert spec_hash(dict(SPEC, optimizer={"name": "sgd", "lr": 1})) == spec_hash(dict(SPEC, optimizer={"name": "sgd", "lr": 1.0}))


@pytest.mark.parametrize(
    "change",
    [{"seed": 1}, {"steps": 21}, {"optimizer": {"name": "adam", "lr": 2e-3}}, {"model": {"name": "mlp", "width": 17}},
     {"checkpoints": [10]}, {"schedule": {"name": "cosine"}}],
)
def test_any_change_changes_the_hash(change):
    assert spec_hash(deep_merge(SPEC, change)) != spec_hash(SPEC)


def test_run_id_is_readable_and_ends_with_the_hash():
    rid = run_id(SPEC)
    assert rid == f"gaussian_mixture-mlp-adam-lr0.001-s0-{spec_hash(SPEC)}"


def test_data_id_names_the_dataset_spec():
    assert data_id(SPEC["dataset"]) == data_id({"n_samples": 400, "name": "gaussian_mixture"})
    assert data_id(SPEC["dataset"]) != data_id({"name": "gaussian_mixture", "n_samples": 401})


def test_deep_merge_replaces_a_component_whose_name_changes():
    merged = deep_merge({"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}, {"optimizer": {"name": "adam"}})
    assert merged["optimizer"] == {"name": "adam"}
    merged = deep_merge({"optimizer": {"name": "sgd", "lr": 0.1}}, {"optimizer": {"momentum": 0.9}})
    assert merged["optimizer"] == {"name": "sgd", "lr": 0.1, "momentum": 0.9}


def test_canonical_sorts_checkpoints_and_rejects_unknown_keys():
    assert canonical(dict(SPEC, checkpoints=[10, 5, 10]))["checkpoints"] == [5, 10]
    with pytest.raises(SpecError, match="unknown run-spec key.*stepz"):
        canonical(dict(SPEC, stepz=3))
    with pytest.raises(SpecError, match="non-finite"):
        canonical(dict(SPEC, optimizer={"name": "sgd", "lr": float("nan")}))


def test_validate_names_the_valid_choices():
    with pytest.raises(SpecError, match=r"unknown optimizer 'adamm' \(did you mean 'adam'\?\).*adamw.*sgd"):
        validate(dict(SPEC, optimizer={"name": "adamm"}), where="here")
    with pytest.raises(SpecError, match="unknown model"):
        validate(dict(SPEC, model={"name": "transformer9000"}))


def test_validate_checks_hyperparameter_names_against_the_builder():
    with pytest.raises(SpecError, match=r"does not take \['momentun'\].*momentum"):
        validate(dict(SPEC, optimizer={"name": "sgd", "lr": 0.1, "momentun": 0.9}))
    with pytest.raises(SpecError, match=r"does not take \['widht'\]"):
        validate(dict(SPEC, model={"name": "mlp", "widht": 3}))


@pytest.mark.parametrize(
    "bad, message",
    [({"steps": 0}, "steps must be a positive integer"), ({"batch_size": 2.5}, "batch_size"),
     ({"eval_splits": ["dev"]}, "eval_splits"), ({"checkpoints": [21]}, "outside"),
     ({"instruments": [{"name": "nope"}]}, "unknown instrument"),
     ({"schedule": {"name": "cosine", "warmup_steps": 50}}, r"schedule .*warmup_steps must be in \[0, total_steps=20\]")],
)
def test_validate_rejects_bad_values(bad, message):
    with pytest.raises(SpecError, match=message):
        validate(dict(SPEC, **bad))


def test_registry_errors_list_valid_names_and_refuse_duplicates():
    reg = Registry("widget")
    reg.register("alpha", int)

    @reg.register("beta")
    def beta(x=1):
        return x

    assert reg.names() == ["alpha", "beta"] and "beta" in reg and len(reg) == 2
    assert reg.build({"name": "beta", "x": 3}) == 3 and reg.build("beta") == 1
    with pytest.raises(UnknownNameError, match="unknown widget 'alpah' \\(did you mean 'alpha'\\?\\); valid widget names: alpha, beta"):
        reg.get("alpah")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha", float)
