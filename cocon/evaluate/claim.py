"""The claim target: Random vs CPC vs CoCon (and the lam = 0 control) over several training seeds.

    cocon claim --scores 0/cpc/rgb=.../scores.h5 ... --metrics 0/cocon=.../metrics.csv ... --out results/claim

Accuracy is over the scored test videos; `all_test_videos` also counts the unscored ones (failed in
preprocessing) as wrong. The orderings are decided on the first.

    cocon claim --scores 0/cpc/rgb=results/claim/seed0/eval/cpc/rgb/scores.h5 ... --out results/claim \
        --config-json '{...}'

Reads the dense-test scores (and, with --features, the features) of every (seed, init, view) and writes
claim.json and claim.md: test top-1 mean +- std (over seeds, ddof 1) per (view, init) - of fine-tuning,
with the weighted view ensemble, and of the frozen-feature kNN and linear probe (cocon.evaluate.frozen) -
the per-seed values, and whether each ordering of the paper holds: Random < CPC < CoCon, and CoCon >
control, each gap larger than 2 pooled standard deviations (sqrt((s_a^2 + s_b^2) / 2)).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import numpy as np

from cocon import inits as I
from cocon.config import add_config_args, config_from_args
from cocon.evaluate.frozen import frozen_eval
from cocon.evaluate.report import ensemble_accuracy
from cocon.files import read_h5, write_json, write_text
from cocon.provenance import code_revision, library_versions
from cocon.runtime import setup_logging

log = logging.getLogger("cocon.claim")
# the paper's orderings, CoCon above the control (cooperation, not more epochs), and the paper's loss row
ORDERINGS = (("random", "cpc"), ("cpc", "cocon"), ("control", "cocon"), ("cpc", "cocon_paper"))


def ordering(summary_view: dict, low: str, high: str) -> dict | None:
    """Whether mean[high] - mean[low] > 2 pooled std, with the numbers; None when an init is missing."""
    if low not in summary_view or high not in summary_view:
        return None
    a, b = summary_view[low], summary_view[high]
    pooled = math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2)
    gap = b["mean"] - a["mean"]
    return {"gap": gap, "pooled_std": pooled, "holds": bool(gap > 2 * pooled and gap > 0)}


def mean_std(by_seed: dict) -> dict:
    """{seed: value} -> mean, std (ddof 1; 0 for one seed) and the per-seed values."""
    seeds = sorted(by_seed)
    vals = np.array([by_seed[s] for s in seeds], np.float64)
    return {
        "mean": float(vals.mean()),
        "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
        "per_seed": {str(s): float(by_seed[s]) for s in seeds},
    }


def orderings_of(summary: dict) -> dict:
    """{view: {"low<high": ordering}} of every ORDERINGS pair present."""
    return {
        view: {f"{low}<{high}": ordering(d, low, high) for low, high in ORDERINGS if ordering(d, low, high)}
        for view, d in summary.items()
    }


def fine_tuning(cfg: dict, scores: dict[tuple[int, str, str], Path]) -> dict:
    """view -> init -> mean/std/per_seed of the dense test top-1 (plus over all test videos), and the
    weighted view ensemble as the view "ensemble"."""
    per: dict = {}  # init -> view -> seed -> (accuracy over scored videos, over all test videos)
    probs: dict = {}
    totals: dict = {}
    for (seed, init, view), path in sorted(scores.items()):
        arr, attrs = read_h5(path)
        per.setdefault(init, {}).setdefault(view, {})[seed] = (
            float(attrs["accuracy"]),
            float(attrs.get("accuracy_all", attrs["accuracy"])),
        )
        probs.setdefault(init, {}).setdefault(seed, {})[view] = (arr["video_id"], arr["probs"], arr["label"])
        totals[(seed, init)] = max(totals.get((seed, init), 0), int(attrs["n_videos"]) + int(attrs["n_unscored"]))
    weights = cfg["evaluate"]["ensemble_weights"]
    for init, by_seed in probs.items():
        for seed, views in by_seed.items():
            if len(views) >= 2:
                acc, n = ensemble_accuracy(views, weights)
                per[init].setdefault("ensemble", {})[seed] = (acc, acc * n / max(totals[(seed, init)], 1))
    summary: dict = {}
    for init, d in per.items():
        for view, by_seed in d.items():
            entry = mean_std({s: v[0] for s, v in by_seed.items()})
            every = mean_std({s: v[1] for s, v in by_seed.items()})
            summary.setdefault(view, {})[init] = {**entry, "all_test_videos": {k: every[k] for k in ("mean", "std")}}
    return summary


def frozen(features: dict[tuple[int, str, str], Path]) -> dict:
    """{"knn": view -> init -> mean/std/per_seed of the test top-1, "linear": the same, "chosen": the k and C
    chosen on validation per seed/init/view} of the frozen-feature evaluation (cocon.evaluate.frozen)."""
    per: dict = {"knn": {}, "linear": {}}
    chosen = {}
    for (seed, init, view), path in sorted(features.items()):
        arr, attrs = read_h5(path)
        res = frozen_eval(arr, len(attrs["class_names"]))
        chosen[f"{seed}/{init}/{view}"] = {"k": res["knn"]["k"], "C": res["linear"]["C"]}
        for measure in per:
            per[measure].setdefault(view, {}).setdefault(init, {})[seed] = res[measure]["top1"]
    out = {m: {v: {i: mean_std(s) for i, s in d.items()} for v, d in by_view.items()} for m, by_view in per.items()}
    return {**out, "chosen": chosen}


def table(summary: dict, orderings: dict) -> list[str]:
    """Markdown rows: mean ± std (%) per (view, init), then each ordering with its gap and 2 pooled std."""
    inits = [i for i in I.NAMES if any(i in d for d in summary.values())]
    pairs = [(low, high) for low, high in ORDERINGS if any(f"{low}<{high}" in o for o in orderings.values())]
    lines = [
        "| view | "
        + " | ".join(I.INITS[i].title for i in inits)
        + " | "
        + " | ".join(f"{low} < {high}" for low, high in pairs)
        + " |",
        "|---" * (1 + len(inits) + len(pairs)) + "|",
    ]
    for view in sorted(summary, key=lambda v: (v == "ensemble", v != "rgb", v)):
        cells = [
            f"{100 * summary[view][i]['mean']:.1f} ± {100 * summary[view][i]['std']:.1f}" if i in summary[view] else "–"
            for i in inits
        ]
        for low, high in pairs:
            o = orderings[view].get(f"{low}<{high}")
            cells.append(
                "–"
                if o is None
                else f"{'yes' if o['holds'] else 'no'} ({100 * o['gap']:+.1f} vs 2σ {200 * o['pooled_std']:.1f})"
            )
        lines.append(f"| {view} | " + " | ".join(cells) + " |")
    return lines


STAGE1_CLEARLY = 2.0  # CPC "learned" when its final validation top-1 exceeds this many times chance


def stage1(cfg: dict, metrics: dict[tuple[int, str], Path]) -> dict:
    """Did stage 1 learn? The last epoch's validation top-1 of each seed's CPC run per view against chance,
    1 / (global batch x predicted blocks) (cpc.batch_size, cpc.pred_steps): a stage-2 comparison means
    something only where CPC is clearly above it (> STAGE1_CLEARLY x chance)."""
    chance = 1.0 / (cfg["cpc"]["batch_size"] * cfg["cpc"]["pred_steps"])
    top1: dict = {}
    for (seed, run), path in sorted(metrics.items()):
        if run.startswith("cpc:"):
            view = run.split(":", 1)[1]
            curve = read_metrics(path).get(f"val/top1/{view}")
            if curve is not None and len(curve):
                top1.setdefault(view, {})[seed] = float(curve[-1])
    learned = {v: {s: t > STAGE1_CLEARLY * chance for s, t in by.items()} for v, by in top1.items()}
    return {"chance": chance, "clearly": STAGE1_CLEARLY, "val_top1": top1, "learned": learned}


def stage1_lines(res: dict) -> list[str]:
    head = f"CPC validation top-1 at its last epoch (chance 1/(B·P) = {res['chance']:.3f}; learned: > {res['clearly']:g}× chance):"
    rows = [
        f"- {view}: "
        + ", ".join(
            f"seed {s} {t:.3f} ({t / res['chance']:.1f}×{'' if res['learned'][view][s] else ', not learned'})"
            for s, t in by.items()
        )
        for view, by in res["val_top1"].items()
    ]
    return [head, "", *rows]


def claim(
    cfg: dict,
    scores: dict[tuple[int, str, str], Path],
    out: Path,
    metrics: dict[tuple[int, str], Path] | None = None,
    features: dict[tuple[int, str, str], Path] | None = None,
) -> dict:
    """claim.json and claim.md (see the module docstring) from the dense-test scores, and, when given, the
    features (frozen-feature kNN and linear probe) and the training metrics (diagnostics figures)."""
    summary = fine_tuning(cfg, scores)
    orderings = orderings_of(summary)
    seeds = sorted({s for s, _, _ in scores})
    result = {
        "seeds": seeds,
        "accuracy": summary,
        "orderings": orderings,
        "config": cfg,
        "code_revision": code_revision(),
        "library_versions": library_versions(),
    }
    sections = [("Fine-tuning: dense test top-1 (%)", summary, orderings)]
    if features:
        fz = frozen(features)
        result["frozen"] = {m: {"accuracy": fz[m], "orderings": orderings_of(fz[m])} for m in ("knn", "linear")} | {
            "chosen": fz["chosen"]
        }
        sections += [
            (
                "Frozen features, kNN (cosine, weighted votes; k chosen on validation): test top-1 (%)",
                fz["knn"],
                result["frozen"]["knn"]["orderings"],
            ),
            (
                "Frozen features, linear probe (C chosen on validation): test top-1 (%)",
                fz["linear"],
                result["frozen"]["linear"]["orderings"],
            ),
        ]
    if metrics:
        result["diagnostics"] = figures(metrics, scores, out)
    text = f"Mean ± std over seeds {seeds}; an ordering holds when the gap exceeds 2 pooled standard deviations.\n"
    if metrics and "cpc" in cfg:
        result["stage1"] = stage1(cfg, metrics)
        text += "\n" + "\n".join(stage1_lines(result["stage1"])) + "\n"
    for title, summ, ords in sections:
        text += f"\n**{title}**\n\n" + "\n".join(table(summ, ords)) + "\n"
    write_text(out / "claim.md", text)
    write_json(out / "claim.json", result)
    log.info("claim:\n%s", text)
    return result


# ------------------------------------------------------------------ figures (docs/claim.md)


def read_metrics(path: Path) -> dict[str, np.ndarray]:
    """A metrics.csv as {column: float array over epochs}."""
    import csv

    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]} if rows else {}


def _mean_curve(curves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(c) for c in curves)
    stack = np.stack([c[:n] for c in curves])
    return stack.mean(0), stack.std(0, ddof=1) if len(curves) > 1 else np.zeros(n)


def figures(metrics: dict[tuple[int, str], Path], scores: dict[tuple[int, str, str], Path], out: Path) -> dict:
    """Diagnostics over the seeds (mean, band = +-1 std), as PNGs in out/figures:
    collapse.png   mean pairwise cosine of the pooled block features per epoch and view (val), through
                   stage 1 (CPC) and stage 2 (CoCon, control): 1 = every block alike
    coop.png       L_sync and L_sim per epoch (val) of each view pair, CoCon vs the control
    finetune.png   validation top-1 per fine-tuning epoch, per view and init
    per_class.png  test top-1 per class, per view and init
    Returns the numbers plotted (also in claim.json)."""
    from cocon.evaluate import figures as F

    read = {key: read_metrics(path) for key, path in metrics.items()}
    seeds = sorted({s for s, _ in read})
    runs = sorted({r for _, r in read})
    views = sorted({r.split(":")[1] for r in runs if r.startswith("cpc:")}, key=lambda v: (v != "rgb", v))
    out_fig = out / "figures"
    numbers: dict = {"collapse": {}, "coop": {}, "finetune": {}, "per_class": {}}

    fig = F.new_figure(5.0 * max(1, len(views)), 3.6)
    for k, view in enumerate(views):
        ax = fig.add_subplot(1, max(1, len(views)), k + 1)
        col = f"val/cos/{view}"
        stage1 = [read[(s, f"cpc:{view}")][col] for s in seeds if col in read.get((s, f"cpc:{view}"), {})]
        if not stage1:
            continue
        m1, sd1 = _mean_curve(stage1)
        ax.plot(np.arange(len(m1)), m1, color="k", label="CPC (stage 1)")
        ax.fill_between(np.arange(len(m1)), m1 - sd1, m1 + sd1, color="k", alpha=0.15)
        numbers["collapse"][f"cpc/{view}"] = m1.tolist()
        for run, colour in ((r, I.INITS[r].colour) for r in ("cocon", "control")):
            curves = [read[(s, run)][col] for s in seeds if col in read.get((s, run), {})]
            if curves:
                m, sd = _mean_curve(curves)
                x = len(m1) + np.arange(len(m))
                ax.plot(x, m, color=colour, label=f"{I.INITS[run].title} (stage 2)")
                ax.fill_between(x, m - sd, m + sd, color=colour, alpha=0.15)
                numbers["collapse"][f"{run}/{view}"] = m.tolist()
        ax.set_title(f"{view}: mean pairwise cosine of block features")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    F.save_png(fig, out_fig / "collapse.png")

    pairs = sorted(
        {c.split("/")[-1] for (s, r), m in read.items() if r == "cocon" for c in m if c.startswith("val/sync/")}
    )
    fig = F.new_figure(5.0 * max(1, len(pairs)), 3.6 * 2)
    for k, pair in enumerate(pairs):
        for row, term in enumerate(("sync", "sim")):
            ax = fig.add_subplot(2, max(1, len(pairs)), row * len(pairs) + k + 1)
            for run, colour in ((r, I.INITS[r].colour) for r in ("cocon", "control")):
                col = f"val/{term}/{pair}"
                curves = [read[(s, run)][col] for s in seeds if col in read.get((s, run), {})]
                if curves:
                    m, sd = _mean_curve(curves)
                    ax.plot(m, color=colour, label=I.INITS[run].title)
                    ax.fill_between(np.arange(len(m)), m - sd, m + sd, color=colour, alpha=0.15)
                    numbers["coop"][f"{run}/{term}/{pair}"] = m.tolist()
            ax.set_title(f"L_{term} {pair} (val)")
            ax.set_xlabel("stage-2 epoch")
            ax.legend(fontsize=7)
    fig.tight_layout()
    F.save_png(fig, out_fig / "coop.png")

    inits = [i for i in I.NAMES if any(r == f"finetune:{i}:{v}" for r in runs for v in views)]
    colours = {i.name: i.colour for i in I.INITS.values()}
    fig = F.new_figure(5.0 * max(1, len(views)), 3.6)
    for k, view in enumerate(views):
        ax = fig.add_subplot(1, max(1, len(views)), k + 1)
        for init in inits:
            curves = [
                read[(s, f"finetune:{init}:{view}")]["val/top1"]
                for s in seeds
                if (s, f"finetune:{init}:{view}") in read
            ]
            if curves:
                m, sd = _mean_curve(curves)
                ax.plot(100 * m, color=colours[init], label=I.INITS[init].title)
                numbers["finetune"][f"{init}/{view}"] = m.tolist()
        ax.set_title(f"{view}: fine-tuning, validation top-1 (%)")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    F.save_png(fig, out_fig / "finetune.png")

    per_class: dict = {}
    names: list[str] = []
    for (_seed, init, view), path in sorted(scores.items()):
        arr, attrs = read_h5(path)
        names = attrs["class_names"]
        pred, lab = arr["probs"].argmax(1), arr["label"]
        acc = [float((pred[lab == c] == c).mean()) if (lab == c).any() else np.nan for c in range(len(names))]
        per_class.setdefault((init, view), []).append(acc)
    if per_class:
        keys = [(i, v) for v in views for i in I.NAMES if (i, v) in per_class]
        grid = np.array([np.nanmean(per_class[k], axis=0) for k in keys])
        fig = F.new_figure(1.2 + 0.8 * len(names), 1.0 + 0.35 * len(keys))
        ax = fig.add_subplot(1, 1, 1)
        im = ax.imshow(100 * grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(keys)), [f"{I.INITS[i].title} {v}" for i, v in keys], fontsize=7)
        for (r, c), value in np.ndenumerate(grid):
            ax.text(c, r, f"{100 * value:.0f}", ha="center", va="center", fontsize=6, color="w")
        ax.set_title("test top-1 per class (%), mean over seeds")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        F.save_png(fig, out_fig / "per_class.png")
        numbers["per_class"] = {f"{i}/{v}": g.tolist() for (i, v), g in zip(keys, grid)}
        numbers["class_names"] = list(names)
    return numbers


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    p = argparse.ArgumentParser(prog="cocon claim", description="Mean +- std of test accuracy over seeds.")
    p.add_argument("--scores", nargs="+", required=True, metavar="SEED/INIT/VIEW=PATH")
    p.add_argument(
        "--features", nargs="*", default=[], metavar="SEED/INIT/VIEW=PATH", help="features .h5 (frozen eval)"
    )
    p.add_argument(
        "--metrics",
        nargs="*",
        default=[],
        metavar="SEED/RUN=PATH",
        help="training metrics.csv; RUN = cpc:<view> | cocon | control | finetune:<init>:<view>",
    )
    p.add_argument("--out", required=True, type=Path)
    add_config_args(p)
    a = p.parse_args(sys.argv[1:] if argv is None else argv)

    def keyed(pairs: list[str]) -> dict[tuple[int, str, str], Path]:
        out = {}
        for item in pairs:
            key, path = item.split("=", 1)
            seed, init, view = key.split("/", 2)
            out[(int(seed), init, view)] = Path(path)
        return out

    items, features = keyed(a.scores), keyed(a.features)
    metrics = {}
    for item in a.metrics:
        key, path = item.split("=", 1)
        seed, run = key.split("/", 1)
        metrics[(int(seed), run)] = Path(path)
    claim(config_from_args(a), items, a.out, metrics, features)


if __name__ == "__main__":
    main()
