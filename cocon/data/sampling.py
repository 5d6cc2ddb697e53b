"""Temporal sampling of the loader (docs/loader.md, "Temporal sampling" and "Views with their own frame
stride"): which rgb frames a clip or a dense-evaluation window reads, and how they map to the frames a
strided view (pose, seg) stores. Frame indices are int64 rgb frame numbers (0-based)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cocon import views as V

__all__ = ["ClipGeometry", "clip_indices", "dense_windows", "view_frame_indices", "rgb_length"]


@dataclass(frozen=True)
class ClipGeometry:
    """The shape of a clip: N = `num_blocks` blocks of K = `block_len` frames, one rgb frame every `stride`
    frames; `sizes` {view or kind: input side in px} overrides rgb 128, flow_* 128, pose/seg 64 (square
    output). Stored as sorted (key, size) pairs so that the geometry is hashable."""

    num_blocks: int = 8
    block_len: int = 5
    stride: int = 3
    sizes: Mapping[str, int] | tuple[tuple[str, int], ...] | None = None

    def __post_init__(self):
        if min(self.num_blocks, self.block_len, self.stride) < 1:
            raise ValueError("num_blocks, block_len and stride must be >= 1")
        for name in ("num_blocks", "block_len", "stride"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "sizes", tuple(sorted(dict(self.sizes or {}).items())))

    def input_size(self, view: str) -> int:
        """Output side (px) of `view`: its entry in `sizes`, else its kind's, else the kind's default."""
        return V.input_size(view, dict(self.sizes))

    def indices(self, n_frames: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """`clip_indices` of this geometry: int64 (N*K,)."""
        return clip_indices(n_frames, self.num_blocks, self.block_len, self.stride, rng)

    def windows(self, n_frames: int, window_stride: int | None = None) -> np.ndarray:
        """`dense_windows` of this geometry: int64 (W, N*K)."""
        return dense_windows(n_frames, self.num_blocks, self.block_len, self.stride, window_stride)


def clip_indices(
    n_frames: int, num_blocks: int = 8, block_len: int = 5, stride: int = 3, rng: np.random.Generator | None = None
) -> np.ndarray:
    """The N*K rgb frame indices of one clip, int64 (N*K,): N contiguous, non-overlapping blocks of K
    frames, one frame every `stride` frames, from a start drawn uniformly over every start that fits
    (`rng`), or the centre start when `rng` is None.

    Short videos are kept: when the clip does not fit (n_frames < (N*K-1)*stride + 1) the stride shrinks
    to the largest that fits, (n_frames-1) // (N*K-1), down to 1; a video shorter than N*K frames is
    stretched in time: index m = floor(m * n_frames / (N*K)), i.e. every frame in order, each repeated
    once or twice (never a jump back to the start)."""
    m = num_blocks * block_len
    if n_frames < 1 or m < 1 or stride < 1:
        raise ValueError(f"bad clip request: n_frames={n_frames}, N*K={m}, stride={stride}")
    s = stride if m == 1 else min(stride, (n_frames - 1) // (m - 1))
    if s >= 1:
        free = n_frames - ((m - 1) * s + 1)
        start = free // 2 if rng is None else int(rng.integers(0, free + 1))
        return start + s * np.arange(m, dtype=np.int64)
    return (np.arange(m, dtype=np.int64) * n_frames) // m


def dense_windows(
    n_frames: int, num_blocks: int = 8, block_len: int = 5, stride: int = 3, window_stride: int | None = None
) -> np.ndarray:
    """The test windows of a video (dense evaluation), as rgb frame indices, int64 (W, N*K).

    Frames 0, stride, 2*stride, ... are cut into consecutive non-overlapping blocks of K frames (an
    incomplete last block is left out); windows of N blocks start every `window_stride` blocks (default
    N // 2: half overlap). When the last window ends before the last complete block, one more window
    ending at that block is added, so the whole video is seen. A video too short for one window at
    this stride gets exactly one window, the centre clip of `clip_indices` (stride shrunk, or frames
    repeated): every video is scored, none is dropped."""
    n, k, m = int(num_blocks), int(block_len), int(num_blocks) * int(block_len)
    ws = max(1, n // 2) if window_stride is None else int(window_stride)
    if ws < 1:
        raise ValueError(f"window_stride must be >= 1, got {window_stride}")
    if n_frames < (m - 1) * stride + 1:
        return clip_indices(n_frames, n, k, stride, None)[None]
    blocks = len(range(0, n_frames, stride)) // k
    starts = list(range(0, blocks - n + 1, ws))
    if starts[-1] != blocks - n:
        starts.append(blocks - n)
    return stride * (np.array(starts, np.int64)[:, None] * k + np.arange(m, dtype=np.int64)[None])


def view_frame_indices(rgb_indices: np.ndarray, n_frames: int, stride: int = 1, offset: int = 0) -> np.ndarray:
    """rgb frame indices -> the view's own indices, int64 of the same shape: the nearest stored frame
    (ties to the later one), clipped to 0..n_frames-1. (stride, offset): the view's `frame_map`."""
    idx = np.asarray(rgb_indices, dtype=np.int64)
    if stride == 1 and offset == 0:
        return np.minimum(idx, n_frames - 1)
    own = np.floor((idx - offset) / stride + 0.5).astype(np.int64)
    return np.clip(own, 0, n_frames - 1)


def rgb_length(n_frames: int, stride: int = 1, offset: int = 0) -> int:
    """Number of rgb frames that a view of `n_frames` stored frames covers, with its (stride, offset)."""
    return offset + (n_frames - 1) * stride + 1
