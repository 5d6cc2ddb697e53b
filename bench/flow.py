"""Flow-stage benchmark: pairs/s of the flow stage (cocon.preprocess.flow.run) against a bare loop of the same
OpenCV calls on the same frames, for TVL1 and Farneback, and the stage's speedup on 2 threads.

    python bench/flow.py [--video V.mp4] [--short-side 128] [--frames 800] [--tvl1-frames 40]
                         [--repeats 3] [--methods tvl1 farneback] [--threads 2]

Frames: the first --frames frames of --video decoded with cocon.preprocess.video.decode_video at --short-side,
or, without --video, 4 demo videos (cocon.sources.demo, 320x240) decoded the same way. They are written to an
rgb shard with the pipeline's default frames encoding (jpeg 90); the bare loop runs on the frames read
back from that shard, so both sides see the same pixels. Farneback uses all the frames, TVL1 (about
50x slower) only the first --tvl1-frames; pairs = frames - videos.

  bare       cv2.setNumThreads(1); per video: cvtColor RGB->gray for every frame, then
             DualTVL1OpticalFlow.calc / calcOpticalFlowFarneback (the config's default parameters)
             for every consecutive pair. Frames already decoded in memory; nothing stored.
  stage      cocon.preprocess.flow.run(method, rgb shard, ...) end to end: read and decode the rgb shard,
             gray, flow, quantise, encode (jpeg 95), write the flow shard; threads=1 and --threads.
             Process start-up and the provenance lookup (git) are one-off costs per job, left out.

Each measurement is repeated --repeats times (bare, stage 1 thread, stage N threads interleaved) and
the median reported. overhead = stage_1thread_s / bare_s - 1 (goal <= 0.05); speedup =
stage_1thread_s / stage_Nthreads_s (goal >= 1.8 for 2 threads, meaningful only with >= 2 idle cores).
overhead_parts_vs_bare: the stage's other work timed alone on the same data (read + JPEG-decode the
rgb shard, quantise, encode the flow frames, write the flow shard), each as a fraction of bare; their
sum is roughly the overhead to expect (the rest is threading and bookkeeping). Prints one JSON object.
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
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cocon.config import load_config  # noqa: E402
from cocon.data.shards import ShardReader, ShardWriter, encode_frames  # noqa: E402
from cocon.preprocess import flow  # noqa: E402
from cocon.preprocess.video import decode_video  # noqa: E402
from cocon.provenance import code_revision, library_versions  # noqa: E402
from cocon.sources import demo
from cocon.sources.records import VideoRecord  # noqa: E402

from _machine import cpu_model  # noqa: E402

GOAL_OVERHEAD = 0.05
GOAL_SPEEDUP_2 = 1.8


def source_videos(a, cfg, tmp: Path) -> tuple[list[np.ndarray], str]:
    """Decoded RGB videos (list of (T, H, W, 3) uint8) holding --frames frames in all."""
    if a.video:
        v = decode_video(a.video, a.short_side, "area", max_frames=a.frames, min_frames=2)
        return [v.frames], os.path.basename(a.video)
    per_video = -(-a.frames // 4)
    dcfg = load_config(
        overrides={
            "output_dir": str(tmp / "demo-out"),
            "demo": {
                "classes": 2,
                "groups_per_class": 2,
                "clips_per_group": 1,
                "test_groups": 1,
                "frames": max(8, per_video),
                "width": 320,
                "height": 240,
            },
        }
    )
    demo.generate(dcfg)
    vids = [decode_video(r.path, a.short_side, "area").frames for r in demo.plan(dcfg)]
    return take(vids, a.frames), "demo (4 videos, 320x240)"


def take(videos: list[np.ndarray], n: int) -> list[np.ndarray]:
    """The first n frames of the concatenation of `videos`, as videos (each of >= 2 frames)."""
    out, left = [], n
    for v in videos:
        if left < 2:
            break
        out.append(v[:left])
        left -= len(out[-1])
    return out


def write_rgb(path: Path, videos: list[np.ndarray], encoding: dict) -> None:
    with ShardWriter(path, "rgb", "00000", {"stage": "frames", "params": {}}, encoding) as w:
        for i, frames in enumerate(videos):
            rec = VideoRecord(f"v{i}", f"v{i}.avi", "x", 0)
            w.add_video(
                rec,
                encode_frames(frames, encoding),
                {
                    "fps": 25.0,
                    "orig_height": frames.shape[1],
                    "orig_width": frames.shape[2],
                    "orig_frames": len(frames),
                },
            )


def bare(method: str, p: dict, videos: list[np.ndarray], keep: list | None = None) -> float:
    """Seconds for cvtColor + flow over every consecutive pair, one OpenCV thread, nothing stored
    (the float flows are appended to `keep` when given, one list per video)."""
    if method == "tvl1":
        algo = flow.make_tvl1(p)  # the same OpenCV object the stage builds, called here directly
    t0 = time.perf_counter()
    for frames in videos:
        gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        flows = [] if keep is not None else None
        for a, b in zip(gray, gray[1:]):
            if method == "tvl1":
                f = algo.calc(a, b, None)
            else:
                f = cv2.calcOpticalFlowFarneback(
                    a,
                    b,
                    None,
                    p["pyr_scale"],
                    p["levels"],
                    p["winsize"],
                    p["iterations"],
                    p["poly_n"],
                    p["poly_sigma"],
                    0,
                )
            if flows is not None:
                flows.append(f)
        if keep is not None:
            keep.append(flows)
    return time.perf_counter() - t0


def components(rgb: Path, flows: list[list[np.ndarray]], params: dict, tmp: Path) -> dict:
    """Seconds of the stage's work besides gray + flow, each done alone on the same data, one thread:
    reading and decoding the rgb shard, quantising, encoding the flow frames, writing the flow shard."""
    t0 = time.perf_counter()
    r = ShardReader(rgb)
    for i in range(len(r.index)):
        r.read(i)
    r.close()
    t1 = time.perf_counter()
    quant = []
    for fl in flows:
        q = np.stack([flow.quantize(f, params["bound"]) for f in fl])
        quant.append(np.concatenate([q, q[-1:]]))
    t2 = time.perf_counter()
    enc = [encode_frames(q, params["encoding"]) for q in quant]
    t3 = time.perf_counter()
    path = tmp / "components.h5"
    with ShardWriter(path, "flow", "00000", {}, params["encoding"]) as w:
        for i, e in enumerate(enc):
            w.add_video(VideoRecord(f"v{i}", "", "x", 0), e, {})
    t4 = time.perf_counter()
    path.unlink()
    return {"read_rgb": t1 - t0, "quantize": t2 - t1, "encode": t3 - t2, "write": t4 - t3}


def stage(method: str, rgb: Path, out: Path, params: dict, threads: int, quiet: bool = True) -> float:
    sink = contextlib.redirect_stderr(io.StringIO()) if quiet else contextlib.nullcontext()
    t0 = time.perf_counter()
    with sink:
        failures = flow.run(method, str(rgb), "00000", str(out), params, {"name": "bench", "format": "demo"}, threads)
    dt = time.perf_counter() - t0
    if failures:
        raise SystemExit(f"flow stage reported failures: {failures}")
    out.unlink()
    return dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", default=None, help="a real video (default: generated demo videos)")
    ap.add_argument("--short-side", type=int, default=128)
    ap.add_argument("--frames", type=int, default=800, help="frames in all (Farneback uses all of them)")
    ap.add_argument("--tvl1-frames", type=int, default=40, help="frames TVL1 uses (the first ones)")
    ap.add_argument("--methods", nargs="+", default=list(flow.METHODS), choices=flow.METHODS)
    ap.add_argument("--threads", type=int, default=2, help="thread count compared with 1 (default 2)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--verbose", action="store_true", help="show the stage's progress bars and log")
    a = ap.parse_args()
    cv2.setNumThreads(1)  # what stage.setup does in a job; the bare loop runs under the same setting
    code_revision(), library_versions()  # one-off per job (git, metadata): keep them out of the timings

    tmp = Path(a.out or tempfile.mkdtemp(prefix="cocon-flow-"))
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = load_config()
    src, source = source_videos(a, cfg, tmp)
    result = {
        "benchmark": "flow",
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cv2": cv2.__version__,
        "source": source,
        "short_side": a.short_side,
        "frame_size": list(src[0].shape[1:3]),
        "repeats": a.repeats,
        "threads_compared": a.threads,
        "methods": {},
    }
    for method in a.methods:
        vids_in = take(src, a.tvl1_frames if method == "tvl1" else a.frames)
        rgb = tmp / f"rgb-{method}.h5"
        write_rgb(rgb, vids_in, cfg["frames"]["encoding"])
        reader = ShardReader(rgb)
        vids = [reader.read(i) for i in range(len(vids_in))]  # the pixels the stage will see
        reader.close()
        pairs = sum(len(v) - 1 for v in vids)
        fl = cfg["flow"]
        params = {"bound": fl["bound"], "encoding": fl["encoding"], method: fl[method]}
        out = tmp / f"flow-{method}.h5"
        warm = tmp / f"warm-{method}.h5"  # warm-up on 3 frames: imports, first-call costs
        write_rgb(warm, take(vids_in, 3), cfg["frames"]["encoding"])
        stage(method, warm, out, params, 1, not a.verbose)
        warm.unlink()
        t_bare, t_one, t_many, flows = [], [], [], []
        for r in range(a.repeats):
            t_bare.append(bare(method, fl[method], vids, flows if r == 0 else None))
            t_one.append(stage(method, rgb, out, params, 1, not a.verbose))
            t_many.append(stage(method, rgb, out, params, a.threads, not a.verbose))
        b, s1, sn = (statistics.median(t) for t in (t_bare, t_one, t_many))
        parts = components(rgb, flows, params, tmp)
        del flows
        result["methods"][method] = {
            "videos": len(vids),
            "pairs": pairs,
            "bare_pairs_per_s": round(pairs / b, 3),
            "stage_1thread_pairs_per_s": round(pairs / s1, 3),
            f"stage_{a.threads}threads_pairs_per_s": round(pairs / sn, 3),
            "overhead": round(s1 / b - 1, 4),
            "overhead_goal": GOAL_OVERHEAD,
            f"speedup_{a.threads}threads": round(s1 / sn, 3),
            **({"speedup_goal": GOAL_SPEEDUP_2} if a.threads == 2 else {}),
            "seconds": {"bare": t_bare, "stage_1thread": t_one, f"stage_{a.threads}threads": t_many},
            "overhead_parts_vs_bare": {k: round(v / b, 4) for k, v in parts.items()},
            "overhead_parts_sum": round(sum(parts.values()) / b, 4),
        }
    if a.out is None:
        shutil.rmtree(tmp)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
