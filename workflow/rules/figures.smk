# Last stage: figures. They read only tables (metrics), never checkpoints, so
# a figure redraws without recomputing anything upstream. Each figure job also
# evaluates the claims its study states for it (descentlab.claims).


rule figure:
    input:
        figure_inputs,
    output:
        pdf=report(
            f"{RESULTS}/figures/{{study}}/{{figure}}.pdf",
            caption="../report/figure.rst",
            category="{study}",
        ),
        png=report(
            f"{RESULTS}/figures/{{study}}/{{figure}}.png",
            caption="../report/figure.rst",
            category="{study}",
        ),
        csv=f"{RESULTS}/figures/{{study}}/{{figure}}.csv",
        summary=f"{RESULTS}/figures/{{study}}/{{figure}}.summary.csv",
        claims=f"{RESULTS}/figures/{{study}}/{{figure}}.claims.csv",
    params:
        figure=figure_spec,
        scale=config["scale"],
        runs=lambda wc: [r.to_dict() for r in study_records(wc.study)],
        tables=figure_tables,
        title=lambda wc: PLAN.studies[wc.study]["title"],
    benchmark:
        benchmark_file(RESULTS, "figures", "{study}/{figure}")
    log:
        f"{RESULTS}/logs/figures/{{study}}/{{figure}}.log",
    conda:
        ENV
    script:
        "../../scripts/figure.py"


# Every figure's claims in one table; a claim that does not hold is a row
# that says so, not a failed job.
rule claims:
    input:
        CLAIM_FILES,
    output:
        report(f"{RESULTS}/claims.csv", caption="../report/claims.rst", category="claims"),
    log:
        f"{RESULTS}/logs/claims.log",
    conda:
        ENV
    script:
        "../../scripts/claims.py"
