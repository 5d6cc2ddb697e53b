# Training: stage 1, CPC per view (one job each); stage 2, CoCon joint training from the stage-1 weights;
# the control run, stage 2 for the same epochs with the cooperative terms off (train.lam = 0).


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
    threads: R.threads("cpc")
    resources:
        gpu=config["train"]["gpus"],
        mem_mb=R.mem_mb("cpc"),
        runtime=R.runtime("cpc"),
        tasks_per_gpu=0,
    conda:
        "../envs/train.yaml"
    params:
        config=job("cpc"),
        out=output_dir_of_model,
    shell:
        on_gpus(
            "python -m cocon train cpc --views {wildcards.view} --out {params.out}"
            " --threads {threads} --config-json {params.config:q} > {log} 2>&1"
        )


rule cocon:
    input:
        shards=train_shards(),
        init=stage1_models(),
    output:
        model=f"{OUT}/train/cocon/model.pt",
        metrics=f"{OUT}/train/cocon/metrics.csv",
    log:
        "logs/train/cocon.log",
    benchmark:
        "benchmarks/train/cocon.tsv"
    threads: R.threads("cocon")
    resources:
        gpu=config["train"]["gpus"],
        mem_mb=R.mem_mb("cocon"),
        runtime=R.runtime("cocon"),
        tasks_per_gpu=0,
    conda:
        "../envs/train.yaml"
    params:
        config=job("cocon"),
        views=" ".join(TRAIN_VIEWS),
        init=stage1_init(),
        out=output_dir_of_model,
    shell:
        on_gpus(
            "python -m cocon train cocon --views {params.views} {params.init} --out {params.out}"
            " --threads {threads} --config-json {params.config:q} > {log} 2>&1"
        )


use rule cocon as control with:
    output:
        model=f"{OUT}/train/control/model.pt",
        metrics=f"{OUT}/train/control/metrics.csv",
    log:
        "logs/train/control.log",
    benchmark:
        "benchmarks/train/control.tsv"
    params:
        config=with_train(job("cocon"), lam=0.0),
        views=" ".join(TRAIN_VIEWS),
        init=stage1_init(),
        out=output_dir_of_model,
