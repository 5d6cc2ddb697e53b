# cocon-pipeline: CoCon multi-view self-supervised video learning as a Snakemake workflow.
# Only includes and the final targets live here; helpers are in rules/common.smk, logic in cocon/.

from snakemake.utils import min_version

from cocon.config import config_sources

min_version("9.0")


# The demo config (config.yaml), with any --configfile merged over it, as Snakemake does; except a recipe,
# a file that names its dataset (configs/*.yaml): it replaces the demo, and what it leaves out takes the
# schema's defaults (the paper's settings). Which one this run uses is printed before any job (README).
DEMO_CONFIG, CONFIG_SOURCES = config_sources(workflow.overwrite_configfiles, f"{workflow.basedir}/config.yaml")
if DEMO_CONFIG:

    configfile: DEMO_CONFIG


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
    default_target: True
    input:
        preprocess_targets(),
        training_targets(),


# Pretraining only (e.g. on Kinetics-400, for another run's train.pretrained_run).
rule pretrain:
    input:
        pretraining_targets(),
