"""Draw one study figure from its runs' metrics tables (rule figure)."""

from descentlab.jobs import job_log

with job_log(snakemake.log[0]):
    from descentlab.artifacts import collect_runs, save_figure
    from descentlab.plots import FIGURES

    figure = snakemake.params.figure
    metrics, runs = collect_runs(snakemake.params.runs, snakemake.params.runs_dir)
    options = {"title": snakemake.params.title, **figure["options"]}
    fig, plotted, summary = FIGURES.get(figure["kind"])(metrics, runs, **options)
    out = snakemake.output
    save_figure(fig, plotted, summary, out.pdf, out.png, out.csv, out.summary)
