# Stage 3: merged models (descentlab.merges). One job per merge a study
# declares: it merges each of the declaration's models from the input runs'
# final weights into merges/<id>/ (id: the hash of rule, options and inputs),
# evaluates them on the runs' splits and writes its manifest last. Changing a
# declaration's options changes only its job's params, so only it reruns.


rule merge:
    input:
        unpack(merge_inputs),
    output:
        merge_manifest("{study}", "{merge}"),
    params:
        merges=lambda wc: [m.to_dict() for m in PLAN.merges.job(wc.study, wc.merge)],
        device=config["device"],
        code=CODE_VERSION,
    threads: config["analysis_threads"]
    benchmark:
        benchmark_file(RESULTS, "merges", "{study}/{merge}")
    log:
        f"{RESULTS}/logs/merges/{{study}}/{{merge}}.log",
    conda:
        ENV
    script:
        "../../scripts/merge.py"
