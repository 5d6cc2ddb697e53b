"""What every per-shard stage shares: the command line, logging, root attributes, parallel ordered
processing with per-video failure capture, and the end-of-job report."""

from __future__ import annotations

import argparse
import logging
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

import cv2
from tqdm import tqdm

from cocon.config import add_config_args, config_from_args
from cocon.provenance import code_revision, library_versions
from cocon.runtime import setup_logging
from cocon.workflow.jobs import dataset_params, stage_params
from cocon.preprocess.video import BadVideo

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
