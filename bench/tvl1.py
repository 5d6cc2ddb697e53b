"""TVL1 backends: agreement of the PyTorch TV-L1 (cocon.preprocess.tvl1) with OpenCV's DualTVL1OpticalFlow, and
their speed on the same frame pairs.

    python bench/tvl1.py [--video V.avi ...] [--pairs 8] [--threads 2] [--device auto]
                         [--batch-sizes 1 4 16] [--sizes 320x240 171x128] [--speed-pairs 8]
                         [--cuda-batch-sizes 1 8 64 128 256] [--compile on off] [--json PATH]

GPU run (`bench/gpu_check.py` runs it so): python bench/tvl1.py --device cuda --sizes 320x240 171x128 --speed-pairs 32

Frames. Real: consecutive frames of each --video (e.g. OpenCV's sample videos vtest.avi, tree.avi,
Megamind.avi from Debian's opencv-doc package), grayscale, resized (INTER_AREA) to each size, pairs
taken every 5th frame. Synthetic with ground truth, always: scikit-learn's two bundled photographs
under a known rotation + zoom + translation (cv2.warpAffine, bicubic). Parameters: the config's
defaults (= OpenCV's: 5 scales, 5 warps, 10 x 30 iterations, median 5, epsilon 0.01).

agreement (at the first --sizes entry): per pair, mean end-point error (px) between the two backends
over the whole frame, and for the synthetic pairs each backend's EPE to the truth (8 px border left
out, where content leaves the frame).

speed: pairs/s on the same --speed-pairs pairs per size.
  opencv      the flow stage's way: a pool of --threads threads, one pair per thread,
              cv2.setNumThreads(1); (the obvious baseline: what the pipeline does without a GPU).
  torch_cpu   cocon.preprocess.tvl1.TVL1 on the CPU, torch.set_num_threads(--threads), batch sizes --batch-sizes.
  torch_cuda  (only with a GPU) the same on CUDA, batch sizes --cuda-batch-sizes, with torch.compile on
              and/or off (--compile; on = the flow stage's CUDA path), after an untimed warm-up call per
              batch size (compilation, CUDA context); per measurement ceil(--speed-pairs / batch) full
              batches; peak GPU memory (max_memory_allocated over the timed calls) and the solver's
              inner iterations per pair. One solver per compile setting serves every size and batch
              (as one flow job does), so torch.compile's cache is not refilled per measurement.
              compile_fell_back: torch.compile failed and the solver ran eagerly (logged by cocon).
Ratios (torch / opencv) are what to compare across machines; absolute GPU pairs/s only from a GPU
machine. Without OpenCV's contrib modules (cv2.optflow) the OpenCV parts are left out (agreement and the
opencv column), the torch timings still run. Prints one JSON object; --json PATH also writes it there,
rewritten after every measurement, so a run stopped from outside leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cocon.config import load_config  # noqa: E402
from cocon.files import write_json  # noqa: E402
from cocon.preprocess import tvl1  # noqa: E402
from cocon.preprocess.flow import make_tvl1  # noqa: E402
from cocon.provenance import code_revision, library_versions  # noqa: E402
from cocon.runtime import resolve_device  # noqa: E402

from _machine import cpu_model  # noqa: E402

GOAL_EPE_PX = 0.5
GOAL_CUDA_PAIRS_S = 1000  # at 320x240 on one H100-class GPU
PARAMS = load_config()["flow"]["tvl1"]
HAVE_OPENCV_TVL1 = hasattr(cv2, "optflow") and hasattr(cv2.optflow, "DualTVL1OpticalFlow_create")


class _Warnings(logging.Handler):
    """Records cocon's warnings (a torch.compile that failed and fell back to eager mode)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


WARNINGS = _Warnings()
logging.getLogger("cocon").addHandler(WARNINGS)


def parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


BLANK = []  # (video, frame) of pairs left out because a frame is blank


def video_pairs(path: str, size: tuple[int, int], n: int, gap: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """n consecutive-frame pairs (gray uint8 at size (W, H)), one every `gap` frames. Pairs with a
    blank frame (grey-level std < 2, e.g. a black title frame) are left out: flow is undefined there,
    and OpenCV itself moves by > 1 px when such a frame changes by 0.03 grey levels."""
    cap, frames, pairs, k = cv2.VideoCapture(path), [], [], 0
    while len(pairs) < n:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.resize(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY), size, interpolation=cv2.INTER_AREA))
        if len(frames) == 2:
            if min(frames[0].std(), frames[1].std()) < 2:
                BLANK.append((Path(path).name, k))
            elif k % gap == 0:
                pairs.append((frames[0], frames[1]))
            frames, k = frames[1:], k + 1
    return pairs


def synthetic_pairs(size: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Photographs moved by a known affine motion: (frame0, frame1, true flow (H, W, 2))."""
    from sklearn.datasets import load_sample_images

    out = []
    for img, (angle, zoom, dx, dy) in zip(
        load_sample_images().images, [(2.0, 1.02, 3.2, 2.1), (-1.5, 0.98, -4.3, 1.1)]
    ):
        g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
        h, w = g.shape
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, zoom)
        m[:, 2] += (dx, dy)
        g1 = cv2.warpAffine(g, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        (cw, ch), x0, y0 = size, (w - size[0]) // 2, (h - size[1]) // 2
        ys, xs = np.mgrid[y0 : y0 + ch, x0 : x0 + cw].astype(np.float32)
        true = np.stack([m[0, 0] * xs + m[0, 1] * ys + m[0, 2] - xs, m[1, 0] * xs + m[1, 1] * ys + m[1, 2] - ys], -1)
        crop = lambda a, y0=y0, x0=x0, ch=ch, cw=cw: np.clip(np.rint(a[y0 : y0 + ch, x0 : x0 + cw]), 0, 255).astype(
            np.uint8
        )  # noqa: E731
        out.append((crop(g), crop(g1), true))
    return out


def epe(a: np.ndarray, b: np.ndarray, margin: int = 0) -> float:
    h, w = a.shape[:2]
    return float(np.linalg.norm((a - b)[margin : h - margin, margin : w - margin], axis=-1).mean())


def opencv_flows(pairs, threads: int) -> tuple[list[np.ndarray], float]:
    """The flow stage's OpenCV path: one DualTVL1 object per thread, one pair per call."""
    cv2.setNumThreads(1)
    algos = {}

    def one(pair):
        import threading

        algo = algos.setdefault(threading.get_ident(), make_tvl1(PARAMS))
        return algo.calc(pair[0], pair[1], None)

    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        flows = list(pool.map(one, pairs))
    return flows, time.perf_counter() - t


ITERATIONS = {}  # inner iterations per pair of the last torch run: as run, and in full-resolution units


SOLVERS: dict = {}


def solver_for(device: str, compile: bool) -> tvl1.TVL1:
    """One solver per (device, compile), reused: a new one would compile its functions again."""
    return SOLVERS.setdefault((device, compile), tvl1.TVL1(PARAMS, device, compile=compile))


def torch_flows(pairs, device: str, batch: int, compile: bool) -> tuple[np.ndarray, float]:
    solver = solver_for(device, compile)
    i0, i1 = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    if device.startswith("cuda"):
        solver(i0[:batch], i1[:batch])  # warm-up: compilation, CUDA context
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    out, its, pix = [], 0, 0
    for s in range(0, len(pairs), batch):
        out.append(solver(i0[s : s + batch], i1[s : s + batch]))
        its, pix = its + solver.iterations, pix + solver.pixel_iterations
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    ITERATIONS.update(per_pair=its / len(pairs), full_resolution_per_pair=pix / len(pairs) / i0[0].size)
    return torch.cat(out).numpy(), time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", nargs="*", default=[], help="real videos to take frame pairs from")
    ap.add_argument("--pairs", type=int, default=4, help="pairs per video for the agreement")
    ap.add_argument("--speed-pairs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8], help="torch CPU batch sizes")
    ap.add_argument(
        "--cuda-batch-sizes",
        type=int,
        nargs="+",
        default=[1, 8, 64, 128, 256],
        help="torch CUDA batch sizes, measured in this order",
    )
    ap.add_argument(
        "--compile",
        nargs="+",
        choices=["on", "off"],
        default=["on", "off"],
        help="torch.compile settings measured on CUDA (on = the flow stage's CUDA path)",
    )
    ap.add_argument("--sizes", type=parse_size, nargs="+", default=[(320, 240)])
    ap.add_argument("--json", default=None, help="also write the result here (rewritten after every measurement)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for knob in ("recompile_limit", "cache_size_limit"):  # many (batch, size) shapes in one process
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, max(64, getattr(torch._dynamo.config, knob)))
    device = resolve_device(a.device)
    cuda = device.startswith("cuda")
    result = {
        "benchmark": "tvl1",
        "cpu": cpu_model(),
        "threads": a.threads,
        "device": device,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "torch": torch.__version__,
        "opencv_tvl1": HAVE_OPENCV_TVL1,
        "frames": ("videos " + " ".join(a.video))
        if a.video
        else "synthetic only: scikit-learn's two photographs under a known affine motion",
        "params": PARAMS,
        "code_revision": code_revision(),
        "versions": library_versions(),
    }

    def save() -> None:
        if a.json:
            write_json(a.json, result)

    size = a.sizes[0]
    real = [p for v in a.video for p in video_pairs(v, size, a.pairs)]
    synth = synthetic_pairs(size)
    pairs = real + [(p[0], p[1]) for p in synth]
    if not HAVE_OPENCV_TVL1:
        result["agreement"] = {"skipped": "cv2.optflow is missing (OpenCV without its contrib modules)"}
    else:
        agreement(result, a, device, size, real, synth, pairs)
    save()
    speed(result, a, device, real, save)
    print(json.dumps(result, indent=1))


def agreement(result: dict, a, device: str, size, real, synth, pairs) -> None:
    ref, _ = opencv_flows(pairs, a.threads)
    got, _ = torch_flows(pairs, device, 8, device.startswith("cuda"))
    per_pair = [epe(r, g) for r, g in zip(ref, got)]
    far = [float((np.linalg.norm(r - g, axis=-1) > 1).mean()) for r, g in zip(ref, got)]
    truth = [
        {"opencv": epe(ref[len(real) + k], t[2], 8), "torch": epe(got[len(real) + k], t[2], 8)}
        for k, t in enumerate(synth)
    ]
    result["agreement"] = {
        "size": f"{size[0]}x{size[1]}",
        "real_pairs": len(real),
        "synthetic_pairs": len(synth),
        "blank_pairs_left_out": len(BLANK),
        "epe_torch_vs_opencv_px": {
            "mean": statistics.mean(per_pair),
            "max_pair": max(per_pair),
            "real_mean": statistics.mean(per_pair[: len(real)]) if real else None,
            "per_pair": per_pair,
        },
        "fraction_of_pixels_over_1px": statistics.mean(far),
        "torch_iterations": dict(ITERATIONS),
        "epe_to_truth_synthetic_px": truth,
        "goal_epe_px": GOAL_EPE_PX,
        "goal_met": statistics.mean(per_pair) <= GOAL_EPE_PX,
    }


def speed(result: dict, a, device: str, real, save) -> None:
    cuda = device.startswith("cuda")
    result["speed"] = []
    for size in a.sizes:
        src = (real and [p for v in a.video for p in video_pairs(v, size, a.speed_pairs)]) or [
            (p[0], p[1]) for p in synthetic_pairs(size)
        ]
        counts = {b: math.ceil(a.speed_pairs / b) * b for b in a.cuda_batch_sizes} if cuda else {}
        sample = [src[k % len(src)] for k in range(max([a.speed_pairs, *counts.values()]))]
        row = {"size": f"{size[0]}x{size[1]}", "opencv_pairs_s": None, "torch_cpu": [], "torch_cuda": []}
        result["speed"].append(row)
        if HAVE_OPENCV_TVL1:
            _, cv_s = opencv_flows(sample[: a.speed_pairs], a.threads)
            row["opencv_pairs_s"] = a.speed_pairs / cv_s
        if not cuda:
            for b in a.batch_sizes:
                _, s = torch_flows(sample[: a.speed_pairs], "cpu", b, False)
                rate = a.speed_pairs / s
                row["torch_cpu"].append(
                    {
                        "batch": b,
                        "pairs_s": rate,
                        "vs_opencv": rate / row["opencv_pairs_s"] if row["opencv_pairs_s"] else None,
                    }
                )
                save()
            continue
        if size == (320, 240):
            row["goal_cuda_pairs_s"] = GOAL_CUDA_PAIRS_S
        for setting in a.compile:
            for b in a.cuda_batch_sizes:
                m = counts[b]
                entry = {"batch": b, "compile": setting, "pairs": m}
                try:
                    _, s = torch_flows(sample[:m], device, b, setting == "on")
                except Exception as exc:  # noqa: BLE001 - e.g. out of memory: record it, measure the rest
                    entry["error"] = f"{type(exc).__name__}: {exc}"[:500]
                    torch.cuda.empty_cache()
                else:
                    entry.update(
                        pairs_s=m / s,
                        peak_mem_mib=torch.cuda.max_memory_allocated() / 2**20,
                        vs_opencv=(m / s) / row["opencv_pairs_s"] if row["opencv_pairs_s"] else None,
                        iterations_per_pair=ITERATIONS.get("per_pair"),
                    )
                    if setting == "on":  # the one compiled solver falls back once and stays eager after
                        entry["compile_fell_back"] = any("torch.compile" in w for w in WARNINGS.messages)
                row["torch_cuda"].append(entry)
                done = [r["pairs_s"] for r in row["torch_cuda"] if "pairs_s" in r]
                if "goal_cuda_pairs_s" in row and done:
                    row["best_pairs_s"], row["goal_met"] = max(done), max(done) >= GOAL_CUDA_PAIRS_S
                print(json.dumps({"size": row["size"], **entry}), file=sys.stderr, flush=True)
                save()


if __name__ == "__main__":
    main()
