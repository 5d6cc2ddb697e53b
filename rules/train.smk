# Training: stage 1, CPC per view (one job each); stage 2, CoCon joint training from the stage-1 weights;
# the control run, stage 2 for the same epochs with the cooperative terms off (cocon.lam = 0); cocon_paper,
# stage 2 with the paper's loss (only when asked for).
# Each job's params hold only the settings that shape its weights (cocon.workflow.jobs); speed and
# placement settings reach it in the environment, outside the params. Under SLURM a job stops itself at
# an epoch boundary before its time limit ({resources.runtime}) and the retry resumes (docs/cluster.md).


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
    conda:
        "../envs/train.yaml"
    threads: R.threads("cpc", NET_THREADS)
    resources:
        **TRAINING_PLACEMENT,
        mem_mb=R.mem_mb("cpc"),
        runtime=R.runtime("cpc", MAX_MINUTES),
    params:
        config=lambda w: job("cpc", views=w.view),
        out=output_dir_of_model,
    shell:
        on_nodes(
            "python -m cocon train cpc --views {wildcards.view} --out {params.out} --threads {threads}"
            " --time-limit {resources.runtime} --config-json {params.config:q}"
            " > {log} 2>&1"
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
    conda:
        "../envs/train.yaml"
    threads: R.threads("cocon", NET_THREADS)
    resources:
        **TRAINING_PLACEMENT,
        mem_mb=R.mem_mb("cocon"),
        runtime=R.runtime("cocon", MAX_MINUTES),
    params:
        config=job("cocon"),
        views=" ".join(TRAIN_VIEWS),
        init=stage1_init(),
        out=output_dir_of_model,
    shell:
        on_nodes(
            "python -m cocon train cocon --views {params.views} {params.init} --out {params.out} --threads {threads}"
            " --time-limit {resources.runtime} --config-json {params.config:q}"
            " > {log} 2>&1"
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
        config=job("control"),
        views=" ".join(TRAIN_VIEWS),
        init=stage1_init(),
        out=output_dir_of_model,


# The paper's loss as a named stage-2 run (cocon.inits: "cocon_paper"), built when finetune.inits or the
# claim asks for it: CoCon with cocon.loss_variant: paper (Eq. 2-3 read literally), beside the coded loss.
use rule cocon as cocon_paper with:
    output:
        model=f"{OUT}/train/cocon_paper/model.pt",
        metrics=f"{OUT}/train/cocon_paper/metrics.csv",
    log:
        "logs/train/cocon_paper.log",
    benchmark:
        "benchmarks/train/cocon_paper.tsv"
    params:
        config=job("cocon_paper"),
        views=" ".join(TRAIN_VIEWS),
        init=stage1_init(),
        out=output_dir_of_model,
