"""The workflow's plan, made once at parse time: every study's runs, their
parents, and the training jobs they are grouped into.

Grouping keeps caching local. A run's job is decided by the run and its own
study alone: runs of one study that share dataset, model, batch size and the
runs they start from (what trains well together, as one batched computation
later) form a family; a family is cut into jobs of at most
``max_runs_per_job`` runs. Adding, removing or changing runs of another study
never moves a run to another job, so it reruns nothing here. A run that two
studies share is trained once, in the job of the first of those studies by
name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .lineage import run_references
from .runs import Run
from .spec import canonical_json, data_id
from .studies import SCALES, SCHEMA_DIR, StudyError, expand_study_lineage, load_study, selection_at, study_merges, study_schema

GROUP_SEPARATOR = "+"


@dataclass
class Plan:
    scale: str
    results: Path
    studies: dict[str, dict[str, Any]]
    runs: dict[str, Run]  # run id -> the record of the study that trains it
    study_runs: dict[str, list[Run]]  # study -> its sweep (with that study's labels)
    study_parents: dict[str, list[Run]]  # study -> the parents its runs start from
    groups: dict[str, list[str]]  # job id -> run ids trained in that job
    group_of: dict[str, str] = field(default_factory=dict)  # run id -> job id
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)  # data id -> dataset spec
    merges: Any = None  # descentlab.merges.MergePlan: the studies' merged models and their jobs

    def data_of(self, rid: str) -> str:
        return data_id(self.runs[rid].spec["dataset"])

    def selections(self) -> list[tuple[str, str]]:
        """(study, selection name) of every selection."""
        return [(name, sel["name"]) for name, study in self.studies.items() for sel in study["selections"]]

    def selection(self, study: str, name: str) -> dict[str, Any]:
        return selection_at(self.studies[study], name, self.scale)


def data_file(results: str | Path, dataset: dict[str, Any]) -> Path:
    return Path(results) / "data" / f"{data_id(dataset)}.pt"


def _family(run: Run) -> str:
    spec = run.spec
    key = {
        "dataset": spec["dataset"],
        "model": spec["model"],
        "batch_size": spec["batch_size"],
        "reads": sorted(run_references(spec)),
    }
    return json.dumps(key, sort_keys=True)


def group_runs(runs: Iterable[Run], max_runs_per_job: int, min_jobs_per_group: int = 1, prefix: str = "") -> dict[str, list[str]]:
    """Cut runs into training jobs: one family (see the module doc) per job,
    split into chunks of at most ``max_runs_per_job`` (and at least
    ``min_jobs_per_group`` chunks, for parallelism), seeds of one setting kept
    together. Job ids: ``<prefix><dataset>-<model>-<family hash>[-<k>of<n>]``."""
    families: dict[str, list[Run]] = {}
    for run in runs:
        families.setdefault(_family(run), []).append(run)
    groups: dict[str, list[str]] = {}
    for key, members in sorted(families.items()):
        members.sort(key=lambda r: (canonical_json(dict(r.spec, seed=0)), r.spec["seed"]))
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        spec = members[0].spec
        name = f"{prefix}{spec['dataset']['name']}-{spec['model']['name']}-{digest}"
        n_jobs = max(-(-len(members) // max_runs_per_job), min(min_jobs_per_group, len(members)))
        for k in range(n_jobs):
            chunk = members[k * len(members) // n_jobs : (k + 1) * len(members) // n_jobs]
            groups[name if n_jobs == 1 else f"{name}-{k + 1}of{n_jobs}"] = [r.run_id for r in chunk]
    return groups


def plan(
    paths: list[Path],
    scale: str,
    results: str | Path = "results",
    max_runs_per_job: int = 64,
    min_jobs_per_group: int = 1,
    schema_dir: Path = SCHEMA_DIR,
) -> Plan:
    """Read the studies at ``paths`` (checked at ``scale`` only) and plan their runs and jobs."""
    if scale not in SCALES:
        raise StudyError(f"unknown scale {scale!r}; valid scales: {', '.join(SCALES)}")
    results = Path(results)
    schema = study_schema(schema_dir)
    studies: dict[str, dict[str, Any]] = {}
    study_runs: dict[str, list[Run]] = {}
    study_parents: dict[str, list[Run]] = {}
    for path in sorted(paths, key=lambda p: p.stem):
        study = load_study(path, schema, scales=())  # checked at `scale` by the expansion below
        name = study["name"]
        studies[name] = study
        expansion = expand_study_lineage(study, scale, source=str(path))
        study_runs[name] = [r.at(results, data_file(results, r.spec["dataset"])) for r in expansion.sweep]
        study_parents[name] = [r.at(results, data_file(results, r.spec["dataset"])) for r in expansion.parents]
        _check_selection_seeds(study, scale, path)
    runs: dict[str, Run] = {}  # the first study by name trains a shared run
    for name in sorted(studies):
        for run in study_parents[name] + study_runs[name]:
            runs.setdefault(run.run_id, run)
    groups: dict[str, list[str]] = {}
    for name in sorted(studies):
        owned = [r for r in runs.values() if r.study == name]
        groups.update(group_runs(owned, max_runs_per_job, min_jobs_per_group, prefix=f"{name}{GROUP_SEPARATOR}"))
    group_of = {rid: gid for gid, members in groups.items() for rid in members}
    datasets = {data_id(r.spec["dataset"]): r.spec["dataset"] for r in runs.values()}
    from .merges import plan_all

    merges = plan_all({name: study_merges(studies[name], scale, study_runs[name], results, str(path))
                       for name, path in ((p.stem, p) for p in paths) if name in studies})
    return Plan(scale, results, studies, runs, study_runs, study_parents, groups, group_of, datasets, merges)


def _check_selection_seeds(study: dict[str, Any], scale: str, path: Path) -> None:
    """A selection reruns with seeds it did not select on: reporting on the
    seed that won the selection would report its luck."""
    swept = set(study["scales"][scale].get("seeds", study.get("seeds", [0])))
    for selection in study["selections"]:
        seeds = selection_at(study, selection["name"], scale)["seeds"]
        shared = sorted(swept & set(seeds))
        if shared:
            raise StudyError(
                f"{path}: selection {selection['name']!r} at scale {scale} reruns seeds {shared} that the sweep "
                f"selects on ({sorted(swept)}); rerun with other seeds"
            )
