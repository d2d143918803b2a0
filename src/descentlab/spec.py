"""Run specs: defaults, validation, canonical form, content hash and run ids.

A run spec is a plain dict. Its canonical JSON (defaults filled in, keys
sorted, integral floats written as ints so ``lr: 1`` and ``lr: 1.0`` agree)
is hashed; the hash names the run, so two studies that ask for the same run
share it and changing any value makes a new run.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import inspect
import json
import math
import re
from typing import Any, Callable

from .registry import Registry

DEFAULT_SPEC: dict[str, Any] = {
    "dataset": {"name": "mnist1d"},
    "model": {"name": "mlp"},
    "loss": {"name": "cross_entropy"},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "schedule": {"name": "constant"},
    "batch_size": 64,
    "steps": 1000,
    "seed": 0,
    "log_every": 10,  # train loss (mean over the window) and lr every k steps
    "eval_every": 100,  # val/test metrics every k steps (and at 0 and the end); 0: ends only
    "eval_splits": ["val", "test"],  # "train": whole-set metrics full_loss, full_accuracy
    "checkpoints": [],  # steps at which to save the weights
    "resume_every": 0,  # resume point at the first log step k steps after the last (0: every minute)
    "instruments": [],  # [{"name": ..., "every": k, ...}] measured during training
    "subspace": None,  # {"dim": d, "seed": s}: train theta_0 + P theta_d only (intrinsic dimension)
    "init": None,  # {"run": id, "step": k, "restore": weights|optimizer|all, "exclude": [prefix]}: start from another run
}

# Keys a spec may give that are left out of its canonical form when empty, so
# adding them did not rename the runs that existed before them.
OPTIONAL_KEYS = ("averaging",)  # [{"kind": swa|ema|switch_ema|lawa|posthoc_ema, ...}]: descentlab.train.averagers

INIT_KEYS = ("run", "step", "restore", "exclude")
RESTORE_MODES = ("weights", "optimizer", "all")

# Keys whose dict values name a registry entry; the registries are looked up
# lazily so this module imports without torch.
COMPONENT_KEYS = ("dataset", "model", "loss", "optimizer", "schedule")


class SpecError(ValueError):
    """A run spec that cannot be trained; the message says what and where."""


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``override`` merged in, recursively for dicts.

    A dict override that changes ``name`` replaces the component instead of
    merging into it: the old component's hyperparameters do not apply.
    """
    out = copy.deepcopy(base)
    for key, value in override.items():
        if (
            isinstance(value, dict)
            and isinstance(out.get(key), dict)
            and value.get("name", out[key].get("name")) == out[key].get("name")
        ):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _normalise(value: Any) -> Any:
    """JSON-stable values: integral floats become ints, tuples lists, numpy scalars Python."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()  # numpy / torch scalars
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SpecError(f"non-finite number {value!r} in a run spec")
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    raise SpecError(f"unsupported value {value!r} of type {type(value).__name__} in a run spec")


def canonical(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with defaults filled in and values normalised (see module doc)."""
    unknown = sorted(set(spec) - set(DEFAULT_SPEC) - set(OPTIONAL_KEYS))
    if unknown:
        raise SpecError(
            f"unknown run-spec key(s) {unknown}; valid keys: {', '.join(sorted([*DEFAULT_SPEC, *OPTIONAL_KEYS]))}"
        )
    merged = deep_merge(DEFAULT_SPEC, spec)
    if merged.get("averaging") in ([], None):
        merged.pop("averaging", None)
    elif "averaging" in merged:
        from .train.averagers.config import canonical_averaging

        merged["averaging"] = canonical_averaging(merged["averaging"])
    for key in COMPONENT_KEYS:
        if not isinstance(merged[key], dict) or "name" not in merged[key]:
            raise SpecError(f"{key} must be a mapping with a 'name', got {merged[key]!r}")
    merged["checkpoints"] = sorted(set(int(s) for s in merged["checkpoints"]))
    init = merged["init"]
    if isinstance(init, dict):  # exclude: [] is the default; its order does not matter
        exclude = init.setdefault("exclude", [])
        if isinstance(exclude, list) and all(isinstance(e, str) for e in exclude):
            init["exclude"] = sorted(set(exclude))
    return _normalise(merged)


def canonical_json(spec: dict[str, Any]) -> str:
    return json.dumps(canonical(spec), sort_keys=True, separators=(",", ":"))


def spec_hash(spec: dict[str, Any], length: int = 8) -> str:
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:length]


def _slug(text: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", str(text)).strip("_")


def _readable_prefix(spec: dict[str, Any]) -> str:
    opt = spec["optimizer"]
    parts = [spec["dataset"]["name"], spec["model"]["name"], opt["name"]]
    if "lr" in opt:
        parts.append(f"lr{opt['lr']:g}" if isinstance(opt["lr"], (int, float)) else "lr")
    return "-".join(_slug(p) for p in parts)


def run_id(spec: dict[str, Any]) -> str:
    """``<dataset>-<model>-<optimizer>-lr<lr>-s<seed>-<hash8>``."""
    spec = canonical(spec)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]
    return f"{_readable_prefix(spec)}-s{spec['seed']}-{digest}"


def data_id(dataset: dict[str, Any]) -> str:
    """Names the prepared dataset file, ``<name>-<hash8>``."""
    ds = _normalise(dataset)
    digest = hashlib.sha256(json.dumps(ds, sort_keys=True).encode()).hexdigest()[:8]
    return f"{_slug(ds['name'])}-{digest}"


def registries() -> dict[str, Registry]:
    """The registry for each component key (imports torch)."""
    from .data import DATASETS
    from .losses import LOSSES
    from .models import MODELS
    from .optim import OPTIMIZERS
    from .schedules import SCHEDULES

    return {
        "dataset": DATASETS,
        "model": MODELS,
        "loss": LOSSES,
        "optimizer": OPTIMIZERS,
        "schedule": SCHEDULES,
    }


# Arguments the training loop passes positionally, not from the spec.
_POSITIONAL = {
    "dataset": 0,
    "model": 2,  # input_shape, num_outputs
    "loss": 0,
    "optimizer": 1,  # params
    "schedule": 1,  # total_steps
}


@functools.lru_cache(maxsize=None)
def _accepted_kwargs(kind: str, builder: Callable[..., Any]) -> frozenset[str] | None:
    """The keyword arguments ``builder`` takes from a spec (None: any)."""
    try:
        sig = inspect.signature(builder)
    except (TypeError, ValueError):  # builtins without signatures: nothing to check
        return None
    params = list(sig.parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(
        p.name
        for p in params[_POSITIONAL[kind] :]
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )


def _check_kwargs(kind: str, builder: Callable[..., Any], kwargs: dict[str, Any], where: str) -> None:
    if kind == "dataset":
        from .data import COMMON_OPTIONS

        kwargs = {k: v for k, v in kwargs.items() if k not in COMMON_OPTIONS}
    accepted = _accepted_kwargs(kind, builder)
    if accepted is None:
        return
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise SpecError(
            f"{where}: {kind} {builder_name(builder)!r} does not take {unknown}; "
            f"it takes: {', '.join(sorted(accepted)) or '(no arguments)'}"
        )


def builder_name(builder: Callable[..., Any]) -> str:
    return getattr(builder, "__qualname__", repr(builder))


def run_reference(value: Any) -> str | None:
    """The run id of a reference ``{"run": id}`` to another run's outputs (a schedule
    value: the refined schedule's ``grad_norms``), else None."""
    if isinstance(value, dict) and "run" in value:
        return value["run"]
    return None


def _check_run_references(component: dict[str, Any], key: str, where: str) -> bool:
    """Check the shape of ``{"run": id}`` values; True if the component has any."""
    found = False
    for name, value in component.items():
        if run_reference(value) is not None:
            if set(value) != {"run"} or not isinstance(value["run"], str) or not value["run"]:
                raise SpecError(f"{where}: {key}.{name}: a run reference is {{run: <run id>}}, got {value!r}")
            found = True
    return found


def _check_init(spec: dict[str, Any], where: str) -> None:
    init = spec["init"]
    if init is None:
        return
    shape = "null or {run: <run id>, step: <int>, restore: weights|optimizer|all, exclude: [<name prefix>]}"
    if not isinstance(init, dict):
        raise SpecError(f"{where}: init must be {shape}, got {init!r}")
    unknown, missing = sorted(set(init) - set(INIT_KEYS)), [k for k in INIT_KEYS[:3] if k not in init]
    if unknown or missing:
        raise SpecError(f"{where}: init must be {shape}; unknown keys {unknown}, missing keys {missing}")
    if not isinstance(init["run"], str) or not init["run"]:
        raise SpecError(f"{where}: init.run must be a run id, got {init['run']!r}")
    k = init["step"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise SpecError(f"{where}: init.step must be a non-negative integer (the planner resolves 'final'), got {k!r}")
    if init["restore"] not in RESTORE_MODES:
        raise SpecError(f"{where}: init.restore must be one of {', '.join(RESTORE_MODES)}, got {init['restore']!r}")
    exclude = init["exclude"]
    if not isinstance(exclude, list) or not all(isinstance(e, str) and e for e in exclude):
        raise SpecError(f"{where}: init.exclude must be a list of parameter-name prefixes, got {exclude!r}")
    if spec["subspace"] is not None:
        raise SpecError(f"{where}: init cannot start a subspace run (its theta_0 and P are not saved)")
    if init["restore"] != "weights":
        if exclude:
            raise SpecError(f"{where}: init.exclude needs restore: weights (optimizer state covers every parameter)")
        if k >= spec["steps"]:
            raise SpecError(
                f"{where}: with restore: {init['restore']} the step counter continues at init.step={k}, "
                f"so steps (the last step) must be > {k}, got {spec['steps']}"
            )
        early = [s for s in spec["checkpoints"] if s < k]
        if early:
            raise SpecError(f"{where}: checkpoints {early} come before the run's start step init.step={k}")


# Canonical JSON of an optimizer spec -> None (it builds) or why it does not.
_OPTIMIZER_CHECKS: dict[str, str | None] = {}


def _optimizer_error(optimizer: dict[str, Any]) -> str | None:
    """Why ``optimizer`` cannot be built (its constructor's message), or None.

    It is built on a matrix and a vector, the shapes every optimizer handles
    (Muon sends the matrix to Muon and the vector to AdamW)."""
    import torch

    from .optim import build_optimizer

    params = [torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))]
    try:
        with _no_dynamo_import():
            build_optimizer(params, optimizer)
    except Exception as err:  # any failure here would fail the training job
        return f"{type(err).__name__}: {err}"
    return None


@contextlib.contextmanager
def _no_dynamo_import():
    """Build optimizers without importing ``torch._dynamo`` (seconds, most of a
    dry run's planning). ``Optimizer.add_param_group`` is wrapped by
    ``torch._disable_dynamo``, which imports it on the first call unless the
    wrapped function carries its ``__dynamo_disable`` variant; nothing is being
    compiled here, so for the check that variant is the plain function. The
    attribute is removed afterwards, so a later real build wraps as usual."""
    import sys

    import torch

    plain = getattr(torch.optim.Optimizer.add_param_group, "__wrapped__", None)
    if plain is None or "torch._dynamo" in sys.modules or hasattr(plain, "__dynamo_disable"):
        yield  # another torch, or nothing to save: build as training does
        return
    setattr(plain, "__dynamo_disable", plain)
    try:
        yield
    finally:
        delattr(plain, "__dynamo_disable")


def _check_optimizer(optimizer: dict[str, Any], where: str) -> None:
    """Build each distinct optimizer spec once; name the key whose value it rejects."""
    key = json.dumps(optimizer, sort_keys=True)
    if key not in _OPTIMIZER_CHECKS:
        _OPTIMIZER_CHECKS[key] = _optimizer_error(optimizer)
    error = _OPTIMIZER_CHECKS[key]
    if error is None:
        return
    # The culprit: the hyperparameter whose removal (its default) makes it build.
    culprits = [k for k in optimizer if k != "name" and _optimizer_error({q: v for q, v in optimizer.items() if q != k}) is None]
    if len(culprits) == 1:
        raise SpecError(f"{where}: optimizer.{culprits[0]} = {optimizer[culprits[0]]!r} is rejected by {optimizer['name']!r}: {error}")
    raise SpecError(f"{where}: optimizer {optimizer} cannot be built: {error}")


def validate(spec: dict[str, Any], where: str = "run spec") -> dict[str, Any]:
    """Canonicalise and check a spec before any work: names against registries,
    hyperparameter names against builder signatures, and the step counts.

    Returns the canonical spec; raises ``SpecError`` with a message naming ``where``.
    """
    try:
        spec = canonical(spec)
    except SpecError as err:
        raise SpecError(f"{where}: {err}") from None
    regs = registries()
    for key in COMPONENT_KEYS:
        component = spec[key]
        if component["name"] not in regs[key]:
            raise SpecError(f"{where}: {regs[key].unknown_message(component['name'])}")
        kwargs = {k: v for k, v in component.items() if k != "name"}
        _check_kwargs(key, regs[key].get(component["name"]), kwargs, where)
    for key in ("batch_size", "steps", "log_every"):
        if not isinstance(spec[key], int) or spec[key] < 1:
            raise SpecError(f"{where}: {key} must be a positive integer, got {spec[key]!r}")
    for key in ("seed", "eval_every", "resume_every"):
        if not isinstance(spec[key], int) or spec[key] < 0:
            raise SpecError(f"{where}: {key} must be a non-negative integer, got {spec[key]!r}")
    sub = spec["subspace"]
    if sub is not None and (not isinstance(sub, dict) or set(sub) - {"dim", "seed"} or not isinstance(sub.get("dim"), int) or sub["dim"] < 1):
        raise SpecError(f"{where}: subspace must be null or {{dim: positive integer, seed: integer}}, got {sub!r}")
    bad_splits = sorted(set(spec["eval_splits"]) - {"train", "val", "test", "test_shifted"})
    if bad_splits:
        raise SpecError(f"{where}: eval_splits may hold train, val, test, test_shifted (datasets with a shift); got {bad_splits}")
    bad_ckpts = [s for s in spec["checkpoints"] if not 0 <= s <= spec["steps"]]
    if bad_ckpts:
        raise SpecError(f"{where}: checkpoints {bad_ckpts} outside [0, steps={spec['steps']}]")
    _check_init(spec, where)
    # Cheap components are built once here, so bad values (a warmup longer than
    # the run, a negative smoothing, a negative lr) fail at parse time rather than in a job;
    # a schedule that reads another run's outputs is built by the training job.
    _check_optimizer(spec["optimizer"], where)
    for key in ("schedule", "loss"):
        if key == "schedule" and _check_run_references(spec[key], key, where):
            continue
        try:
            if key == "schedule":
                regs[key].build(spec[key], spec["steps"])
            else:
                regs[key].build(spec[key])
        except (TypeError, ValueError) as err:
            raise SpecError(f"{where}: {key} {spec[key]}: {err}") from None
    if "averaging" in spec:
        from .train.averagers.config import check_averaging

        try:
            check_averaging(spec["averaging"], spec["steps"], spec["batch_size"])
        except ValueError as err:
            raise SpecError(f"{where}: {err}") from None
    from .train.instruments import INSTRUMENTS

    for inst in spec["instruments"]:
        if not isinstance(inst, dict) or "name" not in inst:
            raise SpecError(f"{where}: each instrument must be a mapping with a 'name', got {inst!r}")
        if inst["name"] not in INSTRUMENTS:
            raise SpecError(f"{where}: {INSTRUMENTS.unknown_message(inst['name'])}")
    return spec
