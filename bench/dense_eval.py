"""Dense-evaluation benchmark: test videos/s of cocon.evaluate.dense's path against the obvious baseline.

    python bench/dense_eval.py [--videos a.avi ...] [--repeats 3] [--window-batch 16] [--size 64]

Data: as bench/loader.py (demo videos of 150 frames at 320x240 unless --videos; frames and Farneback
flow shards written by the pipeline's own stages; flow stored under the flow_tvl1 name). Geometry:
8 blocks x 5 frames at stride 3, windows every 4 blocks (half overlap), centre crop at --size px.
Model: the rgb ActionClassifier (ResNet18-2D3D + ConvGRU + head), random weights, eval mode.

Compared, on the same videos and windows, producing the same probabilities:
  baseline   one window at a time: each window's frames read and decoded from the shard on their own
             (overlapping windows decode shared frames again), one forward pass per window.
  ours       cocon.data.clips.DenseClips (each stored frame of a video decoded once, all windows cut from
             it) and the windows of a video in batches of --window-batch per forward pass
             (cocon.evaluate.dense.run_in_chunks).
Reported: videos/s of each (median of --repeats, interleaved), the paired ratio, the decode-only
ratio, and the largest probability difference between the two. Prints one JSON object. CPU numbers
are ratios only; absolute times belong to the GPU machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import build_shards, source_records  # noqa: E402

from cocon.data import reading  # noqa: E402
from cocon.data.augment import centre_box  # noqa: E402
from cocon.data.clips import DenseClips, discover  # noqa: E402
from cocon.evaluate.common import run_in_chunks  # noqa: E402
from cocon.models.networks import ActionClassifier  # noqa: E402
from cocon.provenance import library_versions  # noqa: E402

from _machine import cpu_model  # noqa: E402

N, K, STRIDE = 8, 5, 3


def baseline_inputs(ds: DenseClips, i: int, size: int):
    """Video i's windows (1, N, 3, K, size, size), each read, decoded and cropped on its own."""
    shard, row = int(ds._shard[i]), int(ds._row[i])
    reader = ds._reader("rgb", shard)
    for idx in ds.windows(i):
        frames = reader.read(row, idx)
        h, w = frames.shape[1:3]
        frames = reading.crop_resize(frames, centre_box(h, w), size)
        yield reading.to_tensor(frames, N, K, *ds._norm["rgb"])[None]


def baseline_video(ds: DenseClips, i: int, model, size: int) -> np.ndarray:
    """Probabilities of video i, one window per forward pass."""
    with torch.no_grad():
        probs = [torch.softmax(model(x).double(), dim=1)[0] for x in baseline_inputs(ds, i, size)]
    return torch.stack(probs).mean(0).numpy()


def ours_video(ds: DenseClips, i: int, model, batch: int) -> np.ndarray:
    item = ds[i]
    logits = run_in_chunks(model, item["rgb"], batch, torch.device("cpu"), "fp32")
    return torch.softmax(logits.double(), dim=1).mean(0).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", nargs="*", default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--window-batch", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--short-side", type=int, default=128)
    p.add_argument("--videos-per-shard", type=int, default=8)
    p.add_argument("--demo-classes", type=int, default=2)
    p.add_argument("--demo-groups", type=int, default=2)
    p.add_argument("--demo-clips", type=int, default=1)
    p.add_argument("--demo-frames", type=int, default=150)
    p.add_argument("--demo-size", type=int, nargs=2, default=(320, 240))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        recs, source = source_records(a, root)
        recs = [r.__class__(**{**r.__dict__, "splits": {"1": "test"}}) for r in recs]
        build_shards(recs, a, root)
        ds = DenseClips(
            discover(root, ["rgb"]),
            views=["rgb"],
            split=1,
            role="test",
            holdout_fraction=0.0,
            num_blocks=N,
            block_len=K,
            stride=STRIDE,
            sizes={"rgb": a.size},
        )
        torch.manual_seed(0)
        model = ActionClassifier(3, 101).eval()
        windows = sum(len(ds.windows(i)) for i in range(len(ds)))
        times = {"baseline": [], "ours": [], "decode_baseline": [], "decode_ours": []}
        diff = 0.0
        for rep in range(a.repeats + 1):  # the first round warms the page cache and the allocator
            t0 = time.perf_counter()
            base = [baseline_video(ds, i, model, a.size) for i in range(len(ds))]
            t1 = time.perf_counter()
            ours = [ours_video(ds, i, model, a.window_batch) for i in range(len(ds))]
            t2 = time.perf_counter()
            for i in range(len(ds)):  # reading only: decode, crop, normalise
                list(baseline_inputs(ds, i, a.size))
            t3 = time.perf_counter()
            for i in range(len(ds)):
                ds[i]
            t4 = time.perf_counter()
            diff = max(diff, max(float(np.abs(b - o).max()) for b, o in zip(base, ours)))
            if rep:
                for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    times[key].append(dt)
    n = len(ds)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        json.dumps(
            {
                "benchmark": "dense_eval",
                "source": source,
                "videos": n,
                "windows": windows,
                "geometry": {"blocks": N, "block_len": K, "stride": STRIDE, "window_stride": N // 2, "size": a.size},
                "threads": a.threads,
                "window_batch": a.window_batch,
                "videos_per_s": {"baseline": n / med["baseline"], "ours": n / med["ours"]},
                "speedup": med["baseline"] / med["ours"],
                "speedup_per_repeat": [b / o for b, o in zip(times["baseline"], times["ours"])],
                "read_speedup": med["decode_baseline"] / med["decode_ours"],
                "max_probability_difference": diff,
                "cpu": cpu_model(),
                "torch_threads": torch.get_num_threads(),
                "versions": library_versions(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
