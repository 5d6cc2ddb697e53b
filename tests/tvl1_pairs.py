"""Frame pairs with known motion for the TV-L1 tests (test_tvl1 on the CPU, test_gpu on CUDA): smooth random
textures and natural photographs moved by an affine map, the true flow, the end-point error, and the
flow.tvl1 defaults (DEFAULT)."""

from __future__ import annotations

import cv2
import numpy as np

from cocon.config import load_config

DEFAULT = load_config()["flow"]["tvl1"]  # OpenCV's defaults: 5 scales, 5 warps, 10 x 30 iterations, median 5


def epe(a: np.ndarray, b: np.ndarray, margin: int = 0) -> float:
    """Mean end-point error (px) between flows (..., H, W, 2), ignoring `margin` px at the border."""
    h, w = a.shape[-3:-1]
    d = (a - b)[..., margin : h - margin, margin : w - margin, :]
    return float(np.linalg.norm(d, axis=-1).mean())


def smooth_texture(h: int, w: int, seed: int, sigma: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), sigma)


def moved_pair(img: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame 0 = centre crop (W, H) = size of `img`; frame 1 = the same crop of img moved by the 2x3
    affine `matrix` (content at p in frame 0 is at matrix @ p in frame 1). Returns uint8 frames and the
    true flow (H, W, 2) px."""
    img = img.astype(np.float32)
    h, w = img.shape
    moved = cv2.warpAffine(img, matrix, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    (cw, ch), x0, y0 = size, (w - size[0]) // 2, (h - size[1]) // 2
    ys, xs = np.mgrid[y0 : y0 + ch, x0 : x0 + cw].astype(np.float32)
    true = np.stack(
        [
            matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2] - xs,
            matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2] - ys,
        ],
        axis=-1,
    )
    crop = lambda a: np.clip(np.rint(a[y0 : y0 + ch, x0 : x0 + cw]), 0, 255).astype(np.uint8)  # noqa: E731
    return crop(img), crop(moved), true


def translation(dx: float, dy: float) -> np.ndarray:
    return np.float32([[1, 0, dx], [0, 1, dy]])


def natural_gray(index: int) -> np.ndarray:
    """A natural photograph (scikit-learn's bundled sample images, 427x640), grayscale, halved."""
    from sklearn.datasets import load_sample_images

    img = load_sample_images().images[index]
    return cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (320, 214), interpolation=cv2.INTER_AREA)
