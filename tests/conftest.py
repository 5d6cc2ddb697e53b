"""Shared fixtures: real tiny encoded videos written at test time with cv2.VideoWriter, the bad inputs
the frames stage must survive, and a helper that writes a cocon manifest for (video_id, path) pairs.

Every good clip shows a smooth random colour texture translated by a known whole number of pixels per
frame, so optical flow on it is non-trivial and its expected value is known (content moving right and
down gives u > 0 and v > 0)."""

from __future__ import annotations

import os

# One OpenMP thread per process (torch, OpenBLAS, and the jobs the tests start), unless the caller chose:
# the SLURM runs work beside the tests (slurm_runs.py), and OpenMP threads that spin-wait for a core
# another process holds burn it (tests/test_clips.py beside two busy processes: 24 s and 13.6 s of CPU
# with 2 threads, 15 s and 5.1 s with 1; alone 9-11 s either way).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import dataclasses
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from cocon.sources.records import VideoRecord, write_manifest

FPS = 25.0


@dataclasses.dataclass(frozen=True)
class Clip:
    """A video file written by the fixtures and what is known about it."""

    path: str
    width: int = 0  # pixels as encoded (0 for files that are not videos)
    height: int = 0
    frames: int = 0  # frames written (the container declares this many)
    shift: tuple[int, int] = (0, 0)  # content displacement per frame in px, (dx, dy)
    reason: str = ""  # for bad inputs: how the frames stage's failure reason starts


def texture(height: int, width: int, seed: int, sigma: float = 1.5) -> np.ndarray:
    """Smooth random BGR texture (H, W, 3) uint8 with independent channels, stretched to 0..255."""
    rng = np.random.default_rng(seed)
    noise = rng.random((height, width, 3), dtype=np.float32)
    if sigma > 0:
        noise = cv2.GaussianBlur(noise, (0, 0), sigma)
    lo, hi = noise.min(axis=(0, 1)), noise.max(axis=(0, 1))
    return np.rint((noise - lo) / (hi - lo) * 255).astype(np.uint8)


def translated_frames(
    width: int, height: int, n: int, shift: tuple[int, int], seed: int, sigma: float = 1.5, noise: int = 0
) -> np.ndarray:
    """n BGR frames (n, H, W, 3): a fixed texture seen through a window that moves by -shift per frame,
    so the content moves by +shift (dx, dy) px per frame. `noise` adds per-frame uniform noise."""
    dx, dy = shift
    pad_x, pad_y = abs(dx) * n + 2, abs(dy) * n + 2
    big = texture(height + 2 * pad_y, width + 2 * pad_x, seed, sigma)
    rng = np.random.default_rng(seed + 1)
    out = np.empty((n, height, width, 3), np.uint8)
    for k in range(n):
        y0, x0 = pad_y - dy * k, pad_x - dx * k
        f = big[y0 : y0 + height, x0 : x0 + width]
        if noise:
            f = np.clip(f.astype(np.int16) + rng.integers(-noise, noise + 1, f.shape), 0, 255).astype(np.uint8)
        out[k] = f
    return out


def write_video(path: Path, fourcc: str, frames_bgr: np.ndarray, fps: float = FPS) -> None:
    h, w = frames_bgr.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"cv2.VideoWriter cannot write {fourcc} to {path}"
    for f in frames_bgr:
        writer.write(np.ascontiguousarray(f))
    writer.release()
    assert path.stat().st_size > 0, path


def decode_bgr(path: str) -> np.ndarray:
    """Every frame cv2.VideoCapture (FFmpeg) decodes from `path`, (T, H, W, 3) uint8 BGR."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok or frame is None:
            break
        frames.append(frame)
    cap.release()
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


def declared_frames(path: str) -> int:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else -1
    finally:
        cap.release()


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> dict[str, Clip]:
    """Good and bad input videos, written once per session.

    good:  avi   XVID 64x48, 16 frames, content moving (+2, +1) px/frame
           mp4   mp4v 96x72, 12 frames, content moving (-3, +3) px/frame
           tall  mp4v 48x64 (portrait), 10 frames, content moving (+1, -2) px/frame
    bad:   zero       zero-byte .avi                      -> "zero-byte file"
           garbage    4 KiB of random bytes named .avi    -> "cannot be opened..."
           truncated  first third of a 30-frame XVID avi  -> "truncated: decoded N of the 30 frames..."
           short      XVID 64x48 with 3 frames            -> "too short: 3 frames..." (min_frames 8)
           missing    a path that does not exist          -> "file not found"
    """
    root = tmp_path_factory.mktemp("videos")
    clips: dict[str, Clip] = {}

    def good(name, fourcc, ext, w, h, n, shift, seed):
        p = root / f"{name}{ext}"
        write_video(p, fourcc, translated_frames(w, h, n, shift, seed))
        clips[name] = Clip(str(p), w, h, n, shift)

    good("avi", "XVID", ".avi", 64, 48, 16, (2, 1), seed=1)
    good("mp4", "mp4v", ".mp4", 96, 72, 12, (-3, 3), seed=2)
    good("tall", "mp4v", ".mp4", 48, 64, 10, (1, -2), seed=3)

    zero = root / "zero.avi"
    zero.write_bytes(b"")
    clips["zero"] = Clip(str(zero), reason="zero-byte file")

    garbage = root / "garbage.avi"
    garbage.write_bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    clips["garbage"] = Clip(str(garbage), reason="cannot be opened")

    # An unsmoothed, noisy source so its frames are large compared with the AVI header: the first third
    # of the file then holds a few whole frames while the header still declares all 30.
    src = root / "truncated_source.avi"
    write_video(src, "XVID", translated_frames(96, 72, 30, (2, 0), seed=4, sigma=0, noise=20))
    data = src.read_bytes()
    trunc = root / "truncated.avi"
    trunc.write_bytes(data[: len(data) // 3])
    n_dec, n_decl = len(decode_bgr(str(trunc))), declared_frames(str(trunc))
    assert n_decl == 30 and 0 < n_dec < 30 - 2, (n_dec, n_decl)  # really truncated, yet opens and decodes
    clips["truncated"] = Clip(str(trunc), 96, 72, 30, reason=f"truncated: decoded {n_dec} of the 30 frames")
    clips["truncated_source"] = Clip(str(src), 96, 72, 30, (2, 0))

    short = root / "short.avi"
    write_video(short, "XVID", translated_frames(64, 48, 3, (1, 0), seed=5))
    clips["short"] = Clip(str(short), 64, 48, 3, (1, 0), reason="too short: 3 frames")

    clips["missing"] = Clip(str(root / "not_there.avi"), reason="file not found")
    return clips


def make_records(pairs, label_of=None) -> list[VideoRecord]:
    """VideoRecords for (video_id, path) pairs: label = the id's part before '/', label_index = rank of
    the label among the sorted labels, group = the id, and two splits with alternating roles."""
    pairs = list(pairs)
    labels = sorted({vid.split("/")[0] for vid, _ in pairs})
    out = []
    for i, (vid, path) in enumerate(pairs):
        label = vid.split("/")[0]
        out.append(
            VideoRecord(
                video_id=vid,
                path=str(path),
                label=label,
                label_index=labels.index(label),
                group=f"{label}_g{i:02d}",
                splits={"1": "train" if i % 2 == 0 else "test", "2": "unused" if i % 3 == 0 else "train"},
            )
        )
    return out


@pytest.fixture(scope="session")
def make_manifest():
    """make_manifest(path, pairs, per_shard=None) -> list of shards (lists of VideoRecord).

    Writes a manifest with cocon.sources.records.write_manifest for (video_id, path) pairs, kept in the given
    order: one shard ("00000") by default, or consecutive chunks of `per_shard` pairs."""

    def make(path, pairs, per_shard: int | None = None) -> list[list[VideoRecord]]:
        records = make_records(pairs)
        n = per_shard or max(1, len(records))
        shards = [records[i : i + n] for i in range(0, len(records), n)]
        write_manifest(path, shards)
        return shards

    return make


@pytest.fixture
def one_torch_thread():
    """Small convolutions run faster on one thread, and the tests then do not fight for a shared CPU."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def gloo_process(rank: int, port: int, world_size: int = 2):
    """Inside a spawned test process: join a gloo process group of `world_size` CPU processes on
    127.0.0.1:`port` as `rank`, one torch thread; returns the device (cpu)."""
    import os

    import torch

    from cocon.train import distributed as D

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    return D.setup("cpu")


def stage_config(stage: str, params: dict, dataset: dict, method: str | None = None) -> str:
    """The --config-json a rule gives a preprocessing stage (cocon.workflow.jobs) for the parameters
    `params` it records and the dataset attributes `dataset`."""
    import json

    params = dict(params)
    cfg: dict = {"dataset": dict(dataset)}
    if stage == "flow":
        cfg["flow"] = {"bound": params["bound"], "encoding": params["encoding"], method: params[method]}
    elif stage in ("seg", "pose"):
        cfg["seed"] = params.pop("seed")
        if "seg" in params:
            seg = dict(params.pop("seg"))
            seg.pop("seed", None)
            cfg["seg"] = seg
        cfg[stage] = params
    else:
        cfg[stage] = params
    return json.dumps(cfg)


def tiny_training(**sections: dict) -> dict:
    """The train, cpc, cocon and runtime sections for tests: the smallest networks and budgets on CPU.
    `sections` update them key by key, e.g. tiny_training(train={"val_fraction": 0.3}, cocon={"epochs": 2})."""
    out = {
        "train": {
            "views": ["rgb", "flow_tvl1"],
            "input_size": {"rgb": 32, "flow": 32},
            "num_blocks": 4,
            "block_len": 2,
            "stride": 1,
            "val_fraction": 0.2,
            "width": 4,  # tiny networks: small checkpoints (the suite's temporary files) and fast steps
        },
        "cpc": {"epochs": 1, "pred_steps": 2, "batch_size": 2, "max_steps_per_epoch": 1},
        "cocon": {"epochs": 1},
        # as the demo (config.yaml): one thread per network job, jobs side by side
        "runtime": {"workers": 0, "threads": 1, "gpus": 0, "device": "cpu"},
    }
    for name, values in sections.items():
        out[name] = {**out.get(name, {}), **values}
    return out


REPO = Path(__file__).resolve().parents[1]


def run_cocon(
    *args: str, cwd: Path | str | None = None, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess:
    """`python -m cocon ARGS` in a subprocess (the way the rules call it), from any cwd; env on top of
    the current one. Output captured as text."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "cocon", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": path, **env},
    )


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The tiny demo DAG with every view (workflow_runs.ALL_VIEWS), finished once for the whole session: the
    workflow, reruns and views-figure tests read it; a test that changes it works on a copy."""
    from workflow_runs import ALL_VIEWS, snakemake

    work = tmp_path_factory.mktemp("demo_run")
    snakemake(work, ALL_VIEWS, "--cores", "2")
    return work


# ---- the SLURM runs (tests/slurm_runs.py): started with the session, read by tests/test_slurm.py at its end


def pytest_collection_modifyitems(items):
    """Tests that read the SLURM runs go last (a stable sort): the runs, started when the session starts,
    wait mostly for the queue, and have the rest of the suite's time to finish beside it."""
    items.sort(key=lambda item: "slurm_runs" in item.fixturenames)


@pytest.fixture(scope="session", autouse=True)
def slurm_background(request, tmp_path_factory):
    """Starts the SLURM runs before the first test when a selected test reads them; stops what is left
    (cluster daemons, runs of an aborted session) when the session ends."""
    from slurm_runs import CALLS, SlurmRuns, unavailable

    if not any("slurm_runs" in item.fixturenames for item in request.session.items) or unavailable():
        yield None
        return
    folders = {name: tmp_path_factory.mktemp(name) for name in CALLS}
    runs = SlurmRuns(tmp_path_factory.mktemp("slurm"), folders).start()
    try:
        yield runs
    finally:
        runs.close()


@pytest.fixture(scope="session")
def slurm_runs(slurm_background):
    """(cluster, {run: (folder, what Snakemake printed, seconds)}, {run: id of the job cancelled in it}),
    once every run has finished. Skipped where SLURM cannot run, unless COCON_REQUIRE_SLURM=1."""
    from slurm_runs import unavailable

    why = unavailable()
    if why:
        if os.environ.get("COCON_REQUIRE_SLURM") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return slurm_background.result()
