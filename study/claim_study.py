"""Claim study driver (exploration, validation subset only).

One *setting* = demo data + budgets. For each training seed: CPC per view, stage 2 with each lambda
(10 = CoCon, 0 = control), frozen-feature probes (kNN R@1, linear probe) and fine-tuning, all measured
on the VALIDATION subset (whole groups held out from the training role), never on the test split.

    PYTHONPATH=. python study/claim_study.py --setting S.json --out DIR --seeds 100 101 102 --jobs 2
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parents[1]


def deep_merge(base, extra):
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_merge(base[k], v)
        else:
            base[k] = v
    return base


def base_config(setting: dict, out: Path) -> dict:
    with open(ROOT / "config.yaml") as fh:
        cfg = yaml.safe_load(fh)
    cfg["output_dir"] = str(out / "data")
    cfg["flow"] = {"methods": ["tvl1"]}
    cfg["seg"] = {"enabled": False}
    cfg["pose"] = {"enabled": False}
    cfg["evaluate"]["ensemble_weights"] = {"rgb": 2, "flow_tvl1": 2}
    for key in ("demo", "frames", "train", "cpc", "cocon", "runtime", "finetune", "shards"):
        if key in setting:
            cfg.setdefault(key, {})
            deep_merge(cfg[key], setting[key])
    return cfg


def prepare_data(cfg: dict, out: Path) -> None:
    done = out / "data" / "reports" / "preprocess_summary.json"
    if done.exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "config.yaml", "w") as fh:
        yaml.safe_dump(cfg, fh)
    t0 = time.time()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            str(done),
            "-s",
            str(ROOT / "Snakefile"),
            "-d",
            str(out),
            "--cores",
            "2",
            "--configfile",
            str(out / "config.yaml"),
        ],
        check=True,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PATH": str(Path(sys.executable).parent) + ":" + os.environ["PATH"],
        },
        cwd=out,
    )
    (out / "data_seconds.txt").write_text(f"{time.time() - t0:.1f}\n")


# ------------------------------------------------------------------ per seed


def _dense(cfg, view, role):
    from cocon import views as V
    from cocon.data.clips import DenseClips, discover

    tc = cfg["train"]
    return DenseClips(
        discover(cfg["output_dir"], [view]),
        views=[view],
        split=1,
        role=role,
        holdout_fraction=tc["val_fraction"],
        holdout_seed=cfg["seed"],
        num_blocks=tc["num_blocks"],
        block_len=tc["block_len"],
        stride=tc["stride"],
        sizes={view: V.input_size(view, tc["input_size"])},
        seed=cfg["seed"],
    )


def _features(cfg, view, net, role, blocks=False):
    import torch

    from cocon.evaluate.features import context_feature

    data = _dense(cfg, view, role)
    feats, labels, bl = [], [], []
    with torch.no_grad():
        for i in range(len(data)):
            item = data[i]
            x = item[view]
            f = context_feature(net, x).double().mean(0)
            feats.append(f.numpy())
            labels.append(int(item["label"]))
            if blocks:
                from cocon.models.losses import pool_blocks

                z = net.encode(x[:1])  # (1, N, D, S, S) first window
                bl.append(pool_blocks(z)[0].numpy())
    return np.array(feats), np.array(labels), (np.concatenate(bl) if blocks else None)


def probes(cfg, view, net) -> dict:
    """kNN R@1 and linear-probe accuracy of val queries against the train-minus-val gallery."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    g, gl, _ = _features(cfg, view, net, "train")
    q, ql, blocks = _features(cfg, view, net, "val", blocks=True)
    mu = g.mean(0)
    gc, qc = g - mu, q - mu
    gc /= np.linalg.norm(gc, axis=1, keepdims=True) + 1e-12
    qc /= np.linalg.norm(qc, axis=1, keepdims=True) + 1e-12
    nn1 = gl[np.argmax(qc @ gc.T, axis=1)]
    sc = StandardScaler().fit(g)
    lr = LogisticRegression(max_iter=2000, C=1.0).fit(sc.transform(g), gl)
    prob = lr.predict_proba(sc.transform(q))
    # collapse statistic: mean pairwise cosine of (uncentred) block features of val clips
    b = blocks / (np.linalg.norm(blocks, axis=1, keepdims=True) + 1e-12)
    cos = b @ b.T
    n = len(b)
    return {
        "knn": float((nn1 == ql).mean()),
        "linear": float((prob.argmax(1) == ql).mean()),
        "linear_probs": prob.tolist(),
        "labels": ql.tolist(),
        "classes": lr.classes_.tolist(),
        "block_cos": float((cos.sum() - n) / (n * (n - 1))),
    }


def dense_eval(cfg, view, model_path) -> dict:
    import torch

    from cocon.models.build import build_classifier
    from cocon.train.checkpoints import load_checkpoint

    ck = load_checkpoint(model_path)
    model = build_classifier(view, len(ck["class_names"]), cfg)
    model.load_state_dict(ck["models"][view])
    model.eval()
    data = _dense(cfg, view, "val")
    probs, labels = [], []
    with torch.no_grad():
        for i in range(len(data)):
            item = data[i]
            probs.append(torch.softmax(model(item[view]).double(), 1).mean(0).numpy())
            labels.append(int(item["label"]))
    probs, labels = np.array(probs), np.array(labels)
    return {"acc": float((probs.argmax(1) == labels).mean()), "probs": probs.tolist(), "labels": labels.tolist()}


def run_seed(args) -> dict:
    setting, out, seed, do_finetune = args
    import torch

    torch.set_num_threads(1)
    import logging

    logging.basicConfig(level=logging.WARNING)
    from cocon.config import validate
    from cocon.evaluate.features import pretrained_network
    from cocon.train.engine import Engine
    from cocon.train.methods import CPC, CoCon, Finetune

    cfg = validate(base_config(setting, out))
    cfg["seed"] = seed
    sdir = out / f"seed{seed}"
    views = cfg["train"]["views"]
    res = {"seed": seed, "times": {}}
    t = time.time()
    for v in views:
        d = sdir / "cpc" / v
        if not (d / "model.pt").exists():
            Engine(CPC(cfg, [v]), d).fit()
    res["times"]["cpc"] = time.time() - t
    inits = {"random": None, "cpc": {v: str(sdir / "cpc" / v / "model.pt") for v in views}}
    # stage-2 runs: {name: cocon.* overrides}; the default pair is CoCon (lam 10) and the control (lam 0)
    runs = setting.get("stage2_runs") or {f"lam{lam:g}": {"lam": float(lam)} for lam in setting.get("lams", [10, 0])}
    for name, overrides in runs.items():
        t = time.time()
        c2 = copy.deepcopy(cfg)
        for k, val in {**setting.get("stage2", {}), **overrides}.items():
            c2["cocon"][k] = val
        d = sdir / f"cocon_{name}"
        if not (d / "model.pt").exists():
            Engine(CoCon(c2, views, inits["cpc"]), d).fit()
        inits[name] = {v: str(d / "model.pt") for v in views}
        res["times"][name] = time.time() - t
        import csv

        with open(d / "metrics.csv") as fh:
            rows = list(csv.DictReader(fh))
        res[f"curve_{name}"] = {k: [float(r[k]) for r in rows] for k in rows[0] if k.startswith("val/") or k == "lr"}
    t = time.time()
    res["probe"] = {}
    for name, paths in inits.items():
        for v in views:
            net = pretrained_network(cfg, v, "random" if paths is None else "cpc", None if paths is None else paths[v])
            res["probe"][f"{name}/{v}"] = probes(cfg, v, net)
    res["times"]["probe"] = time.time() - t
    (sdir / "probe.json").write_text(json.dumps(res))
    if do_finetune:
        res["finetune"] = {}
        t = time.time()
        for name, paths in inits.items():
            for v in views:
                d = sdir / "ft" / name / v
                ep = cfg["finetune"]["epochs"]
                last = d / "checkpoints" / f"epoch_{ep - 1:04d}.pt"
                if not (d / "model.pt").exists():
                    Engine(
                        Finetune(
                            cfg, [v], {} if paths is None else {v: paths[v]}, "random" if paths is None else "cpc"
                        ),
                        d,
                    ).fit()
                r = dense_eval(cfg, v, last)
                # keep the last epoch's model (no selection): checkpoints hold class_names too
                res["finetune"][f"{name}/{v}"] = r
        res["times"]["finetune"] = time.time() - t
    (sdir / "result.json").write_text(json.dumps(res))
    return res


def summarize(results: list[dict], views: list[str]) -> str:
    lines = []
    inits = [k.split("/")[0] for k in results[0]["probe"] if k.endswith("/" + views[0])]
    for metric in ("knn", "linear", "block_cos"):
        lines.append(f"## probe {metric}")
        for v in [*views, "ensemble"]:
            row = []
            for i in inits:
                if v == "ensemble":
                    if metric != "linear":
                        continue
                    vals = []
                    for r in results:
                        p = sum(np.array(r["probe"][f"{i}/{w}"]["linear_probs"]) for w in views)
                        vals.append(float((p.argmax(1) == np.array(r["probe"][f"{i}/{views[0]}"]["labels"])).mean()))
                else:
                    vals = [r["probe"][f"{i}/{v}"][metric] for r in results]
                row.append(f"{i} {100 * np.mean(vals):.1f}±{100 * np.std(vals, ddof=1) if len(vals) > 1 else 0:.1f}")
            if row:
                lines.append(f"  {v:10s} " + " | ".join(row))
    if "finetune" in results[0]:
        lines.append("## finetune (dense val, last epoch)")
        for v in [*views, "ensemble"]:
            row = []
            for i in inits:
                vals = []
                for r in results:
                    if v == "ensemble":
                        p = sum(np.array(r["finetune"][f"{i}/{w}"]["probs"]) for w in views)
                        vals.append(float((p.argmax(1) == np.array(r["finetune"][f"{i}/{views[0]}"]["labels"])).mean()))
                    else:
                        vals.append(r["finetune"][f"{i}/{v}"]["acc"])
                row.append(f"{i} {100 * np.mean(vals):.1f}±{100 * np.std(vals, ddof=1) if len(vals) > 1 else 0:.1f}")
            lines.append(f"  {v:10s} " + " | ".join(row))
    for lam in [k[len("curve_") :] for k in results[0] if k.startswith("curve_")]:
        key = f"curve_{lam}"
        if key in results[0]:
            c = results[0][key]
            lines.append(
                f"## {lam} seed{results[0]['seed']} val curves: "
                + "; ".join(
                    f"{k}: {c[k][0]:.3f}->{c[k][-1]:.3f}"
                    for k in c
                    if k.split("/")[-1] in ("total", "cpc", "coop") or "sync" in k or "sim" in k or "top1" in k
                )
            )
    lines.append(
        "times: "
        + json.dumps({k: round(float(np.mean([r["times"][k] for r in results])), 1) for k in results[0]["times"]})
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--setting", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seeds", nargs="+", type=int, default=[100, 101, 102])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--no-finetune", action="store_true")
    p.add_argument("--data-only", action="store_true")
    a = p.parse_args()
    setting = json.loads(Path(a.setting).read_text()) if os.path.exists(a.setting) else json.loads(a.setting)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "setting.json").write_text(json.dumps(setting, indent=1))
    cfg = base_config(setting, a.out)
    t0 = time.time()
    prepare_data(cfg, a.out)
    t1 = time.time()
    if a.data_only:
        return
    with ProcessPoolExecutor(a.jobs) as pool:
        results = list(pool.map(run_seed, [(setting, a.out, s, not a.no_finetune) for s in a.seeds]))
    text = summarize(results, cfg["train"]["views"])
    text += f"\nwall: data {t1 - t0:.0f} s, training {time.time() - t1:.0f} s\n"
    (a.out / "summary.txt").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
