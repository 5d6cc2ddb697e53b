"""What every per-shard stage shares: the command line, logging, root attributes, parallel ordered
processing with per-video failure capture, and the end-of-job report."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import cv2
import numpy as np
from tqdm import tqdm

from cocon.config import add_config_args, config_from_args
from cocon.data.shards import ShardReader, ShardWriter, encode_frames
from cocon.preprocess.video import BadVideo
from cocon.provenance import code_revision, library_versions
from cocon.runtime import setup_logging
from cocon.sources.records import VideoRecord
from cocon.workflow.jobs import dataset_params, stage_params

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("cocon")


def stage_parser(description: str) -> argparse.ArgumentParser:
    """Arguments common to the shard stages (the configuration as cocon.config.add_config_args);
    stage-specific ones are added by the caller."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--shard", required=True, help="shard name, e.g. 00003")
    p.add_argument("--out", required=True, help="output shard (.h5); written atomically")
    p.add_argument("--threads", type=int, default=1, help="worker threads (default 1)")
    add_config_args(p)
    return p


def stage_args(p: argparse.ArgumentParser, argv, stage: str, method: str | None = None):
    """Parse a stage's command line: (args, the parameters it records, the dataset attributes)."""
    a = p.parse_args(argv)
    cfg = config_from_args(a)
    return a, stage_params(cfg, stage, method), dataset_params(cfg)


def setup(threads: int) -> None:
    """Log to stderr (the rule sends it to the job's log) and keep OpenCV to one thread per worker:
    parallelism comes from our own pool of `threads` workers, so `threads` is what the job uses."""
    setup_logging()
    cv2.setNumThreads(1)
    if threads < 1:
        raise SystemExit("--threads must be >= 1")


def root_attrs(stage: str, params: dict, dataset: dict) -> dict:
    """Provenance attributes of a shard: the stage, its parameters, the dataset, code and versions."""
    return {
        "stage": stage,
        "params": params,
        "dataset": dataset,
        "code_revision": code_revision(),
        "library_versions": library_versions(),
    }


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[tuple[T, R | BadVideo]]:
    """Apply `fn` to items on `threads` threads, yielding (item, result) in input order.

    A BadVideo raised by `fn` is yielded as the result instead of propagating; at most 2*threads
    items are in flight, so memory stays bounded on long shards."""

    def guarded(item):
        try:
            return fn(item)
        except BadVideo as exc:
            return exc

    items = iter(items)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque = deque()
        for item in items:
            pending.append((item, pool.submit(guarded, item)))
            if len(pending) >= 2 * threads:
                head, fut = pending.popleft()
                yield head, fut.result()
        while pending:
            head, fut = pending.popleft()
            yield head, fut.result()


def progress(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="video", file=sys.stderr, mininterval=2.0, dynamic_ncols=False)


def report(stage: str, shard: str, ok: int, failures: list[tuple[str, str]]) -> None:
    """End-of-job lines in the log: a count, then one line per failed video with its reason."""
    log.info("%s shard %s: %d ok, %d failed", stage, shard, ok, len(failures))
    for vid, reason in failures:
        log.warning("FAILED %s [%s]: %s", vid, stage, reason)


def video_record(row: dict) -> VideoRecord:
    """The VideoRecord of a shard index row."""
    return VideoRecord(
        row["video_id"], row["path"], row["label"], row["label_index"], row["group"], json.loads(row["splits"])
    )


def derive_view(
    view: str,
    rgb: str,
    shard: str,
    out: str,
    params: dict,
    dataset: dict,
    attrs: dict,
    compute: Callable[[int, np.ndarray, np.ndarray], np.ndarray],
    upstream: dict[str, ShardReader] | None = None,
    frames: Callable[[int], np.ndarray] | None = None,
    video_meta: dict | None = None,
) -> list[tuple[str, str]]:
    """The loop of every view computed from the rgb view (flow, seg, pose, a registered view): write the
    `view` shard `out` from the rgb shard `rgb`, same rows in the same order.

    For each video ok in rgb (and in every `upstream` view, {name: ShardReader of the same shard}),
    `compute(row, idx, frames)` gets the rgb frame indices idx (int64 (T',); `frames(n_frames)`, default
    all) and those frames, uint8 (T', H, W, 3) RGB, and returns the view's frames, uint8 (T'', h, w, C).
    A BadVideo it raises fails that video only, with its reason; rows failed upstream are carried as
    failures. Root attributes: provenance, the rgb shard's params, `attrs`; per video: the rgb row's
    source metadata and `video_meta`. Returns the failures [(video_id, reason)]."""
    src = ShardReader(rgb)
    upstream = upstream or {}
    for r in upstream.values():
        if [x["video_id"] for x in r.index] != [x["video_id"] for x in src.index]:
            raise SystemExit(f"{r.path}: its rows differ from {rgb} (not the same shard)")
    root = {**root_attrs(view, params, dataset), "rgb_params": src.attrs["params"], **attrs}
    failures = []
    with (
        ShardWriter(out, view, shard, root, params["encoding"]) as writer,
        progress(len(src.index), f"{view} {shard}") as bar,
    ):
        for i, row in enumerate(src.index):
            rec = video_record(row)
            meta = {k: row[k] for k in ("fps", "orig_height", "orig_width", "orig_frames")}
            reason = "" if row["status"] == "ok" else f"failed upstream (rgb): {row['reason']}"
            for name, r in upstream.items():
                if not reason and r.index[i]["status"] != "ok":
                    reason = f"failed upstream ({name}): {r.index[i]['reason']}"
            if not reason:
                idx = frames(row["n_frames"]) if frames else np.arange(row["n_frames"], dtype=np.int64)
                try:
                    if not idx.size:
                        raise BadVideo(f"too short for {view}: {row['n_frames']} frames")
                    result = compute(i, idx, src.read(i, idx))
                except BadVideo as exc:
                    reason = str(exc)
                else:
                    meta.update(video_meta or {})
                    writer.add_video(rec, encode_frames(result, params["encoding"]), meta)
            if reason:
                writer.add_failure(rec, reason, meta)
                failures.append((rec.video_id, reason))
            bar.update()
    src.close()
    report(view, shard, len(src.index) - len(failures), failures)
    return failures
