# Last stage: figures. They read only tables (metrics), never checkpoints, so
# a figure redraws without recomputing anything upstream.


def _figure(wc):
    for fig in PLAN.studies[wc.study]["figures"]:
        if fig["name"] == wc.figure:
            return fig
    raise ValueError(f"study {wc.study!r} has no figure {wc.figure!r}")


def _study_run_files(wc):
    runs = PLAN.study_runs[wc.study]
    return [f"{run_dir(r.run_id)}/{name}" for r in runs for name in ("metrics.parquet", "status.json")]


rule figure:
    input:
        _study_run_files,
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
        figure=_figure,
        runs=lambda wc: [{"run_id": r.run_id, **r.labels} for r in PLAN.study_runs[wc.study]],
        runs_dir=f"{RESULTS}/runs",
        title=lambda wc: PLAN.studies[wc.study]["title"],
    log:
        f"{RESULTS}/logs/figures/{{study}}/{{figure}}.log",
    conda:
        ENV
    script:
        "../../scripts/figure.py"
