# Stage 2: training. One rule trains every job of runs, planned at parse time
# (common.smk) or by a selection (select_runs below). A job writes each run's
# files into runs/<run id>/ and, last, its manifest train/<job>.json, which is
# what later stages wait for. State needed to resume lives in each run's
# .resume/ folder, so a killed or re-queued job continues instead of starting
# over; a damaged run file reruns its job once (see damage_record).


rule train:
    input:
        unpack(train_inputs),
    output:
        job_manifest("{group}"),
    params:
        runs=lambda wc: [r.to_dict() for r in group_members(wc.group)],
        device=config["device"],
        code=CODE_VERSION,
        damage=damage_record,
    threads: config["threads_per_job"]
    resources:
        **config["resources"],
    benchmark:
        benchmark_file(RESULTS, "train", "{group}")
    log:
        f"{RESULTS}/logs/train/{{group}}.log",
    conda:
        ENV
    script:
        "../../scripts/train.py"


# Data-dependent runs: once a study's sweep has trained, pick the best run of
# each cell and plan its reruns (their specs, ids and jobs). Snakemake then
# re-evaluates the DAG and trains them with the rule above.
checkpoint select_runs:
    input:
        lambda wc: manifests_of(PLAN.study_runs[wc.study]),
    output:
        selection_file("{study}", "{selection}"),
    params:
        runs=lambda wc: [r.to_dict() for r in PLAN.study_runs[wc.study]],
        selection=lambda wc: PLAN.selection(wc.study, wc.selection),
        trained_elsewhere=lambda wc: {r.run_id: PLAN.group_of[r.run_id] for r in PLAN.study_runs[wc.study]},
        max_runs_per_job=config["max_runs_per_job"],
        min_jobs_per_group=config["min_jobs_per_group"],
    benchmark:
        benchmark_file(RESULTS, "selections", "{study}/{selection}")
    log:
        f"{RESULTS}/logs/selections/{{study}}/{{selection}}.log",
    conda:
        ENV
    script:
        "../../scripts/select_runs.py"


rule run_index:
    input:
        index_inputs,
    output:
        f"{RESULTS}/runs/index.csv",
    params:
        runs=[r.to_dict() for _, r in sorted(PLAN.runs.items())],
    log:
        f"{RESULTS}/logs/run_index.log",
    conda:
        ENV
    script:
        "../../scripts/run_index.py"
