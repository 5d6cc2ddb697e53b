"""The claim target: Random vs CPC vs CoCon (and the lam = 0 control) over several training seeds.

Accuracy is over the scored test videos; `all_test_videos` also counts the unscored ones (failed in
preprocessing) as wrong. The orderings are decided on the first.

    cocon claim --scores 0/cpc/rgb=results/claim/seed0/eval/cpc/rgb/scores.h5 ... --out results/claim \
        --config-json '{...}'

Reads the dense-test scores of every (seed, init, view) and writes claim.json and claim.md: test top-1
mean +- std (over seeds, ddof 1) per (view, init) and for the weighted view ensemble, the per-seed
values, and whether each ordering of the paper holds: Random < CPC < CoCon, and CoCon > control, each
gap larger than 2 pooled standard deviations (sqrt((s_a^2 + s_b^2) / 2)).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import numpy as np

from cocon.config import add_config_args, config_from_args
from cocon.evaluate.report import INIT_ORDER, INIT_TITLE, ensemble_accuracy
from cocon.files import read_h5, write_json, write_text
from cocon.provenance import code_revision, library_versions
from cocon.runtime import setup_logging

log = logging.getLogger("cocon.claim")
ORDERINGS = (("random", "cpc"), ("cpc", "cocon"), ("control", "cocon"))


def ordering(summary_view: dict, low: str, high: str) -> dict | None:
    """Whether mean[high] - mean[low] > 2 pooled std, with the numbers; None when an init is missing."""
    if low not in summary_view or high not in summary_view:
        return None
    a, b = summary_view[low], summary_view[high]
    pooled = math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2)
    gap = b["mean"] - a["mean"]
    return {"gap": gap, "pooled_std": pooled, "holds": bool(gap > 2 * pooled and gap > 0)}


def claim(cfg: dict, scores: dict[tuple[int, str, str], Path], out: Path) -> dict:
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
            seeds = sorted(by_seed)
            vals = np.array([by_seed[s][0] for s in seeds])
            every = np.array([by_seed[s][1] for s in seeds])
            summary.setdefault(view, {})[init] = {
                "mean": float(vals.mean()),
                "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                "per_seed": {str(s): by_seed[s][0] for s in seeds},
                "all_test_videos": {
                    "mean": float(every.mean()),
                    "std": float(every.std(ddof=1)) if len(every) > 1 else 0.0,
                },
            }
    orderings = {
        view: {f"{low}<{high}": ordering(d, low, high) for low, high in ORDERINGS if ordering(d, low, high)}
        for view, d in summary.items()
    }
    seeds = sorted({s for s, _, _ in scores})
    result = {
        "seeds": seeds,
        "accuracy": summary,
        "orderings": orderings,
        "config": cfg,
        "code_revision": code_revision(),
        "library_versions": library_versions(),
    }
    inits = [i for i in INIT_ORDER if any(i in d for d in summary.values())]
    lines = [
        "| view | "
        + " | ".join(INIT_TITLE[i] for i in inits)
        + " | "
        + " | ".join(f"{low} < {high}" for low, high in ORDERINGS)
        + " |",
        "|---" * (1 + len(inits) + len(ORDERINGS)) + "|",
    ]
    for view in sorted(summary, key=lambda v: (v == "ensemble", v != "rgb", v)):
        cells = [
            f"{100 * summary[view][i]['mean']:.1f} ± {100 * summary[view][i]['std']:.1f}" if i in summary[view] else "–"
            for i in inits
        ]
        for low, high in ORDERINGS:
            o = orderings[view].get(f"{low}<{high}")
            cells.append(
                "–"
                if o is None
                else f"{'yes' if o['holds'] else 'no'} ({100 * o['gap']:+.1f} vs 2σ {200 * o['pooled_std']:.1f})"
            )
        lines.append(f"| {view} | " + " | ".join(cells) + " |")
    text = (
        f"Test top-1 (%), mean ± std over seeds {seeds}; an ordering holds when the gap exceeds 2 pooled "
        f"standard deviations.\n\n" + "\n".join(lines) + "\n"
    )
    write_text(out / "claim.md", text)
    write_json(out / "claim.json", result)
    log.info("claim:\n%s", text)
    return result


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    p = argparse.ArgumentParser(prog="cocon claim", description="Mean +- std of test accuracy over seeds.")
    p.add_argument("--scores", nargs="+", required=True, metavar="SEED/INIT/VIEW=PATH")
    p.add_argument("--out", required=True, type=Path)
    add_config_args(p)
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    items = {}
    for item in a.scores:
        key, path = item.split("=", 1)
        seed, init, view = key.split("/", 2)
        items[(int(seed), init, view)] = Path(path)
    claim(config_from_args(a), items, a.out)


if __name__ == "__main__":
    main()
