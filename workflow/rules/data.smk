# Stage 1: build each dataset once, with fixed train/val/test splits; a change
# to the data code (its fingerprint) rebuilds them.


rule prepare_data:
    output:
        f"{RESULTS}/data/{{data_id}}.pt",
    params:
        dataset=lambda wc: PLAN.datasets[wc.data_id],
        code=DATA_CODE_VERSION,
    benchmark:
        benchmark_file(RESULTS, "data", "{data_id}")
    log:
        f"{RESULTS}/logs/data/{{data_id}}.log",
    conda:
        ENV
    script:
        "../../scripts/prepare_data.py"
