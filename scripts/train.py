"""Train one job's runs (rule train); its manifest, written last, lists them."""

import sys

from descentlab.jobs import job_log

console = sys.stderr  # job_log sends stderr to the log file; progress goes to the console
with job_log(snakemake.log[0]) as log:  # imports inside: their errors reach the log too
    import torch

    from descentlab.data import SplitData
    from descentlab.jobs import resolve_device, write_manifest
    from descentlab.runs import Run
    from descentlab.train import train_run

    torch.set_num_threads(snakemake.threads)
    device = resolve_device(snakemake.params.device)
    runs = [Run.from_dict(r) for r in snakemake.params.runs]
    job = snakemake.wildcards.group
    data, results = {}, []
    for k, run in enumerate(runs, 1):
        if run.data not in data:
            data[run.data] = SplitData.load(run.data)
        result = train_run(run.spec, data[run.data], run.dir, device=device, progress=False)
        results.append(result)
        log.info(
            "%s: %s after %d steps (resumed from %d) in %.2f s",
            result.run_id, result.status, result.steps_completed, result.resumed_from, result.train_seconds,
        )
        print(f"[{job}] {k}/{len(runs)} runs done ({result.run_id}: {result.status})", file=console, flush=True)
    write_manifest(snakemake.output[0], job, results)
