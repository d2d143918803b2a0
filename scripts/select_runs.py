"""Pick the best setting of each cell of a sweep (its mean over the tuning seeds) and plan its reruns (checkpoint select_runs)."""

from descentlab.jobs import job_log

with job_log(snakemake.log[0]) as log:
    import functools

    from descentlab.plan import group_runs
    from descentlab.runs import Run
    from descentlab.selection import plan_selection, write_selection

    params = snakemake.params
    record = plan_selection(
        [Run.from_dict(r) for r in params.runs],
        params.selection,
        study=snakemake.wildcards.study,
        trained_elsewhere=dict(params.trained_elsewhere),
        group_runs=functools.partial(group_runs, max_runs_per_job=params.max_runs_per_job, min_jobs_per_group=params.min_jobs_per_group),
    )
    write_selection(record, snakemake.output[0])
    for cell in record["cells"]:
        log.info("%s: %s", cell["cell"], cell["selected"] or "every setting diverged")
    log.info("%d reruns in %d jobs", sum(r["role"] == "rerun" for r in record["runs"]), len(record["groups"]))
