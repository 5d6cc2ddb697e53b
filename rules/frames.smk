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
    threads: 4
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/preprocess.yaml"
    params:
        frames=FRAMES_JSON,
        dataset=DATASET_JSON,
        videos=shard_fingerprint,
    shell:
        "python -m cocon.preprocess.frames --manifest {input.manifest} --shard {wildcards.shard} --out {output}"
        " --params {params.frames:q} --dataset {params.dataset:q} --threads {threads} > {log} 2>&1"
