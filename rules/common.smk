# Helpers shared by the rules: config validation, the parse-time manifest and shard assignment, the views
# (cocon.views), each job's config sections (cocon.workflow.jobs) and resources (cocon.workflow.resources).
# Everything is decided here, when the workflow is parsed; the logic lives in the cocon package.

import hashlib
import json
import os
import shlex
import sys

from cocon import config as cocon_config
from cocon import inits as I
from cocon import views as V
from cocon.sources import ingest
from cocon.sources.records import assign_shards, shard_name
from cocon.workflow import resources as R
from cocon.workflow.jobs import RUNTIME_ENV, job_config, runtime_config

# The whole config, before any job starts: unknown keys, wrong values and cross-section mistakes are
# rejected here with the key named (defaults are filled in place).
cocon_config.validate(config)
if workflow.is_main_process:  # what this run's config is made of (Snakefile), before any job
    print(CONFIG_SOURCES, file=sys.stderr)

# Every job runs `python -m cocon <command>`: make the workflow's own package importable in every job,
# including conda environments that do not install it. HDF5's file locking fails or hangs on NFS and
# Lustre, and our writers never share a file (each writes <name>.partial, then renames): every job,
# local or on SLURM, runs with it off unless HDF5_USE_FILE_LOCKING is set. The speed and placement
# settings (runtime.*, inference batch sizes, devices) reach every job in COCON_RUNTIME_JSON, outside the
# rules' params: changing one reruns no job (cocon.workflow.jobs, docs/reruns.md).
shell.prefix(
    "export PYTHONPATH={}${{{{PYTHONPATH:+:$PYTHONPATH}}}}"
    " HDF5_USE_FILE_LOCKING=${{{{HDF5_USE_FILE_LOCKING:-FALSE}}}} {}={}; ".format(
        shlex.quote(workflow.basedir),
        RUNTIME_ENV,
        shlex.quote(runtime_config(config)).replace("{", "{{").replace("}", "}}"),
    )
)

OUT = config["output_dir"]
RECORDS, MISSING = ingest.load_dataset(config, plan_demo=True)  # the demo job has not run yet
SHARD_LIST = assign_shards(RECORDS, config["shards"]["videos_per_shard"])
SHARDS = [shard_name(k) for k in range(len(SHARD_LIST))]
VIEWS = V.enabled_views(config)  # every view this config computes (registry order)
TRAIN_VIEWS = config["train"]["views"]
GPUS = config["runtime"]["gpus"]  # GPUs per node of a training job
TRAINING_PLACEMENT = R.training_placement(config["runtime"]["nodes"], GPUS)  # one node, or several
INITS = config["finetune"]["inits"]
CLAIM = f"{OUT}/claim"
# Where the pretrained models of fine-tuning and features come from: this run's pretraining, or another
# run's (train.pretrained_run: pretrain on Kinetics-400, fine-tune on UCF101 / HMDB51).
PRETRAINED = f"{config['train']['pretrained_run']}/train" if config["train"]["pretrained_run"] else f"{OUT}/train"


wildcard_constraints:
    shard=r"\d{5}",
    view="|".join(VIEWS),
    method="|".join(config["flow"]["methods"]) or "none",
    init="|".join(I.NAMES),
    cseed=r"\d+",


def job(command, **kw):
    """The --config-json of a job, its params: the config keys that shape what a job of `command` writes
    (cocon.workflow.jobs; views= the job's view(s), method= the flow method, seed= a claim seed)."""
    return job_config(config, command, **kw)


MAX_MINUTES = config["runtime"]["max_job_minutes"]  # the partition's limit: no job asks for more
NET_THREADS = config["runtime"]["threads"]  # CPUs of each job that runs a network (None: resources.py's)


def view_gpus(view):
    """GPUs a job producing `view` asks for (the views registry: TVL1 on the torch backend, pose, seg)."""
    return V.kind_of(view).job_gpus(config, view)


def on_gpus(command):
    """A GPU rule's shell command, run under `cocon gpus`: the job gets `resources.gpu` GPUs of its own
    (CUDA_VISIBLE_DEVICES) on a workstation, where Snakemake only counts them; none when the resource
    is 0; under SLURM the ones SLURM gave it."""
    return f"python -m cocon gpus {{resources.gpu}} -- {command}"


def on_nodes(command):
    """A training rule's shell command under `cocon gpus` with the GPUs of one node (as on_gpus); over
    several nodes, after `cocon launch` (resources.launcher: one task per node, cocon.workflow.launch)."""
    return f"{{resources.launcher}} python -m cocon gpus {{resources.node_gpus}} -- {command}"


def model_files(view):
    """Local config and checkpoint files of the pose or seg stage (URLs and shipped config names are
    params): editing or replacing one reruns the stage."""
    specs = [config[view]["config"], config[view]["checkpoint"]]
    if view == "pose" and config["pose"]["boxes"] == "detector":
        detector = config["pose"]["detector"]
        specs.extend((detector["config"], detector["checkpoint"]))
    return [local_path(s) for s in specs if s and not s.startswith(("http://", "https://")) and os.path.isfile(s)]


def local_path(path):
    """Paths inside the working directory are given to Snakemake relative, as it prefers."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def shard_fingerprint(wildcards):
    """Hash of (path, size, mtime) of the shard's videos, passed as a param: a replaced or touched
    video reruns its shard. Much cheaper for Snakemake than listing 240,000 videos as input files.
    Demo videos are outputs of demo_dataset (regenerated only when the demo config changes; the
    manifest depends on them), so they need no fingerprint."""
    if config["dataset"]["format"] == "demo":
        return "demo"
    digest = hashlib.sha256()
    for r in SHARD_LIST[int(wildcards.shard)]:
        try:
            st = os.stat(r.path)
            digest.update(f"{r.path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{r.path}\0missing\n".encode())
    return digest.hexdigest()[:20]


def demo_videos():
    """The demo generator's videos (none when the dataset is not the demo)."""
    return [local_path(r.path) for r in RECORDS] if config["dataset"]["format"] == "demo" else []


def dataset_inputs():
    """Annotation files read by the manifest job (demo: the generator's output)."""
    if config["dataset"]["format"] == "demo":
        return [f"{OUT}/demo/annotations/classInd.txt"]
    return ingest.annotation_files(config)


def shard_paths(view):
    return expand(f"{OUT}/shards/{view}/{{shard}}.h5", shard=SHARDS)


def view_shards(wildcards):
    return shard_paths(wildcards.view)


def train_shards():
    return [p for view in TRAIN_VIEWS for p in shard_paths(view)]


def stage1_models(train_dir=f"{OUT}/train"):
    return [I.model_path("cpc", view, train_dir) for view in TRAIN_VIEWS]


def stage1_init(train_dir=f"{OUT}/train"):
    """--init arguments of a stage-2 job: every view's stage-1 model."""
    return " ".join(f"--init {v}={train_dir}/cpc/{v}/model.pt" for v in TRAIN_VIEWS)


def pretrained_model(init, view, train_dir=PRETRAINED):
    """The model.pt a fine-tuning or feature job starts from ([] for random weights; cocon.inits)."""
    path = I.model_path(init, view, train_dir)
    return [] if path is None else [path]


def init_arg(wildcards, input):
    return f"--init {wildcards.view}={input.init[0]}" if input.init else ""


def eval_keys():
    """init/view of every fine-tuning, test and feature job of the report."""
    return [f"{init}/{view}" for init in INITS for view in TRAIN_VIEWS]


def eval_paths(kind):
    pattern = {"scores": f"{OUT}/eval/{{key}}/scores.h5", "features": f"{OUT}/features/{{key}}.h5"}[kind]
    return [pattern.format(key=key) for key in eval_keys()]


# The claim compares every initialisation the views allow (stage 2 needs two), whatever finetune.inits.
CLAIM_INITS = I.possible(len(TRAIN_VIEWS))


def claim_keys():
    """seed/init/view of every test job of the claim target."""
    return [
        f"{seed}/{init}/{view}" for seed in config["claim"]["seeds"] for init in CLAIM_INITS for view in TRAIN_VIEWS
    ]


def claim_paths(kind):
    pattern = {
        "scores": "{claim}/seed{seed}/eval/{init}/{view}/scores.h5",
        "features": "{claim}/seed{seed}/features/{init}/{view}.h5",
    }[kind]
    return [
        pattern.format(claim=CLAIM, seed=seed, init=init, view=view)
        for seed, init, view in (key.split("/") for key in claim_keys())
    ]


def claim_metrics():
    """{SEED/RUN: metrics.csv} of the claim's training runs, for its diagnostics (cocon.evaluate.claim)."""
    out = {}
    for seed in config["claim"]["seeds"]:
        root = f"{CLAIM}/seed{seed}"
        for view in TRAIN_VIEWS:
            out[f"{seed}/cpc:{view}"] = f"{root}/train/cpc/{view}/metrics.csv"
            for init in CLAIM_INITS:
                out[f"{seed}/finetune:{init}:{view}"] = f"{root}/finetune/{init}/{view}/metrics.csv"
        for run in CLAIM_INITS:
            if I.get(run).min_views > 1:  # the stage-2 runs
                out[f"{seed}/{run}"] = f"{root}/train/{run}/metrics.csv"
    return out


def preprocess_targets():
    """The summary of failed videos and the figures of what preprocessing produced."""
    return [f"{OUT}/reports/preprocess_summary.json", f"{OUT}/reports/views"]


def training_targets():
    """The report: through it every pretraining, fine-tuning, test and feature job."""
    return [f"{OUT}/reports/metrics.json"]


def pretraining_targets():
    """The pretrained models of this run (the `pretrain` target): CPC per view and those finetune.inits name
    (CoCon, the control)."""
    paths = [I.model_path(i, v, f"{OUT}/train") for i in ["cpc", *INITS] for v in TRAIN_VIEWS]
    return list(dict.fromkeys(p for p in paths if p))


def print_summary(path):
    """Called on success: repeat the failed-video summary at the end of the run."""
    from cocon.preprocess.summary import format_summary

    if os.path.exists(path):
        with open(path) as fh:
            print(format_summary(json.load(fh)))


def shards_root(wildcards, input):
    """The output_dir holding a job's input shards (<output_dir>/shards/<view>/<shard>.h5)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(input.shards[0])))


def output_dir_of_model(wildcards, output):
    """A training job's --out folder: the folder of its model.pt (checkpoints, metrics, tb/ beside)."""
    return os.path.dirname(output.model)
