"""Compute one analysis table of a study (rule analysis)."""

from descentlab.jobs import job_log

with job_log(snakemake.log[0]) as log:
    import inspect

    import torch

    from descentlab.analyses import ANALYSES
    from descentlab.artifacts import write_table
    from descentlab.jobs import resolve_device
    from descentlab.runs import Run

    torch.set_num_threads(snakemake.threads)
    spec = snakemake.params.analysis
    runs = [Run.from_dict(r) for r in snakemake.params.runs]
    fn = ANALYSES.get(spec["kind"])
    accepted = inspect.signature(fn).parameters
    extra = {"threads": snakemake.threads} if "threads" in accepted else {}
    if spec["selection"]:  # the selected runs and their reruns
        extra["selected"] = [Run.from_dict(r) for r in snakemake.params.selected]
    table = fn(runs, device=resolve_device(snakemake.params.device), **extra, **spec["options"])
    write_table(table, snakemake.output[0])
    log.info("%s: %d rows from %d runs", spec["kind"], len(table), len(runs))
