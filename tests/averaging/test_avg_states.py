"""Architecture checks, carried integer buffers, lazy path inputs and bounded memory (streaming)."""

import pytest
import torch
from _merge_helpers import TrackedInputs, bn_cnn, random_state

from descentlab.averaging import (dare_merge, fisher_merge, gradient_matching_merge, model_stock, task_arithmetic,
                                  ties_merge, uniform_soup, weighted_average)
from descentlab.averaging.states import WeightedSum, check_same_architecture, load_state


def test_mismatch_errors_name_the_first_differing_tensor_and_both_shapes():
    a = {"x": torch.zeros(2), "layer.weight": torch.zeros(3, 4), "layer.bias": torch.zeros(3)}
    b = {"x": torch.zeros(2), "layer.weight": torch.zeros(3, 5), "layer.bias": torch.zeros(4)}
    with pytest.raises(ValueError, match=r"input 1 tensor 'layer.weight' has shape \(3, 5\), the reference's has shape \(3, 4\)"):
        uniform_soup([a, b])
    with pytest.raises(ValueError, match=r"has no tensor 'layer.bias'"):
        uniform_soup([a, {"x": torch.zeros(2), "layer.weight": torch.zeros(3, 4)}])
    with pytest.raises(ValueError, match=r"holds tensor 'extra' \(shape \(1,\)\)"):
        uniform_soup([a, {**a, "extra": torch.zeros(1)}])
    with pytest.raises(ValueError, match=r"tensor 'x' is torch.int64"):
        check_same_architecture(a, {**a, "x": torch.zeros(2, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"tensor 'layer.weight' has shape"):
        task_arithmetic(a, [b])
    with pytest.raises(ValueError, match=r"tensor 'layer.weight' has shape"):
        ties_merge(a, [a, b])


def test_integer_buffers_are_carried_from_the_first_model_never_averaged():
    models = [bn_cnn(seed=s) for s in range(3)]
    for i, m in enumerate(models):
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.num_batches_tracked.fill_(10 * (i + 1) + 1)  # 11, 21, 31: a float mean would be 21
    merged = uniform_soup(models)
    counters = [k for k in merged if k.endswith("num_batches_tracked")]
    assert counters
    for k in counters:
        assert merged[k].dtype == torch.int64 and int(merged[k]) == 11
    # floating buffers (running statistics) are averaged
    k = next(k for k in merged if k.endswith("running_mean"))
    expected = torch.stack([m.state_dict()[k] for m in models]).mean(0)
    torch.testing.assert_close(merged[k], expected)
    base = models[0].state_dict()
    for out in (task_arithmetic(base, models[1:]), ties_merge(base, models[1:], density=0.5),
                dare_merge(base, models[1:], drop=0.5, seed=0), model_stock(base, models[1:])):
        for k in counters:
            assert out[k].dtype == torch.int64 and int(out[k]) == 11


def test_inputs_are_read_from_paths(tmp_path):
    states = [random_state(s, counter=s) for s in range(3)]
    paths = []
    for i, s in enumerate(states):
        paths.append(tmp_path / f"m{i}.pt")
        torch.save(s, paths[-1])
    from_paths = uniform_soup(paths)
    from_dicts = uniform_soup(states)
    for k in from_dicts:
        assert torch.equal(from_paths[k], from_dicts[k])
    torch.testing.assert_close(from_paths["w"], torch.stack([s["w"] for s in states]).mean(0))
    assert int(from_paths["n"]) == 0


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no inputs"):
        uniform_soup([])
    with pytest.raises(TypeError, match="weights-file path, a state dict or an nn.Module"):
        load_state(3)
    with pytest.raises(ValueError, match="reads its inputs more than once"):
        ties_merge(random_state(0), (random_state(s) for s in range(3)))
    with pytest.raises(ValueError, match="2 weights for more than 2 inputs"):
        weighted_average([random_state(s) for s in range(3)], [1.0, 2.0])
    from descentlab.checkpoints import CorruptArtifact
    with pytest.raises(CorruptArtifact, match="missing"):
        uniform_soup([tmp_path / "absent.pt"])


def _big_state(i):
    return random_state(i, shapes={"w": (64, 64), "b": (64,)}, counter=i, dtype=torch.float32)


def _fisher(i):
    return {k: v.abs() + 0.1 for k, v in random_state(1000 + i, shapes={"w": (64, 64), "b": (64,)},
                                                         dtype=torch.float32).items()}


@pytest.mark.parametrize("rule", ["uniform", "task_arithmetic", "dare", "ties", "dare_ties", "model_stock",
                                  "fisher", "gradient_matching"])
def test_streaming_merge_holds_a_bounded_number_of_inputs(rule):
    """Peak number of input state dicts alive while merging: the same for N = 4 and N = 16 (at most 2)."""
    base = _big_state(999)
    peaks = {}
    for n in (4, 16):
        inputs = TrackedInputs(_big_state, n)
        fishers = TrackedInputs(_fisher, n)
        if rule == "uniform":
            uniform_soup(iter(inputs))
        elif rule == "task_arithmetic":
            task_arithmetic(base, iter(inputs), lam=0.3)
        elif rule == "dare":
            dare_merge(base, iter(inputs), drop=0.5, seed=1)
        elif rule == "ties":
            ties_merge(base, inputs, density=0.3)
        elif rule == "dare_ties":
            dare_merge(base, inputs, drop=0.5, seed=1, combine="ties")
        elif rule == "model_stock":
            model_stock(base, iter(inputs))
        elif rule == "fisher":
            fisher_merge(iter(inputs), iter(fishers))
        else:
            gradient_matching_merge(base, iter(inputs), iter(fishers), prior_precision=1.0)
        peaks[n] = (inputs.peak_alive, fishers.peak_alive)
        assert inputs.reads == n * {"ties": 2, "dare_ties": 2}.get(rule, 1)  # passes over the inputs
    assert peaks[4] == peaks[16]
    assert max(peaks[16]) <= 2, peaks


def test_weighted_sum_accumulates_elementwise_weights():
    acc = WeightedSum(dtype=torch.float64)
    a, b = random_state(0, counter=3), random_state(1, counter=5)
    wa = {"w": torch.full((4, 3), 2.0), "b": torch.full((4,), 0.5)}
    acc.add(a, wa)
    acc.add(b, 3.0)
    out = acc.result()
    torch.testing.assert_close(out["w"], 2.0 * a["w"] + 3.0 * b["w"])
    torch.testing.assert_close(out["b"], 0.5 * a["b"] + 3.0 * b["b"])
    assert int(out["n"]) == 3


def test_the_counter_sees_a_merge_that_holds_every_input():
    """The streaming test can fail: a merge that first collects its inputs holds N - 1 of them."""
    inputs = TrackedInputs(_big_state, 16)
    held = list(inputs)
    uniform_soup(held)
    assert inputs.peak_alive == 15
