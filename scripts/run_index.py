"""Write results/runs/index.csv: run id -> its key fields (rule run_index)."""

from descentlab.jobs import job_log
from descentlab.runindex import write_index

with job_log(snakemake.log[0]):
    write_index(snakemake.params.runs, snakemake.output[0])
