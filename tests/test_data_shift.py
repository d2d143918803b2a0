"""The shifted evaluation split (mnist1d's ``shift``) and the optional extra splits of SplitData."""

import numpy as np
import pytest
import torch

from descentlab.data import DATASETS, EXTRA_SPLITS, SPLITS, SplitData, build_dataset
from descentlab.spec import SpecError, validate


def test_a_shift_adds_test_shifted_and_changes_nothing_else():
    plain = DATASETS.get("mnist1d")(n_samples=400)
    shifted = build_dataset({"name": "mnist1d", "n_samples": 400, "shift": {"iid_noise_scale": 0.1}})
    assert plain.splits == SPLITS and shifted.splits == SPLITS + ("test_shifted",)
    for split in SPLITS:
        assert torch.equal(plain.x[split], shifted.x[split]) and torch.equal(plain.y[split], shifted.y[split])
    assert shifted.x["test_shifted"].shape == plain.x["test"].shape
    assert torch.bincount(shifted.y["test_shifted"], minlength=10).tolist() == [8] * 10  # balanced, as generated
    assert shifted.info["shift"] == {"iid_noise_scale": 0.1}


def test_the_shifted_split_is_the_generator_with_the_shift_and_another_seed():
    """Independent answer: mnist1d's own generator, called directly with the shifted arguments."""
    from mnist1d.data import get_dataset_args, make_dataset

    from descentlab.data import SHIFT_SEED_OFFSET

    shifted = build_dataset({"name": "mnist1d", "n_samples": 400, "seed": 3, "shift": {"max_translation": 60}})
    args = get_dataset_args()
    args.num_samples, args.seed, args.max_translation, args.train_split = 80, 3 + SHIFT_SEED_OFFSET, 60, 1.0
    raw = make_dataset(args)
    np.testing.assert_array_equal(shifted.x["test_shifted"].numpy(), raw["x"].astype(np.float32))
    np.testing.assert_array_equal(shifted.y["test_shifted"].numpy(), raw["y"])


def test_bad_shift_arguments_are_named():
    with pytest.raises(ValueError, match=r"\['max_translaton'\] are not generator arguments"):
        build_dataset({"name": "mnist1d", "n_samples": 200, "shift": {"max_translaton": 60}})
    with pytest.raises(ValueError, match=r"\['seed'\] are not generator arguments"):
        build_dataset({"name": "mnist1d", "n_samples": 200, "shift": {"seed": 1}})


def test_split_files_round_trip_with_and_without_the_extra_split(tmp_path):
    shifted = build_dataset({"name": "mnist1d", "n_samples": 200, "shift": {"iid_noise_scale": 0.1}})
    shifted.save(tmp_path / "s.pt")
    back = SplitData.load(tmp_path / "s.pt")
    assert back.splits == shifted.splits and torch.equal(back.x["test_shifted"], shifted.x["test_shifted"])
    plain = DATASETS.get("gaussian_mixture")(n_samples=100)
    plain.save(tmp_path / "p.pt")  # a file written before extra splits existed has exactly these keys
    assert set(torch.load(tmp_path / "p.pt", weights_only=True)) == {"task", "num_outputs", "input_shape", "info"} | {
        f"{v}_{s}" for s in SPLITS for v in "xy"}
    assert SplitData.load(tmp_path / "p.pt").splits == SPLITS


def test_unknown_splits_are_refused():
    data = DATASETS.get("gaussian_mixture")(n_samples=100)
    with pytest.raises(ValueError, match=r"unknown splits \['ood'\]"):
        SplitData(x=dict(data.x, ood=data.x["test"]), y=dict(data.y, ood=data.y["test"]), task=data.task,
                  num_outputs=data.num_outputs, input_shape=data.input_shape)
    assert EXTRA_SPLITS == ("test_shifted",)


def test_eval_splits_may_name_test_shifted_and_training_needs_it_in_the_data(tmp_path):
    from descentlab.train import train_run

    spec = {"dataset": {"name": "gaussian_mixture", "n_samples": 100}, "model": {"name": "mlp", "width": 4},
            "steps": 2, "eval_splits": ["test_shifted"]}
    validate(spec)
    with pytest.raises(SpecError, match="eval_splits may hold"):
        validate(dict(spec, eval_splits=["shifted"]))
    with pytest.raises(ValueError, match=r"eval_splits names \['test_shifted'\], which this dataset does not have"):
        train_run(spec, DATASETS.get("gaussian_mixture")(n_samples=100), tmp_path / "run")
