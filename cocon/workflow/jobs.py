"""The config contract between the workflow and its jobs, in one place.

Every job reads a fixed set of config keys (`READS`). The rules split them in two:

- the **results** part (`job_config`): the keys that can change what the job writes. It is the job's
  Snakemake `params`, so Snakemake reruns the job when one of them changes, and only then; the training
  methods hash the same part (minus the epoch count) into the run identity that decides whether
  checkpoints may resume (cocon.train.methods.base.Method.identity).
- the **runtime** part: keys that change only speed or placement (`SPEED_ONLY`: GPUs, device, workers,
  batch sizes of inference, compile, ...). The rules pass them outside `params`, in the environment
  variable RUNTIME_ENV (`runtime_config`, set by the workflow's shell prefix), so changing one reruns
  nothing; each job takes the part it reads (cocon.config.config_from_args).

A job validates what it gets against the schema (cocon.config.config_from_args) and cannot read a key it
was not given. Cross-section checks run once, on the whole config, when the workflow is parsed
(rules/common.smk), before any job starts. docs/reruns.md tabulates which jobs each key reruns.

A preprocessing stage turns its results part into the parameters it records in its shards (`stage_params`).
"""

from __future__ import annotations

import copy

from cocon import inits as I
from cocon import views as V
from cocon.provenance import dumps as as_json  # canonical JSON: the same config gives the same string

_TRAINING = ("output_dir", "seed", "dataset.split", "train")
# Dense test and features: the network and the clips, without the validation subset (they read whole roles).
_TESTING = (
    "output_dir",
    "seed",
    "dataset.split",
    *(f"train.{k}" for k in ("depth", "width", "num_blocks", "block_len", "stride", "input_size", "eval_crop")),
    "train.crop_area",  # the evaluation crop's side follows the training crops' (train.eval_crop: train_scale)
    "train.precision",
)
# Every key a job of each command reads: "section" or "section.key[.key]"; "{method}" is the flow method.
READS: dict[str, tuple[str, ...]] = {
    "demo": ("output_dir", "seed", "demo"),
    "manifest": ("output_dir", "seed", "dataset", "demo", "shards"),
    "frames": ("dataset.name", "dataset.format", "frames"),
    "flow": ("dataset.name", "dataset.format", "flow.bound", "flow.encoding", "flow.{method}"),
    "seg": ("seed", "dataset.name", "dataset.format", "seg"),
    "pose": ("seed", "dataset.name", "dataset.format", "pose"),
    "cpc": (*_TRAINING, "cpc", "runtime"),
    "cocon": (*_TRAINING, "cpc", "cocon", "runtime"),
    "control": (*_TRAINING, "cpc", "cocon.epochs", "runtime"),  # stage 2 with lam 0: the rest does nothing
    "cocon_paper": (*_TRAINING, "cpc", "cocon", "runtime"),
    "finetune": (*_TRAINING, "finetune", "runtime"),
    "evaluate": (
        *_TESTING,
        "finetune.protocol",
        "finetune.dropout",
        "evaluate.window_stride",
        "evaluate.batch_size",
        "runtime.device",
        "runtime.workers",
    ),
    "features": (
        *_TESTING,
        "train.val_fraction",  # which training videos are the validation subset (train/is_val)
        "finetune.labeled_fraction",  # which are labeled (train/is_labeled)
        "cpc.pred_steps",
        "cpc.variant",
        "evaluate.window_stride",
        "evaluate.alignment_blocks",
        "evaluate.batch_size",
        "runtime.device",
        "runtime.workers",
    ),
    "report": ("seed", "dataset.name", "dataset.format", "dataset.split", "evaluate"),
    "claim": (
        "seed",
        "dataset.name",
        "dataset.format",
        "dataset.split",
        "evaluate.ensemble_weights",
        "cpc.batch_size",  # chance of CPC's top-1, for the stage-1 gate
        "cpc.pred_steps",
        "claim",
    ),
}
# Keys that change speed or placement, never a result beyond float rounding (the runtime part).
SPEED_ONLY = (
    "runtime",
    "flow.tvl1.device",
    "flow.tvl1.batch_size",
    "seg.enabled",
    "seg.gpus",
    "seg.device",
    "seg.batch_size",
    "pose.enabled",
    "pose.gpus",
    "pose.device",
    "pose.batch_size",
    "pose.detector.batch_size",
    "evaluate.batch_size",
)
# Keys that no job reads as a setting: which views are trained (the jobs' wildcards and --views say it),
# where pretrained models come from (the jobs' input files say it), which inits are compared (which jobs exist).
NOT_A_SETTING = ("train.views", "train.pretrained_run", "finetune.inits")
# The epoch count of each training command: left out of the run identity (raising it continues a finished run).
EPOCHS_KEY = {"cpc": "cpc.epochs", "cocon": "cocon.epochs", "control": "cocon.epochs", "cocon_paper": "cocon.epochs"}
# The stage-2 runs other than CoCon's and what they set in the cocon section (the initialisations registry).
STAGE2_VARIANTS = {i.name: i.stage2 for i in I.INITS.values() if i.stage2}
# Keys of a view section that say whether and where its job runs, not what it writes.
SCHEDULING_KEYS = ("enabled", "gpus")


def _get(cfg: dict, path: str):
    node = cfg
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


def _put(cfg: dict, path: str, value) -> None:
    *heads, last = path.split(".")
    node = cfg
    for key in heads:
        node = node.setdefault(key, {})
    node[last] = copy.deepcopy(value)


def _drop(cfg: dict, path: str) -> None:
    *heads, last = path.split(".")
    node = _get(cfg, ".".join(heads)) if heads else cfg
    if isinstance(node, dict):
        node.pop(last, None)
        if heads and not node:
            _drop(cfg, ".".join(heads))


_MISSING = object()


def _job_views(config: dict, command: str, views) -> list[str]:
    """The views whose input sizes and ensemble weights a job depends on: `views` when given (a per-view
    job's one view, or stage 2's views), else train.views for the commands that combine views."""
    if views is not None:
        return [views] if isinstance(views, str) else list(views)
    trained = _get(config, "train.views")
    combined = ("cocon", *STAGE2_VARIANTS, "report", "claim")
    return list(trained) if trained is not _MISSING and command in combined else []


def _reads(config: dict, command: str, method: str | None) -> dict:
    """Every key `command` reads, with its value (missing keys skipped: a job's own, already pruned config
    gives the same selection again)."""
    out: dict = {}
    for path in READS[command]:
        value = _get(config, path.format(method=method))
        if value is not _MISSING:
            _put(out, path.format(method=method), value)
    if command == "pose" and _get(config, "pose.boxes") == "seg" and "seg" in config:
        out["seg"] = copy.deepcopy(config["seg"])  # its boxes come from the seg view
    if command == "pose" and _get(out, "pose.boxes") not in ("detector", _MISSING):
        _drop(out, "pose.detector")
    if command == "manifest":  # a demo's manifest depends on the generator; another's on its annotations
        if _get(config, "dataset.format") == "demo":
            for key in ("root", "manifest", "on_missing"):
                _drop(out, f"dataset.{key}")
        else:
            _drop(out, "demo")
            _drop(out, "seed")
        _drop(out, "dataset.split")  # the manifest holds every split's roles
    return out


def job_sections(
    config: dict, command: str, *, views=None, method: str | None = None, seed: int | None = None
) -> tuple[dict, dict]:
    """(results, runtime): the keys a job of `command` reads, split as the module docstring says. `views`:
    the view of a per-view job (cpc, finetune, evaluate, features) or stage 2's views (default: train.views);
    `method`: the flow method; `seed`: a training seed other than config's (the claim target)."""
    out = _reads(config, command, method)
    for path in NOT_A_SETTING:
        _drop(out, path)
    views = _job_views(config, command, views)
    sizes = _get(out, "train.input_size")
    if sizes is not _MISSING:
        kinds = {V.kind_of(v).name for v in views}
        out["train"]["input_size"] = {k: s for k, s in sizes.items() if k in kinds}
        if not any(V.kind_of(v).intensity_crop for v in views):
            _drop(out, "train.intensity_crop")  # a crop rule of other kinds of views (flow, pose, seg)
    weights = _get(out, "evaluate.ensemble_weights")
    if weights is not _MISSING:
        out["evaluate"]["ensemble_weights"] = {v: w for v, w in weights.items() if v in views}
    for key, value in STAGE2_VARIANTS.get(command, {}).items():
        _put(out, f"cocon.{key}", value)
    if seed is not None:  # a job of the claim target: its seed, and its epochs where the claim sets them
        out["seed"] = int(seed)
        for section in ("cpc", "cocon"):
            epochs = _get(config, f"claim.{section}_epochs")
            if epochs not in (None, _MISSING) and _get(out, f"{section}.epochs") is not _MISSING:
                out[section]["epochs"] = int(epochs)
    runtime: dict = {}
    for path in SPEED_ONLY:
        value = _get(out, path)
        if value is not _MISSING:
            _put(runtime, path, value)
            _drop(out, path)
    return out, runtime


def job_config(config: dict, command: str, **kw) -> str:
    """`--config-json` of a job of `command` (canonical JSON of the results part): its Snakemake params."""
    return as_json(job_sections(config, command, **kw)[0])


RUNTIME_ENV = "COCON_RUNTIME_JSON"


def runtime_config(config: dict) -> str:
    """Every speed-only key of `config` (SPEED_ONLY) as canonical JSON: the value of RUNTIME_ENV."""
    out: dict = {}
    for path in SPEED_ONLY:
        value = _get(config, path)
        if value is not _MISSING:
            _put(out, path, value)
    return as_json(out)


def run_identity_config(cfg: dict, command: str, views: list[str]) -> dict:
    """What a training run of `command` on `views` is, for its run identity: the results part of its job
    without the epoch count (cpc, cocon, control: raising it continues a finished run)."""
    out, _ = job_sections(cfg, command, views=views)
    if command in EPOCHS_KEY:
        _drop(out, EPOCHS_KEY[command])
    return out


def stage_params(cfg: dict, stage: str, method: str | None = None) -> dict:
    """The parameters a preprocessing stage runs with and records in its shards (root attribute `params`),
    from its validated config (results and runtime parts): frames - the frames section; flow - bound,
    encoding and the method's section; any other view (seg, pose, a registered one) - its section without
    the scheduling keys (enabled, gpus), with the global seed when the job has it and, for pose with boxes
    from seg, the seg parameters."""
    if stage == "frames":
        return dict(cfg["frames"])
    if stage == "flow":
        f = cfg["flow"]
        return {"bound": f["bound"], "encoding": f["encoding"], method: f[method]}
    params = {k: v for k, v in cfg[stage].items() if k not in SCHEDULING_KEYS}
    if "seed" in cfg:  # models initialised at random (demo, tests) are seeded by it
        params["seed"] = cfg["seed"]
    if stage == "pose":
        if params["boxes"] != "detector":
            params.pop("detector", None)
        if params["boxes"] == "seg":
            params["seg"] = stage_params(cfg, "seg")
    return params


def dataset_params(cfg: dict) -> dict:
    """The dataset attributes recorded in every shard."""
    return {"name": cfg["dataset"]["name"], "format": cfg["dataset"]["format"]}
