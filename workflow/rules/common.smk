# Parse-time planning: read and validate the studies at the configured scale,
# expand them into runs (parents included) and group the runs into training
# jobs. Runs decided by data (selections) are planned by the select_runs
# checkpoint; the helpers below treat both kinds of job alike.
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # a clone works before `pip install`

from descentlab.fingerprint import data_code_fingerprint, training_code_fingerprint
from descentlab.integrity import run_damage
from descentlab.lineage import run_references
from descentlab.plan import GROUP_SEPARATOR, plan
from descentlab.runs import Run
from descentlab.selection import read_selection
from descentlab.studies import StudyError, analysis_options, study_paths
from descentlab.timings import benchmark_file
from descentlab.train.loop import output_files

RESULTS = config["results"]
LOG = logging.getLogger("descentlab")
if not LOG.handlers:  # parse-time warnings (damaged runs) reach the console
    LOG.addHandler(logging.StreamHandler(sys.stderr))
ENV = "../../envs/descentlab.yaml"

try:
    PLAN = plan(
        study_paths(config["studies_dir"], config["studies"]),
        config["scale"],
        results=RESULTS,
        max_runs_per_job=config["max_runs_per_job"],
        min_jobs_per_group=config["min_jobs_per_group"],
    )
except StudyError as err:
    raise WorkflowError(f"invalid study configuration:\n{err}") from None

CODE_VERSION = training_code_fingerprint() if config["track_library_code"] else "untracked"
DATA_CODE_VERSION = data_code_fingerprint() if config["track_library_code"] else "untracked"


def job_manifest(group):
    """The file a training job writes last: its runs and their status."""
    return f"{RESULTS}/train/{group}.json"


# -- training jobs: static (planned at parse time) or from a selection ---------------------


def selection_file(study, name):
    return f"{RESULTS}/selections/{study}/{name}.json"


def selection_record(study, name):
    """The select_runs checkpoint's output (waits for it in the DAG)."""
    return read_selection(checkpoints.select_runs.get(study=study, selection=name).output[0])


def selection_runs(study, name):
    return [Run.from_dict(r) for r in selection_record(study, name)["runs"]]


def group_members(group):
    """The runs a training job trains."""
    if group in PLAN.groups:
        return [PLAN.runs[rid] for rid in PLAN.groups[group]]
    study, name, _ = group.split(GROUP_SEPARATOR, 2)
    if study not in PLAN.studies or name not in [s["name"] for s in PLAN.studies[study]["selections"]]:
        raise ValueError(f"no training job {group!r} in this plan")
    record = selection_record(study, name)
    wanted = set(record["groups"].get(group, []))
    return [Run.from_dict(r) for r in record["runs"] if r["run_id"] in wanted]


def groups_of(runs):
    """The jobs that train ``runs`` (static runs, or records that carry their job)."""
    out = set()
    for run in runs:
        group = PLAN.group_of.get(run.run_id) if isinstance(run, Run) else None
        if group is None and isinstance(run, dict):
            group = run.get("group")
        if group is None:
            raise ValueError(f"run {getattr(run, 'run_id', run)} is trained by no job of this plan")
        out.add(group)
    return sorted(out)


def manifests_of(runs):
    return [job_manifest(g) for g in groups_of(runs)]


def train_inputs(wc):
    members = group_members(wc.group)
    reads = sorted({ref for r in members for ref in run_references(r.spec)})
    inputs = {
        "data": sorted({str(r.data) for r in members}),
        "parents": sorted({job_manifest(PLAN.group_of[rid]) for rid in reads}),
    }
    if wc.group not in PLAN.groups:  # a selection's job: it reruns when the selection changes
        study, name, _ = wc.group.split(GROUP_SEPARATOR, 2)
        inputs["selection"] = selection_file(study, name)
    return inputs


def damage_record(wc):
    """What damage to the finished job's run files was noticed last (a run file
    missing, or of another size than status.json records), as a params value:
    a new incident changes it, so the job reruns (Snakemake's params trigger).
    The text lives in results/train/.damage/<job>.txt, and a new incident is
    one noticed after the job last wrote its manifest, so the value the job
    recorded when it reran stays the same afterwards: the job reruns once."""
    group = wc.group
    record = Path(RESULTS) / "train" / ".damage" / f"{group}.txt"
    manifest = Path(job_manifest(group))
    if manifest.exists():
        problems = []
        for run in group_members(group):
            problems += run_damage(run.dir, output_files(run.dir, run.spec))
        if problems:
            LOG.warning("training job %s reruns: %s", group, "; ".join(problems[:5]))
            if not record.exists() or record.stat().st_mtime < manifest.stat().st_mtime:
                count = int(record.read_text().split(":", 1)[0]) + 1 if record.exists() else 1
                record.parent.mkdir(parents=True, exist_ok=True)
                record.write_text(f"{count}: " + "; ".join(problems[:5]))
    return record.read_text() if record.exists() else ""


def index_inputs(wc):
    """The selections (their reruns are runs too) and the jobs that train them."""
    files = [selection_file(study, name) for study, name in PLAN.selections()]
    return files + [m for study, name in PLAN.selections() for m in manifests_of(selection_record(study, name)["runs"])]


# -- merged models (average.smk) ---------------------------------------------------------


def merge_manifest(study, name):
    """The file a merge job writes last: its merged models and their status."""
    return f"{RESULTS}/merges/jobs/{study}/{name}.json"


def merge_manifests(study):
    """The jobs that compute the study's merged models (another study's, for one it shares)."""
    return sorted({merge_manifest(*PLAN.merges.owner[m.merge_id]) for m in PLAN.merges.of_study(study)})


def merge_inputs(wc):
    """A merge job's data and the training jobs of its input runs (and of the runs they start from)."""
    merges = PLAN.merges.job(wc.study, wc.merge)
    reads = sorted({rid for m in merges for rid in m.inputs} | {m.base["run"] for m in merges if m.base})
    return {
        "data": sorted({str(m.data) for m in merges}),
        "runs": sorted({job_manifest(PLAN.group_of[rid]) for rid in reads}),
    }


def study_records(study):
    """The study's runs, then its merged models as Run-like records (role "merge")."""
    return list(PLAN.study_runs[study]) + [m.as_run() for m in PLAN.merges.of_study(study)]


# -- analyses and figures ------------------------------------------------------------------


def figure_spec(wc):
    for fig in PLAN.studies[wc.study]["figures"]:
        if fig["name"] == wc.figure:
            return fig
    raise ValueError(f"study {wc.study!r} has no figure {wc.figure!r}")


def figure_tables(wc):
    return {name: f"{RESULTS}/analyses/{wc.study}/{name}.parquet" for name in figure_spec(wc)["analyses"]}


def figure_inputs(wc):
    return manifests_of(PLAN.study_runs[wc.study]) + merge_manifests(wc.study) + list(figure_tables(wc).values())


def analysis_entry(wc):
    for analysis in PLAN.studies[wc.study]["analyses"]:
        if analysis["name"] == wc.analysis:
            return analysis
    raise ValueError(f"study {wc.study!r} has no analysis {wc.analysis!r}")


def analysis_spec(wc):
    entry = analysis_entry(wc)
    return {"kind": entry["kind"], "runs": entry["runs"], "selection": entry.get("selection"),
            "options": analysis_options(entry, config["scale"])}


def analysis_runs(wc):
    return study_records(wc.study) if analysis_entry(wc)["runs"] else []


def analysis_selected(wc):
    name = analysis_entry(wc).get("selection")
    return selection_record(wc.study, name)["runs"] if name else []


def analysis_inputs(wc):
    runs, selected = analysis_runs(wc), analysis_selected(wc)
    data = sorted({str(r.data) for r in runs} | {r["data"] for r in selected})
    merges = merge_manifests(wc.study) if runs else []
    return data + manifests_of([r for r in runs if r.role != "merge"]) + merges + manifests_of(selected)


FIGURE_FILES = [
    f"{RESULTS}/figures/{study}/{fig['name']}.{ext}"
    for study, spec in PLAN.studies.items()
    for fig in spec["figures"]
    for ext in ("pdf", "png", "csv")
]
CLAIM_FILES = [f"{RESULTS}/figures/{study}/{fig['name']}.claims.csv" for study, spec in PLAN.studies.items() for fig in spec["figures"]]


wildcard_constraints:
    study="[a-z0-9][a-z0-9-]*",
    figure="[a-z0-9][a-z0-9_-]*",
    analysis="[a-z0-9][a-z0-9_-]*",
    selection="[a-z0-9][a-z0-9_-]*",
    group="[^/]+",
    data_id="[A-Za-z0-9_.]+-[0-9a-f]{8}",
    merge="[a-z0-9][a-z0-9_-]*",
