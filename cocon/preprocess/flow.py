"""Flow stages: TVL1 or Farneback optical flow between consecutive stored RGB frames of one shard.

    cocon flow --method tvl1 --rgb rgb/00003.h5 --shard 00003 --out flow_tvl1/00003.h5 \
        --config-json '{"dataset":{...},"flow":{"bound":20,"encoding":{...},"tvl1":{...}}}'

Alignment with the rgb view: flow index k holds the forward flow from rgb frame k to frame k+1, in
pixels of the stored frames (u = x, v = y), for k = 0..T-2. The last index, T-1, repeats flow T-2,
so every view of a video has the same T and index k means the same instant in all of them.

TVL1 has two backends with the same output format (flow.tvl1.backend): `opencv`
(cv2.optflow.DualTVL1OpticalFlow, one pair per thread) and `torch` (cocon.preprocess.tvl1, batches of
flow.tvl1.batch_size pairs, on CUDA when there is one); `auto` picks torch when a GPU is visible, else
opencv. The backend that ran and its device are recorded in the shard attributes (tvl1_backend,
tvl1_device) and in each video's attributes.

Quantisation: each component is clipped to [-bound, +bound] px and mapped linearly to uint8,
q = round((f + bound) * 255 / (2 * bound)); so 0 px -> 127.5 -> 128, and f = q * 2 * bound / 255 - bound.
Stored as uint8 (T, H, W, 2), channel 0 = u (x), channel 1 = v (y).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from cocon.preprocess import stage
from cocon.preprocess.video import BadVideo
from cocon.runtime import resolve_device, set_threads
from cocon.views import tvl1_placement

log = logging.getLogger("cocon")

METHODS = ("tvl1", "farneback")
FLOW_INDEX = "k: forward flow from rgb frame k to k+1; index T-1 repeats T-2"


def quantize(flow: np.ndarray, bound: float) -> np.ndarray:
    """float flow (..., 2) in px -> uint8, clipped to +-bound (see module docstring).

    Computed as f * 255/(2*bound) + 127.5 in float32: the offset 127.5 is exact, so zero motion is
    exactly 127.5 and rounds (half to even) to 128 for every bound; clipping to [0, 255] after the
    affine map equals clipping f to +-bound before it."""
    q = np.multiply(flow, np.float32(255.0 / (2.0 * bound)), dtype=np.float32)
    q += np.float32(127.5)
    np.clip(q, 0.0, 255.0, out=q)
    return np.rint(q, out=q).astype(np.uint8)


def dequantize(q: np.ndarray, bound: float) -> np.ndarray:
    """uint8 flow -> float32 px (the inverse of `quantize` up to 2*bound/255 px)."""
    return q.astype(np.float32) * np.float32(2.0 * bound / 255.0) - np.float32(bound)


def make_tvl1(p: dict):
    """cv2.optflow.DualTVL1OpticalFlow with parameters from the config's flow.tvl1 section."""
    return cv2.optflow.DualTVL1OpticalFlow_create(
        tau=p["tau"],
        lambda_=p["lambda"],
        theta=p["theta"],
        nscales=p["scales"],
        warps=p["warps"],
        epsilon=p["epsilon"],
        innnerIterations=p["inner_iterations"],
        outerIterations=p["outer_iterations"],
        scaleStep=p["scale_step"],
        gamma=p["gamma"],
        medianFiltering=p["median_filtering"],
        useInitialFlow=False,
    )


def tvl1_backend(p: dict) -> tuple[str, str]:
    """(backend, device) that TVL1 runs on in this job for the flow.tvl1 section `p`
    (cocon.views.tvl1_placement with the GPUs torch sees; an explicit cuda device without one fails)."""
    if p.get("backend", "opencv") == "opencv":
        return tvl1_placement(p, False)
    if p.get("device", "auto") != "auto":
        resolve_device(p["device"])  # an explicit cuda device without a GPU fails here, naming it
    return tvl1_placement(p, _gpu_visible())


def _gpu_visible() -> bool:
    """Whether torch sees a GPU; without importing torch (~1.5 s, ~200 MB per job) where
    CUDA_VISIBLE_DEVICES hides every GPU, as `cocon gpus 0` does for a job given none."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return False
    import torch

    return torch.cuda.is_available()


class FlowComputer:
    """Computes float32 flow (H, W, 2) for one grayscale pair; safe to call from many threads
    (each thread gets its own OpenCV algorithm object). With the torch TVL1 backend, `batched` is
    True and `batch` computes many pairs at once instead."""

    def __init__(self, method: str, params: dict):
        if method not in METHODS:
            raise ValueError(f"unknown flow method {method!r}; choose from {METHODS}")
        self.method = method
        self.params = params[method]
        self._local = threading.local()
        self.backend, self.device = tvl1_backend(self.params) if method == "tvl1" else ("opencv", "cpu")
        self.batched = self.backend == "torch"
        if self.batched:
            from cocon.preprocess import tvl1 as tvl1_torch  # torch: only for this backend

            self.batch_size = self.params["batch_size"]
            self._tvl1 = tvl1_torch.TVL1(self.params, self.device, compile=self.device.startswith("cuda"))

    def batch(self, prev_gray: np.ndarray, next_gray: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W) pairs -> float32 flow (B, H, W, 2), torch backend."""
        return self._tvl1(prev_gray, next_gray).numpy()

    def __call__(self, prev_gray: np.ndarray, next_gray: np.ndarray) -> np.ndarray:
        if self.method == "tvl1":
            algo = getattr(self._local, "tvl1", None)
            if algo is None:
                algo = self._local.tvl1 = make_tvl1(self.params)
            return algo.calc(prev_gray, next_gray, None)
        p = self.params
        return cv2.calcOpticalFlowFarneback(
            prev_gray,
            next_gray,
            None,
            p["pyr_scale"],
            p["levels"],
            p["winsize"],
            p["iterations"],
            p["poly_n"],
            p["poly_sigma"],
            0,
        )


def video_flow(frames: np.ndarray, compute: FlowComputer, bound: float, pool_map) -> np.ndarray:
    """RGB frames uint8 (T, H, W, 3) -> quantised flow uint8 (T, H, W, 2), aligned as documented.

    `pool_map(fn, iterable)` runs the T-1 pairs (e.g. ThreadPoolExecutor.map, or builtin map)."""
    t = len(frames)
    if t < 2:
        raise BadVideo(f"too short for flow: {t} frame")
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
    out = np.empty((t, *gray.shape[1:], 2), np.uint8)
    if compute.batched:
        for s in range(0, t - 1, compute.batch_size):
            e = min(s + compute.batch_size, t - 1)
            try:
                flow = compute.batch(gray[s:e], gray[s + 1 : e + 1])
            except ValueError as exc:  # e.g. frames too small for TV-L1: this video fails, not the shard
                raise BadVideo(f"tvl1 (torch): {exc}") from exc
            out[s:e] = quantize(flow, bound)
    else:

        def pair(k):
            out[k] = quantize(compute(gray[k], gray[k + 1]), bound)

        list(pool_map(pair, range(t - 1)))
    out[t - 1] = out[t - 2]
    return out


def run(method: str, rgb: str, shard: str, out: str, params: dict, dataset: dict, threads: int = 1):
    """Write the flow shard `out` from the rgb shard `rgb`; returns the failures (id, reason)."""
    compute = FlowComputer(method, params)
    if compute.batched:  # the torch TVL1 backend (an OpenCV job never imports torch)
        set_threads(threads)
    view = f"flow_{method}"
    attrs = {"flow_index": FLOW_INDEX}
    meta = {"method": method, "bound": float(params["bound"])}
    if method == "tvl1":
        attrs.update(tvl1_backend=compute.backend, tvl1_device=compute.device)
        meta["backend"] = compute.backend
        log.info("tvl1 backend: %s on %s", compute.backend, compute.device)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pool_map = map if threads == 1 else pool.map
        return stage.derive_view(
            view,
            rgb,
            shard,
            out,
            params,
            dataset,
            attrs,
            lambda row, idx, frames: video_flow(frames, compute, params["bound"], pool_map),
            video_meta=meta,
        )


def main(argv=None) -> None:
    p = stage.stage_parser("Optical flow between consecutive frames of an rgb shard.")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--rgb", required=True, help="the rgb shard of the same shard name")
    method = p.parse_known_args(argv)[0].method
    a, params, dataset = stage.stage_args(p, argv, "flow", method)
    stage.setup(a.threads)
    run(a.method, a.rgb, a.shard, a.out, params, dataset, a.threads)


if __name__ == "__main__":
    main()
