"""Configuration: the JSON schema, defaults and the checks that the schema cannot express.

Snakemake validates `config` with the same schema (rules/common.smk calls `validate` then `check`);
`load_config` does the same for stages run by hand, so both paths reject the same mistakes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("schemas") / "config.schema.yaml"


class ConfigError(ValueError):
    """A configuration value that is wrong; the message starts with the dotted key."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key '{key}': {message}")


def schema() -> dict:
    """The config schema: the file, with the view names and kinds filled in from the views registry
    (cocon.views), so that a registered view is a valid config value everywhere a view is named."""
    from cocon import inits as I
    from cocon import views as V

    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        s = yaml.safe_load(fh)
    props = s["properties"]
    props["train"]["properties"]["views"]["items"] = {"enum": V.all_views()}
    props["train"]["properties"]["input_size"]["properties"] = {
        k.name: {"type": "integer", "minimum": 32, "default": k.default_size} for k in V.KINDS.values()
    }
    props["finetune"]["properties"]["inits"]["items"] = {"enum": list(I.NAMES)}
    props["finetune"]["properties"]["inits"]["default"] = list(I.DEFAULT_INITS)
    props["evaluate"]["properties"]["ensemble_weights"]["properties"] = {
        v: {"type": "number", "minimum": 0, "default": V.kind_of(v).ensemble_weight} for v in V.all_views()
    }
    return s


def _with_defaults(validator_class):
    """A validator class that fills in `default`s, recursing into defaults it has just set."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    default = sub["default"]
                    instance[name] = (
                        dict(default)
                        if isinstance(default, dict)
                        else (list(default) if isinstance(default, list) else default)
                    )
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


# Keys that moved when the train section was split by method (docs/reruns.md): old dotted key -> new one.
# An old key is rejected before any job starts, with its new place in the message.
MOVED_KEYS: dict[str, str] = {
    **{f"train.{k}": f"cpc.{k}" for k in ("batch_size", "lr", "weight_decay", "min_lr", "plateau_patience")},
    **{f"train.{k}": f"cpc.{k}" for k in ("max_steps_per_epoch", "pred_steps", "temperature", "sibling_negatives")},
    "train.cpc_epochs": "cpc.epochs",
    "train.cpc_variant": "cpc.variant",
    "train.cocon_epochs": "cocon.epochs",
    **{f"train.{k}": f"cocon.{k}" for k in ("lam", "alpha", "sync_weight", "loss_variant", "coop_centre")},
    **{
        f"train.{k}": f"runtime.{k}"
        for k in ("gpus", "device", "workers", "keep_checkpoints", "fused_adam", "cudnn_benchmark")
    },
    "train.channels_last": "runtime.channels_last",
    "train.compile": "runtime.compile",
}


def reject_moved_keys(cfg: dict) -> None:
    """Raise ConfigError for the first key of `cfg` that has moved (MOVED_KEYS), naming its new place."""
    for old, new in MOVED_KEYS.items():
        section, key = old.split(".")
        if isinstance(cfg.get(section), dict) and key in cfg[section]:
            raise ConfigError(old, f"has moved: write it as {new} (docs/reruns.md lists the config sections)")


def validate(cfg: dict, checks: bool = True) -> dict:
    """Fill defaults into `cfg` in place and validate it against the schema, then (`checks`) the
    cross-field checks; raises ConfigError naming the key (a moved key: naming its new place)."""
    reject_moved_keys(cfg)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            name = ".".join([*map(str, err.absolute_path), extra[0]]) if extra else key
            raise ConfigError(name, f"unknown key (allowed: {', '.join(sorted(err.schema['properties']))})")
        raise ConfigError(key, err.message)
    if checks:
        check(cfg)
    return cfg


def check(cfg: dict) -> None:
    """Cross-field checks that JSON schema cannot state; `cfg` must already hold its defaults."""
    ds = cfg["dataset"]
    fmt = ds["format"]
    if fmt in ("ucf101", "hmdb51", "kinetics400"):
        for key in ("root", "manifest"):
            if not ds.get(key):
                raise ConfigError(f"dataset.{key}", f"is required for dataset.format '{fmt}'")
    if fmt == "csv" and not ds.get("manifest"):
        raise ConfigError("dataset.manifest", "is required for dataset.format 'csv' (path of the CSV file)")
    if fmt in ("kinetics400", "csv", "demo") and ds["split"] != 1:
        raise ConfigError("dataset.split", f"format '{fmt}' has a single split; use 1")
    demo = cfg["demo"]
    if demo["test_groups"] >= demo["groups_per_class"]:
        raise ConfigError("demo.test_groups", "must be smaller than demo.groups_per_class")
    fr = cfg["frames"]
    if fr["max_frames"] is not None and fr["max_frames"] < fr["min_frames"]:
        raise ConfigError("frames.max_frames", "must be at least frames.min_frames")
    from cocon import views as V

    computed = set(V.enabled_views(cfg))
    for v in cfg["train"]["views"]:
        if v not in computed:
            raise ConfigError(
                "train.views", f"view '{v}' is not computed by this configuration: {V.kind_of(v).missing(v)}"
            )
    from cocon import inits as I

    run = cfg["train"]["pretrained_run"]
    if run is not None:
        need = {
            I.model_path(i, v, str(Path(run) / "train"))
            for i in cfg["finetune"]["inits"]
            for v in cfg["train"]["views"]
        }
        missing = sorted(p for p in need if p is not None and not Path(p).is_file())
        if missing:
            raise ConfigError(
                "train.pretrained_run",
                f"{run} lacks {', '.join(missing)} (run its `pretrain` target with these train.views first)",
            )
    for init in cfg["finetune"]["inits"]:
        if len(cfg["train"]["views"]) < I.get(init).min_views:
            raise ConfigError(
                "finetune.inits", f"'{init}' needs at least two train.views (stage 2 trains views jointly)"
            )
    lo, hi = cfg["train"]["crop_area"]
    if lo > hi:
        raise ConfigError("train.crop_area", f"[{lo}, {hi}] is not a range (low > high)")
    rt = cfg["runtime"]
    world = rt["nodes"] * max(1, rt["gpus"])  # DDP processes of a training job on GPUs (one per node on CPUs)
    for section in ("cpc", "finetune"):
        batch = cfg[section]["batch_size"]
        if batch % world:
            key = "runtime.nodes" if rt["nodes"] > 1 else "runtime.gpus"
            raise ConfigError(
                key,
                f"{section}.batch_size {batch} (the global batch) cannot be split evenly over runtime.nodes x "
                f"runtime.gpus = {rt['nodes']} x {rt['gpus']} = {world} processes",
            )
    ev = cfg["evaluate"]
    if ev["consistency_min"] > ev["consistency_top"]:
        raise ConfigError("evaluate.consistency_min", "must not exceed evaluate.consistency_top")
    if ev["window_stride"] is not None and ev["window_stride"] > cfg["train"]["num_blocks"]:
        raise ConfigError("evaluate.window_stride", "must not exceed train.num_blocks (windows would skip blocks)")
    tvl1 = cfg["flow"]["tvl1"]
    if tvl1["backend"] == "torch" and tvl1["gamma"] != 0:
        raise ConfigError("flow.tvl1.gamma", "the torch TVL1 backend implements gamma = 0 only; use backend: opencv")
    pose, seg = cfg["pose"], cfg["seg"]
    if pose["enabled"] and pose["boxes"] == "seg":
        if not seg["enabled"]:
            raise ConfigError("pose.boxes", "'seg' needs seg.enabled: true")
        for key in ("frame_stride", "frame_offset"):
            if pose[key] != seg[key]:
                raise ConfigError(f"pose.{key}", f"must equal seg.{key} when pose.boxes is 'seg'")
    for key in ("frames.encoding", "flow.encoding", "pose.encoding", "seg.encoding"):
        section, _ = key.split(".")
        check_encoding(cfg[section]["encoding"], key)


def check_encoding(enc: dict, key: str) -> None:
    """Which options go with which codec (quality: jpeg; level: png; compression: raw)."""
    allowed = {"jpeg": {"quality"}, "png": {"level"}, "raw": {"compression", "level"}}[enc["codec"]]
    for opt in set(enc) - {"codec"}:
        if opt not in allowed:
            raise ConfigError(f"{key}.{opt}", f"does not apply to codec '{enc['codec']}'")
    if enc["codec"] == "raw" and "level" in enc and enc.get("compression") != "gzip":
        raise ConfigError(f"{key}.level", "a level applies to raw storage only with compression: gzip")


def config_sources(files, demo: str) -> tuple[str | None, str]:
    """Which config a workflow run uses, from its --configfile `files` and the demo config `demo`:
    (the demo file to read first, or None; a sentence saying what the run uses). A given file that names a
    `dataset` is a recipe: the demo is not read and the keys the files leave out take the schema's
    defaults. Files without one are overlays, merged over the demo as Snakemake merges config files."""
    files = [str(f) for f in files or ()]
    if len(files) == 1 and Path(files[0]).resolve() == Path(demo).resolve():
        files = []
    docs = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            docs.append(yaml.safe_load(fh) or {})
    if not files:
        return demo, f"config: {demo} (the demo)"
    if not any("dataset" in d for d in docs):
        return demo, f"config: {demo} (the demo), with {', '.join(files)} merged over it"
    given = set().union(*docs)
    unset = [k for k in schema()["properties"] if k not in given]
    return None, (
        f"config: {', '.join(files)} (a recipe: it names its dataset, so {demo} is not read; keys it leaves out"
        f" take the schema's defaults{', whole sections: ' + ', '.join(unset) if unset else ''})"
    )


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Read a YAML config (or start empty), apply `overrides` (nested dict), validate, fill defaults."""
    cfg: dict = {}
    if path is not None:
        with open(path, encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh) or {}
    if overrides:
        _merge(cfg, overrides)
    return validate(cfg)


def _merge(base: dict, extra: dict) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def add_config_args(parser) -> None:
    """`--config FILE` and/or `--config-json JSON`, the two ways a command gets its configuration:
    a whole YAML config (by hand), or the sections a job depends on (rules; cocon.workflow.jobs); and
    `--runtime-json`, speed and placement settings (a job of the workflow gets them from the environment,
    cocon.workflow.jobs.RUNTIME_ENV, outside its params)."""
    parser.add_argument("--config", help="YAML config file: the whole configuration (default: the defaults)")
    parser.add_argument("--config-json", help="config sections as JSON (merged over --config when both are given)")
    parser.add_argument(
        "--runtime-json",
        help="speed/placement settings as JSON (cocon.workflow.jobs.runtime_sections), merged over the rest",
    )


def _json_arg(text: str | None, option: str) -> dict | None:
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{option} is not valid JSON: {exc}") from exc


def _given(cfg: dict, given: dict) -> dict:
    """The part of `cfg` at the key paths present in `given` (nested dicts pruned alike)."""
    out = {}
    for k, v in given.items():
        if k in cfg:
            out[k] = _given(cfg[k], v) if isinstance(v, dict) and isinstance(cfg[k], dict) and v else cfg[k]
    return out


def config_from_args(args, command: str | None = None) -> dict:
    """The validated config selected by `add_config_args` options.

    With `--config` (a whole config, possibly with `--config-json` on top): schema, defaults and every
    cross-field check. With `--config-json` alone (a job of the workflow, cocon.workflow.jobs): the keys it
    holds are validated against the schema; cross-section checks are not repeated (they ran on the whole
    config before any job started) and keys it does not hold are absent from the result, so a job cannot
    silently read a default it was not given. Speed and placement settings (`--runtime-json`, else the
    environment's RUNTIME_ENV) are merged over either: the `runtime` section always, the speed-only keys of
    other sections where the job has that section."""
    from cocon.workflow.jobs import RUNTIME_ENV

    extra = _json_arg(args.config_json, "--config-json")
    runtime = _json_arg(getattr(args, "runtime_json", None) or os.environ.get(RUNTIME_ENV), "--runtime-json")
    if args.config is not None or extra is None:
        cfg: dict = {}
        if args.config is not None:
            with open(args.config, encoding="utf-8") as fh:
                cfg = yaml.safe_load(fh) or {}
        for part in (extra, runtime):
            if part:
                _merge(cfg, part)
        return validate(cfg)
    if runtime:
        _merge(extra, {k: v for k, v in runtime.items() if k == "runtime" or k in extra})
    given = json.loads(json.dumps(extra))
    cfg = _given(validate(extra, checks=False), given)
    # speed and placement settings not given: the defaults (they change no result)
    cfg["runtime"] = {**validate({}, checks=False)["runtime"], **cfg.get("runtime", {})}
    return cfg
