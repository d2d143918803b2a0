"""Build one dataset with fixed splits (rule prepare_data)."""

from descentlab.jobs import job_log

with job_log(snakemake.log[0]) as log:
    from descentlab.data import build_dataset

    data = build_dataset(snakemake.params.dataset)
    data.save(snakemake.output[0])
    log.info("wrote %s: %s", snakemake.output[0], {s: data.size(s) for s in ("train", "val", "test")})
