"""Where a workflow run spent its time: per study, from Snakemake's job benchmark files.

Every job rule writes `<results>/benchmarks/<stage>/<job wildcards>.tsv` (Snakemake's
`benchmark:` directive: wall seconds `s`, `cpu_time` = user + system seconds of the job's
process tree, `max_rss` in MB). A job belongs to the study that names it: training jobs are
`<study>+<family>`, analyses, figures, merges and selections live under `<stage>/<study>/`. Data
preparation is shared between studies and gets a row of its own.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

BENCHMARK_DIR = "benchmarks"
DATA_ROW = "(data preparation)"
_STAGE_DIRS = ("train", "selections", "merges", "analyses", "figures", "data")


def benchmark_file(results: str | Path, stage: str, job: str) -> str:
    """The benchmark file of one job (what the rules pass to `benchmark:`)."""
    if stage not in _STAGE_DIRS:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(_STAGE_DIRS)}")
    return f"{results}/{BENCHMARK_DIR}/{stage}/{job}.tsv"


def _study_of(stage: str, relative: Path) -> str:
    if stage == "data":
        return DATA_ROW
    if stage == "train":
        return relative.stem.split("+", 1)[0]
    return relative.parts[0]


def read_job_benchmarks(results: str | Path) -> pd.DataFrame:
    """One row per job: stage, job, study, wall_s, cpu_s, max_rss_mb (the last record of each file)."""
    root = Path(results) / BENCHMARK_DIR
    rows = []
    for stage in _STAGE_DIRS:
        for path in sorted((root / stage).rglob("*.tsv")):
            try:
                record = pd.read_csv(path, sep="\t").iloc[-1]
                wall, cpu, rss = float(record["s"]), record["cpu_time"], record["max_rss"]
            except (OSError, ValueError, IndexError, KeyError, pd.errors.ParserError) as err:
                raise ValueError(f"{path}: not a Snakemake benchmark file ({err})") from err
            relative = path.relative_to(root / stage)
            rows.append({
                "stage": stage,
                "job": str(relative.with_suffix("")),
                "study": _study_of(stage, relative),
                "wall_s": wall,
                "cpu_s": pd.to_numeric(cpu, errors="coerce"),
                "max_rss_mb": pd.to_numeric(rss, errors="coerce"),
            })
    return pd.DataFrame(rows, columns=["stage", "job", "study", "wall_s", "cpu_s", "max_rss_mb"])


def per_study(jobs: pd.DataFrame) -> pd.DataFrame:
    """Jobs, summed job wall and CPU seconds, and the largest job's memory, per study."""
    if jobs.empty:
        raise ValueError("no job benchmark files: run the workflow first (every job rule writes one)")
    table = jobs.groupby("study").agg(
        jobs=("job", "size"),
        train_cpu_s=("cpu_s", lambda s: s[jobs.loc[s.index, "stage"] == "train"].sum()),
        cpu_s=("cpu_s", "sum"),
        job_wall_s=("wall_s", "sum"),
        max_rss_mb=("max_rss_mb", "max"),
    )
    return table.sort_values("cpu_s", ascending=False).reset_index()


def markdown_table(table: pd.DataFrame) -> str:
    lines = ["| study | jobs | CPU s (training) | CPU s (all jobs) | job wall s (summed) | largest job MB |",
             "|---|---|---|---|---|---|"]
    for row in table.itertuples():
        lines.append(f"| {row.study} | {row.jobs} | {row.train_cpu_s:.0f} | {row.cpu_s:.0f} | {row.job_wall_s:.0f} | {row.max_rss_mb:.0f} |")
    lines.append(f"| total | {table['jobs'].sum()} | {table['train_cpu_s'].sum():.0f} | {table['cpu_s'].sum():.0f} | "
                 f"{table['job_wall_s'].sum():.0f} | {table['max_rss_mb'].max():.0f} |")
    return "\n".join(lines)
