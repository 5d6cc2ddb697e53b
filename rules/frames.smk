# Frames stage: decode + resize + encode, one job per shard, into the rgb view.


rule frames:
    input:
        manifest=f"{OUT}/manifest/manifest.tsv",
    output:
        f"{OUT}/shards/rgb/{{shard}}.h5",
    log:
        "logs/frames/{shard}.log",
    benchmark:
        "benchmarks/frames/{shard}.tsv"
    conda:
        "../envs/preprocess.yaml"
    threads: R.threads("frames")
    resources:
        mem_mb=R.mem_mb("frames"),
        runtime=R.runtime("frames", MAX_MINUTES),
    params:
        config=job("frames"),
        videos=shard_fingerprint,
    shell:
        "python -m cocon frames --manifest {input.manifest} --shard {wildcards.shard} --out {output}"
        " --config-json {params.config:q} --threads {threads} > {log} 2>&1"
