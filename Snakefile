# cocon-pipeline: CoCon multi-view self-supervised video learning as a Snakemake workflow.
# Only includes and the final targets live here; helpers are in rules/common.smk, logic in cocon/.

from snakemake.utils import min_version

min_version("9.0")


# The demo config, unless the command line gives one: `--configfile configs/ucf101_split1.yaml` replaces it
# (it is not merged into the demo's settings).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"



report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/dataset.smk"
include: "rules/frames.smk"
include: "rules/flow.smk"
include: "rules/pose_seg.smk"
include: "rules/summary.smk"
include: "rules/views.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"


# Quick bookkeeping jobs: under a cluster executor they run on the submitting host, not as jobs
# (the manifest repeats what parsing the workflow already did there).
localrules:
    demo_dataset,
    manifest,
    preprocess_summary,


rule all:
    input:
        preprocess_targets(),
        training_targets(),
    default_target: True


# Pretraining only (e.g. on Kinetics-400, for another run's train.pretrained_run).
rule pretrain:
    input:
        pretraining_targets(),
