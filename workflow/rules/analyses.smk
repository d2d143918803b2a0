# Analyses: one table per (study, analysis), computed from the study's runs
# (their checkpoints and data) or, for a standalone experiment, from nothing.
# Stage-specific rules that produce weights or per-run caches live in
# average.smk, curvature.smk, landscape.smk and scaling.smk.


rule analysis:
    input:
        analysis_inputs,
    output:
        f"{RESULTS}/analyses/{{study}}/{{analysis}}.parquet",
    params:
        analysis=analysis_spec,
        runs=lambda wc: [r.to_dict() for r in analysis_runs(wc)],
        selected=analysis_selected,
        device=config["device"],
    threads: config["analysis_threads"]
    benchmark:
        benchmark_file(RESULTS, "analyses", "{study}/{analysis}")
    log:
        f"{RESULTS}/logs/analyses/{{study}}/{{analysis}}.log",
    conda:
        ENV
    script:
        "../../scripts/analysis.py"
