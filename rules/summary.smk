# End of preprocessing: one report of every failed video per stage (also printed at the end).


rule preprocess_summary:
    input:
        manifest=f"{OUT}/manifest/manifest.tsv",
        missing=f"{OUT}/manifest/missing.tsv",
        shards=[p for view in VIEWS for p in shard_paths(view)],
    output:
        json=f"{OUT}/reports/preprocess_summary.json",
        tsv=f"{OUT}/reports/failed_videos.tsv",
    log:
        "logs/preprocess_summary.log",
    conda:
        "../envs/preprocess.yaml"
    threads: R.threads("preprocess_summary")
    resources:
        mem_mb=R.mem_mb("preprocess_summary"),
        runtime=R.runtime("preprocess_summary", MAX_MINUTES),
    shell:
        "python -m cocon summary --manifest {input.manifest} --missing {input.missing}"
        " --json {output.json} --tsv {output.tsv} {input.shards} > {log} 2>&1"


onsuccess:
    print_summary(f"{OUT}/reports/preprocess_summary.json")
