# The dataset: the embedded demo generator, and the sharded manifest every stage reads.


rule demo_dataset:
    output:
        videos=demo_videos(),
        class_index=f"{OUT}/demo/annotations/classInd.txt",
    log:
        f"logs/demo_dataset.log",
    conda:
        "../envs/preprocess.yaml"
    params:
        config=as_json({k: config[k] for k in ("output_dir", "seed", "dataset", "demo")}),
    shell:
        "python -m cocon.sources.demo --config-json {params.config:q} > {log} 2>&1"


rule manifest:
    input:
        dataset_inputs(),
    output:
        manifest=f"{OUT}/manifest/manifest.tsv",
        missing=f"{OUT}/manifest/missing.tsv",
    log:
        "logs/manifest.log",
    conda:
        "../envs/preprocess.yaml"
    params:
        config=as_json({k: config[k] for k in ("output_dir", "seed", "dataset", "demo", "shards")}),
    shell:
        "python -m cocon.sources.ingest --config-json {params.config:q}"
        " --out {output.manifest} --missing {output.missing} > {log} 2>&1"
