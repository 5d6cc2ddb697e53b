"""Pose and seg stages: frames/s across batch sizes against the packages' own one-image API, and bytes
per stored frame.

    python bench/pose_seg.py [--frames 48] [--short-side 128] [--batch-sizes 1 8 32] [--threads 2]
                             [--device cpu] [--models demo default] [--repeats 1] [--json PATH]

Frames: --frames frames of 2 demo videos (cocon.sources.demo, 320x240) decoded at --short-side (171x128 for
128), stored in an rgb shard (jpeg 90) as the frames stage would. Models, randomly initialised (speed
does not depend on the weights), from the packages' shipped configs:
  demo     SegFormer-B0 ADE20K at Resize 128x64 (as config.yaml); MobileNetV2 pose at 96x128 crops
  default  SegFormer-B2 ADE20K at the config's Resize (2048x512: short side 512); HRNet-w32 at 192x256
Pose uses boxes = frame (one person per frame: with a random detector the number of boxes would be
arbitrary), so its cost is per person crop; add the detector's cost per frame for boxes = detector.

  api        the package's own inference path, one frame per call, as its demos do:
             mmseg.apis.inference_model(model, img); for pose the steps of mmpose.apis.inference_topdown
             (test pipeline on one box, pseudo_collate, model.test_step), which cannot be imported
             here because mmpose.apis imports torchvision
  stage      cocon.preprocess.seg.run / cocon.preprocess.pose.run end to end (read rgb shard, batched inference, softmax or
             heatmap warping, uint8, png, write the shard) at each --batch-sizes value
Throughput = frames / wall time, model build excluded. Bytes per frame: the stored shard with each
encoding (raw, png level 1, gzip 1), measured on realistic synthetic maps (17 Gaussian peaks of sigma
2 px per person at 85x64 for pose; a soft person silhouette for seg), because a randomly initialised
model's maps are not representative of what a trained one stores. Prints one JSON object; --json PATH
also writes it there, rewritten after every model and view, so a run stopped from outside leaves what it
measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cocon.config import load_config  # noqa: E402
from cocon.data.shards import ShardWriter, encode_frames  # noqa: E402
from cocon.files import write_json  # noqa: E402
from cocon.preprocess import frames, mm, pose, seg  # noqa: E402
from cocon.runtime import resolve_device  # noqa: E402
from cocon.sources import demo  # noqa: E402
from cocon.sources.records import VideoRecord, write_manifest  # noqa: E402

from _machine import cpu_model  # noqa: E402

MODELS = {
    "demo": {
        "seg": {"config": "segformer_mit-b0_8xb2-160k_ade20k-512x512", "input_scale": [128, 64]},
        "pose": {"config": "td-hm_mobilenetv2_8xb64-210e_coco-256x192", "input_size": [96, 128]},
    },
    "default": {
        "seg": {"config": "segformer_mit-b2_8xb2-160k_ade20k-512x512", "input_scale": None},
        "pose": {"config": "td-hm_hrnet-w32_8xb64-210e_coco-256x192", "input_size": None},
    },
}
DATASET = {"name": "bench", "format": "demo"}


def rgb_shard(a, tmp: Path) -> Path:
    cfg = load_config(
        overrides={
            "output_dir": str(tmp / "demo"),
            "demo": {
                "classes": 2,
                "groups_per_class": 2,
                "clips_per_group": 1,
                "test_groups": 1,
                "frames": max(8, -(-a.frames // 2)),
                "width": 320,
                "height": 240,
            },
        }
    )
    demo.generate(cfg)
    recs = [VideoRecord(r.video_id, r.path, r.label, r.label_index, r.group, r.splits) for r in demo.plan(cfg)][:2]
    write_manifest(tmp / "m.tsv", [recs])
    out = tmp / "rgb.h5"
    params = {**load_config()["frames"], "short_side": a.short_side}
    frames.run(str(tmp / "m.tsv"), "00000", str(out), params, DATASET, threads=a.threads)
    return out


def params_for(view: str, models: str, a, batch: int) -> dict:
    d = load_config()[view]
    p = {
        **d,
        **MODELS[models][view],
        "checkpoint": None,
        "device": a.device,
        "batch_size": batch,
        "seed": 0,
        "frame_stride": 1,
        "frame_offset": 0,
        "boxes": "frame",
    }
    for k in ("enabled", "gpus"):
        p.pop(k)
    if view == "seg":
        p.pop("boxes")
    return p


def timed(fn, repeats: int) -> float:
    best = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best.append(time.perf_counter() - t0)
    return min(best)


def api_baseline(view: str, p: dict, device: str, imgs: list[np.ndarray], repeats: int) -> float:
    """frames/s of the package's own one-image call."""
    if view == "seg":
        from mmseg.apis import inference_model

        m = seg.PersonProbability(p, device, 0).model

        def run():
            with mm.scope("seg"), torch.no_grad():
                for im in imgs:
                    inference_model(m, im[:, :, ::-1].copy())
    else:  # what mmpose.apis.inference_topdown does (that module imports torchvision, absent here)
        from mmengine.dataset import pseudo_collate

        h = pose.PoseHeatmaps(p, device, 0)

        def run():
            with mm.scope("pose"), torch.no_grad():
                for im in imgs:
                    box = np.array([0, 0, im.shape[1], im.shape[0]], np.float32)
                    info = dict(img=im[:, :, ::-1].copy(), bbox=box[None], bbox_score=np.ones(1, np.float32))
                    info.update(h.model.dataset_meta)
                    h.model.test_step(pseudo_collate([h.pipeline(info)]))

    return len(imgs) / timed(run, repeats)


def synthetic_maps(n: int, h: int, w: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Realistic-looking uint8 maps: one person moving slightly per frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([rng.uniform(0.35, 0.65, 17) * w, np.linspace(0.15, 0.9, 17) * h], 1)
    hm = np.zeros((n, h, w, 17), np.uint8)
    sg = np.zeros((n, h, w, 1), np.uint8)
    for t in range(n):
        pts = base + rng.normal(0, 0.7, base.shape) + [0.3 * t, 0]
        conf = rng.uniform(0.4, 1.0, 17)
        for k, (x, y) in enumerate(pts):
            hm[t, :, :, k] = mm.to_uint8(conf[k] * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.0**2)))
        cx = w / 2 + 0.3 * t
        d = ((xx - cx) / (0.14 * w)) ** 2 + ((yy - 0.55 * h) / (0.42 * h)) ** 2
        sg[t, :, :, 0] = mm.to_uint8(1 / (1 + np.exp((d - 1) * 6)))
    return {"pose": hm, "seg": sg}


def bytes_per_frame(maps: np.ndarray, tmp: Path) -> dict[str, float]:
    out = {}
    rec = VideoRecord("v", "v", "x", 0, "", {"1": "train"})
    for name, enc in {
        "raw": {"codec": "raw"},
        "raw_gzip1": {"codec": "raw", "compression": "gzip", "level": 1},
        "png1": {"codec": "png", "level": 1},
        "jpeg95": {"codec": "jpeg", "quality": 95},
    }.items():
        path = tmp / f"b_{name}.h5"
        encoded = encode_frames(maps, enc)
        with ShardWriter(path, "x", "00000", {}, enc) as wtr:
            wtr.add_video(rec, encoded, {})
        if enc["codec"] == "raw":  # the stored (compressed) chunks
            out[name] = round(os.path.getsize(path) / len(maps), 1)
        else:  # the images + one int64 offset each (file sizes round up to whole 64 KiB chunks)
            out[name] = round(sum(len(b) for b in encoded.data) / len(maps) + 8, 1)
        path.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--short-side", type=int, default=128)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--models", nargs="+", default=["demo", "default"], choices=list(MODELS))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the result here (rewritten after every model and view)")
    a = ap.parse_args()
    mm.setup(a.threads)
    device = resolve_device(a.device)
    res = {
        "machine": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "threads": a.threads,
            "device": device,
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        },
        "versions": {**mm.mm_versions(), "torch": torch.__version__},
        "frames": a.frames,
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        src = rgb_shard(a, tmp)
        from cocon.data.shards import ShardReader

        r = ShardReader(src)
        imgs = [f for i in r.ok_rows() for f in r.read(i)]
        res["frame_size"] = list(imgs[0].shape[:2])
        for models in a.models:
            for view in ("seg", "pose"):
                row = {"models": models, "view": view, "config": MODELS[models][view]["config"]}
                row["api_fps"] = round(api_baseline(view, params_for(view, models, a, 1), device, imgs, a.repeats), 2)
                for b in a.batch_sizes:
                    p = params_for(view, models, a, b)
                    out = tmp / f"{view}.h5"
                    mod = seg if view == "seg" else pose
                    name = "PersonProbability" if view == "seg" else "PoseHeatmaps"
                    # run() builds its model: build it once beforehand and hand run() that one, so the timing
                    # excludes the build (seconds, noisy) without subtracting it
                    cls, model = getattr(mod, name), getattr(mod, name)(p, device, 0)
                    setattr(mod, name, lambda *args, model=model, **kw: model)
                    try:
                        mod.run(str(src), "00000", str(out), p, DATASET, a.threads)  # warm-up (first calls)
                        t = timed(
                            lambda mod=mod, out=out, p=p: mod.run(str(src), "00000", str(out), p, DATASET, a.threads),
                            a.repeats,
                        )
                    finally:
                        setattr(mod, name, cls)
                    row[f"stage_fps_b{b}"] = round(len(imgs) / t, 2)
                    row["shard_bytes_per_frame"] = round(os.path.getsize(out) / len(imgs), 1)
                best = max(row[f"stage_fps_b{b}"] for b in a.batch_sizes)
                row["best_stage_vs_api"] = round(best / row["api_fps"], 2)
                res["runs"].append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                if a.json:
                    write_json(a.json, res)
        h, w = mm.out_size(*res["frame_size"], 64)
        syn = synthetic_maps(48, h, w)
        res["bytes_per_frame_synthetic_64px"] = {v: bytes_per_frame(m, tmp) for v, m in syn.items()}
    if a.json:
        write_json(a.json, res)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
