"""The compiled parts of the OpenMMLab stack that the pose and seg stages need, without compiling them.

`make setup` installs `mmcv-lite` (mmcv's Python code without its compiled extension `mmcv._ext`) and the
PyPI wheel of `xtcocotools` (built against numpy 1, so its `_mask` extension does not load under numpy 2).
mmdet, mmseg and mmpose import `mmcv.ops` (which loads `mmcv._ext`) and mmpose imports `xtcocotools` when
they are imported, although the stages run no compiled op but `nms` (RTMDet's person boxes) and never
call xtcocotools. `install()`, run by `cocon.preprocess.mm` before any OpenMMLab import, fills the gaps:

* `mmcv._ext` missing: a stand-in module is registered in its place. Its `nms` is `nms` below, which gives
  the same indices in the same order as mmcv 2.1.0's compiled CPU kernel (`mmcv/ops/csrc/pytorch/cpu/
  nms.cpp`; checked against its recorded answers in tests/test_nms.py). Any other op raises
  `CompiledOpMissing`, naming the op and `make mm-full` (which compiles mmcv 2.1.0 from source).
* `xtcocotools._mask` not loadable: pycocotools' `_mask` (the same COCO mask API, built for numpy 2) is
  registered in its place.

With the compiled mmcv and xtcocotools installed (`make mm-full`), `install()` changes nothing. Spec:
docs/pose_seg.md ("Install")."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import sys
import types
from importlib import metadata

import numpy as np
import torch

log = logging.getLogger("cocon")

EXT = "mmcv._ext"
XT_MASK = "xtcocotools._mask"
HINT = "`make mm-full` compiles mmcv 2.1.0 (and xtcocotools) from source (docs/pose_seg.md, Install)"
STACK = "mmcv-lite (or mmcv), mmengine, mmpose, mmsegmentation, mmdet"
STAND_IN = "stand-in (cocon.preprocess.mm_ops: nms only)"
BLOCK = 256  # boxes per block of nms
MODULES = ("mmcv", "mmengine", "mmpose", "mmseg", "mmdet")


class CompiledOpMissing(RuntimeError):
    """An mmcv op that only mmcv's compiled extension has."""


class StackMissing(ImportError):
    """The OpenMMLab stack of the pose and seg stages is not installed."""


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0) -> torch.Tensor:
    """Greedy non-maximum suppression, as mmcv 2.1.0's compiled CPU `nms` (`ext_module.nms`).

    boxes: float32 (N, 4) x1, y1, x2, y2; scores: (N,); offset 0 or 1 (width = x2 - x1 + offset).
    Returns int64 (K,): the indices of the kept boxes, by descending score. As the kernel: boxes are
    visited in the order of `scores.sort(0, descending=True)` (the same torch sort: ties keep that order);
    a box is dropped when its IoU with an earlier kept box, computed in float32 with the kernel's
    operations in its order, is > iou_threshold (as float32); a zero-area box (IoU 0/0 = NaN) is never
    dropped. Vectorised by blocks of BLOCK boxes: each block against the boxes kept before it, then the
    greedy pass inside the block on its IoU matrix. Computed on the CPU; returned on the device of boxes."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    if boxes.dtype != torch.float32:
        raise RuntimeError(f"nms: expected float32 boxes, got {boxes.dtype} (as mmcv's compiled op)")
    order = scores.detach().cpu().sort(0, descending=True)[1]  # as the kernel, on the caller's threads
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the many small operations below are several times slower on more threads
    try:
        kept = _greedy(boxes.detach().cpu(), order, float(iou_threshold), offset)
    finally:
        torch.set_num_threads(threads)
    return kept.to(boxes.device)


def _greedy(b: torch.Tensor, order: torch.Tensor, iou_threshold: float, offset: int) -> torch.Tensor:
    finite = bool(torch.isfinite(b).all())
    x1, y1, x2, y2 = b.unbind(1)
    sorted_ = torch.stack([x1, y1, x2, y2, (x2 - x1 + offset) * (y2 - y1 + offset)])[:, order]  # (5, N)
    thr = torch.tensor(iou_threshold, dtype=torch.float32)
    kept = torch.empty(0, dtype=torch.long)  # positions in `order`
    for lo in range(0, len(order), BLOCK):
        block = sorted_[:, lo : lo + BLOCK]
        alive = torch.ones(block.shape[1], dtype=torch.bool)
        if len(kept):
            alive &= ~_suppresses(sorted_[:, kept], block, offset, thr, finite).any(0)
        idx = alive.nonzero()[:, 0]
        if len(idx) > 1:
            sup = _suppresses(block[:, idx], block[:, idx], offset, thr, finite).numpy()
            live = np.ones(len(idx), dtype=bool)
            for i in range(len(idx) - 1):
                if live[i]:
                    live[i + 1 :] &= ~sup[i, i + 1 :]
            idx = idx[torch.from_numpy(live)]
        kept = torch.cat([kept, idx + lo])
    return order[kept]


def _suppresses(a: torch.Tensor, b: torch.Tensor, offset: int, thr: torch.Tensor, finite: bool) -> torch.Tensor:
    """bool (m, n): IoU(a_i, b_j) > thr, with a (5, m) the earlier boxes (x1, y1, x2, y2, area) and b (5, n)
    the later ones, computed as the kernel computes it for kept box i and later box j. With finite
    coordinates min/max/clamp give the kernel's values; otherwise its std::max/min are spelled out (they
    differ from torch's on NaN)."""
    ix1, iy1, ix2, iy2, iarea = (v[:, None] for v in a)
    jx1, jy1, jx2, jy2, jarea = b
    if finite:
        w = torch.minimum(ix2, jx2).sub_(torch.maximum(ix1, jx1))
        h = torch.minimum(iy2, jy2).sub_(torch.maximum(iy1, jy1))
        if offset:
            w, h = w.add_(offset), h.add_(offset)
        inter = w.clamp_(min=0).mul_(h.clamp_(min=0))
    else:
        xx1 = torch.where(ix1 < jx1, jx1, ix1)  # std::max(i, j) = i < j ? j : i
        yy1 = torch.where(iy1 < jy1, jy1, iy1)
        xx2 = torch.where(jx2 < ix2, jx2, ix2)  # std::min(i, j) = j < i ? j : i
        yy2 = torch.where(jy2 < iy2, jy2, iy2)
        w, h = xx2 - xx1 + offset, yy2 - yy1 + offset
        inter = torch.where(w > 0, w, 0.0) * torch.where(h > 0, h, 0.0)  # std::max(0.f, v) = 0 < v ? v : 0
    return inter.div_((iarea + jarea).sub_(inter)) > thr


def _missing(name: str):
    def op(*args, **kwargs):
        raise CompiledOpMissing(
            f"mmcv op {name!r} needs mmcv's compiled extension (mmcv._ext), which this install does not have: "
            f"it has mmcv-lite with cocon's stand-in, which provides only `nms` (cocon/preprocess/mm_ops.py); {HINT}"
        )

    op.__name__ = name
    return op


def stand_in() -> types.ModuleType:
    """A module to register as `mmcv._ext`: `nms` above; any other op (mmcv's loader asks for them by
    name when `mmcv.ops` is imported) exists, and raises CompiledOpMissing when called."""
    mod = types.ModuleType(EXT, "cocon's stand-in for mmcv's compiled ops: nms only (cocon.preprocess.mm_ops)")
    # mmengine's mmcv_full_available() calls pkgutil.find_loader, which needs a __spec__; loader None makes
    # it answer False (no mmcv-full), which is the truth
    mod.__spec__ = importlib.machinery.ModuleSpec(EXT, None)
    mod.nms = nms
    mod.get_compiler_version = lambda: "none (mmcv-lite + cocon stand-in)"
    mod.get_compiling_cuda_version = lambda: "not available"

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _missing(name)

    mod.__getattr__ = __getattr__
    return mod


def _loads(name: str) -> bool:
    """Whether module `name` is there and loads (a compiled module built for another numpy does not)."""
    try:
        importlib.import_module(name)
    except (ImportError, ValueError):  # ValueError: "numpy.dtype size changed" (built against numpy 1)
        return False
    return True


def _distribution(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def require() -> None:
    """Raise StackMissing, naming what to install, unless the OpenMMLab stack is installed."""
    missing = [m for m in MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise StackMissing(
            f"the pose and seg stages need the OpenMMLab stack ({STACK}); missing in {sys.prefix}: "
            f"{', '.join(missing)}. Install it with `make mm-stack` (part of `make setup`; docs/pose_seg.md, Install)"
        )


def install() -> dict:
    """Register the stand-ins where the compiled modules are missing; idempotent. Returns what provides
    each: {"mmcv._ext": "compiled" | STAND_IN | "absent", "xtcocotools._mask": "compiled" |
    "pycocotools._mask" | "absent" | "not loadable"} (recorded with the versions in the pose/seg shards)."""
    out = {}
    if importlib.util.find_spec("mmcv") is None:
        out[EXT] = "absent"
    elif getattr(sys.modules.get(EXT), "nms", None) is nms:  # registered before
        out[EXT] = STAND_IN
    elif _loads(EXT):
        out[EXT] = "compiled"
    else:
        if _distribution("mmcv"):
            log.warning(
                "mmcv %s is installed but its compiled ops do not load; using the stand-in", _distribution("mmcv")
            )
        sys.modules[EXT] = stand_in()
        out[EXT] = STAND_IN
    if importlib.util.find_spec("xtcocotools") is None:
        out[XT_MASK] = "absent"
    elif _loads(XT_MASK):
        out[XT_MASK] = "pycocotools._mask" if sys.modules[XT_MASK].__name__ == "pycocotools._mask" else "compiled"
    elif _loads("pycocotools._mask"):
        sys.modules[XT_MASK] = sys.modules["pycocotools._mask"]
        out[XT_MASK] = "pycocotools._mask"
    else:
        out[XT_MASK] = "not loadable"
    return out
