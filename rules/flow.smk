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
    conda:
        "../envs/preprocess.yaml"
    threads: R.threads("flow")
    resources:
        gpu=lambda wildcards: view_gpus(f"flow_{wildcards.method}"),
        mem_mb=R.mem_mb("flow"),
        runtime=R.runtime("flow", MAX_MINUTES),
    params:
        config=lambda wildcards: job("flow", method=wildcards.method),
    shell:
        on_gpus(
            "python -m cocon flow --method {wildcards.method} --rgb {input.rgb} --shard {wildcards.shard}"
            " --out {output} --config-json {params.config:q} --threads {threads}"
            " > {log} 2>&1"
        )
