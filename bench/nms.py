"""The torch `nms` of cocon.preprocess.mm_ops (the stand-in for mmcv's compiled ops that `make setup`
installs) against mmcv 2.1.0's compiled CPU `nms`: speed, and identical answers.

    python bench/nms.py [--sizes 300 3000 10000] [--repeats 5] [--threads 1] [--check 20000]
                        [--frames 4] [--write-reference tests/data/nms_reference.npz]

Needs the compiled mmcv for the comparisons (`make mm-full`); without it, only the torch times are
reported. Speed: --sizes boxes in a 640x640 image (`detector_like`: clustered as a detector's, or uniform),
IoU threshold 0.65 (RTMDet's), median of --repeats calls, on --threads torch threads
(the compiled kernel is a single-thread loop); `compiled_over_torch` < 1 means the torch one is slower.
Identical answers (same kept indices in the same order): --check random box sets of `random_case`
(0-89 boxes, coarse grids with duplicates, zero-area and inverted boxes, scores with exact ties, IoU
thresholds 0-1, offset 0 and 1), then every nms call of RTMDet-tiny (the package's config, random
weights, `spread` so that scores and boxes look like a trained detector's, mmdet's own test pipeline at
640x640)
on --frames demo frames, through cocon.preprocess.pose.DetectorBoxes.

--write-reference PATH stores the recorded answers of the compiled op that tests/test_nms.py checks the
torch nms against (CI has only mmcv-lite): the first 200 cases of `random_case` (seed 0) and the nms calls
of RTMDet-tiny on 2 frames with `nms_pre` 50 (so that the file stays small). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cocon.preprocess import mm_ops  # noqa: E402  (no OpenMMLab import, no stand-in registered)

from _machine import cpu_model  # noqa: E402

REFERENCE_CASES = 200
THRESHOLDS = (0.0, 0.1, 0.3, 0.5, 0.6, 0.65, 0.7, 0.9, 1.0)


def compiled_ext():
    """mmcv's compiled extension module, or None (mmcv-lite)."""
    try:
        ext = importlib.import_module("mmcv._ext")
    except (ImportError, ValueError):
        return None
    return None if getattr(ext, "nms", None) is mm_ops.nms else ext


def random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float, int]:
    """(boxes float32 (n, 4) x1 y1 x2 y2, scores float32 (n,), iou_threshold, offset): mostly boxes on a
    grid of 1, 1/2 or 1/4 px in an 8-256 px image (exact IoU values, duplicates, zero and negative sides)
    with scores of 1-256 levels (exact ties); one case in five with continuous coordinates and scores."""
    n = int(rng.choice([0, 1, 2, 3, 4, 5, 8, 13, 21, 34, 55, 89]))
    extent = int(rng.choice([8, 32, 256]))
    if rng.random() < 0.2:
        xy = rng.random((n, 2), dtype=np.float32) * extent
        wh = rng.random((n, 2), dtype=np.float32) * (extent / 2)
        scores = rng.random(n, dtype=np.float32)
    else:
        grid = int(rng.choice([1, 2, 4]))
        xy = rng.integers(0, extent * grid, (n, 2)) / grid
        wh = rng.integers(0, extent * grid // 2 + 1, (n, 2)) / grid
        wh[rng.random((n, 2)) < 0.05] *= -0.1  # a few inverted boxes
        levels = int(rng.choice([1, 2, 4, 16, 256]))
        scores = rng.integers(0, levels, n) * (256 // levels) / 256
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    if n > 2:  # exact duplicates of other boxes (and of their scores, sometimes)
        k = int(rng.integers(0, n // 3 + 1))
        dst, src = rng.choice(n, k, replace=False), rng.integers(0, n, k)
        boxes[dst] = boxes[src]
        same = rng.random(k) < 0.5
        scores[dst[same]] = scores[src[same]]
    thr = float(rng.choice(THRESHOLDS)) if rng.random() < 0.8 else float(rng.random())
    return boxes, scores.astype(np.float32), thr, int(rng.random() < 0.3)


def detector_like(n: int, layout: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n boxes in a 640x640 image and their scores: `uniform` centres and sides 16-256 px (few overlaps:
    most boxes are kept, the slow case of greedy NMS); `clustered` n/25 objects of that kind, each seen
    as 25 boxes jittered by up to 10 % of its size (most boxes are suppressed, as a detector's)."""
    g = torch.Generator().manual_seed(seed)
    k = n if layout == "uniform" else max(1, n // 25)
    ctr = torch.rand(k, 2, generator=g) * 640
    side = 16 + torch.rand(k, 2, generator=g) * 240
    if layout == "clustered":
        pick = torch.randint(0, k, (n,), generator=g)
        ctr, side = ctr[pick], side[pick]
        ctr = ctr + (torch.rand(n, 2, generator=g) - 0.5) * 0.2 * side
        side = side * (0.9 + 0.2 * torch.rand(n, 2, generator=g))
    return torch.cat([ctr - side / 2, ctr + side / 2], 1), torch.rand(n, generator=g)


def spread(model) -> None:
    """A randomly initialised RTMDet whose outputs look like a trained one's to NMS: classifier x20 (scores
    spread over (0, 1)), regression x20 and +2 strides per side (boxes of 4-10 strides that overlap their
    neighbours'; at random init they are < 1 px wide and never overlap)."""
    with torch.no_grad():
        for conv in model.bbox_head.rtm_cls:
            conv.weight *= 20
            conv.bias *= 20
        for conv in model.bbox_head.rtm_reg:
            conv.weight *= 20
            conv.bias += 2


def rtmdet_calls(ext, n_frames: int, nms_pre: int | None) -> list[tuple]:
    """Every call of mmcv's nms op while RTMDet-tiny detects people in n_frames demo frames (320x240):
    [(boxes, scores, iou_threshold, offset, kept indices of the compiled op)]."""
    from cocon.config import load_config
    from cocon.preprocess import pose
    from cocon.sources import demo

    frames = demo.render_clip(demo.CLASSES[0], 1, 1, frames=n_frames, width=320, height=240)
    p = load_config()["pose"]
    d = {**p["detector"], "config": "rtmdet_tiny_8xb32-300e_coco", "checkpoint": None, "score_threshold": 0.0}
    params = {**p, "detector": d, "max_people": 5}
    det = pose.DetectorBoxes(params, "cpu", 0)
    spread(det.model)
    if nms_pre:
        det.model.bbox_head.test_cfg["nms_pre"] = nms_pre
    nms_module = importlib.import_module("mmcv.ops.nms")  # (the package's `nms` attribute is the function)
    calls, real = [], nms_module.ext_module

    class Recorder:
        def nms(self, boxes, scores, iou_threshold, offset):
            kept = ext.nms(boxes, scores, iou_threshold=iou_threshold, offset=offset)
            calls.append((boxes.clone(), scores.clone(), iou_threshold, offset, kept.clone()))
            return kept

    nms_module.ext_module = Recorder()
    try:
        det(frames)
    finally:
        nms_module.ext_module = real
    return calls


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(times), 3)


def same(ext, boxes, scores, thr, offset) -> bool:
    b, s = torch.as_tensor(boxes), torch.as_tensor(scores)
    return torch.equal(mm_ops.nms(b, s, thr, offset), ext.nms(b, s, iou_threshold=thr, offset=offset))


def write_reference(ext, path: str) -> dict:
    rng = np.random.default_rng(0)
    cases = [(*random_case(rng), 0) for _ in range(REFERENCE_CASES)]
    cases += [(b.numpy(), s.numpy(), thr, off, 1) for b, s, thr, off, _ in rtmdet_calls(ext, 2, 50)]
    kept = [
        ext.nms(torch.from_numpy(b), torch.from_numpy(s), iou_threshold=thr, offset=off).numpy()
        for b, s, thr, off, _ in cases
    ]
    np.savez_compressed(
        path,
        boxes=np.concatenate([c[0] for c in cases]).reshape(-1, 4),
        scores=np.concatenate([c[1] for c in cases]),
        sizes=np.array([len(c[1]) for c in cases], np.int32),
        iou_threshold=np.array([c[2] for c in cases], np.float64),
        offset=np.array([c[3] for c in cases], np.int8),
        source=np.array([c[4] for c in cases], np.int8),  # 0: random_case, 1: RTMDet-tiny
        kept=np.concatenate(kept).astype(np.int32),
        kept_sizes=np.array([len(k) for k in kept], np.int32),
    )
    return {"path": path, "cases": len(cases), "rtmdet_calls": sum(c[4] for c in cases), "bytes": os.path.getsize(path)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[300, 3000, 10000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--check", type=int, default=20000, help="random box sets compared (0: none)")
    ap.add_argument("--frames", type=int, default=4, help="demo frames through RTMDet-tiny (0: none)")
    ap.add_argument("--write-reference", default=None, metavar="PATH")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ext = compiled_ext()
    res = {
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": a.threads},
        "versions": {"torch": torch.__version__, "mmcv._ext": "compiled" if ext else "absent"},
        "speed": [],
    }
    for layout in ("clustered", "uniform"):
        for n in a.sizes:
            boxes, scores = detector_like(n, layout, n)
            row = {"layout": layout, "boxes": n, "kept": len(mm_ops.nms(boxes, scores, 0.65))}
            row["torch_ms"] = median_ms(lambda b=boxes, s=scores: mm_ops.nms(b, s, 0.65), a.repeats)
            if ext is not None:
                row["compiled_ms"] = median_ms(
                    lambda b=boxes, s=scores: ext.nms(b, s, iou_threshold=0.65, offset=0), a.repeats
                )
                row["compiled_over_torch"] = round(row["compiled_ms"] / row["torch_ms"], 3)
                row["same"] = same(ext, boxes, scores, 0.65, 0)
            res["speed"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    if ext is not None and a.check:
        rng, counts = np.random.default_rng(1), {"sets": 0, "same": 0, "boxes": 0, "with_ties": 0, "empty": 0}
        for _ in range(a.check):
            b, s, thr, off = random_case(rng)
            counts["sets"] += 1
            counts["same"] += same(ext, b, s, thr, off)
            counts["boxes"] += len(s)
            counts["with_ties"] += len(np.unique(s)) < len(s)
            counts["empty"] += len(s) == 0
        res["random_sets"] = counts
    if ext is not None and a.frames:
        calls = rtmdet_calls(ext, a.frames, None)
        res["rtmdet_calls"] = {
            "calls": len(calls),
            "same": sum(torch.equal(mm_ops.nms(b, s, thr, off), k) for b, s, thr, off, k in calls),
            "boxes": sum(len(s) for _, s, *_ in calls),
            "kept": sum(len(c[4]) for c in calls),
        }
    if a.write_reference:
        if ext is None:
            raise SystemExit("--write-reference needs mmcv's compiled ops (make mm-full)")
        res["reference"] = write_reference(ext, a.write_reference)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
