"""Frames-stage benchmark: frames/s of the frames stage (cocon.preprocess.frames.run) on 1 and 2 threads against
a bare single-thread loop of cv2.VideoCapture decode + cv2.resize (INTER_AREA) + BGR->RGB of the same
videos.

    python bench/frames.py [--videos a.mp4 b.mp4 ...] [--short-side 128] [--repeats 3] [--threads 2]
                           [--demo-groups 3] [--demo-frames 240] [--demo-size 320x240]

Input: --videos, or demo videos (cocon.sources.demo: 8 classes x --demo-groups groups x 1 clip, default
24 videos of 240 frames, i.e. 10 s at 24 fps like a Kinetics clip, at 320x240, XVID), all in one
shard of a manifest written for the run.

  bare         cv2.setNumThreads(1); per video: VideoCapture (FFMPEG backend, 1 decoder thread, as in
               cocon.preprocess.video.decode_video), read every frame, resize to --short-side with INTER_AREA,
               cvtColor BGR->RGB. Frames are dropped, nothing stored.
  bare+jpeg    the same plus cv2.imencode JPEG quality 90 of every frame (what the stage must also do
               with the default frames.encoding): the stage's unavoidable work, for reference.
  stage        cocon.preprocess.frames.run(manifest, shard, out, params, ...) end to end (decode, checks, resize,
               RGB, JPEG encode, HDF5 shard written atomically), threads=1 and --threads; params =
               the config defaults (frames.encoding jpeg 90) with --short-side.

Each measurement is repeated --repeats times (interleaved) and the median reported; files are read
warm (page cache). ratios: stage_1thread_vs_bare = stage 1-thread frames/s / bare frames/s (below 1
is the stage's extra work: encoding and writing), stage_Nthreads_vs_bare likewise. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cocon.config import load_config  # noqa: E402
from cocon.data.shards import ShardReader  # noqa: E402
from cocon.preprocess import frames  # noqa: E402
from cocon.provenance import code_revision, library_versions  # noqa: E402
from cocon.sources import demo
from cocon.sources.records import VideoRecord, write_manifest  # noqa: E402

from _machine import cpu_model  # noqa: E402


def out_size(h: int, w: int, short: int) -> tuple[int, int]:
    """(width, height) with the short side = short, aspect kept (as cocon.preprocess.video.resized_size)."""
    if h <= w:
        return max(1, round(w * short / h)), short
    return short, max(1, round(h * short / w))


def bare(paths: list[str], short: int, jpeg_quality: int | None = None) -> tuple[float, int]:
    """Seconds and frames for decode + resize + RGB of every frame of every video, one thread."""
    n = 0
    t0 = time.perf_counter()
    for path in paths:
        cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
        size = None
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            if size is None:
                size = out_size(bgr.shape[0], bgr.shape[1], short)
            small = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA) if size != bgr.shape[1::-1] else bgr
            rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
            if jpeg_quality is not None:  # the stage encodes RGB->BGR then JPEG; do the same
                cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            n += 1
        cap.release()
    return time.perf_counter() - t0, n


def stage(manifest: Path, out: Path, params: dict, threads: int, quiet: bool) -> tuple[float, int]:
    sink = contextlib.redirect_stderr(io.StringIO()) if quiet else contextlib.nullcontext()
    t0 = time.perf_counter()
    with sink:
        failures = frames.run(str(manifest), "00000", str(out), params, {"name": "bench", "format": "demo"}, threads)
    dt = time.perf_counter() - t0
    if failures:
        raise SystemExit(f"frames stage reported failures: {failures}")
    r = ShardReader(out)
    n = sum(row["n_frames"] for row in r.index)
    out.unlink()
    return dt, n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", nargs="+", default=None, help="videos to use (default: generated demo videos)")
    ap.add_argument("--short-side", type=int, default=128)
    ap.add_argument("--demo-groups", type=int, default=3, help="demo videos = 8 x this (default 24)")
    ap.add_argument("--demo-frames", type=int, default=240)
    ap.add_argument("--demo-size", default="320x240", help="WxH of the demo videos (even numbers)")
    ap.add_argument("--threads", type=int, default=2, help="thread count compared with 1 (default 2)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--verbose", action="store_true", help="show the stage's progress bars and log")
    a = ap.parse_args()
    cv2.setNumThreads(1)  # what stage.setup does in a job; the bare loop runs under the same setting
    code_revision(), library_versions()  # one-off per job (git, metadata): keep them out of the timings

    tmp = Path(a.out or tempfile.mkdtemp(prefix="cocon-frames-"))
    tmp.mkdir(parents=True, exist_ok=True)
    if a.videos:
        paths = [os.path.abspath(v) for v in a.videos]
        source = [os.path.basename(p) for p in paths]
    else:
        w, h = (int(x) for x in a.demo_size.lower().split("x"))
        dcfg = load_config(
            overrides={
                "output_dir": str(tmp / "demo-out"),
                "demo": {
                    "classes": 8,
                    "groups_per_class": max(2, a.demo_groups),
                    "clips_per_group": 1,
                    "test_groups": 1,
                    "frames": a.demo_frames,
                    "width": w,
                    "height": h,
                },
            }
        )
        t0 = time.perf_counter()
        demo.generate(dcfg)
        paths = [r.path for r in demo.plan(dcfg)]
        gen_s = time.perf_counter() - t0
        source = f"demo: {len(paths)} videos x {a.demo_frames} frames, {w}x{h} XVID ({gen_s:.1f} s to generate)"
    manifest = tmp / "manifest.tsv"
    write_manifest(manifest, [[VideoRecord(f"v{i:04d}", p, "x", 0) for i, p in enumerate(paths)]])
    params = {**load_config()["frames"], "short_side": a.short_side}
    quality = params["encoding"].get("quality", 90) if params["encoding"]["codec"] == "jpeg" else None
    out = tmp / "rgb.h5"

    stage(manifest, out, params, 1, not a.verbose)  # warm-up: page cache, imports, first-call costs
    t_bare, t_jpeg, t_one, t_many = [], [], [], []
    n_bare = n_stage = 0
    for _ in range(a.repeats):
        dt, n_bare = bare(paths, a.short_side)
        t_bare.append(dt)
        t_jpeg.append(bare(paths, a.short_side, quality)[0] if quality else float("nan"))
        dt, n_stage = stage(manifest, out, params, 1, not a.verbose)
        t_one.append(dt)
        t_many.append(stage(manifest, out, params, a.threads, not a.verbose)[0])
    if n_bare != n_stage:
        raise SystemExit(f"frame counts differ: bare loop {n_bare}, stage {n_stage}")
    b, bj, s1, sn = (statistics.median(t) for t in (t_bare, t_jpeg, t_one, t_many))
    n = n_bare
    result = {
        "benchmark": "frames",
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cv2": cv2.__version__,
        "source": source,
        "videos": len(paths),
        "frames": n,
        "short_side": a.short_side,
        "encoding": params["encoding"],
        "repeats": a.repeats,
        "bare_frames_per_s": round(n / b, 1),
        "bare_with_jpeg_frames_per_s": round(n / bj, 1) if quality else None,
        "stage_1thread_frames_per_s": round(n / s1, 1),
        f"stage_{a.threads}threads_frames_per_s": round(n / sn, 1),
        "stage_1thread_vs_bare": round(b / s1, 3),
        f"stage_{a.threads}threads_vs_bare": round(b / sn, 3),
        "stage_1thread_vs_bare_with_jpeg": round(bj / s1, 3) if quality else None,
        f"speedup_{a.threads}threads": round(s1 / sn, 3),
        "seconds": {
            "bare": t_bare,
            "bare_with_jpeg": t_jpeg,
            "stage_1thread": t_one,
            f"stage_{a.threads}threads": t_many,
        },
    }
    if a.out is None:
        shutil.rmtree(tmp)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
