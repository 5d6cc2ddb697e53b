# Flow stages: TVL1 and Farneback between consecutive stored rgb frames, each its own view.


rule flow:
    input:
        rgb=f"{OUT}/shards/rgb/{{shard}}.h5",
    output:
        f"{OUT}/shards/flow_{{method}}/{{shard}}.h5",
    log:
        "logs/flow_{method}/{shard}.log",
    benchmark:
        "benchmarks/flow_{method}/{shard}.tsv"
    threads: 8
    resources:
        gpu=lambda wildcards: TVL1_GPUS if wildcards.method == "tvl1" else 0,
        mem_mb=4000,
        runtime=240,
    conda:
        "../envs/preprocess.yaml"
    params:
        flow=flow_json,
        dataset=DATASET_JSON,
    shell:
        on_gpus(
            "python -m cocon.preprocess.flow --method {wildcards.method} --rgb {input.rgb} --shard {wildcards.shard}"
            " --out {output} --params {params.flow:q} --dataset {params.dataset:q} --threads {threads} > {log} 2>&1"
        )
