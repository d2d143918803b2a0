"""Study files: load, validate against the schema, and expand into runs.

A study (``config/studies/<name>.yaml``) is a base run spec, sizes per scale,
sweep axes and figures. ``expand_study`` turns it into runs at one scale, each
with its canonical spec, run id and axis labels; ``plan`` merges the runs of
several studies (a run two studies need is trained once) and groups runs on
the same dataset into jobs, so one process trains a group (``group_runs``).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .spec import SpecError, canonical_json, data_id, deep_merge, run_id, validate

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
SCALES = ("smoke", "cpu", "paper")


class StudyError(ValueError):
    """A study file that cannot be run; the message names the file and the field."""


def _enum_names() -> dict[str, list[str]]:
    from .analyses import ANALYSES
    from .plots import FIGURES
    from .spec import registries
    from .train.instruments import INSTRUMENTS

    regs = registries()
    return {
        "__DATASETS__": regs["dataset"].names(),
        "__MODELS__": regs["model"].names(),
        "__LOSSES__": regs["loss"].names(),
        "__OPTIMIZERS__": regs["optimizer"].names(),
        "__SCHEDULES__": regs["schedule"].names(),
        "__INSTRUMENTS__": INSTRUMENTS.names(),
        "__FIGURE_KINDS__": FIGURES.names(),
        "__ANALYSES__": ANALYSES.names(),
    }


def _fill_enums(node: Any, names: dict[str, list[str]]) -> Any:
    if isinstance(node, dict):
        return {k: _fill_enums(v, names) for k, v in node.items()}
    if isinstance(node, list):
        if len(node) == 1 and isinstance(node[0], str) and node[0] in names:
            return list(names[node[0]])
        return [_fill_enums(v, names) for v in node]
    return node


def study_schema(schema_dir: Path = SCHEMA_DIR) -> dict[str, Any]:
    """The study JSON schema with component-name enums taken from the registries."""
    with open(schema_dir / "study.schema.yaml") as fh:
        return _fill_enums(yaml.safe_load(fh), _enum_names())


def _format_error(err: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
    message = err.message
    if err.validator == "enum" and isinstance(err.instance, str):
        import difflib

        close = difflib.get_close_matches(err.instance, [str(v) for v in err.validator_value], n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
    return f"{where}: {message}"


def _apply_defaults(study: dict[str, Any]) -> dict[str, Any]:
    study = copy.deepcopy(study)
    study.setdefault("seeds", [0])
    study.setdefault("axes", {})
    study.setdefault("analyses", [])
    for analysis in study["analyses"]:
        analysis.setdefault("runs", True)
        analysis.setdefault("options", {})
        analysis.setdefault("scales", {})
    for fig in study["figures"]:
        fig.setdefault("options", {})
        fig.setdefault("caption", "")
        fig.setdefault("analyses", [])
    return study


def analysis_options(analysis: dict[str, Any], scale: str) -> dict[str, Any]:
    """The analysis's options at ``scale`` (per-scale values over the shared ones)."""
    return deep_merge(analysis.get("options", {}), analysis.get("scales", {}).get(scale, {}))


def _check_analyses_and_figures(study: dict[str, Any], path: Path) -> None:
    import inspect

    from .analyses import ANALYSES
    from .plots import FIGURES

    names = [a["name"] for a in study["analyses"]]
    if len(set(names)) != len(names):
        raise StudyError(f"{path}: analysis names must be unique, got {names}")
    for analysis in study["analyses"]:
        if analysis["runs"] and "base" not in study:
            raise StudyError(f"{path}: analysis {analysis['name']!r} reads runs, but the study has no base spec")
        fn = ANALYSES.get(analysis["kind"])
        accepted = set(inspect.signature(fn).parameters) - {"runs", "device", "threads"}
        for scale in SCALES:
            unknown = sorted(set(analysis_options(analysis, scale)) - accepted)
            if unknown:
                raise StudyError(
                    f"{path}: analysis {analysis['name']!r} ({analysis['kind']}) does not take {unknown} "
                    f"(scale {scale}); it takes: {', '.join(sorted(accepted))}"
                )
    for fig in study["figures"]:
        missing = sorted(set(fig["analyses"]) - set(names))
        if missing:
            raise StudyError(f"{path}: figure {fig['name']!r} reads unknown analyses {missing}; the study has: {names}")
        fn = FIGURES.get(fig["kind"])
        params = inspect.signature(fn).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            unknown = sorted(set(fig["options"]) - set(params) - {"title"})
            if unknown:
                raise StudyError(f"{path}: figure {fig['name']!r} ({fig['kind']}) does not take options {unknown}")


def load_study(path: str | Path, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read and validate one study file (schema, then every run's spec at every scale)."""
    path = Path(path)
    try:
        with open(path) as fh:
            study = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as err:
        raise StudyError(f"{path}: cannot read study file: {err}") from None
    schema = schema or study_schema()
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(study), key=lambda e: list(e.absolute_path))
    if errors:
        details = "\n  ".join(_format_error(e) for e in errors[:10])
        raise StudyError(f"{path}: invalid study file:\n  {details}")
    if study["name"] != path.stem:
        raise StudyError(f"{path}: name {study['name']!r} must match the file name {path.stem!r}")
    study = _apply_defaults(study)
    names = [f["name"] for f in study["figures"]]
    if len(set(names)) != len(names):
        raise StudyError(f"{path}: figure names must be unique, got {names}")
    _check_analyses_and_figures(study, path)
    for scale in SCALES:
        for run in expand_study(study, scale, source=str(path)):
            pass  # expand_study validates every spec
    return study


def _multiply(spec: dict[str, Any], path: str, factor: float, where: str) -> dict[str, Any]:
    """A copy of ``spec`` with the number at dotted ``path`` times ``factor``."""
    spec = copy.deepcopy(spec)
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
    value = node.get(leaf) if isinstance(node, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StudyError(f"{where}: multiply {path!r} needs a number there, found {value!r}")
    node[leaf] = value * factor
    return spec


@dataclass
class Run:
    run_id: str
    spec: dict[str, Any]
    labels: dict[str, Any] = field(default_factory=dict)  # axis -> label, plus "seed"


def expand_study(study: dict[str, Any], scale: str, source: str = "") -> list[Run]:
    """The study's runs at ``scale``: base, then the scale's sizes, then each axis
    combination, times the seeds; every spec validated against the registries."""
    if scale not in SCALES:
        raise StudyError(f"unknown scale {scale!r}; valid scales: {', '.join(SCALES)}")
    if "base" not in study:
        return []
    where_file = source or study["name"]
    sizing = study["scales"][scale]
    seeds = sizing.get("seeds", study.get("seeds", [0]))
    base = deep_merge(study["base"], sizing.get("set", {}))
    axes = dict(study.get("axes", {}))
    unknown_axes = sorted(set(sizing.get("axes", {})) - set(axes))
    if unknown_axes:
        raise StudyError(f"{where_file}: scale {scale} replaces axes {unknown_axes} that the study does not have")
    axes.update(sizing.get("axes", {}))
    axis_names = list(axes)
    runs: list[Run] = []
    for combo in itertools.product(*(axes[a] for a in axis_names)):
        spec = base
        labels: dict[str, Any] = {}
        for axis, entry in zip(axis_names, combo):
            spec = deep_merge(spec, entry.get("set", {}))
            for path, factor in entry.get("multiply", {}).items():
                spec = _multiply(spec, path, factor, f"{where_file} (scale {scale}, axis {axis}, {entry['label']!r})")
            labels[axis] = entry["label"]
        for seed in seeds:
            where = f"{where_file} (scale {scale}, {labels or 'base'}, seed {seed})"
            try:
                canon = validate(dict(spec, seed=seed), where=where)
            except SpecError as err:
                raise StudyError(str(err)) from None
            runs.append(Run(run_id(canon), canon, {**labels, "seed": seed}))
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise StudyError(f"{where_file} (scale {scale}): axes produce identical runs {dup}; give them different settings")
    return runs


@dataclass
class Plan:
    """Everything the workflow needs, computed once at parse time."""

    studies: dict[str, dict[str, Any]]
    runs: dict[str, dict[str, Any]]  # run id -> canonical spec
    study_runs: dict[str, list[Run]]  # study -> its runs (with labels)
    groups: dict[str, list[str]]  # group id -> run ids trained in one job (see group_runs)
    datasets: dict[str, dict[str, Any]]  # data id -> dataset spec

    def data_of(self, rid: str) -> str:
        return data_id(self.runs[rid]["dataset"])


def group_runs(runs: dict[str, dict[str, Any]], max_runs_per_job: int, min_jobs: int = 1) -> dict[str, list[str]]:
    """Split runs into training jobs of at most ``max_runs_per_job`` runs that
    share a dataset, so Python, torch and the data load once per job; each
    dataset's runs get at least ``min_jobs`` jobs (when it has that many runs),
    so they can train in parallel.

    Runs are ordered by (everything but the seed, seed), so the seeds of one
    configuration stay together, and each dataset's runs are cut into equal
    chunks. A job whose membership changes is rerun, but its unchanged runs
    only rewrite their outputs from their saved final state.
    """
    by_data: dict[str, list[str]] = {}
    for rid, spec in runs.items():
        by_data.setdefault(data_id(spec["dataset"]), []).append(rid)
    groups: dict[str, list[str]] = {}
    for did, members in sorted(by_data.items()):
        members.sort(key=lambda r: (canonical_json(dict(runs[r], seed=0)), runs[r]["seed"]))
        n_jobs = max(-(-len(members) // max_runs_per_job), min(min_jobs, len(members)))
        for k in range(n_jobs):
            chunk = members[k * len(members) // n_jobs : (k + 1) * len(members) // n_jobs]
            digest = hashlib.sha256("\n".join(chunk).encode()).hexdigest()[:8]
            groups[f"{did.rsplit('-', 1)[0]}-g{digest}"] = chunk
    return groups


def study_paths(studies_dir: str | Path, selection: str | list[str]) -> list[Path]:
    studies_dir = Path(studies_dir)
    available = {p.stem: p for p in sorted(studies_dir.glob("*.yaml"))}
    if selection == "all":
        return list(available.values())
    missing = [s for s in selection if s not in available]
    if missing:
        raise StudyError(
            f"unknown stud{'y' if len(missing) == 1 else 'ies'} {missing}; "
            f"valid names (files in {studies_dir}): {', '.join(available) or '(none)'}"
        )
    return [available[s] for s in selection]


def plan(
    paths: list[Path], scale: str, max_runs_per_job: int = 64, min_jobs_per_dataset: int = 2, schema_dir: Path = SCHEMA_DIR
) -> Plan:
    schema = study_schema(schema_dir)
    studies, runs, study_runs = {}, {}, {}
    for path in paths:
        study = load_study(path, schema)
        studies[study["name"]] = study
        study_runs[study["name"]] = expand_study(study, scale, source=str(path))
        for run in study_runs[study["name"]]:
            runs[run.run_id] = run.spec
    groups = group_runs(runs, max_runs_per_job, min_jobs_per_dataset)
    datasets = {data_id(spec["dataset"]): spec["dataset"] for spec in runs.values()}
    return Plan(studies, runs, study_runs, groups, datasets)
