"""The merge stage: merged models a study declares, planned at parse time,
computed by the workflow's merge jobs, and read by analyses and figures like runs.

A study declares merges as it declares runs::

    merges:
      - name: uniform-soup
        rule: uniform              # a name in MERGE_RULES (the schema's enum)
        runs: {where: "ft != 'none'"}  # which of the study's runs: a pandas query over their labels,
                                   # or a list of label mappings; all the study's runs when left out
        per: [seed]                # one merged model per value of these labels (default: one in all)
        options: {...}             # the rule's keyword options (checked against its signature)
        scales: {smoke: {...}}     # options per scale, merged over options

Each (declaration, ``per`` value) is one merged model, a content-addressed
artifact: its id is ``<rule>[-<per labels>]-<hash8>``, the hash of (rule,
options, the input runs' ids in order), and it lives in
``<results>/merges/<id>/``: ``final.pt`` (a weights file like a run's),
``spec.json``, ``metrics.parquet`` (step, split, metric, value on the inputs'
evaluation splits, at the inputs' final step), ``status.json`` (``ok``, or
``diverged`` when an input diverged or the merged model's loss is not finite).
A declaration is one workflow job, so changing its options reruns it alone; a
merged model two declarations produce is computed by the first (by study and
name) and only read by the other.

Rules that move from a pretrained model (Model Stock, task arithmetic, TIES,
DARE, gradient matching) use the weights the inputs start from (their shared
``init`` parent and step); rules that need data (greedy soup, DiWA's greedy
variant, Fisher, gradient matching) use the inputs' prepared data and the split
their options name. Inputs must share model and dataset specs (checked at
parse time) and tensors (checked on the weights before any merging).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .registry import Registry
from .runs import Run
from .spec import _normalise, _slug, deep_merge

MERGE_RULES = Registry("merge rule")

# Options every rule gets from the stage, not from the study.
_CONTEXT_ARGS = ("inputs", "ctx")


class MergeError(ValueError):
    """A merge that cannot be planned or computed; the message names the study and the merge."""


# -- the record --------------------------------------------------------------------------------


@dataclass
class Merge:
    """One merged model: what makes it (rule, options, inputs), where it lives, and its labels."""

    merge_id: str
    name: str  # the declaration's name
    study: str
    rule: str
    options: dict[str, Any]
    inputs: list[str]  # input run ids, in order
    labels: dict[str, Any]  # merge, rule and the `per` labels
    spec: dict[str, Any]  # the first input's run spec: the merged model's architecture and data
    base: dict[str, Any] | None = None  # {"run": parent id, "step": k}: the weights the inputs start from
    dir: Path | None = None
    data: Path | None = None
    runs_dir: Path | None = None  # <results>/runs

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("merge_id", "name", "study", "rule", "options", "inputs", "labels", "spec", "base")}
        d.update({k: None if getattr(self, k) is None else str(getattr(self, k)) for k in ("dir", "data", "runs_dir")})
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Merge":
        d = dict(d)
        for k in ("dir", "data", "runs_dir"):
            d[k] = None if d.get(k) is None else Path(d[k])
        return cls(**d)

    def as_run(self) -> Run:
        """A Run-like record (role ``merge``): figures and analyses read its metrics, status and
        weights as a run's. Its ``spec`` is the first input's (architecture and data), not a recipe."""
        return Run(self.merge_id, self.spec, dict(self.labels), self.study, "merge", self.dir, self.data)

    def input_dir(self, rid: str) -> Path:
        return Path(self.runs_dir) / rid


def merge_id(rule: str, options: dict[str, Any], inputs: list[str], prefix: str = "") -> str:
    """``<rule>[-<prefix>]-<hash8>``: the hash of (rule, options, input run ids in order)."""
    payload = json.dumps({"rule": rule, "options": _normalise(options), "inputs": list(inputs)}, sort_keys=True,
                         separators=(",", ":"))
    digest = hashlib.sha256(payload.encode()).hexdigest()[:8]
    return "-".join(p for p in (_slug(rule), _slug(prefix), digest) if p)


# -- planning ----------------------------------------------------------------------------------


@dataclass
class MergePlan:
    """The merges of a plan: every record by id, each study's, and each job's (study, name)."""

    records: dict[str, Merge] = field(default_factory=dict)
    study_merges: dict[str, list[Merge]] = field(default_factory=dict)
    jobs: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # ids the job computes
    owner: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> the job that computes it

    def of_study(self, study: str) -> list[Merge]:
        return self.study_merges.get(study, [])

    def job(self, study: str, name: str) -> list[Merge]:
        if (study, name) not in self.jobs:
            raise MergeError(f"no merge job {study}/{name} in this plan")
        return [self.records[i] for i in self.jobs[(study, name)]]

    def declared(self, study: str, name: str) -> list[Merge]:
        """Every merged model of the declaration (also those another job computes)."""
        return [m for m in self.of_study(study) if m.name == name]


def merge_options(entry: dict[str, Any], scale: str) -> dict[str, Any]:
    return deep_merge(entry.get("options", {}), entry.get("scales", {}).get(scale, {}))


def check_rule_options(rule: str, options: dict[str, Any], where: str) -> None:
    """The options must be keyword arguments of the rule (a misspelt option fails at parse time)."""
    fn = MERGE_RULES.get(rule)
    accepted = [p for p in inspect.signature(fn).parameters if p not in _CONTEXT_ARGS]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise MergeError(f"{where}: rule {rule!r} does not take {unknown}; it takes: {', '.join(accepted) or '(no options)'}")


def _select(runs: list[Run], selector: Any, where: str) -> list[Run]:
    """The runs a declaration's ``runs:`` names, in the study's order."""
    if selector is None:
        return list(runs)
    if isinstance(selector, dict) and set(selector) == {"where"}:
        import pandas as pd

        table = pd.DataFrame([dict(r.labels) for r in runs])
        try:
            mask = table.eval(selector["where"]) if len(table) else []
        except Exception as err:  # an unknown label, a syntax error: name the query
            raise MergeError(f"{where}: runs.where {selector['where']!r} cannot be evaluated on the runs' labels "
                             f"{sorted(table.columns)}: {err}") from None
        return [r for r, keep in zip(runs, list(mask)) if bool(keep)]
    if isinstance(selector, list) and all(isinstance(s, dict) for s in selector):
        chosen = []
        for wanted in selector:
            hits = [r for r in runs if all(r.labels.get(k) == v for k, v in wanted.items())]
            if not hits:
                raise MergeError(f"{where}: no run has labels {wanted}")
            chosen += [r for r in hits if r not in chosen]
        return chosen
    raise MergeError(f"{where}: runs must be {{where: QUERY}} or a list of label mappings, got {selector!r}")


def _check_inputs(inputs: list[Run], where: str) -> dict[str, Any] | None:
    """Inputs share model and dataset; returns the pretrained weights they start from (or None)."""
    first = inputs[0]
    for key in ("model", "dataset"):
        for other in inputs[1:]:
            if other.spec[key] != first.spec[key]:
                raise MergeError(f"{where}: inputs must share an architecture and data, but run {other.run_id} has "
                                 f"{key} {other.spec[key]} and run {first.run_id} has {first.spec[key]}")
    starts = {json.dumps(None if r.spec["init"] is None else {"run": r.spec["init"]["run"], "step": r.spec["init"]["step"]})
              for r in inputs}
    if len(starts) == 1 and first.spec["init"] is not None:
        return {"run": first.spec["init"]["run"], "step": first.spec["init"]["step"]}
    return None


def plan_merges(study: dict[str, Any], scale: str, runs: list[Run], results: str | Path, source: str = "") -> list[Merge]:
    """The merged models ``study`` declares at ``scale``, from its (planned) runs."""
    merges: list[Merge] = []
    names = [e["name"] for e in study.get("merges", [])]
    if len(set(names)) != len(names):
        raise MergeError(f"{source}: merge names must be unique, got {names}")
    for entry in study.get("merges", []):
        where = f"{source} (scale {scale}, merge {entry['name']!r})"
        options = merge_options(entry, scale)
        check_rule_options(entry["rule"], options, where)
        selected = _select(runs, entry.get("runs"), where)
        per = list(entry.get("per", []))
        groups: dict[tuple, list[Run]] = {}
        for run in selected:
            missing = [k for k in per if k not in run.labels]
            if missing:
                raise MergeError(f"{where}: per names labels {missing} that run {run.run_id} has not; it has {sorted(run.labels)}")
            groups.setdefault(tuple(run.labels[k] for k in per), []).append(run)
        if not groups:
            raise MergeError(f"{where}: selects no runs")
        for key, inputs in groups.items():
            here = f"{where}{' ' + str(dict(zip(per, key))) if per else ''}"
            base = _check_inputs(inputs, here)
            if getattr(MERGE_RULES.get(entry["rule"]), "needs_base", False) and base is None:
                raise MergeError(f"{here}: rule {entry['rule']!r} moves from the pretrained weights the inputs start "
                                 "from, but they do not share one init parent and step")
            ids = [r.run_id for r in inputs]
            mid = merge_id(entry["rule"], options, ids, "-".join(f"{k}{v}" for k, v in zip(per, key)))
            labels = {"merge": entry["name"], "rule": entry["rule"], **dict(zip(per, key))}
            merges.append(Merge(mid, entry["name"], study["name"], entry["rule"], copy.deepcopy(options), ids, labels,
                                inputs[0].spec, base, Path(results) / "merges" / mid, inputs[0].data, Path(results) / "runs"))
    return merges


def plan_all(study_merges: dict[str, list[Merge]]) -> MergePlan:
    """Assign each merged model to the first job (by study, then declaration name) that declares it."""
    out = MergePlan(study_merges=study_merges)
    for study in sorted(study_merges):
        for m in study_merges[study]:
            job = (study, m.name)
            out.jobs.setdefault(job, [])
            if m.merge_id not in out.records:
                out.records[m.merge_id] = m
                out.owner[m.merge_id] = job
                out.jobs[job].append(m.merge_id)
    return out


# -- computing ---------------------------------------------------------------------------------


class MergeContext:
    """What a rule may need besides its inputs: the pretrained weights, the data, scores, Fishers."""

    def __init__(self, merge: Merge, device: str = "cpu"):
        self.merge, self.device = merge, device
        self._data = None
        self.extra: dict[str, Any] = {}  # tables a rule records (the greedy soup's history)

    @property
    def n_inputs(self) -> int:
        return len(self.merge.inputs)

    def base_file(self) -> Path:
        from .train.from_run import parent_weights_file

        if self.merge.base is None:
            raise MergeError(f"merge {self.merge.merge_id}: rule {self.merge.rule!r} needs the inputs' shared pretrained weights")
        parent = self.merge.input_dir(self.merge.base["run"])
        status = json.loads((parent / "status.json").read_text())
        return parent_weights_file(parent, self.merge.base["step"], status["steps_completed"])

    @property
    def data(self):
        from .data import SplitData

        if self._data is None:
            self._data = SplitData.load(self.merge.data)
        return self._data

    def model(self, state=None):
        """The inputs' architecture (eval mode, on the device), with ``state`` loaded if given."""
        from .train.training import build_run_model

        model = build_run_model(self.merge.spec, self.data)
        if state is not None:
            model.load_state_dict(state)
        return model.to(self.device).eval()

    def split(self, split: str, n_examples: int | None = None):
        if split not in self.data.x:
            raise MergeError(f"merge {self.merge.merge_id}: the data has no split {split!r}; it has {list(self.data.x)}")
        x, y = self.data.x[split], self.data.y[split]
        if n_examples is not None:
            x, y = x[: int(n_examples)], y[: int(n_examples)]
        return x.to(self.device), y.to(self.device)

    def evaluate(self, state, split: str) -> dict[str, float]:
        from .train.evaluation import evaluate
        from .train.training import build_run_loss

        model = self.model(state)
        x, y = self.split(split)
        return evaluate(model, build_run_loss(self.merge.spec, self.data, model), x, y, self.data.task)

    def scorer(self, split: str, metric: str):
        """state -> a higher-is-better score on ``split``: accuracy, or minus the loss."""
        if metric not in ("accuracy", "loss"):
            raise MergeError(f"merge {self.merge.merge_id}: metric must be accuracy or loss, got {metric!r}")
        sign = 1.0 if metric == "accuracy" else -1.0
        return lambda state: sign * self.evaluate(state, split)[metric]

    def fishers(self, split: str, n_examples: int | None, kind: str, reduction: str, seed: int) -> Iterator[dict]:
        """Each input's diagonal Fisher on ``split``, computed when the merge reaches that input."""
        from .averaging import diagonal_fisher, load_state

        x, y = self.split(split, n_examples)
        for rid in self.merge.inputs:
            model = self.model(load_state(self.merge.input_dir(rid) / "final.pt"))
            yield diagonal_fisher(model, x, y, kind=kind, seed=seed if kind == "sampled" else None, reduction=reduction)


def _lam(lam: float | str, n: int) -> float:
    """A task-vector scale: a number, or "mean" for 1/n (the task vectors' mean)."""
    if lam == "mean":
        return 1.0 / n
    if isinstance(lam, str):
        raise MergeError(f"lam must be a number or 'mean' (1/number of inputs), got {lam!r}")
    return float(lam)


def _needs_base(fn):
    fn.needs_base = True
    return fn


@MERGE_RULES.register("uniform")
def uniform_rule(inputs, ctx):
    """Uniform soup (Wortsman et al. 2022): the mean of the inputs."""
    from .averaging import uniform_soup

    return uniform_soup(inputs)


@MERGE_RULES.register("greedy")
def greedy_rule(inputs, ctx, split: str = "val", metric: str = "accuracy", ties: str = "accept"):
    """Greedy soup: inputs ordered by their score on ``split``, each added iff the soup does not get worse."""
    from .averaging import greedy_soup

    result = greedy_soup(inputs, ctx.scorer(split, metric), ties=ties)
    history = result.history.copy()
    history["run_id"] = [ctx.merge.inputs[i] for i in history["input"]]
    ctx.extra["greedy"] = history
    return result.state


@MERGE_RULES.register("diwa")
def diwa_rule(inputs, ctx, greedy: bool = False, split: str = "val", metric: str = "accuracy"):
    """DiWA (Ramé et al. 2022): the uniform average of diverse fine-tunings, or its greedy (restricted) variant."""
    from .averaging import diwa

    return diwa(inputs, greedy=greedy, score=ctx.scorer(split, metric) if greedy else None)


@MERGE_RULES.register("fisher")
def fisher_rule(inputs, ctx, split: str = "train", n_examples: int | None = 1000, kind: str = "empirical",
                epsilon: float = 1e-6, floor: str = "all", seed: int = 0):
    """Fisher-weighted averaging (Matena & Raffel 2022) with each input's diagonal Fisher on ``split``."""
    from .averaging import fisher_merge

    return fisher_merge(inputs, ctx.fishers(split, n_examples, kind, "mean", seed), epsilon=epsilon, floor=floor)


@MERGE_RULES.register("model_stock")
@_needs_base
def model_stock_rule(inputs, ctx):
    """Model Stock (Jang et al. 2024): per tensor, from the pretrained weights towards the inputs' mean."""
    from .averaging import model_stock

    return model_stock(ctx.base_file(), inputs)


@MERGE_RULES.register("task_arithmetic")
@_needs_base
def task_arithmetic_rule(inputs, ctx, lam: float | str = 1.0):
    """Task arithmetic (Ilharco et al. 2023): theta_0 + lam * sum of task vectors ("mean": lam = 1/n)."""
    from .averaging import task_arithmetic

    return task_arithmetic(ctx.base_file(), inputs, lam=_lam(lam, ctx.n_inputs))


@MERGE_RULES.register("ties")
@_needs_base
def ties_rule(inputs, ctx, density: float = 0.2, lam: float | str = 1.0):
    """TIES (Yadav et al. 2023): global trim to ``density``, sign election, disjoint mean, times lam."""
    from .averaging import ties_merge

    return ties_merge(ctx.base_file(), inputs, density=density, lam=_lam(lam, ctx.n_inputs))


@MERGE_RULES.register("dare")
@_needs_base
def dare_rule(inputs, ctx, drop: float = 0.9, seed: int = 0, combine: str = "task_arithmetic",
              lam: float | str = "mean", density: float = 1.0):
    """DARE (Yu et al. 2024): drop task-vector entries with probability ``drop``, rescale by 1/(1 - drop), combine."""
    from .averaging import dare_merge

    return dare_merge(ctx.base_file(), inputs, drop=drop, seed=seed, combine=combine, lam=_lam(lam, ctx.n_inputs),
                      density=density)


@MERGE_RULES.register("gradient_matching")
@_needs_base
def gradient_matching_rule(inputs, ctx, prior_precision: float = 1.0, alpha: float | str = "mean",
                           split: str = "train", n_examples: int | None = 1000, kind: str = "empirical"):
    """Gradient matching (Daheim et al. 2024): task arithmetic preconditioned by each input's
    summed diagonal Fisher on ``split`` and the prior precision."""
    from .averaging import gradient_matching_merge

    hessians = ctx.fishers(split, n_examples, kind, "sum", 0)
    return gradient_matching_merge(ctx.base_file(), inputs, hessians, prior_precision=prior_precision,
                                   alphas=_lam(alpha, ctx.n_inputs))


def check_input_weights(merge: Merge, base: Path | None = None) -> None:
    """Every input's (and the pretrained) weights have the first input's tensors; the error names the
    first differing tensor. Run before any merging."""
    from .averaging.states import check_same_architecture, layout, load_state

    files = [merge.input_dir(rid) / "final.pt" for rid in merge.inputs] + ([base] if base is not None else [])
    reference = layout(load_state(files[0]))
    for path in files[1:]:
        try:
            check_same_architecture(reference, load_state(path), what=f"{path}")
        except ValueError as err:
            raise MergeError(f"merge {merge.merge_id} ({merge.study}/{merge.name}): {err} (the reference is {files[0]})") from None


def _write_json(path: Path, obj: Any) -> None:
    import os

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def compute_merge(merge: Merge, device: str = "cpu") -> dict[str, Any]:
    """Merge, save and evaluate one merged model into its directory; returns its status record."""
    import pandas as pd

    from .artifacts import write_table
    from .checkpoints import diverged_marker, save_atomic

    start = time.perf_counter()
    out = Path(merge.dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "status.json").unlink(missing_ok=True)  # written last: its absence marks an unfinished merge
    _write_json(out / "spec.json", {k: merge.to_dict()[k] for k in ("merge_id", "rule", "options", "inputs", "base", "labels")})
    ctx = MergeContext(merge, device)
    diverged = []
    for rid in merge.inputs:
        status = json.loads((merge.input_dir(rid) / "status.json").read_text())
        if status["status"] != "ok":
            diverged.append(rid)
    step = int(merge.spec["steps"])
    rows: list[tuple[int, str, str, float]] = []
    if diverged:
        status, reason = "diverged", f"inputs {diverged} diverged"
        save_atomic(diverged_marker(f"merge {merge.merge_id}: {reason}"), out / "final.pt")
    else:
        check_input_weights(merge, ctx.base_file() if merge.base is not None else None)
        paths = [merge.input_dir(rid) / "final.pt" for rid in merge.inputs]
        state = MERGE_RULES.get(merge.rule)(paths, ctx, **merge.options)
        save_atomic(state, out / "final.pt")
        for split in merge.spec["eval_splits"]:
            for metric, value in ctx.evaluate(state, split).items():
                rows.append((step, split, f"full_{metric}" if split == "train" else metric, float(value)))
        finite = all(math.isfinite(v) for *_, v in rows)
        status, reason = ("ok", "") if finite else ("diverged", "the merged model's loss is not finite")
    for name, table in ctx.extra.items():
        table.to_csv(out / f"{name}.csv", index=False)
    write_table(pd.DataFrame(rows, columns=["step", "split", "metric", "value"]), out / "metrics.parquet")
    record = {"merge_id": merge.merge_id, "status": status, "reason": reason, "steps_completed": step,
              "seconds": time.perf_counter() - start}
    _write_json(out / "status.json", record)
    return record
