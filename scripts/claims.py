"""Gather every figure's claims into results/claims.csv (rule claims)."""

from descentlab.jobs import job_log

with job_log(snakemake.log[0]) as log:
    import pandas as pd

    from descentlab.claims import CLAIM_COLUMNS

    frames = [pd.read_csv(path, keep_default_na=False) for path in snakemake.input]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CLAIM_COLUMNS)
    table.to_csv(snakemake.output[0], index=False)
    log.info("%d claims, %d hold", len(table), int((table["holds"] == "yes").sum()))
