"""Decoding videos into resized RGB frames, with a precise reason when a video is unusable."""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

INTERPOLATION = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


class BadVideo(Exception):
    """A video that cannot be used; `str(exc)` is the reason recorded in the shard's failures."""


@dataclass
class DecodedVideo:
    """frames: uint8 (T, H, W, 3) RGB, resized; fps: frames per second as declared by the container;
    orig_height/orig_width: pixels before resizing; orig_frames: frame count declared by the container
    (0 if it declares none)."""

    frames: np.ndarray
    fps: float
    orig_height: int
    orig_width: int
    orig_frames: int


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H, W) after scaling so that min(H, W) == short_side, aspect ratio kept (rounded)."""
    if height <= width:
        return short_side, max(1, round(width * short_side / height))
    return max(1, round(height * short_side / width)), short_side


def decode_video(
    path: str,
    short_side: int,
    interpolation: str = "area",
    max_frames: int | None = None,
    min_frames: int = 2,
) -> DecodedVideo:
    """Decode every frame of `path` (no frame-rate resampling), resize to `short_side`, return RGB.

    Raises BadVideo for: a missing or zero-byte file, a file no decoder opens, a stream with no
    decodable frame, a stream that ends well before the frame count its container declares
    (truncated), or fewer than `min_frames` frames (too short)."""
    if not os.path.exists(path):
        raise BadVideo("file not found")
    if os.path.getsize(path) == 0:
        raise BadVideo("zero-byte file")
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    try:
        if not cap.isOpened():
            raise BadVideo("cannot be opened: not a video, or an unsupported container or codec")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        frames: list[np.ndarray] = []
        orig = None
        out_hw = None
        interp = INTERPOLATION[interpolation]
        while max_frames is None or len(frames) < max_frames:
            ok, bgr = cap.read()
            if not ok or bgr is None:
                break
            if orig is None:
                orig = bgr.shape[:2]
                out_hw = resized_size(orig[0], orig[1], short_side)
            elif bgr.shape[:2] != orig:
                raise BadVideo(f"frame size changes mid-stream ({orig[1]}x{orig[0]} -> {bgr.shape[1]}x{bgr.shape[0]})")
            if out_hw != orig:
                bgr = cv2.resize(bgr, (out_hw[1], out_hw[0]), interpolation=interp)
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    n = len(frames)
    if n == 0:
        raise BadVideo("no decodable frame (corrupt or empty stream)")
    capped = max_frames is not None and n >= max_frames
    if not capped and declared > 0 and n < declared - max(2, 0.05 * declared):
        raise BadVideo(f"truncated: decoded {n} of the {declared} frames its container declares")
    if n < min_frames:
        raise BadVideo(f"too short: {n} frames, fewer than frames.min_frames={min_frames}")
    return DecodedVideo(np.stack(frames), fps, orig[0], orig[1], declared)
