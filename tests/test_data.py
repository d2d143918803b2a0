"""Datasets and models: offline, deterministic, the declared shapes."""

import random

import numpy as np
import pytest
import torch

from descentlab.data import DATASETS, SPLITS, SplitData, build_dataset
from descentlab.models import MODELS

SMALL = {
    "mnist1d": {"n_samples": 600},
    "digits": {},
    "gaussian_mixture": {"n_samples": 300, "n_classes": 3, "dim": 4},
    "teacher_student": {"n_samples": 300, "dim": 5, "num_outputs": 2},
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_datasets_are_deterministic_with_disjoint_splits(name, tmp_path):
    a = DATASETS.get(name)(**SMALL[name])
    b = DATASETS.get(name)(**SMALL[name])
    for split in SPLITS:
        assert torch.equal(a.x[split], b.x[split]) and torch.equal(a.y[split], b.y[split])
        assert a.x[split].dtype == torch.float32 and a.size(split) > 0
    # no example appears in two splits
    rows = {tuple(r.tolist()) for r in a.x["train"]}
    assert not rows & {tuple(r.tolist()) for r in a.x["test"]}
    path = tmp_path / "d.pt"
    a.save(path)
    c = SplitData.load(path)
    assert c.input_shape == a.input_shape and torch.equal(c.y["test"], a.y["test"]) and c.task == a.task
    if a.task == "classification":
        assert a.y["train"].dtype == torch.int64 and int(a.y["train"].max()) < a.num_outputs
    else:
        assert a.y["train"].shape == (a.size("train"), a.num_outputs)


def test_mnist1d_restores_global_rngs():
    np.random.seed(123)
    random.seed(123)
    before = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    DATASETS.get("mnist1d")(n_samples=200)
    assert (np.random.rand(), random.random()) == before


def test_label_noise_flips_the_requested_fraction_of_training_labels_only():
    spec = {"name": "gaussian_mixture", "n_samples": 1000, "n_classes": 4}
    clean = build_dataset(spec)
    noisy = build_dataset(dict(spec, label_noise=0.25))
    changed = (clean.y["train"] != noisy.y["train"]).sum().item()
    assert changed == round(0.25 * clean.size("train"))
    assert torch.equal(clean.y["val"], noisy.y["val"]) and torch.equal(clean.y["test"], noisy.y["test"])
    assert torch.equal(clean.x["train"], noisy.x["train"])
    with pytest.raises(ValueError, match="classification"):
        build_dataset({"name": "teacher_student", "label_noise": 0.1})


@pytest.mark.parametrize(
    "spec, shape",
    [({"name": "mlp", "width": 7, "depth": 3}, (40,)), ({"name": "cnn", "batchnorm": True}, (1, 8, 8)),
     ({"name": "cnn", "channels": 4}, (40,)), ({"name": "mlp", "depth": 0}, (1, 8, 8))],
)
def test_models_map_flat_inputs_to_outputs(spec, shape):
    model = MODELS.build(spec, shape, 5)
    out = model(torch.randn(3, int(np.prod(shape))))
    assert out.shape == (3, 5)


def test_mlp_layer_sizes_and_bad_arguments():
    model = MODELS.build({"name": "mlp", "width": 7, "depth": 2}, (4,), 3)
    assert sum(p.numel() for p in model.parameters()) == (4 * 7 + 7) + (7 * 7 + 7) + (7 * 3 + 3)
    with pytest.raises(ValueError, match="activation"):
        MODELS.build({"name": "mlp", "activation": "swishy"}, (4,), 3)
    with pytest.raises(ValueError, match="inputs must be"):
        MODELS.build({"name": "cnn"}, (1, 2, 3, 4), 3)
