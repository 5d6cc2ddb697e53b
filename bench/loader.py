"""Training-loader benchmark: multi-view clips/s of `cocon.data.clips.MultiViewClips` reading the HDF5 shards,
against a loader reading one file per frame per view (the original research layout) on the same frames.

    python bench/loader.py [--videos a.avi ...] [--batch-size 8] [--batches 6] [--repeats 3]
                           [--workers 0 2] [--out DIR] [--keep]

Data: the pipeline's own stages on real or demo videos. Without --videos, demo videos are generated
(cocon.sources.demo; default 4 classes x 2 groups x 2 clips = 16 videos of 150 frames at 320x240), every one
put in the training role. cocon.preprocess.frames.run writes the rgb shards (short side 128, jpeg 90, 8 videos
per shard), cocon.preprocess.flow.run the flow shards (jpeg 95, bound 20). TVL1 runs at ~2 pairs/s at 128 px,
so BOTH flow views hold Farneback flow: the flow_farneback shards are copied as flow_tvl1 with their
`view` attribute changed (same bytes, same read cost as a distinct view). pose and seg are not
produced by the pipeline yet and are not included.

Layouts compared, all holding the same pixels:
  shards      the pipeline's shards as written (rgb jpeg 90, flow jpeg 95, one HDF5 file per view
              and shard).
  shards-raw  the same frames re-written with codec raw (uncompressed uint8, one chunk per frame):
              no decode on the read side, 10x (rgb) to 16x (flow) the bytes.
  folders     the original layout, one folder per video and view: image_%05d.jpg (the rgb shard's
              JPEG bytes written verbatim, so decode cost and pixels are identical), flow_x_%05d.jpg /
              flow_y_%05d.jpg (each flow plane as a grayscale JPEG, quality 95), 1-based.
The folder loader is MultiViewClips itself with its shard readers swapped for readers that open and
decode one file per frame per view with cv2.imread (the original used PIL): sampling, crop, flip, grey,
jitter, normalisation and collate are the same code, so only the storage access differs.

Loader: torch DataLoader (cocon.data.clips.ClipLoader, the worker setup of make_loader: one OpenCV and one
torch thread per worker; the main process is set to one thread too) with the same batch size, workers
and sample indices for every layout. The sampler draws with replacement (seeded), because the
dataset is small; training role, augmentation on, default sizes (128 px), clips of 8 x 5 frames at
stride 3. clips/s = samples/s over --batches batches after max(1, workers) warm-up batches (workers
started). Page cache warm for every layout (each is read once before timing). Layouts interleaved in
each repeat (order rotated); median of --repeats, and the paired ratios per repeat.

Also: bytes and files on disk per view, and a single-process profile of a sample (file or HDF5
access, decode, de-interleave, crop/jitter/normalise, collate) with the ratios it predicts, the bound
it puts on the ratio (storage free) and what-if predictions (cv2.merge de-interleave; raw shards with
uint8 batches and the augmentation on the GPU). Prints one JSON object.
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
from _machine import cpu_model  # noqa: E402

from cocon.config import load_config  # noqa: E402
from cocon.data import clips
from cocon.data.shards import ShardReader, ShardWriter, encode_frames  # noqa: E402
from cocon.preprocess import (
    flow,
    frames,  # noqa: E402
)
from cocon.provenance import library_versions  # noqa: E402
from cocon.sources import demo
from cocon.sources.records import VideoRecord, assign_shards, shard_name, write_manifest  # noqa: E402

GOAL = 5.0
FLOW_VIEWS = ("flow_tvl1", "flow_farneback")
ALL_VIEWS = ("rgb", *FLOW_VIEWS)
VIEW_SETS = {"rgb+flow_tvl1+flow_farneback": list(ALL_VIEWS), "rgb+flow_tvl1": ["rgb", "flow_tvl1"]}
LAYOUTS = ("folders", "shards", "shards-raw")




@contextlib.contextmanager
def quiet():
    with contextlib.redirect_stderr(io.StringIO()):
        yield


# ------------------------------------------------------------------ data


def source_records(a, tmp: Path) -> tuple[list[VideoRecord], str]:
    """Video records, all in the training role of split 1."""
    if a.videos:
        recs = [VideoRecord(f"real/{Path(p).stem}", str(Path(p).resolve()), "x", 0, Path(p).stem, {"1": "train"})
                for p in a.videos]
        return recs, "real: " + ", ".join(os.path.basename(p) for p in a.videos)
    w, h = a.demo_size
    cfg = load_config(overrides={
        "output_dir": str(tmp / "demo"),
        "demo": {"classes": a.demo_classes, "groups_per_class": a.demo_groups, "clips_per_group": a.demo_clips,
                 "test_groups": 1, "frames": a.demo_frames, "width": w, "height": h},
    })  # fmt: skip
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
            rec = VideoRecord(row["video_id"], row["path"], row["label"], row["label_index"], row["group"],
                              json.loads(row["splits"]))
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
    return {"files": len(files), "bytes": sum(s.st_size for s in st),
            "allocated_bytes": sum(s.st_blocks * 512 for s in st)}  # fmt: skip


# ------------------------------------------------------------------ the original layout as a loader


class _Cols:
    def __init__(self, n_frames):
        self.cols = {"n_frames": np.asarray(n_frames, np.int64)}


class FolderReader:
    """Stands in for a shard's reader inside MultiViewClips: row -> the video's folder; `read` opens and
    decodes one file per frame (rgb) or two (flow u, v), as the original loaders did."""

    def __init__(self, root: Path, index: list[dict]):
        self.dirs = [str(root / r["video_id"]) for r in index]
        self.index = _Cols([r["n_frames"] for r in index])
        self.shapes = [(int(r["height"]), int(r["width"]), int(r["channels"])) for r in index]

    def read(self, row: int, frames) -> np.ndarray:
        d, (h, w, c) = self.dirs[row], self.shapes[row]
        if c == 3:
            return np.stack([cv2.imread(f"{d}/image_{k + 1:05d}.jpg", cv2.IMREAD_COLOR_RGB) for k in frames])
        out = np.empty((len(frames), h, w, 2), np.uint8)
        for j, k in enumerate(frames):
            out[j, :, :, 0] = cv2.imread(f"{d}/flow_x_{k + 1:05d}.jpg", cv2.IMREAD_GRAYSCALE)
            out[j, :, :, 1] = cv2.imread(f"{d}/flow_y_{k + 1:05d}.jpg", cv2.IMREAD_GRAYSCALE)
        return out

    def close(self) -> None:
        pass


class FolderClips(clips.MultiViewClips):
    """MultiViewClips (same table, sampling, augmentation) reading the folder layout instead of the
    shards. The shards are only used, at construction, for the video table (the original's CSV of
    folders and frame counts)."""

    def __init__(self, shards: dict, folders: dict, **kw):
        super().__init__(shards, **kw)
        for v in self.views:
            swapped = []
            for p in shards[v]:
                r = ShardReader(p)
                swapped.append(FolderReader(Path(folders[v]), r.index))
            self._readers[v] = swapped


# ------------------------------------------------------------------ measurements


def make_dataset(layout: str, root: Path, names: list[str], views: list[str], seed: int):
    base = root / ("shards-raw" if layout == "shards-raw" else "shards")
    shards = {v: [base / v / f"{n}.h5" for n in names] for v in views}
    kw = {"views": views, "split": 1, "role": "train", "holdout_fraction": 0.0, "seed": seed}
    if layout == "folders":
        return FolderClips(shards, {v: root / "folders" / v for v in views}, **kw)
    return clips.MultiViewClips(shards, **kw)


def loader(ds, batch: int, workers: int, n_samples: int, seed: int) -> clips.ClipLoader:
    gen = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(ds, replacement=True, num_samples=n_samples, generator=gen)
    return clips.ClipLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                            worker_init_fn=clips._worker_init if workers > 0 else None)  # fmt: skip


def clips_per_s(ds, batch: int, workers: int, n_batches: int, seed: int) -> float:
    warm = max(1, workers)
    it = iter(loader(ds, batch, workers, (warm + n_batches) * batch, seed))
    for _ in range(warm):
        next(it)
    n, t0 = 0, time.perf_counter()
    for b in it:
        n += len(b["label"])
    dt = time.perf_counter() - t0
    del it
    return n / dt


def _t(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def _merge_flow(bufs, shape) -> np.ndarray:
    """What-if (not the pipeline's code): decode stacked-plane flow images and de-interleave them with
    cv2.merge instead of NumPy's strided copy."""
    h, w, c = shape
    out = np.empty((len(bufs), h, w, c), np.uint8)
    for j, b in enumerate(bufs):
        img = cv2.imdecode(b, cv2.IMREAD_GRAYSCALE)
        cv2.merge([img[k * h : (k + 1) * h] for k in range(c)], out[j])
    return out


def profile(datasets: dict, view_sets: dict, n: int, batch: int, seed: int) -> dict:
    """ms per sample (median over n samples of the faster of 2 passes), one process, one thread, page
    cache warm: storage access split into its parts for each layout, then the transforms every layout
    shares, then collate (one batch of `batch` samples, fastest of 3)."""
    ds_sh, ds_raw, ds_fo = datasets["shards"], datasets["shards-raw"], datasets["folders"]
    rng = np.random.default_rng(seed)
    samples = [int(i) for i in rng.integers(0, len(ds_sh), n)]
    parts: dict = {}
    aug = ds_sh.augmentation
    views = ds_sh.views

    def add(where, key, dt):  # the minimum over passes of each sample, so a burst of load on a shared
        slot = parts.setdefault(where, {}).setdefault(key, {})  # machine does not count
        slot[(n_pass, j)] = dt * 1000

    for n_pass, j in [(p, j) for p in range(2) for j in range(n)]:
        i = samples[j]
        idx = ds_sh.frame_indices(i, 0)
        shard, row = int(ds_sh._shard[i]), int(ds_sh._row[i])
        for v in views:
            # shards (jpeg): the read as the loader does it the first time it meets the row (offsets
            # lookup included), and its parts
            r = ds_sh._reader(v, shard)
            r.__dict__.pop("_offset_cache", None)
            dt, frames = _t(r.read, row, idx)
            t_off, off = _t(lambda: r._file()["offsets"][f"{row:05d}"][()])
            lo, hi = int(off[idx[0]]), int(off[idx[-1] + 1])
            t_span, span = _t(lambda: r._file()["videos"][f"{row:05d}"][lo:hi])
            bufs = [span[off[k] - lo : off[k + 1] - lo] for k in idx]
            mode = cv2.IMREAD_COLOR_RGB if frames.shape[3] == 3 else cv2.IMREAD_GRAYSCALE
            t_dec, _ = _t(lambda: [cv2.imdecode(b, mode) for b in bufs])
            add("shards", f"{v}: read (first access of the row)", dt)
            add("shards", f"{v}:   offsets lookup", t_off)
            add("shards", f"{v}:   byte-range read", t_span)
            add("shards", f"{v}:   imdecode", t_dec)
            rest = dt - t_off - t_span - t_dec
            add("shards", f"{v}:   rest (copy into the clip array; flow: NumPy de-interleave)", rest)
            if frames.shape[3] != 3:
                t_merge = _t(_merge_flow, bufs, frames.shape[1:])[0]
                add("what-if", f"{v}: shards read with cv2.merge de-interleave", t_off + t_span + t_merge)
            # shards-raw
            add("shards-raw", f"{v}: read", _t(ds_raw._reader(v, shard).read, row, idx)[0])
            # folders: the loader's read (cv2.imread per file), then open+read alone and decode alone
            fr = ds_fo._readers[v][shard]
            add("folders", f"{v}: read (cv2.imread per file)", _t(fr.read, row, idx)[0])
            names = ([f"{fr.dirs[row]}/image_{k + 1:05d}.jpg" for k in idx] if frames.shape[3] == 3 else
                     [f"{fr.dirs[row]}/{p}_{k + 1:05d}.jpg" for k in idx for p in ("flow_x", "flow_y")])
            t_open, raw = _t(lambda: [np.fromfile(p, np.uint8) for p in names])
            add("folders", f"{v}:   open+read files only ({len(names)} files)", t_open)
            add("folders", f"{v}:   imdecode only", _t(lambda: [cv2.imdecode(b, mode) for b in raw])[0])
            # common: the transforms of MultiViewClips._view, part by part, with the loader's draws
            kind, size = ds_sh.kinds[v], ds_sh.sizes[v]
            vrng = np.random.default_rng([ds_sh.seed, 0, i, 1, zlib.crc32(v.encode("utf-8"))])
            area, ratio, ux, uy, flip = clips._draw_box(vrng, aug)
            h, w = frames.shape[1:3]
            dt, out = _t(clips._crop_resize, frames, clips._box(h, w, area, ratio, ux, uy), size)
            add("common", f"{v}: crop+resize", dt)
            if kind == "rgb":
                add("common", f"{v}: grey+jitter", _t(clips._colour, out, vrng, aug)[0])
                if flip:
                    out = out[:, :, ::-1]
            dt, _ = _t(clips._to_tensor, out, ds_sh.num_blocks, ds_sh.block_len, *ds_sh._norm[v])
            add("common", f"{v}: to float32 + normalise", dt)
    items = [ds_sh[i] for i in samples[:batch]]
    for name, vs in view_sets.items():
        keep = [*vs, "label", "index", "group"]
        f32 = [{k: s[k] for k in keep} for s in items]
        u8 = [{k: (s[k].to(torch.uint8) if k in vs else s[k]) for k in keep} for s in f32]
        for n_pass in range(3):
            j = 0
            add("collate", f"{name}: float32 batch (per sample)", _t(default_collate, f32)[0] / batch)
            add("collate", f"{name}: uint8 batch (what-if, per sample)", _t(default_collate, u8)[0] / batch)
    ms = {}
    for where, d in parts.items():
        ms[where] = {}
        for key, vals in d.items():
            best = {}
            for (_, j), v in vals.items():
                best[j] = min(v, best.get(j, v))
            ms[where][key] = round(statistics.median(best.values()), 3)
    out = {"samples": n, "ms_per_sample": ms}
    for name, vs in view_sets.items():
        out[name] = summarise(ms, name, vs)
    return out


def summarise(ms: dict, name: str, views: list[str]) -> dict:
    """Per-sample totals for one view set, and the ratios vs the folder loader they imply (predicted
    from the profile's parts, not measured end to end)."""

    def part(where, key):
        return sum(ms[where][f"{v}: {key}"] for v in views if f"{v}: {key}" in ms[where])

    storage = {"folders": part("folders", "read (cv2.imread per file)"),
               "shards": part("shards", "read (first access of the row)"), "shards-raw": part("shards-raw", "read")}
    common = sum(v for k, v in ms["common"].items() if k.split(":")[0] in views)
    common += ms["collate"][f"{name}: float32 batch (per sample)"]
    u8 = ms["collate"][f"{name}: uint8 batch (what-if, per sample)"]
    merged = ms["shards"]["rgb: read (first access of the row)"] * ("rgb" in views) + sum(
        ms["what-if"][f"{v}: shards read with cv2.merge de-interleave"] for v in views if v.startswith("flow"))
    fo, raw = storage["folders"], storage["shards-raw"]
    return {
        "storage_ms": {k: round(v, 2) for k, v in storage.items()},
        "common_ms (crop, jitter, normalise, collate)": round(common, 2),
        "storage_only_ratio_vs_folders": {k: round(fo / v, 2) for k, v in storage.items()},
        "predicted_ratio_vs_folders": {k: round((fo + common) / (v + common), 2) for k, v in storage.items()},
        "ratio_bound_if_storage_were_free": round((fo + common) / common, 2),
        "what_if_predicted_ratio_vs_folders": {
            "shards jpeg, flow de-interleaved with cv2.merge": round((fo + common) / (merged + common), 2),
            "shards raw, uint8 batches, augmentation on the GPU (folders as today)": round((fo + common) / (raw + u8), 2),
            "shards raw vs folders, both with uint8 batches and augmentation on the GPU": round((fo + u8) / (raw + u8), 2),
        },
    }  # fmt: skip


def measure(a, root: Path) -> dict:
    """Build the data under `root` (unless built), measure, and return the result object."""
    built = root / "built.json"
    if built.exists():
        info = json.loads(built.read_text())
    else:
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
        for v in ALL_VIEWS:
            for n in names:
                write_folders(root / "shards" / v / f"{n}.h5", root / "folders" / v, fq)
        t4 = time.perf_counter()
        info = {"source": source, "names": names, "build_seconds": {
            "videos": round(t1 - t0, 1), **{k: round(s, 1) for k, s in stage_s.items()},
            "raw_shards": round(t3 - t2, 1), "folders": round(t4 - t3, 1)}}  # fmt: skip
        built.write_text(json.dumps(info))
    names = info["names"]

    rows = [r for n in names for r in ShardReader(root / "shards" / "rgb" / f"{n}.h5").index]
    result = {
        "benchmark": "loader", "cpu": cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "cv2": cv2.__version__, "h5py": h5py.__version__, "numpy": np.__version__,
        "library_versions": library_versions(), "source": info["source"], "videos": len(rows),
        "frames_per_view": int(sum(r["n_frames"] for r in rows)),
        "frame_sizes_hw": sorted({(r["height"], r["width"]) for r in rows}), "shards_per_view": len(names),
        "flow_note": "flow_tvl1 and flow_farneback both hold Farneback flow (the flow_farneback shards copied "
                     "as flow_tvl1); pose and seg are not produced yet and not included",
        "encodings": {"shards": {"rgb": "jpeg 90", "flow": "jpeg 95"}, "shards-raw": "raw, uncompressed",
                      "folders": {"rgb": "image_%05d.jpg = the rgb shard's JPEG bytes", "flow": "flow_x/flow_y jpeg 95"}},
        "batch_size": a.batch_size, "timed_batches": a.batches, "repeats": a.repeats,
        "clip": "8 blocks x 5 frames, stride 3, 128x128 per view, training augmentation",
        "build_seconds": info["build_seconds"],
    }  # fmt: skip

    result["disk"] = {}
    for v in ALL_VIEWS:
        row = {"shards": disk([root / "shards" / v]), "shards-raw": disk([root / "shards-raw" / v]),
               "folders": disk([root / "folders" / v])}
        row["shards_vs_folders_bytes"] = round(row["shards"]["bytes"] / row["folders"]["bytes"], 3)
        alloc = row["shards"]["allocated_bytes"] / row["folders"]["allocated_bytes"]
        row["shards_vs_folders_allocated"] = round(alloc, 3)
        result["disk"][v] = row

    # the same sample of the same dataset from each layout: rgb identical, flow within JPEG error
    sets = {name: {lay: make_dataset(lay, root, names, views, a.seed) for lay in LAYOUTS}
            for name, views in VIEW_SETS.items()}  # fmt: skip
    full = sets["rgb+flow_tvl1+flow_farneback"]
    check = {lay: full[lay][0] for lay in LAYOUTS}
    result["same_samples_max_abs_diff_vs_shards"] = {
        lay: {v: float((check[lay][v] - check["shards"][v]).abs().max()) for v in ALL_VIEWS} for lay in LAYOUTS
    }

    # warm the page cache: every file of every layout read once
    for lay in LAYOUTS:
        for p in (root / lay).rglob("*"):
            if p.is_file():
                p.read_bytes()

    runs = {name: {lay: {w: [] for w in a.workers} for lay in LAYOUTS} for name in VIEW_SETS}
    for rep in range(a.repeats):
        for name in VIEW_SETS:
            for w in a.workers:
                for lay in LAYOUTS[rep % 3 :] + LAYOUTS[: rep % 3]:  # order rotated each repeat
                    runs[name][lay][w].append(clips_per_s(sets[name][lay], a.batch_size, w, a.batches, a.seed + rep))
    result["clips_per_s"] = {}
    for name in VIEW_SETS:
        out = {}
        for w in a.workers:
            med = {lay: statistics.median(runs[name][lay][w]) for lay in LAYOUTS}
            out[f"workers={w}"] = {
                **{lay: round(med[lay], 2) for lay in LAYOUTS},
                "shards_vs_folders": round(med["shards"] / med["folders"], 3),
                "shards-raw_vs_folders": round(med["shards-raw"] / med["folders"], 3),
                "paired_ratios_per_repeat": {
                    lay: [round(x / f, 3) for x, f in zip(runs[name][lay][w], runs[name]["folders"][w])]
                    for lay in ("shards", "shards-raw")},
                "goal": GOAL,
                "runs": {lay: [round(x, 2) for x in runs[name][lay][w]] for lay in LAYOUTS},
            }
        result["clips_per_s"][name] = out

    result["profile"] = profile(full, VIEW_SETS, a.profile_samples, a.batch_size, a.seed)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", nargs="+", default=None, help="real videos (default: generated demo videos)")
    ap.add_argument("--demo-classes", type=int, default=4)
    ap.add_argument("--demo-groups", type=int, default=2)
    ap.add_argument("--demo-clips", type=int, default=2)
    ap.add_argument("--demo-frames", type=int, default=150)
    ap.add_argument("--demo-size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"))
    ap.add_argument("--short-side", type=int, default=128)
    ap.add_argument("--videos-per-shard", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="threads of the frames and flow stages (build only)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=6, help="timed batches per measurement")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile-samples", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="scratch folder (default: a temporary one); reused if built")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    a = ap.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    t_start = time.perf_counter()

    root = Path(a.out or tempfile.mkdtemp(prefix="cocon-loader-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        result = measure(a, root)
    finally:
        if a.out is None and not a.keep:  # an explicit --out is kept (and reused by the next run)
            shutil.rmtree(root, ignore_errors=True)
    result["seconds_total"] = round(time.perf_counter() - t_start, 1)
    if a.out is not None or a.keep:
        result["scratch"] = str(root)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
