"""Compute one analysis table of a study (rule analysis)."""

from descentlab.jobs import job_log

with job_log(snakemake.log[0]) as log:
    import torch

    from descentlab.analyses import ANALYSES, RunRef
    from descentlab.artifacts import write_table
    from descentlab.jobs import resolve_device

    import inspect

    torch.set_num_threads(snakemake.threads)
    spec = snakemake.params.analysis
    runs = [RunRef.from_dict(r) for r in snakemake.params.runs]
    fn = ANALYSES.get(spec["kind"])
    extra = {"threads": snakemake.threads} if "threads" in inspect.signature(fn).parameters else {}
    table = fn(runs, device=resolve_device(snakemake.params.device), **extra, **spec["options"])
    write_table(table, snakemake.output[0])
    log.info("%s: %d rows from %d runs", spec["kind"], len(table), len(runs))
