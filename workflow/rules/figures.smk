# Last stage: figures. They read only tables (metrics), never checkpoints, so
# a figure redraws without recomputing anything upstream.


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
    params:
        figure=figure_spec,
        runs=lambda wc: [r.to_dict() for r in PLAN.study_runs[wc.study]],
        tables=figure_tables,
        title=lambda wc: PLAN.studies[wc.study]["title"],
    log:
        f"{RESULTS}/logs/figures/{{study}}/{{figure}}.log",
    conda:
        ENV
    script:
        "../../scripts/figure.py"
