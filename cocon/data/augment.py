"""Training augmentation of the multi-view loader, split between the DataLoader workers and the training
device (docs/loader.md, "Augmentation" and "The uint8 path").

Workers do the integer part: draw every random parameter from the sample's seeded NumPy generator, copy
the crop box of each frame into a fixed-size uint8 canvas, and describe the rest as small tensors:
the resampling (per output row and column: two source indices and a weight, with the horizontal flip
folded into the columns), the flip flag, and for colour views the grey choice, the four jitter factors
and the order of the jitter operations of every frame. `Finish` then does the float part on a whole
batch, on any device: bilinear resampling, flip channel rules, grey, colour jitter, normalisation. The
float samples of `MultiViewClips(output="float")` are the same function applied to a batch of one on
the CPU, so a sample finished on the GPU equals it up to float rounding.

    finish = dataset.finisher()                      # a Finish for the dataset's views
    x = finish(batch, device)                        # {view: float32 (B, N, C, K, S, S)}
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "Augmentation",
    "FINETUNE_AUGMENTATION",
    "Finish",
    "ViewSpec",
    "draw_box",
    "crop_box",
    "max_box",
    "centre_box",
    "intensity_box",
    "area_shrink",
    "canvas_shape",
    "train_scale",
    "draw_colour",
    "resample_axis",
    "geometry",
    "identity_geometry",
    "GREY_WEIGHTS",
    "aug_key",
]

# ITU-R 601 luma (OpenCV's RGB2GRAY), for "luma" grey, contrast and saturation
GREY_WEIGHTS = (0.299, 0.587, 0.114)
LUMA = 3  # the grey parameter of a frame greyed with GREY_WEIGHTS; 0..2 = that channel copied; -1 = none
IDENTITY = (1.0, 1.0, 1.0, 0.0)  # jitter factors (brightness, contrast, saturation, hue) that do nothing


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation parameters (docs/loader.md).

    crop_scale:  area of the crop as a fraction of short_side^2 (1 = the full short-side square)
    crop_ratio:  aspect (w/h) range, drawn log-uniformly
    p_flip:      horizontal flip probability of the views whose kind flips in training (rgb, pose, seg;
                 cocon.views), each flipped by its kind's rule (pose: left/right keypoints swap)
    jitter:      colour jitter strengths (brightness, contrast, saturation, hue), per frame, random order
    p_gray:      per-frame greying probability (rgb), applied before the jitter as in the original
    gray:        "channel" (the original: one random RGB channel copied to all three) or "luma"
                 (ITU-R 601 grey)
    shared_crop: one crop box (in relative coordinates) and one flip decision for all views of a sample
    flip_all_views: flip the views whose kind does not flip in training as well (flow: mirrored and
                 u negated, q -> 255 - q)
    p_jitter:    probability that the colour jitter is applied (per frame, or per clip when consistent)
    consistent_jitter: one jitter draw (factors and order) for every frame of the clip, as the
                 fine-tuning augmentation of CoCon/DPC (ColorJitter(consistent=True)); the default
                 (False) draws per frame, as their pretraining augmentation
    intensity_crop: the views whose kind declares an intensity crop (flow, pose, seg; cocon.views) get it
                 instead of the random-area crop: the most intense of a few fixed-size squares (the
                 original's rule; `intensity_box`); False = the same random-area crop as rgb
    """

    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    p_flip: float = 0.5
    jitter: tuple[float, float, float, float] = (0.5, 0.5, 0.5, 0.25)
    p_gray: float = 0.5
    gray: str = "channel"
    shared_crop: bool = False
    flip_all_views: bool = False
    p_jitter: float = 1.0
    consistent_jitter: bool = False
    intensity_crop: bool = True

    def __post_init__(self):
        if self.gray not in ("channel", "luma"):
            raise ValueError(f"gray must be 'channel' or 'luma', got {self.gray!r}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")


# Fine-tuning augmentation of CoCon's and DPC's code: crop and flip as in pretraining, one clip-consistent
# ColorJitter(0.5, 0.5, 0.5, 0.25) applied with probability 0.3, no grey.
FINETUNE_AUGMENTATION = Augmentation(p_gray=0.0, p_jitter=0.3, consistent_jitter=True)


# ------------------------------------------------------------------ draws (workers)


def draw_box(rng: np.random.Generator, aug: Augmentation) -> tuple[float, float, float, float, bool]:
    """Relative crop parameters (area as a fraction of short_side^2, aspect w/h, x and y uniforms in
    [0, 1)) and a flip decision; always the same number of draws, whatever the outcome."""
    area = rng.uniform(*aug.crop_scale)
    ratio = math.exp(rng.uniform(math.log(aug.crop_ratio[0]), math.log(aug.crop_ratio[1])))
    ux, uy = rng.random(2)
    flip = bool(rng.random() < aug.p_flip)
    return area, ratio, ux, uy, flip


def crop_box(h: int, w: int, area: float, ratio: float, ux: float, uy: float) -> tuple[int, int, int, int]:
    """(x0, y0, bw, bh) in px in a (h, w) frame for the relative crop parameters of `draw_box`."""
    s = min(h, w)
    bw = int(min(w, max(1, round(s * math.sqrt(area * ratio)))))
    bh = int(min(h, max(1, round(s * math.sqrt(area / ratio)))))
    x0 = min(int(ux * (w - bw + 1)), w - bw)
    y0 = min(int(uy * (h - bh + 1)), h - bh)
    return x0, y0, bw, bh


def max_box(h: int, w: int, aug: Augmentation) -> tuple[int, int]:
    """(bh, bw) bounds of the boxes `crop_box` can give in a (h, w) frame (largest area, extreme aspects)."""
    s, eps = min(h, w), 1 + 1e-9
    bw = min(w, max(1, round(s * math.sqrt(aug.crop_scale[1] * aug.crop_ratio[1]) * eps)))
    bh = min(h, max(1, round(s * math.sqrt(aug.crop_scale[1] / aug.crop_ratio[0]) * eps)))
    return int(bh), int(bw)


def intensity_box(images, inverse: np.ndarray, rule, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(x0, y0, side, side) in px: of `rule.candidates` squares of `rule.side` x the short side at uniform
    places (two draws each), the one whose clip is most intense (rule: cocon.views.IntensityCrop; the
    first on ties). images: the clip's distinct uint8 frames, (H, W, C) each; inverse: (T,) the clip's
    frames as indices into them (a frame used twice counts twice)."""
    h, w = images[0].shape[:2]
    side = int(max(1, round(rule.side * min(h, w))))
    counts = np.bincount(inverse, minlength=len(images)).astype(np.float64)
    best, best_box = -np.inf, (0, 0, side, side)
    for _ in range(rule.candidates):
        ux, uy = rng.random(2)
        x0, y0 = min(int(ux * (w - side + 1)), w - side), min(int(uy * (h - side + 1)), h - side)
        crops = np.stack([im[y0 : y0 + side, x0 : x0 + side] for im in images])
        score = float(rule.frame_intensity(crops) @ counts)
        if score > best:
            best, best_box = score, (x0, y0, side, side)
    return best_box


def centre_box(h: int, w: int, fraction: float = 1.0) -> tuple[int, int, int, int]:
    """(x0, y0, side, side) in px: the centred square of `fraction` x the short side (the evaluation crop)."""
    s = max(1, int(round(min(h, w) * fraction)))
    return (w - s) // 2, (h - s) // 2, s, s


def train_scale(aug: Augmentation) -> float:
    """The mean side of the training crops as a fraction of the short side, E[sqrt(area)] for an area
    uniform in aug.crop_scale: (2/3) (hi^1.5 - lo^1.5) / (hi - lo); 0.862 for (0.5, 1). A centre crop of
    this side, resized to the input size, shows objects at the average scale training showed them."""
    lo, hi = aug.crop_scale
    return math.sqrt(lo) if hi == lo else (2.0 / 3.0) * (hi**1.5 - lo**1.5) / (hi - lo)


def area_shrink(bh: int, bw: int, size: int) -> bool:
    """Whether a (bh, bw) box is resized with area interpolation (it shrinks by 1.5x or more both ways)."""
    return bw >= 1.5 * size and bh >= 1.5 * size


def canvas_shape(shapes, size: int, aug: Augmentation) -> tuple[int, int]:
    """(Hc, Wc) of the uint8 canvases of a view whose frames have the (h, w) `shapes`: the largest crop
    box they can draw, at most 1.5x the input `size` each way (a box that does not fit, or that shrinks by
    1.5x or more both ways, is resized by the worker and handed over at the input size)."""
    bounds = [max_box(h, w, aug) for h, w in shapes]
    bh, bw = max(b[0] for b in bounds), max(b[1] for b in bounds)
    cap = int(1.5 * size)
    hc, wc = min(bh, cap), min(bw, cap)
    if bh > hc or bw > wc or any(area_shrink(h, w, size) for h, w in bounds):
        hc, wc = max(hc, size), max(wc, size)
    return hc, wc


def draw_colour(rng: np.random.Generator, t: int, aug: Augmentation) -> dict[str, np.ndarray]:
    """Per-frame grey and jitter parameters of t frames, drawn in the original order (the draws do not
    depend on the outcomes): grey int64 (t,) (-1 none, 0..2 that channel copied, 3 luma), jitter
    float32 (t, 4) factors (brightness, contrast, saturation, hue in turns) with the identity
    (1, 1, 1, 0) where an operation is not applied, order int64 (t, 4) (a permutation of 0..3 per frame)."""
    gray_on = rng.random(t) < aug.p_gray
    gray_ch = rng.integers(0, 3, t)
    jb, jc, js, jh = aug.jitter
    fb = rng.uniform(max(0.0, 1 - jb), 1 + jb, t)
    fc = rng.uniform(max(0.0, 1 - jc), 1 + jc, t)
    fs = rng.uniform(max(0.0, 1 - js), 1 + js, t)
    fh = rng.uniform(-jh, jh, t)
    orders = np.argsort(rng.random((t, 4)), axis=1)
    jitter_on = rng.random(t) < aug.p_jitter
    if aug.consistent_jitter:  # the first frame's draws for the whole clip
        fb[:], fc[:], fs[:], fh[:], orders[:], jitter_on[:] = fb[0], fc[0], fs[0], fh[0], orders[0], jitter_on[0]
    factors = np.stack([fb, fc, fs, fh], axis=1).astype(np.float32)
    active = np.array([jb > 0, jc > 0, js > 0, jh > 0])
    factors = np.where(active[None] & jitter_on[:, None], factors, np.array(IDENTITY, np.float32)[None])
    grey = np.where(gray_on, gray_ch if aug.gray == "channel" else LUMA, -1).astype(np.int64)
    return {"grey": grey, "jitter": factors.astype(np.float32), "order": orders.astype(np.int64)}


def resample_axis(n_in: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear resampling of n_in pixels to `size`, as OpenCV's INTER_LINEAR defines it (half-pixel
    centres, border replicated): output j = (1 - w) * in[i0] + w * in[i1] with
    s = clip((j + 0.5) * n_in / size - 0.5, 0, n_in - 1), i0 = floor(s), i1 = min(i0 + 1, n_in - 1),
    w = s - i0. n_in == size gives i0 = j, w = 0: the identity, exactly."""
    s = np.clip((np.arange(size, dtype=np.float64) + 0.5) * (n_in / size) - 0.5, 0, n_in - 1)
    i0 = np.floor(s).astype(np.int64)
    return i0, np.minimum(i0 + 1, n_in - 1), (s - i0).astype(np.float32)


def geometry(bh: int, bw: int, size: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """The resampling of a (bh, bw) box at the canvas origin to (size, size), mirrored when `flip`:
    index int64 (4, size) = rows i0, i1, columns i0, i1; weight float32 (2, size) = row w, column w."""
    y0, y1, wy = resample_axis(bh, size)
    x0, x1, wx = resample_axis(bw, size)
    if flip:
        x0, x1, wx = x0[::-1], x1[::-1], wx[::-1]
    return np.stack([y0, y1, x0, x1]), np.stack([wy, wx])


def identity_geometry(size: int) -> tuple[np.ndarray, np.ndarray]:
    return geometry(size, size, size, False)


def aug_key(view: str, name: str) -> str:
    """Key of a per-sample augmentation parameter in the uint8 samples: "aug/<view>/<name>"."""
    return f"aug/{view}/{name}"


# ------------------------------------------------------------------ the float part (any device)


@dataclass(frozen=True)
class ViewSpec:
    """What `Finish` needs of a view: blocks (N, K), output side, normalisation (value = x * scale + offset
    per channel), the flip's channel rule (cocon.views.Flip: negate, permute)."""

    num_blocks: int
    block_len: int
    size: int
    scale: tuple[float, ...]
    offset: tuple[float, ...]
    negate: tuple[int, ...] = ()
    permute: tuple[int, ...] = ()


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Planar frames (F, 3, S, S) -> (F, 1, S, S): ITU-R 601 luma."""
    r, g, b = GREY_WEIGHTS
    return x[:, 0:1] * r + x[:, 1:2] * g + x[:, 2:3] * b


def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """x * f."""
    return (x * f).clamp_(0.0, 255.0)


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """f * x + (1 - f) * the frame's mean luma."""
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    return (x * f + (1.0 - f) * mean).clamp_(0.0, 255.0)


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """f * x + (1 - f) * the pixel's luma."""
    return (x * f + (1.0 - f) * _grey(x)).clamp_(0.0, 255.0)


def _hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Hue rotated by f turns in HSV, value and chroma kept: with M, m the largest and smallest channel,
    C = M - m and H the hue in sextants ((G - B) / C, 2 + (B - R) / C or 4 + (R - G) / C for M = R, G,
    B; 0 for C = 0), channel n (R 5, G 3, B 1) becomes M - C * clamp(min(k, 4 - k), 0, 1),
    k = (n + H + 6 f) mod 6. The result stays within [m, M]."""
    r, g, b = x.unbind(1)
    mx = torch.maximum(torch.maximum(r, g), b)
    c = mx - torch.minimum(torch.minimum(r, g), b)
    d = torch.where(c > 0, c, 1.0)
    is_r, is_g = mx == r, mx == g
    h = torch.where(is_r, g - b, torch.where(is_g, b - r, r - g)).div_(d)
    h += torch.where(is_r, 0.0, torch.where(is_g, 2.0, 4.0))
    h += 6.0 * f[:, 0]
    out = torch.empty_like(x)
    for i, n in enumerate((5.0, 3.0, 1.0)):
        k = torch.remainder(h + n, 6.0)
        torch.minimum(k, 4.0 - k, out=out[:, i])
    return out.clamp_(0.0, 1.0).mul_(c[:, None]).neg_().add_(mx[:, None])


JITTER_OPS = (_brightness, _contrast, _saturation, _hue)


def resample(u8: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, impl: str | None = None) -> torch.Tensor:
    """uint8 canvases (B, T, Hc, Wc, C) -> planar float32 (B, T, C, S, S): the per-sample bilinear
    resampling of `geometry` (index (B, 4, S), weight (B, 2, S)), rows then columns, each
    torch.lerp(a, b, w) = a + w (b - a) (exact at w = 0). `impl` "gather" (the default on CUDA): one
    gather per tap for the whole batch (broadcast indices, never materialised); "rows" (elsewhere):
    index_select of whole rows per sample, columns through a transpose (4x faster on a CPU). The
    two give the same values."""
    B, T, Hc, Wc, C = u8.shape
    S = index.shape[-1]
    impl = impl or ("gather" if u8.device.type == "cuda" else "rows")
    if impl == "gather":
        flat = u8.reshape(B, T, Hc, Wc * C)
        ri = index[:, :2].reshape(B, 2, 1, S, 1)
        a = torch.gather(flat, 2, ri[:, 0].expand(B, T, S, Wc * C)).float()
        b = torch.gather(flat, 2, ri[:, 1].expand(B, T, S, Wc * C)).float()
        rows = torch.lerp(a, b, weight[:, 0].reshape(B, 1, S, 1)).view(B, T, S, Wc, C)
        rows = rows.permute(0, 1, 4, 2, 3).contiguous()  # (B, T, C, S, Wc)
        ci = index[:, 2:].reshape(B, 2, 1, 1, 1, S)
        a = torch.gather(rows, 4, ci[:, 0].expand(B, T, C, S, S))
        b = torch.gather(rows, 4, ci[:, 1].expand(B, T, C, S, S))
        return torch.lerp(a, b, weight[:, 1].reshape(B, 1, 1, 1, S))
    out = torch.empty((B, T, C, S, S), dtype=torch.float32, device=u8.device)
    for k in range(B):  # columns gathered as rows of the transposed image: whole rows copied, not pixels
        a = u8[k].index_select(1, index[k, 0]).float()
        b = u8[k].index_select(1, index[k, 1]).float()
        rows = torch.lerp(a, b, weight[k, 0].view(1, S, 1, 1)).permute(0, 3, 2, 1).contiguous()  # (T, C, Wc, S)
        cols = torch.lerp(
            rows.index_select(2, index[k, 2]), rows.index_select(2, index[k, 3]), weight[k, 1].view(1, 1, S, 1)
        )  # (T, C, S columns, S rows)
        out[k] = cols.transpose(2, 3)
    return out


def _select(mask: torch.Tensor, device) -> torch.Tensor | None:
    idx = mask.nonzero().flatten()
    return idx.to(device, non_blocking=True) if len(idx) else None


class Finish:
    """The float part of the training augmentation, batched, on any device (module docstring).

    `finish(batch, device)` takes a collated uint8 batch of `MultiViewClips(output="uint8")` (tensors
    on the CPU, pinned or not; the clips are copied to `device` with non_blocking=True) and returns
    {view: float32 (B, N, C, K, S, S)}, by default in channels-last memory order (C innermost, what
    cocon.train.engine.channels_last_3d makes), with `contiguous=True` in the standard order. Per view:
    resample (bilinear, the flip folded in), flip rule (u negated / channels permuted for flipped
    samples), grey then jitter for views with colour parameters, normalisation."""

    def __init__(self, specs: dict[str, ViewSpec]):
        self.specs = dict(specs)
        self._consts: dict = {}

    @property
    def views(self) -> list[str]:
        return list(self.specs)

    def _norm(self, view: str, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (view, str(device))
        if key not in self._consts:
            s = self.specs[view]
            shape = (1, 1, len(s.scale), 1, 1, 1)
            self._consts[key] = (
                torch.tensor(s.scale, dtype=torch.float32, device=device).view(shape),
                torch.tensor(s.offset, dtype=torch.float32, device=device).view(shape),
            )
        return self._consts[key]

    def __getstate__(self):
        return {"specs": self.specs, "_consts": {}}

    def __call__(self, batch: dict, device=None, contiguous: bool = False) -> dict[str, torch.Tensor]:
        device = torch.device("cpu") if device is None else torch.device(device)
        return {v: self.view(v, batch, device, contiguous) for v in self.specs}

    def view(self, v: str, batch: dict, device, contiguous: bool = False) -> torch.Tensor:
        spec = self.specs[v]
        u8 = batch[v].to(device, non_blocking=True)
        if u8.dtype != torch.uint8 or u8.dim() != 5:
            raise TypeError(
                f"view {v}: Finish takes the uint8 (B, T, H, W, C) clips of MultiViewClips(output='uint8'), "
                f"got {u8.dtype} {tuple(u8.shape)}"
            )
        B, T, _, _, C = u8.shape
        x = resample(
            u8,
            batch[aug_key(v, "index")].to(device, non_blocking=True),
            batch[aug_key(v, "weight")].to(device, non_blocking=True),
        )  # (B, T, C, S, S)
        S = x.shape[-1]
        flip = batch.get(aug_key(v, "flip"))
        if flip is not None and (spec.negate or spec.permute):
            sel = _select(flip.reshape(-1).cpu(), device)
            if sel is not None:
                y = x.index_select(0, sel)
                if spec.permute:
                    y = y[:, :, list(spec.permute)]
                for c in spec.negate:
                    y[:, :, c] = 255.0 - y[:, :, c]
                x.index_copy_(0, sel, y)
        if aug_key(v, "grey") in batch:
            self.colour(
                x.view(B * T, C, S, S),
                batch[aug_key(v, "grey")].reshape(B * T),
                batch[aug_key(v, "jitter")].reshape(B * T, 4),
                batch[aug_key(v, "order")].reshape(B * T, 4),
                device,
            )
        n, k = spec.num_blocks, spec.block_len
        if contiguous:
            out = torch.empty((B, n, C, k, S, S), dtype=torch.float32, device=device)
        else:
            out = torch.empty((B, n, k, S, S, C), dtype=torch.float32, device=device).permute(0, 1, 5, 2, 3, 4)
        scale, offset = self._norm(v, device)
        torch.mul(x.view(B, n, k, C, S, S).transpose(2, 3), scale, out=out)
        return out.add_(offset)

    @staticmethod
    def colour(x: torch.Tensor, grey: torch.Tensor, jitter: torch.Tensor, order: torch.Tensor, device) -> torch.Tensor:
        """Planar frames (F, 3, S, S) in [0, 255], in place: grey (per `grey`), then the jitter operations
        of each frame in its order; a factor equal to the identity (1, 1, 1, 0) skips that operation.
        Frames are selected on the CPU parameters: no device synchronisation."""
        grey, jitter, order = grey.cpu(), jitter.cpu(), order.cpu()
        for g in range(4):
            sel = _select(grey == g, device)
            if sel is not None:
                y = x.index_select(0, sel)
                x.index_copy_(0, sel, (_grey(y) if g == LUMA else y[:, g : g + 1]).expand_as(y))
        on = jitter != torch.tensor(IDENTITY)  # (F, 4)
        for step in range(4):
            for op in range(4):
                mask = (order[:, step] == op) & on[:, op]
                sel = _select(mask, device)
                if sel is not None:
                    f = jitter[mask, op].to(device, non_blocking=True).view(-1, 1, 1, 1)
                    x.index_copy_(0, sel, JITTER_OPS[op](x.index_select(0, sel), f))
        return x
