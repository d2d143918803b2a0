# Parse-time planning: read and validate the studies, expand them into runs,
# and group runs that differ only in their seed into one training job.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # a clone works before `pip install`

from descentlab.fingerprint import training_code_fingerprint
from descentlab.studies import StudyError, analysis_options, plan, study_paths
from descentlab.train.loop import output_files

RESULTS = config["results"]
ENV = "../../envs/descentlab.yaml"

try:
    PLAN = plan(
        study_paths(config["studies_dir"], config["studies"]),
        config["scale"],
        max_runs_per_job=config["max_runs_per_job"],
        min_jobs_per_dataset=config["min_jobs_per_dataset"],
    )
except StudyError as err:
    raise WorkflowError(f"invalid study configuration:\n{err}") from None

CODE_VERSION = training_code_fingerprint() if config["track_library_code"] else "untracked"


def run_dir(rid):
    return f"{RESULTS}/runs/{rid}"


def run_outputs(rid):
    return [str(p) for p in output_files(run_dir(rid), PLAN.runs[rid])]


# Input functions of the figure rule.
def figure_spec(wc):
    for fig in PLAN.studies[wc.study]["figures"]:
        if fig["name"] == wc.figure:
            return fig
    raise ValueError(f"study {wc.study!r} has no figure {wc.figure!r}")


def study_run_files(wc):
    runs = PLAN.study_runs[wc.study]
    files = [f"{run_dir(r.run_id)}/{name}" for r in runs for name in ("metrics.parquet", "status.json")]
    return files + list(figure_tables(wc).values())


def figure_tables(wc):
    return {name: f"{RESULTS}/analyses/{wc.study}/{name}.parquet" for name in figure_spec(wc)["analyses"]}


# Input functions of the analysis rule.
def analysis_spec(wc):
    for analysis in PLAN.studies[wc.study]["analyses"]:
        if analysis["name"] == wc.analysis:
            return {"kind": analysis["kind"], "runs": analysis["runs"], "options": analysis_options(analysis, config["scale"])}
    raise ValueError(f"study {wc.study!r} has no analysis {wc.analysis!r}")


def analysis_runs(wc):
    if not analysis_spec(wc)["runs"]:
        return []
    return [
        {
            "run_id": r.run_id,
            "labels": r.labels,
            "dir": run_dir(r.run_id),
            "spec": r.spec,
            "data": f"{RESULTS}/data/{PLAN.data_of(r.run_id)}.pt",
        }
        for r in PLAN.study_runs[wc.study]
    ]


def analysis_inputs(wc):
    runs = analysis_runs(wc)
    return sorted({r["data"] for r in runs}) + [f for r in runs for f in run_outputs(r["run_id"])]



FIGURE_FILES = [
    f"{RESULTS}/figures/{study}/{fig['name']}.{ext}"
    for study, spec in PLAN.studies.items()
    for fig in spec["figures"]
    for ext in ("pdf", "png", "csv")
]


wildcard_constraints:
    study="[a-z0-9][a-z0-9-]*",
    figure="[a-z0-9][a-z0-9_-]*",
    analysis="[a-z0-9][a-z0-9_-]*",
    data_id="[A-Za-z0-9_.]+-[0-9a-f]{8}",
