"""The claim study, second round (docs/claim.md): a setting's numbers on the VALIDATION subset only.

    python study/claim_validation.py --setting '{"train": {"stride": 3}}' --out study_out/b --seeds 100 101 102

Runs the workflow (config.yaml with the setting merged over it, claim.seeds = the given seeds, which must
not be the reported ones) up to the claim's features and fine-tuned models, then reads only what the
validation subset says: the CPC runs' NCE top-1 against chance (1/(batch x pred_steps): the gate a stage-2
run needs), the frozen-feature kNN and linear probe of every (init, view) fitted on the training role minus
the validation subset and scored on it (k and C: the best of the grid on it, for every init alike), and the
fine-tunes' best validation top-1. It never reads a test-split number (no scores.h5, no test features).
Writes <out>/validation.json and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cocon import inits as I  # noqa: E402
from cocon.config import _merge, validate  # noqa: E402
from cocon.evaluate.claim import STAGE1_CLEARLY  # noqa: E402
from cocon.evaluate.frozen import CS, KS, knn_predict, probe_predict  # noqa: E402
from cocon.files import read_h5  # noqa: E402

REPORTED_SEEDS = {0, 1, 2}


def config(setting: dict, seeds: list[int]) -> dict:
    with open(ROOT / "config.yaml") as fh:
        cfg = yaml.safe_load(fh)
    _merge(cfg, setting)
    cfg.setdefault("claim", {})["seeds"] = seeds
    return cfg


def targets(cfg: dict) -> list[str]:
    full = validate(json.loads(json.dumps(cfg)))
    out, views = full["output_dir"], full["train"]["views"]
    inits = I.possible(len(views))
    paths = []
    for seed in full["claim"]["seeds"]:
        root = f"{out}/claim/seed{seed}"
        paths += [f"{root}/train/cpc/{v}/metrics.csv" for v in views]
        paths += [f"{root}/features/{i}/{v}.h5" for i in inits for v in views]
        paths += [f"{root}/finetune/{i}/{v}/metrics.csv" for i in inits for v in views]
    return paths


def run(cfg: dict, out: Path, cores: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", *targets(cfg), "-s", str(ROOT / "Snakefile"), "-d", str(out)]
    cmd += ["--configfile", str(out / "config.yaml"), "--cores", str(cores), "--keep-going", "-q", "progress"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(cmd, check=True, cwd=out, env=env)


def last_row(path: Path) -> dict:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: float(v) for k, v in rows[-1].items()} if rows else {}


def best_val(path: Path) -> float:
    with open(path, newline="") as fh:
        return max(float(r["val/top1"]) for r in csv.DictReader(fh))


def labeled_groups(video_ids: list[str], labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Scarce labels after the fact (design a): a bool mask keeping, per class, round(fraction x groups) of
    the videos' groups (`..._gNN_cMM` -> `..._gNN`), drawn with `seed`. fraction 1 keeps every video."""
    if fraction >= 1:
        return np.ones(len(video_ids), bool)
    groups = np.array([v.rsplit("_c", 1)[0] for v in video_ids])
    keep = np.zeros(len(video_ids), bool)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        names = sorted(set(groups[labels == c]))
        chosen = rng.choice(names, size=max(1, round(fraction * len(names))), replace=False)
        keep |= np.isin(groups, chosen)
    return keep


def validation_probes(features: dict, classes: int, fraction: float = 1.0, seed: int = 0) -> dict:
    """kNN and linear probe fitted on the training role minus the validation subset (its labeled groups
    only when `fraction` < 1), scored on the validation subset: the best of the grid (KS, CS), for every
    init alike."""
    y_all, val_all = features["train/label"], features["train/is_val"].astype(bool)
    fit = ~val_all & labeled_groups(list(features["train/video_id"]), y_all, fraction, seed)
    x, y = features["train/feature"], y_all
    knn = max(float((knn_predict(x[fit], y[fit], x[val_all], k, classes) == y[val_all]).mean()) for k in KS)
    lin = max(float((probe_predict(x[fit], y[fit], x[val_all], c) == y[val_all]).mean()) for c in CS)
    return {"knn": knn, "linear": lin, "n_val": int(val_all.sum()), "n_fit": int(fit.sum())}


def summarise(cfg: dict, out: Path, fraction: float = 1.0) -> dict:
    full = validate(json.loads(json.dumps(cfg)))
    views, inits = full["train"]["views"], I.possible(len(full["train"]["views"]))
    chance = 1.0 / (full["cpc"]["batch_size"] * full["cpc"]["pred_steps"])
    res: dict = {"chance_cpc_top1": chance, "labeled_fraction": fraction, "per_seed": {}}
    for seed in full["claim"]["seeds"]:
        root = out / full["output_dir"] / "claim" / f"seed{seed}"
        entry: dict = {"cpc_val_top1": {}, "probes": {}, "finetune_val_top1": {}}
        for v in views:
            entry["cpc_val_top1"][v] = last_row(root / "train" / "cpc" / v / "metrics.csv").get(f"val/top1/{v}")
            for i in inits:
                arr, attrs = read_h5(root / "features" / i / f"{v}.h5")
                entry["probes"][f"{i}/{v}"] = validation_probes(arr, len(attrs["class_names"]), fraction, seed)
                entry["finetune_val_top1"][f"{i}/{v}"] = best_val(root / "finetune" / i / v / "metrics.csv")
        entry["gate"] = all(t is not None and t > STAGE1_CLEARLY * chance for t in entry["cpc_val_top1"].values())
        res["per_seed"][str(seed)] = entry
    seeds = list(res["per_seed"].values())
    res["mean"] = {
        measure: {
            key: (float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0)
            for key in seeds[0]["probes"]
            for vals in [
                [s["probes"][key][measure] if measure != "finetune" else s["finetune_val_top1"][key] for s in seeds]
            ]
        }
        for measure in ("knn", "linear", "finetune")
    }
    res["cpc_val_top1"] = {v: [s["cpc_val_top1"][v] for s in seeds] for v in views}
    return res


def table(res: dict) -> str:
    lines = [f"CPC val top-1 (chance {res['chance_cpc_top1']:.3f}): {res['cpc_val_top1']}"]
    for measure, by_key in res["mean"].items():
        lines.append(f"{measure} (validation top-1 %, mean ± std over seeds):")
        for key, (m, s) in by_key.items():
            lines.append(f"  {key:24s} {100 * m:5.1f} ± {100 * s:4.1f}")
    return "\n".join(lines)


def rgb_gate(cfg: dict, out: Path, cores: int) -> dict:
    """The gate of an RGB design: a fine-tune of rgb from random weights on the setting's demo (rgb shards
    only, seed 100) must fit its training set (train top-1 >= 0.8 at the end) before anything else runs."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = {**json.loads(json.dumps(cfg)), "seed": 100}
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(out)]
    cmd += ["--configfile", str(out / "config.yaml"), "--cores", str(cores), "-q", "progress", "--until", "frames"]
    subprocess.run(cmd, check=True, env=env)
    run_dir = out / "gate_rgb"
    train = [sys.executable, "-m", "cocon", "train", "finetune", "--views", "rgb", "--init-kind", "random"]
    train += ["--out", str(run_dir), "--config", str(out / "config.yaml"), "--threads", str(cores)]
    subprocess.run(train, check=True, cwd=out, env=env)
    top1 = last_row(run_dir / "metrics.csv")["train/top1"]
    return {"train_top1": top1, "val_top1_best": best_val(run_dir / "metrics.csv"), "passes": top1 >= 0.8}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", default="{}", help="JSON merged over config.yaml (or a path to a JSON file)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seeds", nargs="+", type=int, default=[100, 101, 102])
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--rgb-gate", action="store_true", help="only the RGB gate (a random-init rgb fine-tune must fit)")
    p.add_argument("--summarise-only", action="store_true", help="read a finished --out again; run nothing")
    p.add_argument("--labeled", type=float, default=1.0, help="probes fitted on this fraction of the groups")
    a = p.parse_args()
    if REPORTED_SEEDS & set(a.seeds):
        raise SystemExit(f"seeds {sorted(REPORTED_SEEDS)} are the reported ones: choose on others")
    setting = json.loads(Path(a.setting).read_text() if os.path.exists(a.setting) else a.setting)
    cfg = config(setting, a.seeds)
    if a.rgb_gate:
        gate = rgb_gate(cfg, a.out.resolve(), a.cores)
        (a.out / "rgb_gate.json").write_text(json.dumps({"setting": setting, **gate}, indent=1))
        print(gate)
        return
    if not a.summarise_only:
        run(cfg, a.out.resolve(), a.cores)
    res = {"setting": setting, **summarise(cfg, a.out.resolve(), a.labeled)}
    name = "validation.json" if a.labeled >= 1 else f"validation_labeled{a.labeled:g}.json"
    (a.out / name).write_text(json.dumps(res, indent=1))
    print(table(res))


if __name__ == "__main__":
    main()
