# The dataset: the embedded demo generator, and the sharded manifest every stage reads.


rule demo_dataset:
    output:
        videos=demo_videos(),
        class_index=f"{OUT}/demo/annotations/classInd.txt",
    log:
        "logs/demo_dataset.log",
    conda:
        "../envs/preprocess.yaml"
    threads: R.threads("demo_dataset")
    resources:
        mem_mb=R.mem_mb("demo_dataset"),
        runtime=R.runtime("demo_dataset", MAX_MINUTES),
    params:
        config=job("demo"),
    shell:
        "python -m cocon demo --config-json {params.config:q} > {log} 2>&1"


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
    threads: R.threads("manifest")
    resources:
        mem_mb=R.mem_mb("manifest"),
        runtime=R.runtime("manifest", MAX_MINUTES),
    params:
        config=job("manifest"),
    shell:
        "python -m cocon manifest --config-json {params.config:q}"
        " --out {output.manifest} --missing {output.missing} > {log} 2>&1"
