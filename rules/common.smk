# Helpers shared by the rules: config validation, the parse-time manifest and shard assignment,
# per-stage parameters and output paths. Everything is decided here, when the workflow is parsed.

import hashlib
import json
import os
import shlex

from snakemake.utils import validate

from cocon import config as cocon_config
from cocon.workflow import gpus as cocon_gpus
from cocon.sources import ingest
from cocon.sources.records import assign_shards, shard_name

# Our own validation first: it names the offending key in one line. Then Snakemake's, same schema.
cocon_config.validate(config)
validate(config, cocon_config.SCHEMA_PATH)

# The rules run `python -m cocon.<stage>`: make the workflow's own package importable in every job,
# including conda environments that do not install it. HDF5's file locking fails or hangs on NFS and
# Lustre, and our writers never share a file (each writes <name>.partial, then renames): every job,
# local or on SLURM, runs with it off unless HDF5_USE_FILE_LOCKING is set.
shell.prefix(
    "export PYTHONPATH={}${{{{PYTHONPATH:+:$PYTHONPATH}}}}"
    " HDF5_USE_FILE_LOCKING=${{{{HDF5_USE_FILE_LOCKING:-FALSE}}}}; ".format(shlex.quote(workflow.basedir))
)

OUT = config["output_dir"]
RECORDS, MISSING = ingest.load_dataset(config)
SHARD_LIST = assign_shards(RECORDS, config["shards"]["videos_per_shard"])
SHARDS = [shard_name(k) for k in range(len(SHARD_LIST))]
FLOW_VIEWS = [f"flow_{m}" for m in config["flow"]["methods"]]
INFERRED_VIEWS = [v for v in ("seg", "pose") if config[v]["enabled"]]
VIEWS = ["rgb", *FLOW_VIEWS, *INFERRED_VIEWS]


wildcard_constraints:
    shard=r"\d{5}",
    view="|".join(["rgb", *[f"flow_{m}" for m in config["flow"]["methods"]], *INFERRED_VIEWS]),
    method="|".join(config["flow"]["methods"]) or "none",
    init="random|cpc|cocon",
    cseed=r"\d+",


def as_json(obj):
    """Canonical JSON for --params: Snakemake reruns a job when its params change."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


DATASET_JSON = as_json({"name": config["dataset"]["name"], "format": config["dataset"]["format"]})
FRAMES_JSON = as_json(config["frames"])


# GPUs of a TVL1 flow job: 1 with backend torch on a device other than cpu; with backend auto, 1 when
# the machine running Snakemake has a GPU (cocon.workflow.gpus's list: COCON_GPU_IDS, CUDA_VISIBLE_DEVICES or
# nvidia-smi), so a workstation with GPUs runs TVL1 on them; on a cluster set backend: torch.
_tvl1 = config["flow"]["tvl1"]
TVL1_GPUS = int(
    _tvl1["device"] != "cpu"
    and (_tvl1["backend"] == "torch" or (_tvl1["backend"] == "auto" and _tvl1["gamma"] == 0 and bool(cocon_gpus.machine_gpu_ids())))
)


def flow_json(wildcards):
    f = config["flow"]
    return as_json({"bound": f["bound"], "encoding": f["encoding"], wildcards.method: f[wildcards.method]})


def inferred_json(view):
    """Parameters of the pose or seg stage: its config section, the global seed (random-init models)
    and, for pose with boxes from the seg view, the seg section its boxes depend on."""
    params = {**config[view], "seed": config["seed"]}
    params.pop("enabled")
    params.pop("gpus")
    if view == "pose" and params["boxes"] == "seg":
        params["seg"] = json.loads(inferred_json("seg"))
    if view == "pose" and params["boxes"] != "detector":
        params.pop("detector")
    return as_json(params)


def model_files(view):
    """Local config and checkpoint files of the pose or seg stage (URLs and shipped config names are
    params): editing or replacing one reruns the stage."""
    specs = [config[view]["config"], config[view]["checkpoint"]]
    if view == "pose" and config["pose"]["boxes"] == "detector":
        specs += [config["pose"]["detector"]["config"], config["pose"]["detector"]["checkpoint"]]
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


TRAIN_JSON = as_json({k: config[k] for k in ("output_dir", "seed", "dataset", "train")})
FINETUNE_JSON = as_json({k: config[k] for k in ("output_dir", "seed", "dataset", "train", "finetune")})
EVAL_JSON = as_json({k: config[k] for k in ("output_dir", "seed", "dataset", "train", "finetune", "evaluate")})
CLAIM = f"{OUT}/claim"
INITS = config["finetune"]["inits"]


def with_seed(config_json, seed):
    """A job's config JSON with another training seed (the claim target; the shards stay the same)."""
    return as_json({**json.loads(config_json), "seed": int(seed)})


def pretrained_model(init, view, train_dir=f"{OUT}/train"):
    """The model.pt a fine-tuning or feature job starts from ([] for random weights)."""
    return {"random": [], "cpc": [f"{train_dir}/cpc/{view}/model.pt"], "cocon": [f"{train_dir}/cocon/model.pt"]}[init]


def eval_keys():
    """init/view of every fine-tuning, test and feature job of the report."""
    return [f"{init}/{view}" for init in INITS for view in config["train"]["views"]]


def eval_paths(kind):
    pattern = {"scores": f"{OUT}/eval/{{key}}/scores.h5", "features": f"{OUT}/features/{{key}}.h5"}[kind]
    return [pattern.format(key=key) for key in eval_keys()]


def claim_keys():
    """seed/init/view of every test job of the claim target (rgb and flow views of train.views)."""
    return [f"{seed}/{key}" for seed in config["claim"]["seeds"] for key in eval_keys()]


def claim_scores():
    return [f"{CLAIM}/seed{seed}/eval/{init}/{view}/scores.h5" for seed, init, view in
            (key.split("/") for key in claim_keys())]


def preprocess_targets():
    return [f"{OUT}/reports/preprocess_summary.json"]


def training_targets():
    """The report: through it every pretraining, fine-tuning, test and feature job."""
    return [f"{OUT}/reports/metrics.json"]


def print_summary(path):
    """Called on success: repeat the failed-video summary at the end of the run."""
    import json
    from cocon.preprocess.summary import format_summary

    if os.path.exists(path):
        with open(path) as fh:
            print(format_summary(json.load(fh)))


def on_gpus(command):
    """A GPU rule's shell command, run under `cocon.workflow.gpus`: the job gets `resources.gpu` GPUs of its own
    (CUDA_VISIBLE_DEVICES) on a workstation, where Snakemake only counts them; none when the resource
    is 0; under SLURM the ones SLURM gave it."""
    return f"python -m cocon.workflow.gpus {{resources.gpu}} -- {command}"


def output_dir_of_model(wildcards, output):
    """A training job's --out folder: the folder of its model.pt (checkpoints, metrics, tb/ beside)."""
    return os.path.dirname(output.model)
