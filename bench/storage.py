"""Storage benchmark: bytes per frame and random clip reads/s for each shard encoding, against the
layout of the original research code (one JPEG file per frame per view), on the same frames.

    python bench/storage.py --videos a.avi b.avi ... [--short-side 128] [--clips 300] [--out DIR]

A clip is 8 blocks x 5 frames at temporal stride 3 (the paper's sampling), decoded to uint8 arrays.
Prints one JSON object. Flow frames are Farneback flow of the same frames (the storage cost of TVL1
flow is similar; Farneback keeps the benchmark short). Ratios are comparable across machines;
absolute rates depend on the disk and the page cache (files are read warm here).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cocon.data.shards import ShardReader, ShardWriter, encode_frames  # noqa: E402
from cocon.preprocess.flow import quantize  # noqa: E402
from cocon.preprocess.video import decode_video  # noqa: E402
from cocon.sources.records import VideoRecord  # noqa: E402

ENCODINGS = {
    "raw": {"codec": "raw", "compression": "none"},
    "raw-lzf": {"codec": "raw", "compression": "lzf"},
    "raw-gzip1": {"codec": "raw", "compression": "gzip", "level": 1},
    "png1": {"codec": "png", "level": 1},
    "jpeg90": {"codec": "jpeg", "quality": 90},
    "jpeg95": {"codec": "jpeg", "quality": 95},
}
# A lossy codec changes the stored values: report how much (mean |error| in uint8 levels).
N_BLOCKS, BLOCK, STRIDE = 8, 5, 3


def clip_indices(rng, n_frames):
    span = N_BLOCKS * BLOCK * STRIDE
    start = int(rng.integers(0, max(1, n_frames - span + 1)))
    return np.minimum(start + np.arange(N_BLOCKS * BLOCK) * STRIDE, n_frames - 1)


def flow_frames(frames):
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    out = [
        quantize(cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0), 20) for a, b in zip(gray, gray[1:])
    ]
    return np.stack(out + out[-1:])


def write_shard(path, videos, encoding):
    with ShardWriter(path, "bench", "00000", {}, encoding) as w:
        for i, frames in enumerate(videos):
            w.add_video(VideoRecord(f"v{i}", "", "x", 0), encode_frames(frames, encoding), {})


def write_folder(root, videos, quality):
    """The original layout: <video>/image_%05d.jpg (3-channel) or flow_x/flow_y grayscale JPEGs."""
    for i, frames in enumerate(videos):
        d = root / f"v{i}"
        d.mkdir(parents=True)
        for k, f in enumerate(frames):
            if f.shape[2] == 3:
                cv2.imwrite(
                    str(d / f"image_{k + 1:05d}.jpg"),
                    cv2.cvtColor(f, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, quality],
                )
            else:
                for c, name in enumerate(("flow_x", "flow_y")):
                    cv2.imwrite(str(d / f"{name}_{k + 1:05d}.jpg"), f[:, :, c], [cv2.IMWRITE_JPEG_QUALITY, quality])


def read_folder_clip(root, vid, idx, channels):
    d = root / f"v{vid}"
    if channels == 3:
        return np.stack([cv2.imread(str(d / f"image_{k + 1:05d}.jpg"), cv2.IMREAD_COLOR_RGB) for k in idx])
    return np.stack(
        [
            np.stack(
                [cv2.imread(str(d / f"{n}_{k + 1:05d}.jpg"), cv2.IMREAD_GRAYSCALE) for n in ("flow_x", "flow_y")], -1
            )
            for k in idx
        ]
    )


def du(path):
    p = Path(path)
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def measure(read_clip, lengths, n_clips, seed=0):
    rng = np.random.default_rng(seed)
    plan = [(int(v), clip_indices(rng, lengths[int(v)])) for v in rng.integers(0, len(lengths), n_clips)]
    read_clip(*plan[0])  # warm
    t0 = time.perf_counter()
    for v, idx in plan:
        read_clip(v, idx)
    return n_clips / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", nargs="+", required=True)
    ap.add_argument("--short-side", type=int, default=128)
    ap.add_argument("--max-frames", type=int, default=300)
    ap.add_argument("--clips", type=int, default=300)
    ap.add_argument("--out", default=None, help="scratch folder (default: a temporary one)")
    a = ap.parse_args()
    cv2.setNumThreads(1)
    tmp = Path(a.out or tempfile.mkdtemp(prefix="cocon-storage-"))
    rgb = [decode_video(v, a.short_side, max_frames=a.max_frames).frames for v in a.videos]
    views = {"rgb": rgb, "flow": [flow_frames(v) for v in rgb]}
    result = {
        "benchmark": "storage",
        "short_side": a.short_side,
        "clip": f"{N_BLOCKS}x{BLOCK} stride {STRIDE}",
        "videos": [os.path.basename(v) for v in a.videos],
        "frames": int(sum(len(v) for v in rgb)),
        "frame_size": list(rgb[0].shape[1:3]),
        "views": {},
    }
    for view, vids in views.items():
        n_frames = sum(len(v) for v in vids)
        lengths = [len(v) for v in vids]
        ch = vids[0].shape[3]
        rows = {}
        for name, enc in ENCODINGS.items():
            path = tmp / f"{view}-{name}.h5"
            t0 = time.perf_counter()
            write_shard(path, vids, enc)
            write_s = time.perf_counter() - t0
            reader = ShardReader(path)
            err = np.mean([np.abs(reader.read(i).astype(np.int16) - v).mean() for i, v in enumerate(vids)])
            rows[name] = {
                "bytes_per_frame": du(path) / n_frames,
                "write_frames_per_s": n_frames / write_s,
                "clips_per_s": measure(reader.read, lengths, a.clips),
                "mean_abs_error_levels": float(err),
            }
            reader.close()
        folder = tmp / f"{view}-jpeg-folder"
        write_folder(folder, vids, 90)
        rows["jpeg90-folder (original layout)"] = {
            "bytes_per_frame": du(folder) / n_frames,
            "clips_per_s": measure(
                lambda v, i, folder=folder, ch=ch: read_folder_clip(folder, v, i, ch), lengths, a.clips
            ),
        }
        base = rows["jpeg90-folder (original layout)"]["clips_per_s"]
        for r in rows.values():
            r["clips_per_s_vs_folder"] = r["clips_per_s"] / base
        result["views"][view] = rows
    if a.out is None:
        shutil.rmtree(tmp)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
