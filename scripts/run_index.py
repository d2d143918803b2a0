"""Write results/runs/index.csv: run id -> its key fields (rule run_index)."""

from descentlab.jobs import job_log

with job_log(snakemake.log[0]):
    from descentlab.runindex import write_index
    from descentlab.runs import Run
    from descentlab.selection import read_selection

    runs = {r["run_id"]: Run.from_dict(r) for r in snakemake.params.runs}
    for path in snakemake.input:
        for r in read_selection(path)["runs"]:
            runs.setdefault(r["run_id"], Run.from_dict(r))
    fields = ("dataset", "model", "loss", "optimizer", "schedule", "batch_size", "steps", "seed", "init")
    rows = [{"run_id": r.run_id, "study": r.study, "role": r.role, **{k: r.spec[k] for k in fields}} for r in runs.values()]
    write_index(sorted(rows, key=lambda row: row["run_id"]), snakemake.output[0])
