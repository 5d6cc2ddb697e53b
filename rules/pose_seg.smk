# Inferred views: person segmentation (mmsegmentation) and pose keypoint heatmaps (mmpose), each its own
# rule and shards, computed from the rgb shards on a frame stride (docs/pose_seg.md).


rule seg:
    input:
        rgb=f"{OUT}/shards/rgb/{{shard}}.h5",
        models=model_files("seg"),
    output:
        f"{OUT}/shards/seg/{{shard}}.h5",
    log:
        "logs/seg/{shard}.log",
    benchmark:
        "benchmarks/seg/{shard}.tsv"
    conda:
        "../envs/mm.yaml"
    threads: R.threads("seg", NET_THREADS)
    resources:
        gpu=view_gpus("seg"),
        mem_mb=R.mem_mb("seg"),
        runtime=R.runtime("seg", MAX_MINUTES),
    params:
        config=job("seg"),
    shell:
        on_gpus(
            "python -m cocon seg --rgb {input.rgb} --shard {wildcards.shard} --out {output}"
            " --config-json {params.config:q} --threads {threads} > {log} 2>&1"
        )


rule pose:
    input:
        rgb=f"{OUT}/shards/rgb/{{shard}}.h5",
        seg=lambda w: [f"{OUT}/shards/seg/{w.shard}.h5"] if config["pose"]["boxes"] == "seg" else [],
        models=model_files("pose"),
    output:
        f"{OUT}/shards/pose/{{shard}}.h5",
    log:
        "logs/pose/{shard}.log",
    benchmark:
        "benchmarks/pose/{shard}.tsv"
    conda:
        "../envs/mm.yaml"
    threads: R.threads("pose", NET_THREADS)
    resources:
        gpu=view_gpus("pose"),
        mem_mb=R.mem_mb("pose"),
        runtime=R.runtime("pose", MAX_MINUTES),
    params:
        config=job("pose"),
        seg=lambda w, input: f"--seg {input.seg}" if input.seg else "",
    shell:
        on_gpus(
            "python -m cocon pose --rgb {input.rgb} {params.seg} --shard {wildcards.shard} --out {output}"
            " --config-json {params.config:q} --threads {threads} > {log} 2>&1"
        )
