"""Train a group of runs that share everything but the seed (rules train_*)."""

from descentlab.jobs import job_log

with job_log(snakemake.log[0]) as log:  # imports inside: their errors reach the log too
    import torch

    from descentlab.data import SplitData
    from descentlab.jobs import resolve_device
    from descentlab.train import train_run

    torch.set_num_threads(snakemake.threads)
    device = resolve_device(snakemake.params.device)
    data = SplitData.load(snakemake.input.data)
    for run in snakemake.params.runs:
        result = train_run(run["spec"], data, run["dir"], device=device, progress=False)
        log.info(
            "%s: %s after %d steps (resumed from %d) in %.2f s",
            result.run_id, result.status, result.steps_completed, result.resumed_from, result.train_seconds,
        )
