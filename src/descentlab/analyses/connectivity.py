"""Linear mode connectivity of a study's runs: loss and error barriers
between pairs of trained networks.

- ``fork_barriers`` (Frankle, Dziugaite, Roy & Carbin 2020, instability
  analysis): the runs that start from a parent (``init``) are grouped by
  (parent, step k); within a group, the runs sorted by seed are paired
  (seeds s0+s1, s2+s3, ...): two copies of the parent at step k trained on
  with different data orders. Per pair, the barrier along the straight line
  between their final weights, and, with ``layerwise``, along the path that
  moves one layer only, the others staying at the first run's weights
  (layer-wise linear mode connectivity, Adilova et al. 2024).
- ``matching_barriers`` (Entezari et al. 2022; Ainsworth, Hayase &
  Srinivasa 2023, Git Re-Basin): the runs that start from scratch, grouped by
  model and paired by seed as above: two independently trained networks. Per
  pair, the barrier before alignment and after permuting the second network's
  hidden units to match the first by weight matching.

Barriers are ``descentlab.averaging.barrier_table``'s: the largest excess of
the loss (error) along the path over the straight line between its end
values, on each split in ``splits``. A pair with a run that did not finish
("diverged") gets a row with NaN barriers and its status, never a number.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Sequence

from ..runs import Run
from . import ANALYSES

if TYPE_CHECKING:  # pandas is imported where it is used, so the registry imports fast
    import pandas as pd

BARRIER_COLUMNS = ["loss_barrier", "loss_barrier_alpha", "error_barrier", "error_barrier_alpha"]


def seed_pairs(runs: Sequence[Run], key, what: str) -> list[tuple[Any, Run, Run]]:
    """(group key, run a, run b) for every pair: runs grouped by ``key(run)``,
    sorted by seed within a group and paired consecutively; a group with an odd
    number of runs, or two runs with one seed, is an error."""
    groups: dict[Any, list[Run]] = defaultdict(list)
    for run in runs:
        groups[key(run)].append(run)
    pairs = []
    for group, members in groups.items():
        members = sorted(members, key=lambda r: int(r.spec["seed"]))
        seeds = [int(r.spec["seed"]) for r in members]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{what}: runs of {group} share a seed ({seeds}); pairs need distinct seeds")
        if len(members) % 2:
            raise ValueError(f"{what}: {group} has {len(members)} runs (seeds {seeds}); runs are paired by seed, "
                             "so give an even number of seeds")
        pairs += [(group, members[i], members[i + 1]) for i in range(0, len(members), 2)]
    return pairs


class _Evaluator:
    """Loads runs' final weights and evaluates paths between them on the named splits
    (the first ``n_examples`` of each), reading each prepared data file once."""

    def __init__(self, splits: Sequence[str], n_examples: int | None, n_points: int, bn_reset: bool,
                 device: str, what: str):
        if not splits:
            raise ValueError(f"{what}: splits is empty; name at least one of train, val, test")
        if int(n_points) < 3:
            raise ValueError(f"{what}: n_points must be at least 3 (alpha = 0, 1 and a point between), got {n_points}")
        self.splits, self.n_examples, self.n_points = list(splits), n_examples, int(n_points)
        self.bn_reset, self.device, self.what = bool(bn_reset), device, what
        self._data: dict[str, Any] = {}

    def load(self, run: Run):
        """(model, state dict, data) of a finished run."""
        from ..data import SplitData
        from ..checkpoints import load_weights
        from ..train.training import build_run_model

        key = str(run.data)
        if key not in self._data:
            if run.data is None:
                raise ValueError(f"{self.what}: run {run.run_id} has no data file (the planner sets it)")
            self._data[key] = SplitData.load(run.data)
        data = self._data[key]
        unknown = [s for s in self.splits if s not in data.x]
        if unknown:
            raise ValueError(f"{self.what}: splits {unknown} are not in the data; it has {sorted(data.x)}")
        model = build_run_model(run.spec, data)
        state = load_weights(run.dir / "final.pt", map_location="cpu")
        model.load_state_dict(state)
        return model.to(self.device).eval(), state, data

    def _subset(self, data, split: str):
        n = data.size(split) if self.n_examples is None else min(int(self.n_examples), data.size(split))
        return data.x[split][:n].to(self.device), data.y[split][:n].to(self.device)

    def barriers(self, run: Run, model, data, state_a, state_b, layers: Sequence[str] | None = None) -> pd.DataFrame:
        """barrier_table rows (per split) of the path from ``state_a`` to ``state_b``, with the
        end values (loss and error at alpha = 0 and 1)."""
        from ..averaging import barrier_table, path_table
        from ..train.training import build_run_loss

        splits = {s: self._subset(data, s) for s in self.splits}
        bn_data = self._subset(data, "train")[0] if self.bn_reset else None
        path = path_table(model, [state_a, state_b], splits, build_run_loss(run.spec, data, model),
                          n_points=self.n_points, bn_data=bn_data, layers=layers)
        table = barrier_table(path).drop(columns="segment")
        ends = path[path["alpha"].isin([0.0, 1.0])].pivot(index="split", columns="alpha", values=["loss", "error"])
        for value in ("loss", "error"):
            table[f"{value}_a"] = table["split"].map(ends[(value, 0.0)])
            table[f"{value}_b"] = table["split"].map(ends[(value, 1.0)])
        return table


def _failed_rows(base: dict[str, Any], splits: Sequence[str], status: str, **extra) -> list[dict[str, Any]]:
    return [dict(base, split=s, status=status, **{c: float("nan") for c in BARRIER_COLUMNS}, **extra) for s in splits]


def _pair_base(a: Run, b: Run) -> dict[str, Any]:
    sa, sb = int(a.spec["seed"]), int(b.spec["seed"])
    return {"pair": f"{sa}+{sb}", "seed_a": sa, "seed_b": sb, "run_a": a.run_id, "run_b": b.run_id}


def _status(a: Run, b: Run) -> str:
    bad = [r.status for r in (a, b) if r.status != "ok"]
    return bad[0] if bad else "ok"


def _model_width(spec: dict[str, Any]) -> int | None:
    model = spec["model"]
    for key in ("width", "channels", "d_model"):
        if key in model:
            return int(model[key])
    return None


@ANALYSES.register("fork_barriers")
def fork_barriers(
    runs: list[Run],
    device: str = "cpu",
    splits: Sequence[str] = ("train", "test"),
    n_examples: int | None = None,
    n_points: int = 11,
    layerwise: bool = True,
    bn_reset: bool = False,
) -> pd.DataFrame:
    """Per pair of runs forked from one parent at one step (see the module
    docstring) and split: fork_step, parent (its run id), pair, width, layer
    (``all``: the whole network; else the one layer moved, as named by
    ``averaging.layer_names``), layer_index (0 for ``all``, then 1, 2, ... in
    the model's order), loss_barrier, error_barrier (and the alpha of
    each), the end values loss_a, loss_b, error_a, error_b, and status.
    ``n_examples``: the first this many examples of each split (None: all);
    ``bn_reset``: recompute BatchNorm statistics on the training examples at
    every point of the path. Runs without ``init`` are left out."""
    import pandas as pd

    from ..averaging import layer_names

    forked = [r for r in runs if r.spec.get("init") is not None]
    if not forked:
        raise ValueError("fork_barriers: no run starts from a parent (init); fork children from a parent's "
                         "checkpoints with init: {parent: NAME, step: K}")
    evaluator = _Evaluator(splits, n_examples, n_points, bn_reset, device, "fork_barriers")
    rows: list[dict[str, Any]] = []
    pairs = seed_pairs(forked, lambda r: (r.spec["init"]["run"], int(r.spec["init"]["step"])), "fork_barriers")
    for (parent, step), a, b in sorted(pairs, key=lambda p: (p[0][1], p[0][0], int(p[1].spec["seed"]))):
        base = {"fork_step": step, "parent": parent, **_pair_base(a, b), "width": _model_width(a.spec)}
        status = _status(a, b)
        if status != "ok":
            rows += _failed_rows(dict(base, layer="all", layer_index=0), splits, status)
            continue
        model, state_a, data = evaluator.load(a)
        _, state_b, _ = evaluator.load(b)
        layers = [None] + (layer_names(state_a) if layerwise else [])
        for index, layer in enumerate(layers):
            table = evaluator.barriers(a, model, data, state_a, state_b, layers=None if layer is None else [layer])
            rows += [dict(base, layer="all" if layer is None else layer, layer_index=index, status="ok", **r)
                     for r in table.to_dict("records")]
    return pd.DataFrame(rows)


@ANALYSES.register("matching_barriers")
def matching_barriers(
    runs: list[Run],
    device: str = "cpu",
    splits: Sequence[str] = ("train", "test"),
    n_examples: int | None = None,
    n_points: int = 11,
    bn_reset: bool = False,
    max_iter: int = 100,
    seed: int = 0,
) -> pd.DataFrame:
    """Per pair of independently trained runs of one model (see the module
    docstring), alignment (``none``, ``weight matching``) and split: width (the
    model's width or channels), model (its spec as JSON), pair, the barriers
    and end values as in ``fork_barriers``, and status. Weight matching:
    ``averaging.weight_matching`` of the second run to the first, ``max_iter``
    rounds of coordinate descent in an order drawn with ``seed``. Runs with
    ``init`` are left out."""
    import pandas as pd

    from ..averaging import apply_permutation, sequential_spec, weight_matching

    scratch = [r for r in runs if r.spec.get("init") is None]
    if not scratch:
        raise ValueError("matching_barriers: every run starts from a parent (init); it compares runs trained "
                         "from scratch")
    evaluator = _Evaluator(splits, n_examples, n_points, bn_reset, device, "matching_barriers")
    rows: list[dict[str, Any]] = []
    pairs = seed_pairs(scratch, lambda r: json.dumps(r.spec["model"], sort_keys=True), "matching_barriers")
    for model_json, a, b in sorted(pairs, key=lambda p: (_model_width(p[1].spec) or 0, p[0], int(p[1].spec["seed"]))):
        base = {"width": _model_width(a.spec), "model": model_json, **_pair_base(a, b)}
        status = _status(a, b)
        if status != "ok":
            for alignment in ("none", "weight matching"):
                rows += _failed_rows(dict(base, alignment=alignment), splits, status)
            continue
        model, state_a, data = evaluator.load(a)
        _, state_b, _ = evaluator.load(b)
        spec = sequential_spec(model)
        perms = weight_matching(spec, state_a, state_b, max_iter=max_iter, seed=seed)
        matched = apply_permutation(spec, perms, state_b)
        for alignment, other in (("none", state_b), ("weight matching", matched)):
            table = evaluator.barriers(a, model, data, state_a, other)
            rows += [dict(base, alignment=alignment, status="ok", **r) for r in table.to_dict("records")]
    return pd.DataFrame(rows)
