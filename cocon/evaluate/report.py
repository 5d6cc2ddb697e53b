"""The run's results: accuracy tables, view ensembles, the paper's analyses, one metrics JSON.

    cocon report --scores cpc/rgb=results/eval/cpc/rgb/scores.h5 ... \
        --features cpc/rgb=results/features/cpc/rgb.h5 ... --config-json '{...}' --out results/reports

Reads the dense-test scores of every (init, view) (cocon.evaluate.dense) and the pretrained features of every
(init, view) (cocon.evaluate.features), and writes into --out:

    metrics.json   everything below, machine-readable, with provenance
    tables.html    the paper's Tables 1-3 in miniature: test top-1 per view and init (Random / CPC /
                   CoCon) with the weighted view ensemble; retrieval R@k; cosine statistics; cross-view
                   nearest-class consistency (and tables.md, the same in Markdown)
    figures/       confusion_<init>_<view>.png, tsne_<init>_<view>.png, cosine_<init>_<view>.png,
                   alignment_<init>_<view>_<k>.png

With --views-dir (the folder of `cocon views-figure`) and --failed-videos (the summary's failed_videos.tsv),
tables.html and tables.md also show what preprocessing produced: thumbnails of the per-video view figures
(relative links), what they flag (failed, empty or misaligned maps), and every failed video with its reason.

The ensemble of an init is the weighted mean (`evaluate.ensemble_weights`) of its views' per-video
probabilities, over the videos scored in every view. Retrieval: test videos query the training videos.
Cosine histograms, t-SNE and class similarities use the test videos. All analyses use cosines of
features centred by the training videos' mean (raw pooled GRU states are all ~0.99 cosine-similar).

"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
from pathlib import Path

import numpy as np

from cocon import inits as I
from cocon.config import add_config_args, config_from_args
from cocon.evaluate import analyses as A
from cocon.evaluate import figures as F
from cocon.evaluate.frozen import frozen_eval
from cocon.files import read_h5, write_json, write_text
from cocon.provenance import code_revision, library_versions
from cocon.runtime import setup_logging

log = logging.getLogger("cocon.evaluate.report")


def parse_pairs(items: list[str]) -> dict[tuple[str, str], Path]:
    """["init/view=path", ...] -> {(init, view): path}."""
    out = {}
    for item in items:
        key, path = item.split("=", 1)
        init, view = key.split("/", 1)
        out[(init, view)] = Path(path)
    return out


def pct(x: float | None) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


# ------------------------------------------------------------------ classification


def ensemble_accuracy(per_view: dict[str, tuple], weights: dict) -> tuple[float, int]:
    """per_view {view: (video_ids, probs (V, C), labels (V,))} -> (top-1 of the weighted ensemble, number
    of videos), over the videos scored in every view (rows matched by video id). Over all test videos
    (unscored counted wrong): accuracy * n / total."""
    common = sorted(set.intersection(*(set(ids) for ids, _, _ in per_view.values())))
    if not common:
        return float("nan"), 0
    probs, labels = {}, None
    for view, (ids, p, lab) in per_view.items():
        pos = {vid: i for i, vid in enumerate(ids)}
        sel = np.array([pos[v] for v in common], np.int64)
        probs[view], labels = p[sel], lab[sel]
    ens = A.ensemble_probabilities(probs, {v: float(weights[v]) for v in per_view})
    return A.accuracy(ens, labels), len(common)


def classification(scores: dict, weights: dict, figures: Path) -> dict:
    """Per (init, view) accuracy and confusion figure; per init the weighted ensemble of its views."""
    out: dict = {}
    by_init: dict[str, dict[str, tuple]] = {}
    for (init, view), path in sorted(scores.items()):
        arr, attrs = read_h5(path)
        probs, labels = arr["probs"], arr["label"]
        names = attrs["class_names"]
        entry = {
            "accuracy": float(attrs["accuracy"]),
            "accuracy_all": float(attrs.get("accuracy_all", attrs["accuracy"])),
            "n_videos": int(attrs["n_videos"]),
            "n_unscored": int(attrs["n_unscored"]),
            "unscored": list(arr.get("unscored", [])),
            "windows": int(np.sum(arr["windows"])),
            "selected_epoch": int(attrs.get("model_selected_epoch", -1)),
        }
        if len(labels):
            cm = A.confusion_matrix(probs.argmax(axis=1), labels, len(names))
            entry["top5"] = A.top_k_accuracy(probs, labels, 5)
            F.plot_confusion(
                cm,
                names,
                figures / f"confusion_{init}_{view}.png",
                f"{I.get(init).title} {view}: top-1 {pct(entry['accuracy'])}%",
            )
        out.setdefault(init, {})[view] = entry
        by_init.setdefault(init, {})[view] = (arr["video_id"], probs, labels)
    for init, views in by_init.items():
        if len(views) < 2:
            continue
        acc, n = ensemble_accuracy(views, weights)
        total = max(out[init][v]["n_videos"] + out[init][v]["n_unscored"] for v in views)
        out[init]["ensemble"] = {
            "accuracy": acc,
            "accuracy_all": acc * n / total if total else float("nan"),
            "n_videos": n,
            "weights": {v: float(weights[v]) for v in views},
        }
    return out


# ------------------------------------------------------------------ analyses of pretrained features


def feature_analyses(features: dict, ev: dict, seed: int, figures: Path) -> dict:
    """Retrieval, cosine statistics, t-SNE, alignment per (init, view); cross-view consistency per init."""
    out: dict = {}
    sims: dict[str, dict[str, np.ndarray]] = {}
    for (init, view), path in sorted(features.items()):
        arr, attrs = read_h5(path)
        names = attrs["class_names"]
        title = f"{I.get(init).title} {view}"
        tr, te, yl, ql = arr["train/feature"], arr["test/feature"], arr["train/label"], arr["test/label"]
        entry: dict = {"n_gallery": len(yl), "n_queries": len(ql)}
        if len(yl) and len(ql):  # kNN and linear probe, hyper-parameters chosen on the validation subset
            entry["frozen"] = frozen_eval(arr, len(names))
        # pooled GRU states share a large common component (raw cosines are all ~0.99): every analysis
        # uses the features centred by the training videos' mean, as retrieval does
        te = te - (tr.mean(axis=0) if len(tr) else 0.0)
        if len(yl) and len(ql):
            recall = A.retrieval_recall(arr["test/feature"], ql, tr, yl, ev["retrieval_ks"], center=True)
            entry["retrieval"] = {f"R@{k}": r for k, r in recall.items()}
        if len(ql) >= 2:
            same, diff = A.cosine_pairs(te, ql)
            entry["cosine"] = {
                "same_class_mean": float(same.mean()) if len(same) else None,
                "other_class_mean": float(diff.mean()) if len(diff) else None,
            }
            if len(same) and len(diff):
                entry["cosine"]["gap"] = entry["cosine"]["same_class_mean"] - entry["cosine"]["other_class_mean"]
            F.plot_cosine_histograms(
                same, diff, figures / f"cosine_{init}_{view}.png", f"{title}: test cosine similarities"
            )
        if len(ql) >= 3:
            xy = A.tsne_embedding(te, seed=seed, perplexity=ev["tsne_perplexity"])
            F.plot_tsne(xy, ql, names, figures / f"tsne_{init}_{view}.png", f"{title}: t-SNE of test videos")
        sims.setdefault(init, {})[view] = A.class_similarity(te, ql, len(names))
        entry["alignment"] = alignments(arr, ev, init, view, title, figures)
        out.setdefault(init, {})[view] = entry
    consistency = {}
    for init, per_view in sims.items():
        if len(per_view) < 2:
            continue
        try:
            consistency[init] = A.cross_view_consistency(per_view, ev["consistency_top"], ev["consistency_min"])
        except ValueError as err:  # fewer classes than consistency_top + 1
            consistency[init] = {"error": str(err)}
    return {"per_view": out, "consistency": consistency}


def alignments(arr: dict, ev: dict, init: str, view: str, title: str, figures: Path) -> list[dict]:
    """Soft alignment heatmaps of the first `alignment_pairs` pairs of test videos of one class (the
    first two videos of the classes in label order), from block features centred by the mean block
    feature of the test videos."""
    if "test/blocks" not in arr or ev["alignment_pairs"] == 0:
        return []
    labels, ids, blocks = arr["test/label"], arr["test/video_id"], arr["test/blocks"]
    blocks = blocks - blocks.reshape(-1, blocks.shape[-1]).mean(axis=0)  # centred by the mean test block
    pairs = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) >= 2:
            pairs.append((int(idx[0]), int(idx[1])))
        if len(pairs) == ev["alignment_pairs"]:
            break
    done = []
    for k, (a, b) in enumerate(pairs):
        m = A.soft_alignment(blocks[a], blocks[b], ev["alignment_sigma"])
        name = f"alignment_{init}_{view}_{k}.png"
        F.plot_alignment(m, figures / name, f"{title}: soft alignment", f"{ids[b]} (block)", f"{ids[a]} (block)")
        done.append(
            {
                "figure": name,
                "videos": [ids[a], ids[b]],
                "diagonal_mean": float(np.mean(np.diag(m))) if m.shape[0] == m.shape[1] else None,
            }
        )
    return done


# ------------------------------------------------------------------ tables


def tables(metrics: dict, views: list[str], ks: list[int]) -> tuple[str, str]:
    """(HTML, Markdown) of the accuracy, retrieval, cosine and consistency tables."""
    acc, feats, cons = metrics["classification"], metrics["analyses"]["per_view"], metrics["analyses"]["consistency"]
    inits = [i for i in I.NAMES if i in acc or i in feats]
    sections = []
    cols = [*views, "ensemble"] if any("ensemble" in acc.get(i, {}) for i in inits) else views
    rows = [[I.INITS[i].title, *(pct(acc.get(i, {}).get(c, {}).get("accuracy")) for c in cols)] for i in inits]
    paper = metrics["config"]["evaluate"].get("paper") or {}
    for i in I.NAMES:  # the paper's numbers for this setting (configs/*.yaml), beside ours
        if i in paper:
            rows.append([f"paper: {I.INITS[i].title}", *(f"{paper[i][c]:.1f}" if c in paper[i] else "–" for c in cols)])
    sections.append(
        (
            "Table 1. Test top-1 accuracy (%), dense evaluation, per view and initialisation, over the "
            "scored test videos",
            ["init", *cols],
            rows,
        )
    )
    rows = [[I.INITS[i].title, *(pct(acc.get(i, {}).get(c, {}).get("accuracy_all")) for c in cols)] for i in inits]
    sections.append(
        (
            "Table 1b. The same over all test videos of the split (videos that failed preprocessing "
            "counted wrong; the paper's denominator)",
            ["init", *cols],
            rows,
        )
    )
    rows = []
    for i in inits:
        for v in views:
            f = feats.get(i, {}).get(v, {}).get("frozen")
            if f:
                knn, lin = f["knn"], f["linear"]
                rows.append([I.INITS[i].title, v, pct(knn["top1"]), knn["k"], pct(lin["top1"]), f"{lin['C']:g}"])
    sections.append(
        (
            "Table 1c. Frozen features: test top-1 (%) of a kNN classifier (cosine, weighted votes) and a linear "
            "probe on the pooled features, k and C chosen on the validation subset",
            ["init", "view", "kNN", "k", "linear", "C"],
            rows,
        )
    )
    rows = []
    for i in inits:
        for v in views:
            r = feats.get(i, {}).get(v, {}).get("retrieval")
            if r:
                rows.append([I.INITS[i].title, v, *(pct(r.get(f"R@{k}")) for k in ks)])
    sections.append(
        (
            "Table 2. Nearest-neighbour retrieval, test queries vs training gallery (R@k, %)",
            ["init", "view", *(f"R@{k}" for k in ks)],
            rows,
        )
    )
    rows = []
    for i in inits:
        for v in views:
            c = feats.get(i, {}).get(v, {}).get("cosine")
            if c:
                rows.append(
                    [
                        I.INITS[i].title,
                        v,
                        *(
                            f"{c.get(k):.3f}" if c.get(k) is not None else "–"
                            for k in ("same_class_mean", "other_class_mean", "gap")
                        ),
                    ]
                )
    sections.append(
        (
            "Table 3. Cosine similarity of test video features (same class vs other classes)",
            ["init", "view", "same class", "other classes", "gap"],
            rows,
        )
    )
    rows = [
        [
            I.INITS[i].title,
            cons[i].get("consistent_classes", "–"),
            cons[i].get("classes", "–"),
            cons[i].get("top", "–"),
            cons[i].get("min_common", "–"),
            cons[i].get("error", ""),
        ]
        for i in inits
        if i in cons
    ]
    sections.append(
        (
            "Table 4. Cross-view nearest-class consistency (classes whose top nearest classes agree in every view)",
            ["init", "consistent classes", "classes", "top", "min. common", "note"],
            rows,
        )
    )
    h = ["<html><head><meta charset='utf-8'><title>cocon-pipeline results</title></head><body>"]
    md = []
    for title, header, body in sections:
        h.append(
            f"<h3>{html.escape(title)}</h3><table border='1' cellpadding='4'><tr>"
            + "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
            + "</tr>"
        )
        h.extend("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in body)
        h.append("</table>")
        md.append(f"**{title}**\n\n| " + " | ".join(map(str, header)) + " |\n|" + "---|" * len(header))
        md.extend("| " + " | ".join(map(str, row)) + " |" for row in body)
        md.append("")
    h.append("</body></html>")
    return "\n".join(h) + "\n", "\n".join(md) + "\n"


MAX_FAILED_HTML = 1000  # failed-video rows in tables.html (failed_videos.tsv holds them all)


def _figure_notes(fig: dict) -> list[str]:
    """What a view figure flags (cocon.evaluate.views_figure's index entry): failed views, empty maps,
    maps held at another rgb frame than their column."""
    notes = []
    for view, info in fig["views"].items():
        if info["status"] != "ok":
            notes.append(f"{view}: FAILED ({info['reason']})")
            continue
        n = len(info.get("empty", []))
        if any(info.get("empty", [])):
            what = "no motion" if "flow_max" in info else "empty"
            notes.append(f"{view}: {what} in {sum(info['empty'])}/{n} frames")
        off = sum(int(h != k) for h, k in zip(info.get("rgb_held", []), fig["rgb_frames"]))
        if off and not view.startswith("flow"):
            notes.append(f"{view}: {off}/{n} maps from a neighbouring rgb frame")
    return notes


def preprocessing_section(views_dir: Path | None, failed_tsv: Path | None, rel: str) -> tuple[str, str]:
    """(HTML, Markdown) of what preprocessing produced: the view figures listed in views_dir/index.json as
    thumbnails linking to the PNGs (at `rel`, relative to the tables), and the failed videos of the
    summary's TSV (view, shard, video, reason)."""
    from cocon.evaluate.views_figure import read_failures

    h, md = [], []
    index = None
    if views_dir is not None and (Path(views_dir) / "index.json").exists():
        index = json.loads((Path(views_dir) / "index.json").read_text(encoding="utf-8"))
    if index is not None:
        h.append(
            "<h3>Preprocessing: what the views look like</h3><p>A few videos per role of split "
            f"{html.escape(index['split'])}; columns are rgb frames, rows the views "
            f"({html.escape(', '.join(index['views']))}); each view at the index the training loader pairs with "
            "the frame. Flow: hue = direction (right = red, left = cyan), saturation = magnitude. "
            "Click a figure for full size.</p><div>"
        )
        md += ["**Preprocessing: what the views look like**", ""]
        for fig in index["figures"]:
            link = f"{rel}/{fig['file']}"
            notes = _figure_notes(fig)
            caption = f"{fig['role']}: {fig['video_id']} ({fig['label']})"
            h.append(
                "<figure style='display:inline-block;vertical-align:top;margin:6px'>"
                f'<a href="{html.escape(link)}"><img src="{html.escape(link)}" width="520" '
                f'alt="{html.escape(caption)}"></a><figcaption>{html.escape(caption)}'
                + "".join(f"<br><b style='color:#b00'>{html.escape(n)}</b>" for n in notes)
                + "</figcaption></figure>"
            )
            md.append(f"- [{caption}]({link})" + (f" — {'; '.join(notes)}" if notes else ""))
        h.append("</div>")
        md.append("")
    if failed_tsv is not None:
        rows = read_failures(failed_tsv)
        videos = len({r["video_id"] for r in rows})
        h.append(f"<h3>Failed videos: {videos} ({len(rows)} view failures)</h3>")
        md += [f"**Failed videos: {videos} ({len(rows)} view failures)**", ""]
        if index is not None:
            link = f"{rel}/{index['failed']['file']}"
            h.append(f'<p><a href="{html.escape(link)}">one line per video</a>; every view: failed_videos.tsv</p>')
        if rows:
            header = ["view", "shard", "video", "reason"]
            h.append("<table border='1' cellpadding='4'><tr>" + "".join(f"<th>{c}</th>" for c in header) + "</tr>")
            for r in rows[:MAX_FAILED_HTML]:
                cells = (r["view"], r["shard"], r["video_id"], r["reason"])
                h.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            h.append("</table>")
            if len(rows) > MAX_FAILED_HTML:
                h.append(f"<p>… and {len(rows) - MAX_FAILED_HTML} more in failed_videos.tsv</p>")
            md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            md += [f"| {r['view']} | {r['shard']} | {r['video_id']} | {r['reason']} |" for r in rows[:MAX_FAILED_HTML]]
            md.append("")
    return "\n".join(h), "\n".join(md) + ("\n" if md else "")


def report(
    cfg: dict,
    scores: dict,
    features: dict,
    out: Path,
    views_dir: Path | None = None,
    failed_tsv: Path | None = None,
) -> dict:
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    ev = cfg["evaluate"]
    views = sorted({v for _, v in [*scores, *features]}, key=lambda v: (v != "rgb", v))
    metrics = {
        "dataset": cfg["dataset"],
        "seed": cfg["seed"],
        "views": views,
        "classification": classification(scores, ev["ensemble_weights"], figures),
        "analyses": feature_analyses(features, ev, cfg["seed"], figures),
        "config": cfg,
        "code_revision": code_revision(),
        "library_versions": library_versions(),
    }
    page, md = tables(metrics, views, ev["retrieval_ks"])
    if views_dir is not None or failed_tsv is not None:
        rel = Path(os.path.relpath(views_dir, out)).as_posix() if views_dir is not None else ""
        pre_html, pre_md = preprocessing_section(views_dir, failed_tsv, rel)
        page = page.replace("</body></html>", pre_html + "\n</body></html>")
        md = md + "\n" + pre_md
    write_text(out / "tables.html", page)
    write_text(out / "tables.md", md)
    write_json(out / "metrics.json", metrics)
    log.info("report written to %s\n%s", out, md)
    return metrics


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    p = argparse.ArgumentParser(description="Tables, ensembles, analyses and metrics.json of a run.")
    p.add_argument("--scores", nargs="*", default=[], metavar="INIT/VIEW=PATH")
    p.add_argument("--features", nargs="*", default=[], metavar="INIT/VIEW=PATH")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--views-dir", type=Path, default=None, help="folder of `cocon views-figure` (index.json, PNGs)")
    p.add_argument("--failed-videos", type=Path, default=None, help="the summary's failed_videos.tsv")
    add_config_args(p)
    a = p.parse_args(argv)
    cfg = config_from_args(a)
    report(cfg, parse_pairs(a.scores), parse_pairs(a.features), a.out, a.views_dir, a.failed_videos)


if __name__ == "__main__":
    main()
