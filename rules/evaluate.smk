# Fine-tuning (one job per view and initialisation), dense test, pretrained features, the report; and the
# `claim` target: Random vs CPC vs CoCon (and the control) over several training seeds.


rule finetune:
    input:
        shards=view_shards,
        init=lambda w: pretrained_model(w.init, w.view),
    output:
        model=f"{OUT}/finetune/{{init}}/{{view}}/model.pt",
        metrics=f"{OUT}/finetune/{{init}}/{{view}}/metrics.csv",
    log:
        "logs/finetune/{init}_{view}.log",
    benchmark:
        "benchmarks/finetune/{init}_{view}.tsv"
    conda:
        "../envs/train.yaml"
    threads: R.threads("finetune", NET_THREADS)
    resources:
        **TRAINING_PLACEMENT,
        mem_mb=R.mem_mb("finetune"),
        runtime=R.runtime("finetune", MAX_MINUTES),
    params:
        config=lambda w: job("finetune", views=w.view),
        init=init_arg,
        out=output_dir_of_model,
    shell:
        on_nodes(
            "python -m cocon train finetune --views {wildcards.view} --init-kind {wildcards.init} {params.init}"
            " --out {params.out} --threads {threads} --time-limit {resources.runtime}"
            " --config-json {params.config:q} > {log} 2>&1"
        )


rule evaluate:
    input:
        shards=view_shards,
        model=f"{OUT}/finetune/{{init}}/{{view}}/model.pt",
    output:
        f"{OUT}/eval/{{init}}/{{view}}/scores.h5",
    log:
        "logs/eval/{init}_{view}.log",
    benchmark:
        "benchmarks/eval/{init}_{view}.tsv"
    conda:
        "../envs/train.yaml"
    threads: R.threads("evaluate", NET_THREADS)
    resources:
        gpu=min(1, GPUS),
        mem_mb=R.mem_mb("evaluate"),
        runtime=R.runtime("evaluate", MAX_MINUTES),
        tasks_per_gpu=0,
    params:
        config=lambda w: job("evaluate", views=w.view),
    shell:
        on_gpus(
            "python -m cocon evaluate --view {wildcards.view} --model {input.model} --out {output} --threads {threads}"
            " --config-json {params.config:q} > {log} 2>&1"
        )


rule features:
    input:
        shards=view_shards,
        init=lambda w: pretrained_model(w.init, w.view),
    output:
        f"{OUT}/features/{{init}}/{{view}}.h5",
    log:
        "logs/features/{init}_{view}.log",
    benchmark:
        "benchmarks/features/{init}_{view}.tsv"
    conda:
        "../envs/train.yaml"
    threads: R.threads("features", NET_THREADS)
    resources:
        gpu=min(1, GPUS),
        mem_mb=R.mem_mb("features"),
        runtime=R.runtime("features", MAX_MINUTES),
        tasks_per_gpu=0,
    params:
        config=lambda w: job("features", views=w.view),
        model=lambda w, input: f"--model {input.init}" if input.init else "",
    shell:
        on_gpus(
            "python -m cocon features --view {wildcards.view} --init-kind {wildcards.init} {params.model}"
            " --out {output} --threads {threads} --config-json {params.config:q}"
            " > {log} 2>&1"
        )


rule report:
    input:
        scores=eval_paths("scores"),
        features=eval_paths("features"),
        views=f"{OUT}/reports/views",
        failed=f"{OUT}/reports/failed_videos.tsv",
    output:
        metrics=report(f"{OUT}/reports/metrics.json", category="Results", caption="../report/metrics.rst"),
        tables=report(f"{OUT}/reports/tables.html", category="Results", caption="../report/tables.rst"),
        markdown=f"{OUT}/reports/tables.md",
        figures=report(
            directory(f"{OUT}/reports/figures"),
            patterns=["{name}.png"],
            category="Figures",
            caption="../report/figures.rst",
        ),
    log:
        "logs/report.log",
    conda:
        "../envs/train.yaml"
    threads: R.threads("report")
    resources:
        mem_mb=R.mem_mb("report"),
        runtime=R.runtime("report", MAX_MINUTES),
    params:
        config=job("report"),
        scores=lambda w, input: " ".join(f"{k}={p}" for k, p in zip(eval_keys(), input.scores)),
        features=lambda w, input: " ".join(f"{k}={p}" for k, p in zip(eval_keys(), input.features)),
        out=lambda w, output: os.path.dirname(output.metrics),
    shell:
        "rm -rf {output.figures} && python -m cocon report --scores {params.scores} --features {params.features}"
        " --views-dir {input.views} --failed-videos {input.failed}"
        " --out {params.out} --config-json {params.config:q} > {log} 2>&1"


# ---- the claim target: the same jobs with the training seed as a wildcard, on the same shards


use rule cpc as claim_cpc with:
    output:
        model=f"{CLAIM}/seed{{cseed}}/train/cpc/{{view}}/model.pt",
        metrics=f"{CLAIM}/seed{{cseed}}/train/cpc/{{view}}/metrics.csv",
    log:
        "logs/claim/seed{cseed}/cpc_{view}.log",
    benchmark:
        "benchmarks/claim/seed{cseed}/cpc_{view}.tsv"
    params:
        config=lambda w: job("cpc", views=w.view, seed=w.cseed),
        out=output_dir_of_model,


use rule cocon as claim_cocon with:
    input:
        shards=train_shards(),
        init=stage1_models(f"{CLAIM}/seed{{cseed}}/train"),
    output:
        model=f"{CLAIM}/seed{{cseed}}/train/cocon/model.pt",
        metrics=f"{CLAIM}/seed{{cseed}}/train/cocon/metrics.csv",
    log:
        "logs/claim/seed{cseed}/cocon.log",
    benchmark:
        "benchmarks/claim/seed{cseed}/cocon.tsv"
    params:
        config=lambda w: job("cocon", seed=w.cseed),
        views=" ".join(TRAIN_VIEWS),
        init=lambda w: stage1_init(f"{CLAIM}/seed{w.cseed}/train"),
        out=output_dir_of_model,


use rule claim_cocon as claim_control with:
    output:
        model=f"{CLAIM}/seed{{cseed}}/train/control/model.pt",
        metrics=f"{CLAIM}/seed{{cseed}}/train/control/metrics.csv",
    log:
        "logs/claim/seed{cseed}/control.log",
    benchmark:
        "benchmarks/claim/seed{cseed}/control.tsv"
    params:
        config=lambda w: job("control", seed=w.cseed),
        views=" ".join(TRAIN_VIEWS),
        init=lambda w: stage1_init(f"{CLAIM}/seed{w.cseed}/train"),
        out=output_dir_of_model,


use rule claim_cocon as claim_cocon_paper with:
    output:
        model=f"{CLAIM}/seed{{cseed}}/train/cocon_paper/model.pt",
        metrics=f"{CLAIM}/seed{{cseed}}/train/cocon_paper/metrics.csv",
    log:
        "logs/claim/seed{cseed}/cocon_paper.log",
    benchmark:
        "benchmarks/claim/seed{cseed}/cocon_paper.tsv"
    params:
        config=lambda w: job("cocon_paper", seed=w.cseed),
        views=" ".join(TRAIN_VIEWS),
        init=lambda w: stage1_init(f"{CLAIM}/seed{w.cseed}/train"),
        out=output_dir_of_model,


use rule finetune as claim_finetune with:
    input:
        shards=view_shards,
        init=lambda w: pretrained_model(w.init, w.view, f"{CLAIM}/seed{w.cseed}/train"),
    output:
        model=f"{CLAIM}/seed{{cseed}}/finetune/{{init}}/{{view}}/model.pt",
        metrics=f"{CLAIM}/seed{{cseed}}/finetune/{{init}}/{{view}}/metrics.csv",
    log:
        "logs/claim/seed{cseed}/finetune_{init}_{view}.log",
    benchmark:
        "benchmarks/claim/seed{cseed}/finetune_{init}_{view}.tsv"
    params:
        config=lambda w: job("finetune", views=w.view, seed=w.cseed),
        init=init_arg,
        out=output_dir_of_model,


use rule evaluate as claim_evaluate with:
    input:
        shards=view_shards,
        model=f"{CLAIM}/seed{{cseed}}/finetune/{{init}}/{{view}}/model.pt",
    output:
        f"{CLAIM}/seed{{cseed}}/eval/{{init}}/{{view}}/scores.h5",
    log:
        "logs/claim/seed{cseed}/eval_{init}_{view}.log",
    benchmark:
        "benchmarks/claim/seed{cseed}/eval_{init}_{view}.tsv"
    params:
        config=lambda w: job("evaluate", views=w.view, seed=w.cseed),


use rule features as claim_features with:
    input:
        shards=view_shards,
        init=lambda w: pretrained_model(w.init, w.view, f"{CLAIM}/seed{w.cseed}/train"),
    output:
        f"{CLAIM}/seed{{cseed}}/features/{{init}}/{{view}}.h5",
    log:
        "logs/claim/seed{cseed}/features_{init}_{view}.log",
    benchmark:
        "benchmarks/claim/seed{cseed}/features_{init}_{view}.tsv"
    params:
        config=lambda w: job("features", views=w.view, seed=w.cseed),
        model=lambda w, input: f"--model {input.init}" if input.init else "",


rule claim:
    input:
        scores=claim_paths("scores"),
        features=claim_paths("features"),
        metrics=list(claim_metrics().values()),
    output:
        json=report(f"{CLAIM}/claim.json", category="Claim", caption="../report/claim.rst"),
        table=f"{CLAIM}/claim.md",
        figures=report(
            directory(f"{CLAIM}/figures"),
            patterns=["{name}.png"],
            category="Claim",
            caption="../report/claim.rst",
        ),
    log:
        "logs/claim/claim.log",
    conda:
        "../envs/train.yaml"
    threads: R.threads("claim")
    resources:
        mem_mb=R.mem_mb("claim"),
        runtime=R.runtime("claim", MAX_MINUTES),
    params:
        config=job("claim"),
        scores=lambda w, input: " ".join(f"{k}={p}" for k, p in zip(claim_keys(), input.scores)),
        features=lambda w, input: " ".join(f"{k}={p}" for k, p in zip(claim_keys(), input.features)),
        metrics=" ".join(f"{k}={p}" for k, p in claim_metrics().items()),
        out=lambda w, output: os.path.dirname(output.json),
    shell:
        "rm -rf {output.figures} && python -m cocon claim --scores {params.scores} --features {params.features}"
        " --metrics {params.metrics} --out {params.out}"
        " --config-json {params.config:q} > {log} 2>&1"
