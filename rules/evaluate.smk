# Fine-tuning (one job per view and initialisation), dense test, pretrained features, the report; and the
# `claim` target: Random vs CPC vs CoCon over several training seeds (not part of the default DAG).


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
    threads: 8
    resources:
        gpu=config["train"]["gpus"],
        mem_mb=16000,
        runtime=1440,
    conda:
        "../envs/train.yaml"
    params:
        config=FINETUNE_JSON,
        init=lambda w, input: f"--init {input.init}" if input.init else "",
        out=output_dir_of_model,
    shell:
        on_gpus(
            "python -m cocon.train.finetune --view {wildcards.view} --init-kind {wildcards.init} {params.init}"
            " --out {params.out} --threads {threads} --config-json {params.config:q} > {log} 2>&1"
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
    threads: 4
    resources:
        gpu=min(1, config["train"]["gpus"]),
        mem_mb=8000,
        runtime=240,
    conda:
        "../envs/train.yaml"
    params:
        config=EVAL_JSON,
    shell:
        on_gpus(
            "python -m cocon.evaluate.dense --view {wildcards.view} --model {input.model} --out {output}"
            " --threads {threads} --config-json {params.config:q} > {log} 2>&1"
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
    threads: 4
    resources:
        gpu=min(1, config["train"]["gpus"]),
        mem_mb=8000,
        runtime=240,
    conda:
        "../envs/train.yaml"
    params:
        config=EVAL_JSON,
        model=lambda w, input: f"--model {input.init}" if input.init else "",
    shell:
        on_gpus(
            "python -m cocon.evaluate.features --view {wildcards.view} --init-kind {wildcards.init} {params.model}"
            " --out {output} --threads {threads} --config-json {params.config:q} > {log} 2>&1"
        )


rule report:
    input:
        scores=eval_paths("scores"),
        features=eval_paths("features"),
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
    params:
        config=EVAL_JSON,
        scores=lambda w, input: " ".join(f"{k}={p}" for k, p in zip(eval_keys(), input.scores)),
        features=lambda w, input: " ".join(f"{k}={p}" for k, p in zip(eval_keys(), input.features)),
        out=lambda w, output: os.path.dirname(output.metrics),
    shell:
        "rm -rf {output.figures} && python -m cocon.evaluate.report --scores {params.scores} --features {params.features}"
        " --out {params.out} --config-json {params.config:q} > {log} 2>&1"


# ---- the claim target: the same stages with the training seed as a wildcard, on the same shards


use rule cpc as claim_cpc with:
    output:
        model=f"{CLAIM}/seed{{cseed}}/train/cpc/{{view}}/model.pt",
        metrics=f"{CLAIM}/seed{{cseed}}/train/cpc/{{view}}/metrics.csv",
    log:
        "logs/claim/seed{cseed}/cpc_{view}.log",
    benchmark:
        "benchmarks/claim/seed{cseed}/cpc_{view}.tsv"
    params:
        config=lambda w: with_seed(TRAIN_JSON, w.cseed),
        out=output_dir_of_model,


use rule cocon as claim_cocon with:
    input:
        shards=[p for view in config["train"]["views"] for p in shard_paths(view)],
        init=expand(f"{CLAIM}/seed{{{{cseed}}}}/train/cpc/{{view}}/model.pt", view=config["train"]["views"]),
    output:
        model=f"{CLAIM}/seed{{cseed}}/train/cocon/model.pt",
        metrics=f"{CLAIM}/seed{{cseed}}/train/cocon/metrics.csv",
    log:
        "logs/claim/seed{cseed}/cocon.log",
    benchmark:
        "benchmarks/claim/seed{cseed}/cocon.tsv"
    params:
        config=lambda w: with_seed(TRAIN_JSON, w.cseed),
        views=" ".join(config["train"]["views"]),
        init=lambda w: " ".join(
            f"--init {v}={CLAIM}/seed{w.cseed}/train/cpc/{v}/model.pt" for v in config["train"]["views"]
        ),
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
        config=lambda w: with_seed(FINETUNE_JSON, w.cseed),
        init=lambda w, input: f"--init {input.init}" if input.init else "",
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
        config=lambda w: with_seed(EVAL_JSON, w.cseed),


rule claim:
    input:
        scores=claim_scores(),
    output:
        json=report(f"{CLAIM}/claim.json", category="Claim", caption="../report/claim.rst"),
        table=f"{CLAIM}/claim.md",
    log:
        "logs/claim/claim.log",
    conda:
        "../envs/train.yaml"
    params:
        config=EVAL_JSON,
        scores=lambda w, input: " ".join(f"{k}={p}" for k, p in zip(claim_keys(), input.scores)),
        out=lambda w, output: os.path.dirname(output.json),
    shell:
        "python -m cocon.evaluate.report claim --scores {params.scores} --out {params.out}"
        " --config-json {params.config:q} > {log} 2>&1"
