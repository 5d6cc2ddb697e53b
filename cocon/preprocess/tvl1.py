"""Dual TV-L1 optical flow in PyTorch, batched over frame pairs, on CUDA or CPU.

The method of Zach, Pock & Bischof (DAGM 2007) in the multiscale form of Sánchez, Meinhardt-Llopis &
Facciolo (IPOL 2013), with the parameters and control flow of OpenCV's `DualTVL1OpticalFlow` so that the
two backends of the flow stage agree (docs/flow.md gives the measured agreement). Per pair:

- pyramid: the 0..255 float images are resized by `scale_step` (bilinear, no pre-smoothing) until
  `scales` levels or a side < 16 px; flow starts at 0 on the coarsest level and is carried to the next
  finer one by bilinear resizing and multiplication by 1 / scale_step;
- per level, `warps` times: warp I1 and its centred gradient by the current flow (bicubic, zero outside
  the image), linearise the data term around it; then up to `outer_iterations` x `inner_iterations`
  iterations, a 5x5 median filter of the flow before each run of inner iterations (`median_filtering`),
  each inner iteration being the point-wise thresholding step for v, u = v + theta * div p, and the
  dual update of p with step tau / theta. A pair stops iterating in a warp once the summed squared
  change of u in one iteration is <= epsilon^2 x (pixels of the level).

Pairs are independent: each has its own convergence test, and a converged pair is frozen, so a pair's
flow does not depend on the batch it was computed in. Shapes: images (B, H, W) uint8 or float in
0..255, flow (B, H, W, 2) float32 in px of the input, channel 0 = x (u), 1 = y (v).

Not supported: gamma > 0 (OpenCV's illumination term; rejected), an initial flow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GRAD_IS_ZERO = torch.finfo(torch.float32).eps  # below this |grad I1|^2 the data step leaves u as it is


@dataclass(frozen=True)
class TVL1Params:
    """The flow.tvl1 config section (names as in the config; OpenCV's defaults)."""

    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    scales: int = 5
    warps: int = 5
    epsilon: float = 0.01
    inner_iterations: int = 30
    outer_iterations: int = 10
    scale_step: float = 0.8
    gamma: float = 0.0
    median_filtering: int = 5

    @classmethod
    def from_config(cls, p: dict) -> TVL1Params:
        known = {k: v for k, v in p.items() if k not in ("backend", "device", "batch_size")}
        if "lambda" in known:
            known["lambda_"] = known.pop("lambda")
        params = cls(**known)
        if params.gamma != 0:
            raise ValueError("flow.tvl1.gamma: the torch backend implements gamma = 0 only (use backend: opencv)")
        if params.median_filtering not in (0, 1, 3, 5):
            raise ValueError("flow.tvl1.median_filtering: the torch backend supports 1 (off), 3 and 5")
        return params


def _sample(img: torch.Tensor, x: torch.Tensor, y: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
    """img (B, C, H, W) sampled at pixel coordinates x, y (B, h, w) (pixel centres at integers)."""
    h, w = img.shape[-2:]
    grid = torch.stack((x * (2.0 / max(w - 1, 1)) - 1.0, y * (2.0 / max(h - 1, 1)) - 1.0), dim=-1)
    return F.grid_sample(img, grid, mode=mode, padding_mode=padding, align_corners=True)


def _cubic_weights(t: torch.Tensor, a: float = -0.75) -> list[torch.Tensor]:
    """Keys' cubic convolution weights (a = -0.75, as OpenCV and PyTorch) of the 4 taps at offsets
    -1, 0, 1, 2 for a fractional position t in [0, 1)."""
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
    return [w0, w1, w2, 1 - w0 - w1 - w2]


def _warp_bicubic(img: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """img (B, C, H, W) at pixel coordinates x, y (B, H, W), bicubic, 0 outside the image (as
    cv2.remap with INTER_CUBIC and a constant border). At integer coordinates the result is the pixel
    itself, exactly (grid_sample's normalised coordinates lose that)."""
    b, c, h, w = img.shape
    x0, y0 = torch.floor(x), torch.floor(y)
    wx, wy = _cubic_weights(x - x0), _cubic_weights(y - y0)
    x0, y0 = x0.long(), y0.long()
    flat = img.reshape(b, c, h * w)
    out = torch.zeros_like(img)
    for j in range(4):
        yy = y0 + (j - 1)
        row_ok = (yy >= 0) & (yy < h)
        acc = torch.zeros_like(img)
        for i in range(4):
            xx = x0 + (i - 1)
            ok = row_ok & (xx >= 0) & (xx < w)
            index = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).reshape(b, 1, h * w).expand(b, c, h * w)
            taps = flat.gather(2, index).reshape(b, c, h, w)
            acc += torch.where(ok[:, None], taps, 0.0) * wx[i][:, None]
        out += acc * wy[j][:, None]
    return out


def _resize(img: torch.Tensor, size: tuple[int, int], scale: tuple[float, float] | None = None) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) to `size` = (h, w), replicating the border; output pixel i reads
    input coordinate (i + 0.5) * s - 0.5 with s = 1/scale when a scale factor is given (OpenCV's rule for
    `resize(..., fx, fy)`) and s = in/out otherwise."""
    (h_in, w_in), (h, w) = img.shape[-2:], size
    sy, sx = (1.0 / scale[0], 1.0 / scale[1]) if scale else (h_in / h, w_in / w)
    ys = (torch.arange(h, device=img.device, dtype=torch.float32) + 0.5) * sy - 0.5
    xs = (torch.arange(w, device=img.device, dtype=torch.float32) + 0.5) * sx - 0.5
    gy, gx = torch.meshgrid(ys.clamp(0, h_in - 1), xs.clamp(0, w_in - 1), indexing="ij")
    b = img.shape[0]
    return _sample(img, gx.expand(b, h, w), gy.expand(b, h, w), "bilinear", "border")


def _centred_gradient(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W) -> d/dx, d/dy by central differences, one-sided (halved) at the border."""
    p = F.pad(img[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    return 0.5 * (p[:, 1:-1, 2:] - p[:, 1:-1, :-2]), 0.5 * (p[:, 2:, 1:-1] - p[:, :-2, 1:-1])


def _forward_gradient(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W) -> forward differences, 0 in the last column (x) / row (y)."""
    return F.pad(u[:, :, 1:] - u[:, :, :-1], (0, 1)), F.pad(u[:, 1:] - u[:, :-1], (0, 0, 0, 1))


def _divergence(px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Backward-difference divergence of the dual field (px, py), (B, H, W); the adjoint of
    -_forward_gradient (values outside the image are 0)."""
    return (px - F.pad(px[:, :, :-1], (1, 0))) + (py - F.pad(py[:, :-1], (0, 0, 1, 0)))


def _sorting_network(n: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort for n = 2^k wires: comparators (i, j), i < j, min to i."""
    pairs, p = [], 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


def _selection_network(n: int, rank: int) -> list[tuple[int, int, bool, bool]]:
    """Comparators that put the `rank`-th smallest of n values on wire `rank`: a sorting network over
    the next power of two (the extra wires hold +inf), without the comparators that touch only +inf
    or do not lead to the output. Items: (i, j, keep_min, keep_max)."""
    size = 1 << (n - 1).bit_length()
    real = list(range(n)) + [None] * (size - n)  # None: a +inf wire
    ops = []
    for i, j in _sorting_network(size):
        if real[j] is None:
            continue
        if real[i] is None:
            real[i], real[j] = real[j], None
            ops.append(("move", i, j))
        else:
            ops.append(("cmp", i, j))
    needed, kept = {rank}, []
    for kind, i, j in reversed(ops):
        if kind == "move":  # wire i takes wire j's value
            if i in needed:
                needed = (needed - {i}) | {j}
            kept.append((kind, i, j, False, False))
        elif i in needed or j in needed:
            kept.append((kind, i, j, i in needed, j in needed))
            needed |= {i, j}
    return kept[::-1]


_MEDIAN_NETWORKS = {k: _selection_network(k * k, k * k // 2) for k in (3, 5)}


def _median(u: torch.Tensor, k: int) -> torch.Tensor:
    """k x k median filter of (B, H, W), border replicated (as cv2.medianBlur); exact, by a selection
    network of element-wise min/max (faster than sorting, and fusible by torch.compile)."""
    r = k // 2
    p = F.pad(u[:, None], (r, r, r, r), mode="replicate")[:, 0]
    h, w = u.shape[1:]
    wires = [p[:, dy : dy + h, dx : dx + w] for dy in range(k) for dx in range(k)]
    wires += [None] * ((1 << (k * k - 1).bit_length()) - len(wires))
    for kind, i, j, keep_min, keep_max in _MEDIAN_NETWORKS[k]:
        if kind == "move":
            wires[i], wires[j] = wires[j], None
            continue
        a, b = wires[i], wires[j]
        wires[i] = torch.minimum(a, b) if keep_min else None
        wires[j] = torch.maximum(a, b) if keep_max else None
    return wires[k * k // 2]


def tvl1_iteration(
    u1, u2, p11, p12, p21, p22, i1wx, i1wy, grad, rho_c, active, l_t: float, theta: float, taut: float, eps: float
):
    """One inner iteration for a batch; state and data (B, H, W) float32, `active` (B,) bool or None
    (all active). Pairs not active keep their state. Returns the new state (u1, u2, p11, p12, p21, p22)
    and which pairs are still active: those whose summed squared change of u was > eps."""
    rho = rho_c + i1wx * u1 + i1wy * u2
    lt_grad = l_t * grad
    step = torch.where(grad > GRAD_IS_ZERO, -rho / torch.where(grad > GRAD_IS_ZERO, grad, 1.0), 0.0)
    step = torch.where(rho < -lt_grad, l_t, torch.where(rho > lt_grad, -l_t, step))
    n1 = u1 + step * i1wx + theta * _divergence(p11, p12)
    n2 = u2 + step * i1wy + theta * _divergence(p21, p22)
    still = ((n1 - u1).square() + (n2 - u2).square()).sum(dim=(1, 2)) > eps
    u1x, u1y = _forward_gradient(n1)
    u2x, u2y = _forward_gradient(n2)
    ng1 = 1.0 + taut * torch.hypot(u1x, u1y)
    ng2 = 1.0 + taut * torch.hypot(u2x, u2y)
    new = (
        n1,
        n2,
        (p11 + taut * u1x) / ng1,
        (p12 + taut * u1y) / ng1,
        (p21 + taut * u2x) / ng2,
        (p22 + taut * u2y) / ng2,
    )
    if active is None:
        return new, still
    keep = active[:, None, None]
    return tuple(torch.where(keep, n, o) for n, o in zip(new, (u1, u2, p11, p12, p21, p22))), active & still


def median_where(u1, u2, active, k: int):
    """The k x k median filter of both flow components, (B, H, W), for the active pairs only."""
    m1, m2 = _median(u1, k), _median(u2, k)
    if active is None:
        return m1, m2
    keep = active[:, None, None]
    return torch.where(keep, m1, u1), torch.where(keep, m2, u2)


class TVL1:
    """Batched TV-L1: `TVL1(params, device)(i0, i1)` -> flow (B, H, W, 2) float32 on the CPU.

    compile: run the iteration and the median filter through torch.compile (fused kernels; worth it on
    CUDA, not on the CPU); True = inductor, or a torch.compile backend name. check_every: how many iterations between the host's look at which pairs
    have converged (each look is a device sync; between looks converged pairs are frozen on the device,
    so the result does not depend on it). None = 1 on the CPU, 10 on CUDA."""

    def __init__(
        self,
        params: TVL1Params | dict | None = None,
        device: str | torch.device = "cpu",
        compile: bool | str = False,
        check_every: int | None = None,
    ):
        if isinstance(params, dict):
            params = TVL1Params.from_config(params)
        self.p = params or TVL1Params()
        self.device = torch.device(device)
        backend = compile if isinstance(compile, str) else "inductor"
        self.step = _compiled(tvl1_iteration, backend) if compile else tvl1_iteration
        self.median = _compiled(median_where, backend) if compile else median_where
        self.check_every = check_every or (1 if self.device.type == "cpu" else 10)
        self.iterations = 0  # pair-iterations computed by the last call (for benchmarks)
        self.pixel_iterations = 0  # the same weighted by the level's pixels (for benchmarks)

    def __call__(self, i0, i1) -> torch.Tensor:
        # The dual variables decay towards 0 and reach subnormal floats, which are ~20x slower on x86
        # CPUs; flushing them to 0 changes the flow by < 1e-6 px (GPUs flush them by default).
        flush = self.device.type == "cpu" and torch.set_flush_denormal(True)
        try:
            return self._flow(i0, i1)
        finally:
            if flush:
                torch.set_flush_denormal(False)

    @torch.no_grad()
    def _flow(self, i0, i1) -> torch.Tensor:
        i0 = torch.as_tensor(i0).to(self.device, torch.float32)
        i1 = torch.as_tensor(i1).to(self.device, torch.float32)
        if i0.shape != i1.shape or i0.dim() != 3:
            raise ValueError(
                f"expected two (B, H, W) image batches of one shape, got {tuple(i0.shape)} and {tuple(i1.shape)}"
            )
        if min(i0.shape[1:]) < 3:
            raise ValueError(f"images of {tuple(i0.shape[1:])} px are too small for TV-L1")
        self.iterations = self.pixel_iterations = 0
        pyramid = [(i0, i1)]
        for _ in range(1, self.p.scales):
            h, w = pyramid[-1][0].shape[1:]
            size = (_round(h * self.p.scale_step), _round(w * self.p.scale_step))
            if min(size) < 16:
                break
            scale = (self.p.scale_step, self.p.scale_step)
            pyramid.append(tuple(_resize(im[:, None], size, scale)[:, 0] for im in pyramid[-1]))
        u = torch.zeros((i0.shape[0], 2, *pyramid[-1][0].shape[1:]), device=self.device)
        for level in range(len(pyramid) - 1, -1, -1):
            u = self._level(*pyramid[level], u)
            if level:
                u = _resize(u, tuple(pyramid[level - 1][0].shape[1:])) * (1.0 / self.p.scale_step)
        return u.permute(0, 2, 3, 1).contiguous().cpu()

    def _level(self, i0: torch.Tensor, i1: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Solve one pyramid level; i0, i1 (B, H, W), u (B, 2, H, W) initial flow -> refined flow."""
        p = self.p
        b, h, w = i0.shape
        eps = p.epsilon * p.epsilon * h * w
        l_t, taut = p.lambda_ * p.theta, p.tau / p.theta
        i1x, i1y = _centred_gradient(i1)
        image_and_grad = torch.stack((i1, i1x, i1y), dim=1)
        ys, xs = torch.meshgrid(
            torch.arange(h, device=self.device, dtype=torch.float32),
            torch.arange(w, device=self.device, dtype=torch.float32),
            indexing="ij",
        )
        u1, u2 = u[:, 0].clone(), u[:, 1].clone()
        duals = [torch.zeros_like(u1) for _ in range(4)]
        for _ in range(p.warps):
            warped = _warp_bicubic(image_and_grad, xs + u1, ys + u2)
            i1w, i1wx, i1wy = warped.unbind(1)
            grad = i1wx.square() + i1wy.square()
            rho_c = i1w - i1wx * u1 - i1wy * u2 - i0
            u1, u2, duals = self._warp_iterations(u1, u2, duals, (i1wx, i1wy, grad, rho_c), eps, l_t, taut)
        return torch.stack((u1, u2), dim=1)

    def _warp_iterations(self, u1, u2, duals, data, eps, l_t, taut):
        """The outer/inner iterations of one warp for a batch. Every `check_every` iterations the pairs
        that have converged leave the working set (their state is written back), so the rest run on a
        smaller batch; in between, converged pairs are frozen by a mask."""
        p = self.p
        state = (u1, u2, *duals)
        out = [t.clone() for t in state]
        idx = torch.arange(u1.shape[0], device=self.device)
        active, since_check = None, 0  # None: every pair of the working set is active
        total = p.outer_iterations * p.inner_iterations
        for n in range(total):
            if n % p.inner_iterations == 0 and p.median_filtering > 1:
                state = (*self.median(state[0], state[1], active, p.median_filtering), *state[2:])
            state, active = self.step(*state, *data, active, l_t, p.theta, taut, eps)
            self.iterations += len(idx)
            self.pixel_iterations += len(idx) * data[0].shape[1] * data[0].shape[2]
            since_check += 1
            if since_check == self.check_every or n == total - 1:
                since_check = 0
                leave = torch.ones_like(active) if n == total - 1 else ~active
                if bool(leave.any()):
                    for o, s in zip(out, state):
                        o[idx[leave]] = s[leave]
                    keep = ~leave
                    if not bool(keep.any()):
                        break
                    idx, state, data = idx[keep], tuple(s[keep] for s in state), tuple(d[keep] for d in data)
                active = None
        return out[0], out[1], out[2:]


def _compiled(fn, backend: str = "inductor"):
    """torch.compile(fn) that falls back to fn, with a warning, if compiling fails (e.g. no Triton or
    no C++ compiler): the result is the same either way, only slower."""
    compiled, failed = [], []

    def call(*args):
        if not failed:
            try:
                if not compiled:
                    compiled.append(torch.compile(fn, dynamic=True, backend=backend))
                return compiled[0](*args)
            except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
                failed.append(exc)
                logging.getLogger("cocon").warning("torch.compile of %s failed (%s); running eagerly", fn.__name__, exc)
        return fn(*args)

    return call


def _round(x: float) -> int:
    """Nearest integer, halves to even (as cvRound)."""
    return int(round(x))
