"""The config contract between the workflow and its jobs, in one place.

Every job gets, as `--config-json`, exactly the config sections it depends on (`job_config`), so
Snakemake reruns it when one of them changes and only then; the job validates those sections against
the schema (cocon.config.config_from_args) and reads nothing else. Cross-section checks run once, on the
whole config, when the workflow is parsed (rules/common.smk), before any job starts.

A preprocessing stage turns its sections into the parameters it records in its shards (`stage_params`).
"""

from __future__ import annotations

import copy
import json

# What each command depends on: top-level sections, or "section.key" for a part of one; "{method}" is a
# flow method. Scheduling keys of view sections (enabled, gpus) are left out: they change where a job
# runs, not what it writes.
SECTIONS: dict[str, tuple[str, ...]] = {
    "demo": ("output_dir", "seed", "dataset", "demo"),
    "manifest": ("output_dir", "seed", "dataset", "demo", "shards"),
    "frames": ("dataset.name", "dataset.format", "frames"),
    "flow": ("dataset.name", "dataset.format", "flow.bound", "flow.encoding", "flow.{method}"),
    "seg": ("seed", "dataset.name", "dataset.format", "seg"),
    "pose": ("seed", "dataset.name", "dataset.format", "pose"),
    "cpc": ("output_dir", "seed", "dataset", "train"),
    "cocon": ("output_dir", "seed", "dataset", "train"),
    "finetune": ("output_dir", "seed", "dataset", "train", "finetune"),
    "evaluate": ("output_dir", "seed", "dataset", "train", "finetune", "evaluate"),
    "features": ("output_dir", "seed", "dataset", "train", "evaluate"),
    "report": ("output_dir", "seed", "dataset", "train", "finetune", "evaluate"),
    "claim": ("output_dir", "seed", "dataset", "train", "finetune", "evaluate", "claim"),
}
SCHEDULING_KEYS = ("enabled", "gpus")


def sections(config: dict, command: str, **wildcards) -> dict:
    """The part of `config` a job of `command` gets (a new dict)."""
    out: dict = {}
    paths = list(SECTIONS[command])
    if command == "pose" and config["pose"]["boxes"] == "seg":
        paths.append("seg")  # its boxes come from the seg view: seg's parameters shape the pose maps
    for path in paths:
        path = path.format(**wildcards)
        head, _, key = path.partition(".")
        if key:
            out.setdefault(head, {})[key] = copy.deepcopy(config[head][key])
        else:
            out[head] = copy.deepcopy(config[head])
    for view in ("seg", "pose"):
        if isinstance(out.get(view), dict):
            for key in SCHEDULING_KEYS:
                out[view].pop(key, None)
    if command == "pose" and out["pose"]["boxes"] != "detector":
        out["pose"].pop("detector", None)
    return out


def as_json(obj) -> str:
    """Canonical JSON (sorted keys, compact): the same config gives the same string."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def job_config(config: dict, command: str, **wildcards) -> str:
    """`--config-json` of a job of `command` (canonical JSON of `sections`)."""
    return as_json(sections(config, command, **wildcards))


def stage_params(cfg: dict, stage: str, method: str | None = None) -> dict:
    """The parameters a preprocessing stage records in its shards (root attribute `params`), from the
    validated job config: frames - the frames section; flow - bound, encoding and the method's
    section; any other view (seg, pose, a registered one) - its section without scheduling keys, with the
    global seed when the job has it and, for pose with boxes from seg, the seg parameters."""
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
