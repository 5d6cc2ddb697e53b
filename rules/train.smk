# Training: stage 1, CPC per view (one job each); stage 2, CoCon joint training from the stage-1 weights.


rule cpc:
    input:
        shards=view_shards,
    output:
        model=f"{OUT}/train/cpc/{{view}}/model.pt",
        metrics=f"{OUT}/train/cpc/{{view}}/metrics.csv",
    log:
        "logs/train/cpc_{view}.log",
    benchmark:
        "benchmarks/train/cpc_{view}.tsv"
    threads: 8
    resources:
        gpu=config["train"]["gpus"],
        mem_mb=16000,
        runtime=1440,
    conda:
        "../envs/train.yaml"
    params:
        config=TRAIN_JSON,
        out=output_dir_of_model,
    shell:
        on_gpus(
            "python -m cocon.train.engine --stage cpc --views {wildcards.view} --out {params.out}"
            " --threads {threads} --config-json {params.config:q} > {log} 2>&1"
        )


rule cocon:
    input:
        shards=[p for view in config["train"]["views"] for p in shard_paths(view)],
        init=expand(f"{OUT}/train/cpc/{{view}}/model.pt", view=config["train"]["views"]),
    output:
        model=f"{OUT}/train/cocon/model.pt",
        metrics=f"{OUT}/train/cocon/metrics.csv",
    log:
        "logs/train/cocon.log",
    benchmark:
        "benchmarks/train/cocon.tsv"
    threads: 8
    resources:
        gpu=config["train"]["gpus"],
        mem_mb=32000,
        runtime=2880,
    conda:
        "../envs/train.yaml"
    params:
        config=TRAIN_JSON,
        views=" ".join(config["train"]["views"]),
        init=" ".join(f"--init {v}={OUT}/train/cpc/{v}/model.pt" for v in config["train"]["views"]),
        out=output_dir_of_model,
    shell:
        on_gpus(
            "python -m cocon.train.engine --stage cocon --views {params.views} {params.init} --out {params.out}"
            " --threads {threads} --config-json {params.config:q} > {log} 2>&1"
        )
