"""Colour coding of the views for figures: optical flow on the Middlebury colour wheel (Baker et al., "A
Database and Evaluation Methodology for Optical Flow", 2011) with its key, and confidence maps (pose, seg)
overlaid on the rgb frame. Pure NumPy/OpenCV on arrays; matplotlib only for the overlay's colour map.
"""

from __future__ import annotations

import cv2
import numpy as np


def _wheel() -> np.ndarray:
    """The Middlebury colour wheel: float (55, 3) RGB in [0, 1], hues from red through yellow, green, cyan,
    blue, magenta (Baker et al., "A Database and Evaluation Methodology for Optical Flow", 2011)."""
    ry, yg, gc, cb, bm, mr = 15, 6, 4, 11, 13, 6
    wheel = np.zeros((ry + yg + gc + cb + bm + mr, 3))
    c = 0
    for n, ch, rising, const in ((ry, 1, True, 0), (yg, 0, False, 1), (gc, 2, True, 1), (cb, 1, False, 2),
                                 (bm, 0, True, 2), (mr, 2, False, 0)):  # fmt: skip
        ramp = np.floor(255 * np.arange(n) / n)
        wheel[c : c + n, ch] = ramp if rising else 255 - ramp
        wheel[c : c + n, const] = 255
        c += n
    return wheel / 255.0


WHEEL = _wheel()


def flow_colour(u: np.ndarray, v: np.ndarray, max_px: float) -> np.ndarray:
    """Flow (u, v) float px (H, W) each, u right and v down -> uint8 RGB (H, W, 3) on the Middlebury wheel:
    hue = direction (u > 0 red, v > 0 yellow, u < 0 cyan, v < 0 blue), saturation = |f| / max_px, white at
    0; beyond max_px the full colour darkened to 75 %."""
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    rad = np.hypot(u, v) / float(max_px)
    n = len(WHEEL)
    fk = (np.arctan2(-v, -u) / np.pi + 1) / 2 * (n - 1)
    k0 = np.floor(fk).astype(np.int64)
    k1 = (k0 + 1) % n
    f = (fk - k0)[..., None]
    col = (1 - f) * WHEEL[k0] + f * WHEEL[k1]
    inside = (rad <= 1)[..., None]
    col = np.where(inside, 1 - np.minimum(rad, 1)[..., None] * (1 - col), col * 0.75)
    return np.floor(255 * col).astype(np.uint8)


def colour_wheel(size: int = 65) -> np.ndarray:
    """The key of flow_colour: uint8 RGBA (size, size, 4); pixel (x, y) shows the flow pointing from the
    centre to it, the rim being max_px; transparent outside the disc."""
    c = (size - 1) / 2
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    u, v = (x - c) / c, (y - c) / c
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., :3] = flow_colour(u, v, 1.0)
    rgba[..., 3] = np.where(np.hypot(u, v) <= 1.0, 255, 0)
    return rgba


def overlay(rgb: np.ndarray, values: np.ndarray, cmap_name: str) -> np.ndarray:
    """A confidence map values float [0, 1] (h, w) over an rgb frame uint8 (H, W, 3): the map resized
    (bilinear) to (H, W), coloured by `cmap_name` and blended with alpha = 0.85 * value over the frame
    dimmed to 60 % grey. -> uint8 (H, W, 3)."""
    from matplotlib import colormaps

    h, w = rgb.shape[:2]
    m = np.clip(cv2.resize(values.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR), 0, 1)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None] * 0.6
    colour = colormaps[cmap_name](m)[..., :3] * 255.0
    a = 0.85 * m[..., None]
    return np.clip(np.rint(grey * (1 - a) + colour * a), 0, 255).astype(np.uint8)
