"""Draw one study figure from its runs' metrics and its analyses' tables (rule figure)."""

from descentlab.jobs import job_log

with job_log(snakemake.log[0]):
    import pandas as pd

    from descentlab.artifacts import collect_runs, save_figure
    from descentlab.claims import caption_text, evaluate_claims
    from descentlab.plots import FIGURES
    from descentlab.runs import Run

    figure = snakemake.params.figure
    metrics, runs = collect_runs([Run.from_dict(r) for r in snakemake.params.runs])
    tables = {name: pd.read_parquet(path) for name, path in snakemake.params.tables.items()}
    options = {"title": snakemake.params.title, **figure["options"]}
    fig, plotted, summary = FIGURES.get(figure["kind"])(metrics, runs, tables, **options)
    wc = snakemake.wildcards
    claims = evaluate_claims(figure["claims"], summary, tables, study=wc.study, figure=wc.figure, scale=snakemake.params.scale)
    out = snakemake.output
    save_figure(fig, plotted, summary, out.pdf, out.png, out.csv, out.summary, caption=caption_text(claims))
    claims.to_csv(out.claims, index=False)
