# What preprocessing produced, to look at: for a few videos per role of the split, every computed view over
# time, and the failed videos (cocon.evaluate.views_figure; docs/evaluation.md). The report takes them; on
# its own: `snakemake --cores 1 views_figure`.


rule views_figure:
    input:
        shards=[p for view in VIEWS for p in shard_paths(view)],
        failed=f"{OUT}/reports/failed_videos.tsv",
    output:
        report(
            directory(f"{OUT}/reports/views"),
            patterns=["{name}.png"],
            category="Preprocessing",
            caption="../report/views.rst",
        ),
    log:
        "logs/views_figure.log",
    benchmark:
        "benchmarks/views_figure.tsv"
    conda:
        "../envs/train.yaml"
    threads: R.threads("views_figure")
    resources:
        mem_mb=R.mem_mb("views_figure"),
        runtime=R.runtime("views_figure", MAX_MINUTES),
    params:
        root=shards_root,
        views=" ".join(VIEWS),
        split=config["dataset"]["split"],
    shell:
        "rm -rf {output} && python -m cocon views-figure --output-dir {params.root} --views {params.views}"
        " --split {params.split} --failed {input.failed} --out {output} > {log} 2>&1"
