"""Uniform soup, weighted average, greedy soup (ordering, tie rule, never below the best) and DiWA."""

import copy

import pytest
import torch
import torch.nn.functional as F
from _merge_helpers import random_state, teacher_data, train, trained_mlp

from descentlab.averaging import diwa, greedy_soup, uniform_soup, weighted_average
from descentlab.landscape import evaluate


def test_uniform_soup_is_the_mean():
    states = [random_state(s, counter=s + 3) for s in range(5)]
    out = uniform_soup(states)
    for k in ("w", "b"):
        expected = sum(s[k] for s in states) / 5  # by hand, float64
        torch.testing.assert_close(out[k], expected, rtol=0, atol=1e-14)
    assert int(out["n"]) == 3


def test_uniform_soup_reads_a_one_shot_iterator_and_keeps_float32():
    states = [random_state(s, dtype=torch.float32) for s in range(3)]
    out = uniform_soup(iter(states))
    assert out["w"].dtype == torch.float32
    torch.testing.assert_close(out["w"], torch.stack([s["w"] for s in states]).mean(0))


def test_weighted_average_and_carry():
    states = [random_state(s) for s in range(3)]
    out = weighted_average(states, [1.0, 2.0, 5.0], carry=["b"])
    torch.testing.assert_close(out["w"], (states[0]["w"] + 2 * states[1]["w"] + 5 * states[2]["w"]) / 8)
    assert torch.equal(out["b"], states[0]["b"])
    with pytest.raises(ValueError, match="carry names tensors the inputs do not have"):
        weighted_average(states, carry=["nope"])
    with pytest.raises(ValueError, match="sum to zero"):
        weighted_average(states[:2], [1.0, -1.0])


def _table_score(table):
    """A score looked up from the soup's weights: lets a test choose every score by hand."""
    def score(state):
        key = round(float(state["w"][0, 0]), 6)
        return table[key]
    return score


def _scalar_state(value):
    return {"w": torch.tensor([[float(value)]], dtype=torch.float64)}


def test_greedy_soup_orders_by_score_and_applies_the_tie_rule():
    # inputs w = 0, 10, 100, 1000 with individual scores 0.5, 0.9, 0.7, 0.9 (a tie between inputs 1 and 3)
    states = [_scalar_state(v) for v in (0, 10, 100, 1000)]
    table = {0.0: 0.5, 10.0: 0.9, 100.0: 0.7, 1000.0: 0.9,
             505.0: 0.9,                  # soup {1, 3}: equal to the soup {1}: a tie
             370.0: 0.95,                 # soup {1, 3, 2}: better
             277.5: 0.1,                  # soup {1, 3, 2, 0}: worse
             55.0: 0.95,                  # soup {1, 2} (when 3 was rejected): better
             round(110 / 3, 6): 0.1}      # soup {1, 2, 0}: worse
    accepted = greedy_soup(states, _table_score(table), ties="accept")
    # stable order: input 1 before input 3 (equal scores keep the input order), then 2, then 0
    assert list(accepted.history["input"]) == [1, 3, 2, 0]
    assert accepted.ingredients == [1, 3, 2]
    assert float(accepted.state["w"]) == pytest.approx(370.0)
    rejected = greedy_soup(states, _table_score(table), ties="reject")
    assert rejected.ingredients == [1, 2]
    assert float(rejected.state["w"]) == pytest.approx(55.0)
    with pytest.raises(ValueError, match="ties must be one of"):
        greedy_soup(states, _table_score(table), ties="maybe")
    with pytest.raises(ValueError, match="more than once"):
        greedy_soup(iter(states), _table_score(table))


def _finetunes(n, seed):
    """Fine-tunings of one trained parent with varied learning rates and data orders; some are poor."""
    parent = trained_mlp(seed=seed, steps=150)
    x, y = teacher_data(n=512, seed=seed, data_seed=1, scale=1.5, shift=0.5)  # a shifted input distribution
    out = []
    for i in range(n):
        child = copy.deepcopy(parent)
        lr = [1e-3, 3e-3, 1e-2, 0.1][i % 4]  # 0.1 with Adam is often harmful
        perm = torch.randperm(512, generator=torch.Generator().manual_seed(i))[:256]
        train(child, x[perm], y[perm], steps=30, lr=lr, seed=seed * 100 + i)
        out.append(child.state_dict())
    return parent, out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_soup_never_scores_below_the_best_single_model_on_its_selection_split(seed):
    parent, finetunes = _finetunes(6, seed)
    xs, ys = teacher_data(n=300, seed=seed, data_seed=2, scale=1.5, shift=0.5)  # held out

    def score(state):
        return evaluate(parent, F.cross_entropy, xs, ys, params=state)["accuracy"]

    singles = [score(s) for s in finetunes]
    for ties in ("accept", "reject"):
        soup = greedy_soup(finetunes, score, ties=ties)
        final = score(soup.state)
        assert final >= max(singles)
        assert final == pytest.approx(soup.history.loc[soup.history["accepted"], "soup_score"].iloc[-1])
        assert soup.history["input"].iloc[0] == max(range(6), key=lambda i: (singles[i], -i))


def test_diwa_is_the_uniform_soup_or_its_greedy_variant():
    states = [random_state(s) for s in range(4)]
    out = diwa(states)
    for k in ("w", "b"):
        torch.testing.assert_close(out[k], uniform_soup(states)[k])

    def score(state):
        return -float((state["w"] - 0.2).pow(2).sum())

    greedy = diwa(states, greedy=True, score=score)
    expected = greedy_soup(states, score, ties="accept").state
    for k in ("w", "b"):
        assert torch.equal(greedy[k], expected[k])
    with pytest.raises(ValueError, match="needs a score"):
        diwa(states, greedy=True)
