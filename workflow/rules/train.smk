# Stage 2: training. One job per group of runs that share everything but the
# seed, so Python and torch start once per group. Each run keeps its own
# directory named by its content hash; state needed to resume lives in the
# run's .resume/ folder, outside the declared outputs, so a killed or
# re-queued job continues instead of starting over.

for _group, _members in PLAN.groups.items():

    rule:
        name:
            f"train_{_group}".replace("-", "_").replace(".", "p")
        input:
            data=f"{RESULTS}/data/{PLAN.data_of(_members[0])}.pt",
        output:
            [f for rid in _members for f in run_outputs(rid)],
        params:
            runs=[{"run_id": rid, "spec": PLAN.runs[rid], "dir": run_dir(rid)} for rid in _members],
            device=config["device"],
            code=CODE_VERSION,
        threads: config["threads_per_job"]
        resources:
            **config["resources"],
        log:
            f"{RESULTS}/logs/train/{_group}.log",
        conda:
            ENV
        script:
            "../../scripts/train.py"


rule run_index:
    output:
        f"{RESULTS}/runs/index.csv",
    params:
        runs=[{"run_id": rid, **{k: spec[k] for k in ("dataset", "model", "loss", "optimizer", "schedule", "batch_size", "steps", "seed")}} for rid, spec in sorted(PLAN.runs.items())],
    log:
        f"{RESULTS}/logs/run_index.log",
    conda:
        ENV
    script:
        "../../scripts/run_index.py"
