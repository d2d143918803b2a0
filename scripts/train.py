"""Train one job's runs (rule train); its manifest, written last, lists them.

Compatible runs train as one batched computation unless the config says
``batched_training: false`` (descentlab.train.batched.train_job)."""

import sys

from descentlab.jobs import job_log

console = sys.stderr  # job_log sends stderr to the log file; progress goes to the console
with job_log(snakemake.log[0]) as log:  # imports inside: their errors reach the log too
    import torch

    from descentlab.data import SplitData
    from descentlab.jobs import resolve_device, write_manifest
    from descentlab.runs import Run
    from descentlab.train.batched import train_job

    torch.set_num_threads(snakemake.threads)
    device = resolve_device(snakemake.params.device)
    runs = [Run.from_dict(r) for r in snakemake.params.runs]
    job = snakemake.wildcards.group
    batched = bool(snakemake.config.get("batched_training", True))
    data = {}
    for run in runs:
        if run.data not in data:
            data[run.data] = SplitData.load(run.data)
    done = []

    def report(k, result):
        done.append(k)
        log.info(
            "%s: %s after %d steps (resumed from %d) in %.2f s",
            result.run_id, result.status, result.steps_completed, result.resumed_from, result.train_seconds,
        )
        print(f"[{job}] {len(done)}/{len(runs)} runs done ({result.run_id}: {result.status})", file=console, flush=True)

    log.info("%s: %d runs, batched training %s", job, len(runs), "on" if batched else "off")
    results = train_job(
        [run.spec for run in runs], [data[run.data] for run in runs], [run.dir for run in runs],
        batched=batched, device=device, progress=False, on_result=report,
    )
    write_manifest(snakemake.output[0], job, results)
