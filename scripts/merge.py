"""Compute one merge job's merged models (rule merge); its manifest, written last, lists them."""

from descentlab.jobs import job_log

with job_log(snakemake.log[0]) as log:
    import json
    import os
    from pathlib import Path

    import torch

    from descentlab.jobs import resolve_device
    from descentlab.merges import Merge, compute_merge

    torch.set_num_threads(snakemake.threads)
    device = resolve_device(snakemake.params.device)
    records = []
    for entry in snakemake.params.merges:
        record = compute_merge(Merge.from_dict(entry), device=device)
        log.info("%s: %s in %.2f s", record["merge_id"], record["status"], record["seconds"])
        records.append(record)
    out = Path(snakemake.output[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"job": f"{snakemake.wildcards.study}/{snakemake.wildcards.merge}", "merges": records}, indent=1) + "\n")
    os.replace(tmp, out)
