"""Training-loader benchmark: the CPU time a DataLoader worker spends per two-view sample (rgb + flow_tvl1)
with the uint8 path of `cocon.data.clips.MultiViewClips` (docs/loader.md, "The uint8 path"), against the
original loader: one JPEG file per frame, augmenting on the CPU the way the original code did. With
`--device cuda`, training clips/s with the real loader against the same steps fed from memory.

    python bench/loader.py [--videos a.avi ...] [--samples 24] [--passes 2] [--batch-size 8]
                           [--out DIR] [--keep] [--json OUT]
    python bench/loader.py --device cuda [--workers 12] [--batch-size 16] [--steps 40] [--warmup W] [--json OUT]

Data: the pipeline's own stages on real or demo videos. Without --videos, demo videos are generated
(cocon.sources.demo; default 4 classes x 2 groups x 2 clips = 16 videos of 150 frames at 320x240), every one
put in the training role. cocon.preprocess.frames.run writes the rgb shards (short side 128, jpeg 90, 8 videos
per shard), cocon.preprocess.flow.run the flow shards (jpeg 95, bound 20). TVL1 runs at ~2 pairs/s at 128 px,
so the flow_tvl1 view holds Farneback flow: the flow_farneback shards are copied as flow_tvl1 with their
`view` attribute changed (same bytes, same read cost). From the same stored frames: a raw-codec copy of
the shards, and the original layout, one folder per video and view: image_%05d.jpg (the rgb shard's JPEG
bytes verbatim, so decode cost and pixels are identical), flow_x_%05d.jpg / flow_y_%05d.jpg (each flow
plane a grayscale JPEG, quality 95), 1-based.

CPU measurement (--device cpu, the default; goal: new <= 1/4 of the baseline). One process, one OpenCV
and one torch thread (a worker's setup), page cache warm, the SAME clips for every variant: sample
indices drawn once (seeded), epoch 0, training role, default augmentation, 8 blocks x 5 frames at stride
3, 128 px. Per sample, the thread CPU time (time.thread_time) of dataset[i] plus its share of the
collate (default_collate of --batch-size samples / batch size), which a worker also does; the minimum
over --passes passes per sample (variants interleaved sample by sample, so load on a shared machine hits
them alike), then the mean over the samples (= CPU seconds per sample; the median is reported too).
Variants:
  baseline       folders + original CPU augmentation: per-frame JPEG files (cv2.imread), OpenCV crop and
                 resize, OpenCV uint8 grey/jitter per frame, flip, float32 normalisation, float32 collate:
                 the code of MultiViewClips before the uint8 path (kept here as `original_view`), same draws.
  new            the JPEG shards, output="uint8": read, decode, crop copied to the uint8 canvas
                 (flow de-interleaved by cv2.merge), parameters drawn; uint8 collate. Normalisation,
                 resampling, grey and jitter then run per batch on the training device (Finish).
  new-raw        the same on the raw-codec shards (no decode).
  new-folders    the uint8 path reading the per-frame JPEG files: the layout's share of the gain.
  shards-float   the JPEG shards, output="float": the same Finish run in the worker per sample (what a
                 CPU-only training does), float32 collate.
  decode-only    cv2.imdecode of the sample's distinct frames of both views from the shards' bytes, nothing
                 else: the floor of any loader that decodes these JPEGs on the CPU.
Also: Finish per batch on the CPU (what the device does, here timed on a CPU core), and how far the new
float samples are from the baseline's (the colour operations are float now, not uint8 OpenCV).

CUDA measurement (--device cuda; goal: real loader >= 90 % of memory-fed, <= 12 workers). The engine of
cocon.train (CoCon on rgb + flow_tvl1 from random weights, the training defaults: 128 px, 8 x 5 frames,
bf16 autocast, channels_last), Engine(device_augment=True): the workers hand pinned uint8 clips, _step
copies them non-blocking and finishes them on the GPU. Real: a ClipLoader with make_loader's worker set-up
(forkserver workers, pin_memory) over the training set, sampled with replacement (the dataset is small),
--warmup steps untimed (worker start, cuDNN autotuning, and the batches prefetched meanwhile: default
2 x workers + 6), then --steps timed steps (synchronised). Memory-fed: 16 batches taken from that loader
beforehand and kept in pinned host memory, cycled through the same --warmup + --steps of _step. Ratio = real clips/s / memory-fed clips/s. With
--cpu-augment the float path (workers finishing on the CPU, float32 batches) is timed the same way.

Prints one JSON object (and writes it to --json OUT). The CPU run takes about 1.5 minutes on 2 cores,
the build included.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

os.environ.setdefault("GIT_OPTIONAL_LOCKS", "0")  # the stages' provenance lookup must not touch .git

import cv2  # noqa: E402
import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import RandomSampler, default_collate  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cocon.config import load_config  # noqa: E402
from cocon.data import augment as A  # noqa: E402
from cocon.data import clips, reading  # noqa: E402
from cocon.data import loader as L  # noqa: E402
from cocon.data.shards import ShardReader, ShardWriter, encode_frames  # noqa: E402
from cocon.preprocess import flow, frames  # noqa: E402
from cocon.provenance import library_versions  # noqa: E402
from cocon.sources import demo  # noqa: E402
from cocon.sources.records import VideoRecord, assign_shards, shard_name, write_manifest  # noqa: E402

from _machine import cpu_model  # noqa: E402

GOAL_CPU = 0.25  # new worker CPU time per sample / baseline's
GOAL_CUDA = 0.90  # real loader clips/s / memory-fed
HELD = 16  # batches held in memory for the memory-fed steps (cycled)
VIEWS = ["rgb", "flow_tvl1"]
ALL_VIEWS = ("rgb", "flow_tvl1", "flow_farneback")


@contextlib.contextmanager
def quiet():
    with contextlib.redirect_stderr(io.StringIO()):
        yield


# ------------------------------------------------------------------ data


def source_records(a, tmp: Path) -> tuple[list[VideoRecord], str]:
    """Video records, all in the training role of split 1."""
    if a.videos:
        recs = [
            VideoRecord(f"real/{Path(p).stem}", str(Path(p).resolve()), "x", 0, Path(p).stem, {"1": "train"})
            for p in a.videos
        ]
        return recs, "real: " + ", ".join(os.path.basename(p) for p in a.videos)
    w, h = a.demo_size
    cfg = load_config(
        overrides={
            "output_dir": str(tmp / "demo"),
            "demo": {
                "classes": a.demo_classes,
                "groups_per_class": a.demo_groups,
                "clips_per_group": a.demo_clips,
                "test_groups": 1,
                "frames": a.demo_frames,
                "width": w,
                "height": h,
            },
        }
    )
    demo.generate(cfg)
    recs = [dataclasses.replace(r, splits={"1": "train"}) for r in demo.plan(cfg)]
    return recs, f"demo: {len(recs)} videos x {a.demo_frames} frames, {w}x{h}"


def build_shards(recs: list[VideoRecord], a, root: Path) -> tuple[list[str], dict]:
    """Run the frames and flow stages; returns the shard names and the seconds each stage took."""
    cfg = load_config()
    fparams = {**cfg["frames"], "short_side": a.short_side}
    fl = cfg["flow"]
    lparams = {"bound": fl["bound"], "encoding": fl["encoding"], "farneback": fl["farneback"]}
    dataset = {"name": "bench", "format": "demo" if not a.videos else "csv"}
    groups = assign_shards(recs, a.videos_per_shard)
    names = [shard_name(k) for k in range(len(groups))]
    manifest = root / "manifest.tsv"
    write_manifest(manifest, groups)
    secs = {"frames": 0.0, "flow_farneback": 0.0}
    for name in names:
        rgb = root / "shards" / "rgb" / f"{name}.h5"
        fb = root / "shards" / "flow_farneback" / f"{name}.h5"
        t0 = time.perf_counter()
        with quiet():
            bad = frames.run(str(manifest), name, str(rgb), fparams, dataset, a.threads)
        t1 = time.perf_counter()
        with quiet():
            bad += flow.run("farneback", str(rgb), name, str(fb), lparams, dataset, a.threads)
        t2 = time.perf_counter()
        if bad:
            raise SystemExit(f"stage failures: {bad}")
        secs["frames"] += t1 - t0
        secs["flow_farneback"] += t2 - t1
        tv = root / "shards" / "flow_tvl1" / f"{name}.h5"
        tv.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fb, tv)
        with h5py.File(tv, "r+") as h5:  # Farneback content under the flow_tvl1 view name (see docstring)
            h5.attrs["view"] = "flow_tvl1"
    return names, secs


def transcode_raw(src: Path, dst: Path) -> None:
    """The same videos, rows, attributes and pixels as `src`, stored with codec raw (no compression)."""
    r = ShardReader(src)
    skip = {"format", "format_version", "view", "shard", "complete", "n_videos", "n_ok", "n_failed"}
    attrs = {k: v for k, v in r.attrs.items() if k not in skip}
    enc = {"codec": "raw", "compression": "none"}
    with ShardWriter(dst, r.attrs["view"], r.attrs["shard"], attrs, enc) as w:
        for i, row in enumerate(r.index):
            rec = VideoRecord(
                row["video_id"], row["path"], row["label"], row["label_index"], row["group"], json.loads(row["splits"])
            )
            meta = {k: row[k] for k in ("fps", "orig_height", "orig_width", "orig_frames")}
            w.add_video(rec, encode_frames(r.read(i), enc), meta)
    r.close()


def write_folders(shard: Path, root: Path, quality: int) -> None:
    """The original layout from the frames stored in `shard`: <root>/<video_id>/image_%05d.jpg (the
    stored JPEG bytes verbatim) or flow_x_%05d.jpg + flow_y_%05d.jpg (grayscale JPEG, `quality`)."""
    r = ShardReader(shard)
    h5 = r._file()
    for i, row in enumerate(r.index):
        d = root / row["video_id"]
        d.mkdir(parents=True, exist_ok=True)
        if row["channels"] == 3:
            data, off = h5["videos"][f"{i:05d}"][()], h5["offsets"][f"{i:05d}"][()]
            for k in range(row["n_frames"]):
                (d / f"image_{k + 1:05d}.jpg").write_bytes(data[off[k] : off[k + 1]].tobytes())
        else:
            for k, f in enumerate(r.read(i)):
                for c, name in enumerate(("flow_x", "flow_y")):
                    cv2.imwrite(str(d / f"{name}_{k + 1:05d}.jpg"), f[:, :, c], [cv2.IMWRITE_JPEG_QUALITY, quality])
    r.close()


def disk(paths: list[Path]) -> dict:
    files = [f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    st = [f.stat() for f in files]
    return {
        "files": len(files),
        "bytes": sum(s.st_size for s in st),
        "allocated_bytes": sum(s.st_blocks * 512 for s in st),
    }


# ------------------------------------------------------------------ the original layout and loader


class FolderReader:
    """Stands in for a shard's reader inside MultiViewClips: row -> the video's folder, one file per frame
    (rgb) or two (flow u, v), opened and decoded with cv2.imread as the original loaders did. `read` for
    the original loader, `images` for the uint8 path."""

    def __init__(self, root: Path, reader: ShardReader):
        self.dirs = [str(root / r["video_id"]) for r in reader.index]
        self.index = reading.SlimIndex(reader.index)
        self.path = reader.path

    def shape(self, row: int) -> tuple[int, int, int]:
        c = self.index.cols
        return int(c["height"][row]), int(c["width"][row]), int(c["channels"][row])

    def read(self, row: int, frames) -> np.ndarray:
        d, (h, w, c) = self.dirs[row], self.shape(row)
        if c == 3:
            return np.stack([cv2.imread(f"{d}/image_{k + 1:05d}.jpg", cv2.IMREAD_COLOR_RGB) for k in frames])
        out = np.empty((len(frames), h, w, 2), np.uint8)
        for j, k in enumerate(frames):
            out[j, :, :, 0] = cv2.imread(f"{d}/flow_x_{k + 1:05d}.jpg", cv2.IMREAD_GRAYSCALE)
            out[j, :, :, 1] = cv2.imread(f"{d}/flow_y_{k + 1:05d}.jpg", cv2.IMREAD_GRAYSCALE)
        return out

    def images(self, row: int, frames, offsets=None) -> list[np.ndarray]:
        return list(self.read(row, frames))

    def close(self) -> None:
        pass


def original_colour(frames: np.ndarray, rng: np.random.Generator, aug: A.Augmentation) -> None:
    """The loader's colour augmentation before the uint8 path (OpenCV on uint8, per frame), in place:
    the same draws as cocon.data.augment.draw_colour."""
    draws = A.draw_colour(rng, len(frames), aug)
    for k, (grey, factors, order) in enumerate(zip(draws["grey"], draws["jitter"], draws["order"])):
        f = frames[k]
        if grey == A.LUMA:
            f[...] = cv2.cvtColor(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        elif grey >= 0:
            f[...] = f[..., grey, None]
        for op in order:
            factor = float(factors[op])
            if factor == A.IDENTITY[op]:  # not drawn for this frame (or the identity drawn): nothing to do
                continue
            if op == 0:
                f = cv2.addWeighted(f, factor, f, 0.0, 0.0)
            elif op == 1:
                g = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
                f = cv2.addWeighted(f, factor, f, 0.0, (1 - factor) * cv2.mean(g)[0])
            elif op == 2:
                g = cv2.cvtColor(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
                f = cv2.addWeighted(f, factor, g, 1 - factor, 0.0)
            else:
                shift = np.uint8(int(round(factor * 256)) % 256)
                if shift:
                    hsv = cv2.cvtColor(f, cv2.COLOR_RGB2HSV_FULL)
                    hsv[..., 0] += shift
                    f = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
        frames[k] = f


class OriginalClips(clips.MultiViewClips):
    """The baseline: MultiViewClips' table, sampling and draws, reading the per-frame JPEG folders and
    augmenting as the loader did before the uint8 path (`original_view`); float32 samples. The shards
    are used at construction only, for the video table (the original's CSV of folders and frame counts)."""

    def __init__(self, shards: dict, folders: dict, **kw):
        super().__init__(shards, **kw)
        for v in self.views:
            self._readers[v] = [FolderReader(Path(folders[v]), ShardReader(p)) for p in shards[v]]

    def __getitem__(self, i: int) -> dict:
        i, epoch = int(i), self.epoch
        shard, row = int(self._shard[i]), int(self._row[i])
        idx = self.frame_indices(i, epoch)
        out = {}
        for v in self.views:
            reader = self._readers[v][shard]
            n_own = int(reader.index.cols["n_frames"][row])
            out[v] = self.original_view(
                v, reader.read(row, clips.view_frame_indices(idx, n_own, *self._maps[v])), i, epoch
            )
        out["label"] = torch.tensor(self._label[i], dtype=torch.int64)
        out["index"] = torch.tensor(i, dtype=torch.int64)
        out["group"] = torch.tensor(self._group[i], dtype=torch.int64)
        return out

    def original_view(self, view: str, frames_: np.ndarray, i: int, epoch: int) -> torch.Tensor:
        (colour, flips, flip_rule), size, aug = self._aug_rules[view], self.sizes[view], self.augmentation
        h, w = frames_.shape[1:3]
        rng = np.random.default_rng([self.seed, epoch, i, 1, zlib.crc32(view.encode())])
        area, ratio, ux, uy, flip = A.draw_box(rng, aug)
        frames_ = reading.crop_resize(frames_, A.crop_box(h, w, area, ratio, ux, uy), size)
        if colour:
            original_colour(frames_, rng, aug)
        if flip and (flips or aug.flip_all_views):
            frames_ = flip_rule.apply(frames_)
        return reading.to_tensor(frames_, self.num_blocks, self.block_len, *self._norm[view])


class FolderClips(clips.MultiViewClips):
    """The uint8 path (MultiViewClips itself) reading the per-frame JPEG folders instead of the shards."""

    def __init__(self, shards: dict, folders: dict, **kw):
        super().__init__(shards, **kw)
        for v in self.views:
            self._readers[v] = [FolderReader(Path(folders[v]), ShardReader(p)) for p in shards[v]]
        self._offsets = {v: None for v in self.views}

    def _reader(self, view: str, shard: int):
        return self._readers[view][shard]


# ------------------------------------------------------------------ CPU: worker time per sample


def datasets(root: Path, names: list[str], seed: int) -> dict:
    def shards(base):
        return {v: [root / base / v / f"{n}.h5" for n in names] for v in VIEWS}

    kw = {"views": VIEWS, "split": 1, "role": "train", "holdout_fraction": 0.0, "seed": seed}
    folders = {v: root / "folders" / v for v in VIEWS}
    return {
        "baseline": OriginalClips(shards("shards"), folders, **kw),
        "new": clips.MultiViewClips(shards("shards"), output="uint8", **kw),
        "new-raw": clips.MultiViewClips(shards("shards-raw"), output="uint8", **kw),
        "new-folders": FolderClips(shards("shards"), folders, output="uint8", **kw),
        "shards-float": clips.MultiViewClips(shards("shards"), output="float", **kw),
    }


def cpu_time(fn, *args) -> tuple[float, object]:
    t0 = time.thread_time()
    out = fn(*args)
    return time.thread_time() - t0, out


def jpeg_bytes(ds: clips.MultiViewClips, i: int) -> list[tuple[list[np.ndarray], int]]:
    """The stored JPEG images of sample i's distinct frames, per view, with the decode flag."""
    out = []
    shard, row = int(ds._shard[i]), int(ds._row[i])
    idx = ds.frame_indices(i)
    for v in ds.views:
        r = ds._readers[v][shard]
        own = np.unique(clips.view_frame_indices(idx, int(r.index.cols["n_frames"][row]), *ds._maps[v]))
        off = ds._offsets[v][0][int(ds._offsets[v][1][i]) : int(ds._offsets[v][1][i + 1])].numpy()
        data = r._file()["videos"][f"{row:05d}"]
        bufs = [data[int(off[k]) : int(off[k + 1])] for k in own]
        out.append((bufs, cv2.IMREAD_COLOR_RGB if r.shape(row)[2] == 3 else cv2.IMREAD_GRAYSCALE))
    return out


def decode_only(inputs) -> None:
    for bufs, flag in inputs:
        for b in bufs:
            cv2.imdecode(b, flag)


def measure_cpu(a, root: Path, names: list[str]) -> dict:
    sets = datasets(root, names, a.seed)
    n = len(sets["new"])
    samples = [int(i) for i in np.random.default_rng(a.seed).integers(0, n, a.samples)]
    for ds in sets.values():  # open every file, warm the code paths
        ds[samples[0]]
    encoded = {j: jpeg_bytes(sets["new"], i) for j, i in enumerate(samples)}
    calls = {k: (lambda j, ds=ds: ds[samples[j]]) for k, ds in sets.items()}
    calls["decode-only"] = lambda j: decode_only(encoded[j])
    per = {k: {j: [] for j in range(len(samples))} for k in calls}
    for p in range(a.passes):
        for j in range(len(samples)):
            order = list(calls)[p % len(calls) :] + list(calls)[: p % len(calls)]
            for k in order:
                per[k][j].append(cpu_time(calls[k], j)[0])
    collate = {"decode-only": 0.0}
    items = {k: [ds[i] for i in samples[: a.batch_size]] for k, ds in sets.items()}
    for k, batch in items.items():
        collate[k] = min(cpu_time(default_collate, batch)[0] for _ in range(3)) / a.batch_size
    u8 = default_collate(items["new"])
    finish = sets["new"].finisher()
    finish_s = min(cpu_time(finish, u8, "cpu")[0] for _ in range(2)) / a.batch_size

    ms = {}
    for k in calls:
        best = [min(v) * 1e3 for v in per[k].values()]
        ms[k] = {
            "getitem_mean": round(statistics.mean(best), 3),
            "getitem_median": round(statistics.median(best), 3),
            "collate_share": round(collate[k] * 1e3, 3),
            "total": round(statistics.mean(best) + collate[k] * 1e3, 3),
        }
    base = ms["baseline"]["total"]
    ratios = {k: round(ms[k]["total"] / base, 3) for k in ms}

    # the same clips: the new float sample against the baseline's (colour now float, not uint8 OpenCV)
    diff = {}
    scale = {v: float(sets["new"]._norm[v][0][0]) for v in VIEWS}
    for v in VIEWS:
        d = [float((sets["shards-float"][i][v] - sets["baseline"][i][v]).abs().mean()) / scale[v] for i in samples[:4]]
        diff[v] = round(statistics.mean(d), 2)
    return {
        "samples": a.samples,
        "passes": a.passes,
        "batch_size": a.batch_size,
        "cpu_ms_per_sample": ms,
        "ratio_vs_baseline": ratios,
        "goal": GOAL_CPU,
        "goal_met": ratios["new"] <= GOAL_CPU,
        "finish_on_cpu_ms_per_sample (the device's work, timed on one CPU core)": round(finish_s * 1e3, 3),
        "mean_abs_diff_levels_new_float_vs_baseline": diff,
        "canvas_hw": {v: list(sets["new"]._canvas[v]) for v in VIEWS},
    }


# ------------------------------------------------------------------ CUDA: training clips/s


def cuda_loader(ds, a, n_batches: int) -> clips.ClipLoader:
    """make_loader's worker set-up (forkserver workers, one thread each, pinned batches) over `ds`, the
    samples drawn with replacement (seeded)."""
    gen = torch.Generator().manual_seed(a.seed)
    sampler = RandomSampler(ds, replacement=True, num_samples=n_batches * a.batch_size, generator=gen)
    return clips.ClipLoader(
        ds,
        batch_size=a.batch_size,
        sampler=sampler,
        num_workers=a.workers,
        pin_memory=True,
        drop_last=True,
        worker_init_fn=L.worker_init if a.workers else None,
        multiprocessing_context=L.worker_context() if a.workers else None,
    )


def train_clips_per_s(engine, batches, a) -> float:
    """--warmup untimed then --steps timed training steps (Engine._step) on `batches`; clips/s."""
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)
    weights = torch.ones(a.batch_size)
    it = iter(batches)
    for _ in range(a.warmup):
        engine._step(next(it), weights, train=True)
    sync()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        engine._step(next(it), weights, train=True)
    sync()
    return a.steps * a.batch_size / (time.perf_counter() - t0)


def measure_cuda(a, root: Path, device: str = "cuda", train_overrides: dict | None = None) -> dict:
    """Training clips/s, real loader vs memory-fed (module docstring). `device` and `train_overrides`
    ({section: {key: value}}) only serve a dry run of this code on a CPU (tiny sizes)."""
    from cocon.train.engine import Engine
    from cocon.train.methods import get_method

    sections = {
        "train": {"views": VIEWS, "val_fraction": 0.1, "precision": "auto"},
        "cpc": {"batch_size": a.batch_size},
        "runtime": {"workers": a.workers, "device": device, "gpus": int(device == "cuda"), "channels_last": True},
    }
    for name, values in (train_overrides or {}).items():
        sections[name] = {**sections.get(name, {}), **values}
    cfg = load_config(overrides={"output_dir": str(root), **sections})
    out = {
        "batch_size": a.batch_size,
        "workers": a.workers,
        "steps": a.steps,
        "warmup": a.warmup,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else device,
        "goal": GOAL_CUDA,
    }
    for device_augment in [True, False] if a.cpu_augment else [True]:
        engine = Engine(get_method("cocon")(cfg, VIEWS, {}), root / "run", device_augment=device_augment)
        engine.setup()
        n = a.warmup + a.steps
        real = train_clips_per_s(engine, cuda_loader(engine.train_set, a, n), a)
        held = list(cuda_loader(engine.train_set, a, min(n, HELD)))  # the same kind of batches, pinned
        memory = train_clips_per_s(engine, (held[k % len(held)] for k in range(n)), a)
        key = "device_augment" if device_augment else "cpu_augment (workers finish float32 samples)"
        out[key] = {
            "real_clips_per_s": round(real, 2),
            "memory_fed_clips_per_s": round(memory, 2),
            "ratio": round(real / memory, 3),
            "goal_met": real / memory >= GOAL_CUDA,
        }
        del held
        torch.cuda.empty_cache()
    out["goal_met"] = out["device_augment"]["goal_met"]
    return out


# ------------------------------------------------------------------ main


def build(a, root: Path) -> dict:
    built = root / "built.json"
    if built.exists():
        return json.loads(built.read_text())
    t0 = time.perf_counter()
    recs, source = source_records(a, root)
    t1 = time.perf_counter()
    names, stage_s = build_shards(recs, a, root)
    t2 = time.perf_counter()
    for v in ALL_VIEWS:
        for n in names:
            transcode_raw(root / "shards" / v / f"{n}.h5", root / "shards-raw" / v / f"{n}.h5")
    t3 = time.perf_counter()
    fq = load_config()["flow"]["encoding"].get("quality", 95)
    for v in VIEWS:
        for n in names:
            write_folders(root / "shards" / v / f"{n}.h5", root / "folders" / v, fq)
    t4 = time.perf_counter()
    info = {
        "source": source,
        "names": names,
        "build_seconds": {
            "videos": round(t1 - t0, 1),
            **{k: round(s, 1) for k, s in stage_s.items()},
            "raw_shards": round(t3 - t2, 1),
            "folders": round(t4 - t3, 1),
        },
    }
    built.write_text(json.dumps(info))
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--videos", nargs="+", default=None, help="real videos (default: generated demo videos)")
    ap.add_argument("--demo-classes", type=int, default=4)
    ap.add_argument("--demo-groups", type=int, default=2)
    ap.add_argument("--demo-clips", type=int, default=2)
    ap.add_argument("--demo-frames", type=int, default=150)
    ap.add_argument("--demo-size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"))
    ap.add_argument("--short-side", type=int, default=128)
    ap.add_argument("--videos-per-shard", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="threads of the frames and flow stages (build only)")
    ap.add_argument("--samples", type=int, default=24, help="CPU: timed samples")
    ap.add_argument("--passes", type=int, default=2, help="CPU: passes over the samples (minimum per sample)")
    ap.add_argument("--batch-size", type=int, default=None, help="CPU: collate batch (8); CUDA: per step (16)")
    ap.add_argument("--workers", type=int, default=12, help="CUDA: DataLoader workers")
    ap.add_argument("--steps", type=int, default=40, help="CUDA: timed training steps")
    ap.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="CUDA: untimed steps first (default 2 x workers + 6: the batches the workers prefetch "
        "while they start are used up before the timing)",
    )
    ap.add_argument("--cpu-augment", action="store_true", help="CUDA: also time the float path (CPU augmentation)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="scratch folder (default: a temporary one); reused if built")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--json", default=None, metavar="OUT", help="also write the result object to OUT")
    a = ap.parse_args()
    a.batch_size = a.batch_size or (16 if a.device == "cuda" else 8)
    a.warmup = 2 * a.workers + 6 if a.warmup is None else a.warmup
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    t_start = time.perf_counter()

    root = Path(a.out or tempfile.mkdtemp(prefix="cocon-loader-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        info = build(a, root)
        for p in root.rglob("*"):  # warm the page cache: every file of every layout read once
            if p.is_file() and p.suffix in (".h5", ".jpg"):
                p.read_bytes()
        rows = [r for n in info["names"] for r in ShardReader(root / "shards" / "rgb" / f"{n}.h5").index]
        result = {
            "benchmark": "loader",
            "device": a.device,
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cv2": cv2.__version__,
            "h5py": h5py.__version__,
            "numpy": np.__version__,
            "library_versions": library_versions(),
            "source": info["source"],
            "videos": len(rows),
            "frames_per_view": int(sum(r["n_frames"] for r in rows)),
            "frame_sizes_hw": sorted({(r["height"], r["width"]) for r in rows}),
            "views": VIEWS,
            "flow_note": "flow_tvl1 holds Farneback flow (the flow_farneback shards copied as flow_tvl1)",
            "clip": "8 blocks x 5 frames, stride 3, 128x128 per view, training augmentation (defaults)",
            "build_seconds": info["build_seconds"],
        }
        if a.device == "cpu":
            result["cpu_worker"] = measure_cpu(a, root, info["names"])
        else:
            result["cuda_training"] = measure_cuda(a, root)
    finally:
        if a.out is None and not a.keep:  # an explicit --out is kept (and reused by the next run)
            shutil.rmtree(root, ignore_errors=True)
    result["seconds_total"] = round(time.perf_counter() - t_start, 1)
    if a.out is not None or a.keep:
        result["scratch"] = str(root)
    text = json.dumps(result, indent=1)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
