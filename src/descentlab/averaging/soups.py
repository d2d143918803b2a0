"""Model soups (Wortsman et al., ICML 2022) and DiWA (Ramé et al., NeurIPS 2022).

* ``uniform_soup``: the mean of the inputs' floating tensors (fine-tunings of
  one pretrained model); integer tensors come from the first input.
* ``greedy_soup``: score every input on a held-out split, order them by score
  (best first, a stable sort, so equal scores keep the input order), start the
  soup from the best one, and add each next candidate iff the soup with it
  scores at least as well as the soup without it (``ties="accept"``, the
  "accept if not worse" rule, as in DiWA's restricted averaging), or strictly
  better (``ties="reject"``, as in the model-soups code). Scores are "higher is
  better" (accuracy, or minus a loss). The soup therefore never scores below
  the best single input on that split.
* ``diwa``: DiWA's weight averaging of diverse fine-tunings from a shared
  initialisation: the uniform soup, or with ``greedy=True`` its greedy variant
  (``ties="accept"``). DiWA's code averages parameters only and copies buffers
  from the first network; ``carry`` names tensors to copy like that (e.g. the
  BatchNorm running statistics), otherwise every floating tensor is averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from .states import Source, StateDict, WeightedSum, iter_states, load_state, reiterable

__all__ = ["uniform_soup", "weighted_average", "greedy_soup", "GreedySoup", "diwa", "TIE_RULES"]

TIE_RULES = ("accept", "reject")


def weighted_average(sources: Iterable[Source], weights: Sequence[float] | None = None,
                     carry: Iterable[str] = ()) -> StateDict:
    """sum_i w_i theta_i / sum_i w_i, streaming over ``sources`` (uniform when ``weights`` is None).

    ``carry``: names of floating tensors copied from the first input instead of averaged.
    """
    carry = set(carry)
    acc = WeightedSum()
    total = 0.0
    first: StateDict | None = None
    for i, state in enumerate(iter_states(sources)):
        w = 1.0 if weights is None else float(weights[i]) if i < len(weights) else None
        if w is None:
            raise ValueError(f"{len(weights)} weights for more than {len(weights)} inputs")
        if first is None:
            unknown = sorted(carry - set(state))
            if unknown:
                raise ValueError(f"carry names tensors the inputs do not have: {unknown}")
            first = {k: state[k].clone() for k in carry}
        acc.add(state, w)
        total += w
    if acc.count == 0:
        raise ValueError("no inputs were given to merge")
    if weights is not None and acc.count != len(weights):
        raise ValueError(f"{len(weights)} weights for {acc.count} inputs")
    if total == 0.0:
        raise ValueError("the weights sum to zero")
    out = acc.result(1.0 / total)
    out.update(first)
    return out


def uniform_soup(sources: Iterable[Source], carry: Iterable[str] = ()) -> StateDict:
    """The mean of the inputs (a one-shot iterator is fine: each input is read once)."""
    return weighted_average(sources, None, carry)


@dataclass
class GreedySoup:
    """The greedy soup's weights and its record: one row per candidate, in the order tried."""

    state: StateDict
    history: pd.DataFrame = field(repr=False)

    @property
    def ingredients(self) -> list[int]:
        return [int(i) for i in self.history.loc[self.history["accepted"], "input"]]


def greedy_soup(sources: Sequence[Source], score: Callable[[StateDict], float], ties: str = "accept",
                scores: Sequence[float] | None = None, carry: Iterable[str] = ()) -> GreedySoup:
    """Greedy soup on a held-out score (higher is better); see the module docstring for the rule.

    ``score(state_dict) -> float`` evaluates weights on the selection split.
    ``scores``: the inputs' own scores if already known (else each input is
    scored once). The inputs are read twice (scoring, then soup building), so
    pass paths or state dicts, not a one-shot iterator. Integer tensors come
    from the best input (the soup's first ingredient).
    """
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {TIE_RULES} ('accept': add a candidate that leaves the score "
                         f"unchanged; 'reject': add only strict improvements), got {ties!r}")
    sources = list(reiterable(sources, "greedy_soup"))
    if not sources:
        raise ValueError("no inputs were given to merge")
    if scores is None:
        scores = [float(score(state)) for state in iter_states(sources)]
    elif len(scores) != len(sources):
        raise ValueError(f"{len(scores)} scores for {len(sources)} inputs")
    scores = [float(s) for s in scores]
    order = sorted(range(len(sources)), key=lambda i: -scores[i])  # stable: equal scores keep input order
    carry = set(carry)

    acc = WeightedSum()
    best_state = load_state(sources[order[0]])
    first = {k: best_state[k].clone() for k in carry}
    acc.add(best_state)
    del best_state
    soup_score = scores[order[0]]
    rows = [{"input": order[0], "score": scores[order[0]], "soup_score": soup_score, "accepted": True}]
    for i in order[1:]:
        candidate = load_state(sources[i])
        trial = acc.copy()
        trial.add(candidate)
        del candidate
        trial_state = trial.result(1.0 / trial.count)
        trial_state.update(first)
        trial_score = float(score(trial_state))
        accept = trial_score >= soup_score if ties == "accept" else trial_score > soup_score
        if accept:
            acc, soup_score = trial, trial_score
        rows.append({"input": i, "score": scores[i], "soup_score": trial_score, "accepted": accept})
    out = acc.result(1.0 / acc.count)
    out.update(first)
    return GreedySoup(out, pd.DataFrame(rows, columns=["input", "score", "soup_score", "accepted"]))


def diwa(sources: Sequence[Source] | Iterable[Source], greedy: bool = False,
         score: Callable[[StateDict], float] | None = None, carry: Iterable[str] = ()) -> StateDict:
    """DiWA: uniform average of fine-tunings from one initialisation, or its greedy variant."""
    if not greedy:
        if score is not None:
            raise ValueError("diwa: a score is used only with greedy=True")
        return uniform_soup(sources, carry)
    if score is None:
        raise ValueError("diwa(greedy=True) needs a score on the held-out split")
    return greedy_soup(sources, score, ties="accept", carry=carry).state
