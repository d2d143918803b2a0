# Stage 1: build each dataset once, with fixed train/val/test splits.


rule prepare_data:
    output:
        f"{RESULTS}/data/{{data_id}}.pt",
    params:
        dataset=lambda wc: PLAN.datasets[wc.data_id],
    log:
        f"{RESULTS}/logs/data/{{data_id}}.log",
    conda:
        ENV
    script:
        "../../scripts/prepare_data.py"
