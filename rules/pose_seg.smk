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
    threads: 4
    resources:
        gpu=config["seg"]["gpus"],
        mem_mb=8000,
        runtime=480,
    conda:
        "../envs/mm.yaml"
    params:
        seg=inferred_json("seg"),
        dataset=DATASET_JSON,
    shell:
        on_gpus(
            "python -m cocon.preprocess.seg --rgb {input.rgb} --shard {wildcards.shard} --out {output}"
            " --params {params.seg:q} --dataset {params.dataset:q} --threads {threads} > {log} 2>&1"
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
    threads: 4
    resources:
        gpu=config["pose"]["gpus"],
        mem_mb=8000,
        runtime=480,
    conda:
        "../envs/mm.yaml"
    params:
        pose=inferred_json("pose"),
        dataset=DATASET_JSON,
        seg=lambda w, input: f"--seg {input.seg}" if input.seg else "",
    shell:
        on_gpus(
            "python -m cocon.preprocess.pose --rgb {input.rgb} {params.seg} --shard {wildcards.shard} --out {output}"
            " --params {params.pose:q} --dataset {params.dataset:q} --threads {threads} > {log} 2>&1"
        )
