"""Runs that start from other runs: resolving a study's ``parents``.

A study names the runs its runs grow from in a ``parents:`` section, each a
spec of its own (the study's base, the parent's ``set``, and, for the axes
listed in ``follow``, the settings of the child's own axis entries; ``seed``
in ``follow``: one parent per child seed, trained with it), so a reader sees
what a parent is without any hash. A run refers to a parent by
name in two places:

- ``init: {parent: NAME, step: K | final, restore: weights | optimizer | all,
  exclude: [prefix, ...]}``: start from the parent's weights at step K (and,
  with ``optimizer``/``all``, from its optimizer state, and with ``all`` its
  data position and random state too: an exact continuation);
- ``schedule: {name: refined, grad_norms: {parent: NAME}}``: a schedule built
  from the parent's logged gradient norms.

``resolve_references`` replaces each name by the parent's run id (so the
child's hash includes the parent's, and a changed parent makes a new child)
and returns the parent runs, which train like any other run. Every bad
reference fails here, before any job: an unknown name, a cycle, a step the
parent does not save, an architecture that does not fit the parent's weights.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from typing import Any, Callable

from .runs import Run
from .spec import RESTORE_MODES, SpecError, deep_merge, run_id, validate


class LineageError(ValueError):
    """A reference to a parent run that cannot be resolved; the message says where."""


def run_references(spec: dict[str, Any]) -> list[str]:
    """The run ids a canonical spec reads from (its parent, its schedule's source)."""
    refs = []
    init = spec.get("init")
    if isinstance(init, dict) and "run" in init:
        refs.append(init["run"])
    norms = spec.get("schedule", {}).get("grad_norms")
    if isinstance(norms, dict) and "run" in norms:
        refs.append(norms["run"])
    return refs


@dataclass
class ParentResolver:
    """Resolves the parent names of one study at one scale.

    ``apply_entry(spec, axis, entry)`` applies one axis entry (set, multiply)
    as the study's expansion does; ``entries`` passed to ``resolve`` are the
    child's axis entries, so a parent that follows an axis takes them too.
    """

    study: dict[str, Any]
    scale: str
    base: dict[str, Any]  # the study's base with the scale's sizes
    default_seed: int
    apply_entry: Callable[[dict[str, Any], str, dict[str, Any]], dict[str, Any]]
    where: str

    def __post_init__(self) -> None:
        self.parents: dict[str, dict[str, Any]] = self.study.get("parents", {})
        self.runs: dict[str, Run] = {}  # parent runs made so far, by id
        self._cache: dict[tuple, tuple[str, dict[str, Any]]] = {}
        axes = set(self.study.get("axes", {}))
        for name, parent in self.parents.items():
            unknown = sorted(set(parent.get("follow", [])) - axes - {"seed"})
            if unknown:
                raise LineageError(f"{self.where}: parent {name!r} follows axes {unknown} that the study does not have; axes: {sorted(axes)}")
            if "seed" in parent.get("follow", []) and "seed" in parent:
                raise LineageError(f"{self.where}: parent {name!r} follows the seed and gives its own seed {parent['seed']}; keep one")

    def resolve(self, spec: dict[str, Any], entries: dict[str, tuple[Any, dict[str, Any]]], where: str, stack: tuple[str, ...] = ()) -> dict[str, Any]:
        """``spec`` with every ``{parent: NAME}`` replaced by the parent's run id."""
        spec = copy.deepcopy(spec)
        init = spec.get("init")
        if init is not None:
            spec["init"] = self._resolve_init(init, spec, entries, where, stack)
        schedule = spec.get("schedule", {})
        norms = schedule.get("grad_norms") if isinstance(schedule, dict) else None
        if isinstance(norms, dict):
            if set(norms) != {"parent"}:
                raise LineageError(f"{where}: schedule.grad_norms must be a list of numbers, a path, or {{parent: NAME}}; got {norms!r}")
            rid, _ = self._parent(norms["parent"], entries, where, stack, spec.get("seed"))
            spec["schedule"] = dict(schedule, grad_norms={"run": rid})
        return spec

    def _resolve_init(self, init: Any, child: dict[str, Any], entries, where: str, stack) -> dict[str, Any]:
        if not isinstance(init, dict) or "parent" not in init:
            raise LineageError(f"{where}: init must be a mapping {{parent: NAME, step: K | final, restore: ...}}, got {init!r}")
        unknown = sorted(set(init) - {"parent", "step", "restore", "exclude"})
        if unknown:
            raise LineageError(f"{where}: init does not take {unknown}; it takes parent, step, restore, exclude")
        rid, parent = self._parent(init["parent"], entries, where, stack, child.get("seed"))
        restore = init.get("restore", "weights")
        if restore not in RESTORE_MODES:
            raise LineageError(f"{where}: init.restore must be one of {', '.join(RESTORE_MODES)}, got {restore!r}")
        step = init.get("step", "final")
        if step == "final":
            step = parent["steps"]
        if isinstance(step, bool) or not isinstance(step, int):
            raise LineageError(f"{where}: init.step must be a step number or 'final', got {step!r}")
        name = init["parent"]
        saved = parent["checkpoints"]
        if restore == "weights" and step not in saved and step != parent["steps"]:
            raise LineageError(
                f"{where}: parent {name!r} saves no weights at step {step}: it saves steps {saved} and its final "
                f"step {parent['steps']}; add {step} to the parent's checkpoints"
            )
        if restore != "weights" and step not in saved:
            raise LineageError(
                f"{where}: init.restore {restore!r} needs the parent's training state at step {step}, which parent "
                f"{name!r} saves only at its checkpoints {saved}; add {step} to the parent's checkpoints"
            )
        child_steps = child.get("steps")
        if restore != "weights" and isinstance(child_steps, int) and child_steps <= step:
            raise LineageError(
                f"{where}: with init.restore {restore!r} the child continues the parent's step count, so its steps "
                f"({child_steps}) must exceed the branch step {step}"
            )
        exclude = init.get("exclude", [])
        if not isinstance(exclude, list) or not all(isinstance(p, str) for p in exclude):
            raise LineageError(f"{where}: init.exclude must be a list of parameter-name prefixes, got {exclude!r}")
        return {"run": rid, "step": step, "restore": restore, "exclude": sorted(exclude)}

    def _parent(self, name: Any, entries, where: str, stack, child_seed: int | None = None) -> tuple[str, dict[str, Any]]:
        if name not in self.parents:
            raise LineageError(f"{where}: unknown parent {name!r}; the study's parents: {sorted(self.parents) or '(none)'}")
        if name in stack:
            raise LineageError(f"{where}: parents form a cycle: {' -> '.join(stack + (name,))}")
        parent = self.parents[name]
        # following "seed": one parent per child seed, trained with it (paired replicates)
        follows_seed = "seed" in parent.get("follow", [])
        follow = [a for a in parent.get("follow", []) if a != "seed"]
        seed = child_seed if follows_seed else parent.get("seed", self.default_seed)
        key = (name, seed, tuple(json.dumps(entries[a][1], sort_keys=True, default=str) for a in follow))
        if key in self._cache:
            return self._cache[key]
        spec = {k: v for k, v in self.base.items() if k != "init"}  # a parent does not inherit its child's start
        labels: dict[str, Any] = {}
        for axis in follow:
            label, entry = entries[axis]
            spec = self.apply_entry(spec, axis, entry)
            labels[axis] = label
        spec = deep_merge(spec, parent.get("set", {}))
        spec = deep_merge(spec, parent.get("scales", {}).get(self.scale, {}).get("set", {}))
        here = f"{self.where} (scale {self.scale}, parent {name!r}{', ' + str(labels) if labels else ''})"
        spec = self.resolve(dict(spec, seed=seed), entries, here, stack + (name,))
        try:
            canon = validate(spec, where=here)
        except SpecError as err:
            raise LineageError(str(err)) from None
        rid = run_id(canon)
        self.runs.setdefault(rid, Run(rid, canon, {**labels, "parent": name, "seed": seed}, self.study["name"], "parent"))
        self._cache[key] = (rid, canon)
        return rid, canon


def check_fits_parent(child: dict[str, Any], parent: dict[str, Any], where: str) -> None:
    """Raise ``LineageError`` unless the child's model takes the parent's
    weights (apart from ``init.exclude``): same tensor names and shapes.

    Models are built on the meta device (no memory, no arithmetic); the
    datasets only for their shapes, and only when the two specs differ."""
    if child["model"] == parent["model"] and child["dataset"] == parent["dataset"] and child.get("subspace") == parent.get("subspace"):
        return
    exclude = tuple(child["init"]["exclude"])
    mine, theirs = _tensor_shapes(json.dumps(child, sort_keys=True)), _tensor_shapes(json.dumps(parent, sort_keys=True))
    for name in list(mine) + [n for n in theirs if n not in mine]:  # in the model's order
        if name.startswith(exclude) and exclude:
            continue
        if name not in theirs:
            raise LineageError(f"{where}: the child's tensor {name!r} {list(mine[name])} is not in the parent's weights; add its prefix to init.exclude to keep it freshly initialised")
        if name not in mine:
            raise LineageError(f"{where}: the parent's tensor {name!r} {list(theirs[name])} has no place in the child's model")
        if mine[name] != theirs[name]:
            raise LineageError(
                f"{where}: tensor {name!r} has shape {list(mine[name])} in the child but {list(theirs[name])} in the parent; "
                f"add its prefix to init.exclude to keep it freshly initialised"
            )


@functools.lru_cache(maxsize=None)
def _tensor_shapes(spec_json: str) -> dict[str, tuple[int, ...]]:
    import torch

    from .models import build_model

    spec = json.loads(spec_json)
    input_shape, num_outputs = _data_shapes(json.dumps(spec["dataset"], sort_keys=True))
    with torch.device("meta"):
        model = build_model(spec["model"], input_shape, num_outputs)
        if spec.get("subspace"):
            from .landscape.subspace import RandomSubspace

            model = RandomSubspace(model, **spec["subspace"], persistent=False)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


@functools.lru_cache(maxsize=None)
def _data_shapes(dataset_json: str) -> tuple[tuple[int, ...], int]:
    from .data import build_dataset

    data = build_dataset(json.loads(dataset_json))
    return tuple(data.input_shape), int(data.num_outputs)
