"""Study files: load, validate against the schema, and expand into runs.

A study (``config/studies/<name>.yaml``) is a base run spec, sizes per scale,
sweep axes and figures. ``expand_study`` turns it into runs at one scale, each
with its canonical spec, run id and axis labels; ``plan`` merges the runs of
several studies (a run two studies need is trained once) and groups runs on
the same dataset into jobs, so one process trains a group (``group_runs``).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .lineage import LineageError, ParentResolver, check_fits_parent
from .runs import Run
from .spec import SpecError, deep_merge, run_id, validate

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
SCALES = ("smoke", "cpu", "paper")
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser where installed: 8x faster


class StudyError(ValueError):
    """A study file that cannot be run; the message names the file and the field."""


def _enum_names() -> dict[str, list[str]]:
    from .analyses import ANALYSES
    from .claims import CLAIM_CHECKS
    from .merges import MERGE_RULES
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
        "__CLAIM_CHECKS__": CLAIM_CHECKS.names(),
        "__MERGE_RULES__": MERGE_RULES.names(),
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
        return _fill_enums(yaml.load(fh, Loader=_YAML_LOADER), _enum_names())


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
    study.setdefault("parents", {})
    study.setdefault("selections", [])
    study.setdefault("merges", [])
    for selection in study["selections"]:
        selection.setdefault("scales", {})
    for analysis in study["analyses"]:
        analysis.setdefault("runs", True)
        analysis.setdefault("options", {})
        analysis.setdefault("scales", {})
    for fig in study["figures"]:
        fig.setdefault("options", {})
        fig.setdefault("caption", "")
        fig.setdefault("analyses", [])
        fig.setdefault("claims", [])
    return study


def selection_at(study: dict[str, Any], name: str, scale: str) -> dict[str, Any]:
    """The study's selection ``name`` at ``scale`` (per-scale values over the shared ones)."""
    for selection in study["selections"]:
        if selection["name"] == name:
            merged = deep_merge({k: v for k, v in selection.items() if k != "scales"}, selection["scales"].get(scale, {}))
            merged["group_by"] = list(merged["group_by"])
            return merged
    raise StudyError(f"study {study['name']!r} has no selection {name!r}")


def _check_selections(study: dict[str, Any], path: Path) -> None:
    """Selections group by axes of the study, rerun with seeds it does not
    select on, and are read only by analyses that name them."""
    names = [s["name"] for s in study["selections"]]
    if len(set(names)) != len(names):
        raise StudyError(f"{path}: selection names must be unique, got {names}")
    axes = set(study.get("axes", {}))
    for selection in study["selections"]:
        missing = sorted(set(selection["group_by"]) - axes)
        if missing:
            raise StudyError(f"{path}: selection {selection['name']!r} groups by {missing}, which are not axes of the study; axes: {sorted(axes)}")
        reference = selection.get("reference")
        if reference is not None:
            if reference["axis"] not in selection["group_by"]:
                raise StudyError(f"{path}: selection {selection['name']!r}: reference axis {reference['axis']!r} must be one of group_by {selection['group_by']}")
            labels = [entry.get("label") for entry in study["axes"][reference["axis"]]]
            if reference["value"] not in labels:
                raise StudyError(f"{path}: selection {selection['name']!r}: reference value {reference['value']!r} is not a label of axis {reference['axis']!r}; labels: {labels}")
    for analysis in study["analyses"]:
        if "selection" in analysis and analysis["selection"] not in names:
            raise StudyError(f"{path}: analysis {analysis['name']!r} reads unknown selection {analysis['selection']!r}; the study has: {names}")


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
        _check_claims(fig, path)


def _check_claims(fig: dict[str, Any], path: Path) -> None:
    """Claim ids unique, options the check takes, tables the figure reads."""
    import inspect

    from .claims import CLAIM_CHECKS

    ids = [c["id"] for c in fig["claims"]]
    if len(set(ids)) != len(ids):
        raise StudyError(f"{path}: figure {fig['name']!r}: claim ids must be unique, got {ids}")
    for claim in fig["claims"]:
        options = dict(claim.get("options", {}))
        table = options.pop("table", None)
        if table is not None and table not in fig["analyses"]:
            raise StudyError(f"{path}: claim {claim['id']!r} reads table {table!r}, which figure {fig['name']!r} does not read; it reads: {fig['analyses']}")
        params = inspect.signature(CLAIM_CHECKS.get(claim["check"])).parameters
        accepted = set(params) - {"table"}
        unknown = sorted(set(options) - accepted)
        required = sorted(n for n, p in params.items() if n != "table" and p.default is p.empty and n not in options)
        if unknown or required:
            raise StudyError(
                f"{path}: claim {claim['id']!r} ({claim['check']}): "
                + (f"does not take {unknown}; " if unknown else "") + (f"needs {required}; " if required else "")
                + f"it takes: {', '.join(sorted(accepted))}"
            )


def load_study(path: str | Path, schema: dict[str, Any] | None = None, scales: tuple[str, ...] = SCALES) -> dict[str, Any]:
    """Read and validate one study file: the schema, then every run's spec at
    each of ``scales`` (all three for ``descentlab check``; the workflow checks
    the scale it runs)."""
    path = Path(path)
    try:
        with open(path) as fh:
            study = yaml.load(fh, Loader=_YAML_LOADER)
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
    _check_selections(study, path)
    for scale in scales:
        expansion = expand_study_lineage(study, scale, source=str(path))  # validates every spec
        study_merges(study, scale, expansion.sweep, ".", str(path))
    return study


def study_merges(study: dict[str, Any], scale: str, runs: list[Run], results: str | Path, source: str) -> list:
    """The study's merged models at ``scale`` (descentlab.merges), errors as StudyError."""
    from .merges import MergeError, plan_merges

    try:
        return plan_merges(study, scale, runs, results, source)
    except MergeError as err:
        raise StudyError(str(err)) from None


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


def _apply_entry(spec: dict[str, Any], axis: str, entry: dict[str, Any], where: str) -> dict[str, Any]:
    """One axis entry applied to a spec: its ``set``, then its ``multiply``."""
    spec = deep_merge(spec, entry.get("set", {}))
    for path, factor in entry.get("multiply", {}).items():
        spec = _multiply(spec, path, factor, f"{where}, axis {axis}, {entry['label']!r}")
    return spec


def study_axes(study: dict[str, Any], scale: str, where: str) -> dict[str, list[dict[str, Any]]]:
    """The study's axes at ``scale`` (a scale may replace an axis's entries)."""
    sizing = study["scales"][scale]
    axes = dict(study.get("axes", {}))
    unknown_axes = sorted(set(sizing.get("axes", {})) - set(axes))
    if unknown_axes:
        raise StudyError(f"{where}: scale {scale} replaces axes {unknown_axes} that the study does not have")
    axes.update(sizing.get("axes", {}))
    return axes


@dataclass
class Expansion:
    """A study's runs at one scale: the sweep, and the parents they start from."""

    sweep: list[Run]
    parents: list[Run]


def expand_study(study: dict[str, Any], scale: str, source: str = "") -> list[Run]:
    """The study's sweep runs at ``scale`` (see ``expand_study_lineage``)."""
    return expand_study_lineage(study, scale, source).sweep


def expand_study_lineage(study: dict[str, Any], scale: str, source: str = "") -> Expansion:
    """The study's runs at ``scale``: base, then the scale's sizes, then each axis
    combination, times the seeds; parent names resolved to run ids (the parents
    come back as runs of their own); every spec validated against the registries."""
    if scale not in SCALES:
        raise StudyError(f"unknown scale {scale!r}; valid scales: {', '.join(SCALES)}")
    if "base" not in study:
        return Expansion([], [])
    where_file = source or study["name"]
    sizing = study["scales"][scale]
    seeds = sizing.get("seeds", study.get("seeds", [0]))
    base = deep_merge(study["base"], sizing.get("set", {}))
    axes = study_axes(study, scale, where_file)
    axis_names = list(axes)
    where_scale = f"{where_file} (scale {scale})"
    try:
        parents = ParentResolver(study, scale, base, seeds[0], lambda spec, axis, entry: _apply_entry(spec, axis, entry, where_scale), where_file)
    except LineageError as err:
        raise StudyError(str(err)) from None
    runs: list[Run] = []
    for combo in itertools.product(*(axes[a] for a in axis_names)):
        spec = base
        labels: dict[str, Any] = {}
        for axis, entry in zip(axis_names, combo):
            spec = _apply_entry(spec, axis, entry, where_scale)
            labels[axis] = entry["label"]
        entries = {axis: (entry["label"], entry) for axis, entry in zip(axis_names, combo)}
        for seed in seeds:
            where = f"{where_file} (scale {scale}, {labels or 'base'}, seed {seed})"
            try:
                resolved = parents.resolve(dict(spec, seed=seed), entries, where)
                canon = validate(resolved, where=where)
                if canon["init"] is not None:
                    check_fits_parent(canon, parents.runs[canon["init"]["run"]].spec, where)
            except (SpecError, LineageError) as err:
                raise StudyError(str(err)) from None
            runs.append(Run(run_id(canon), canon, {**labels, "seed": seed}, study["name"], "sweep"))
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise StudyError(f"{where_file} (scale {scale}): axes produce identical runs {dup}; give them different settings")
    for parent in parents.runs.values():  # chains: a parent that starts from another parent
        init = parent.spec["init"]
        if init is not None:
            try:
                check_fits_parent(parent.spec, parents.runs[init["run"]].spec, f"{where_file} (scale {scale}, parent {parent.labels['parent']!r})")
            except LineageError as err:
                raise StudyError(str(err)) from None
    return Expansion(runs, list(parents.runs.values()))


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
