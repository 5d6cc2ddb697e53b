"""The stand-in for mmcv's compiled ops (cocon.preprocess.mm_ops), which `make setup` installs with mmcv-lite:
its torch `nms` against the answers of mmcv 2.1.0's compiled CPU kernel, recorded in tests/data/nms_reference.npz
(CI has no compiled mmcv), and the module that stands in for `mmcv._ext`.

The reference file was written by `python bench/nms.py --write-reference tests/data/nms_reference.npz` in an
environment with mmcv 2.1.0 compiled from source (`make mm-full`), torch 2.13.0 CPU: 200 random box sets of
`bench/nms.py:random_case` (0-89 boxes; grids with exact IoU values, duplicate, zero-area and inverted boxes,
exact score ties; IoU thresholds 0-1; offset 0 and 1) and the 2 nms calls of RTMDet-tiny (random weights,
`bench/nms.py:spread`) on 2 demo frames, with the compiled op's kept indices. (bench/nms.py compares the two on
20,000 more random sets and every call of RTMDet-tiny on 4 frames; BENCHMARKS.md, "NMS".)"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cocon.preprocess import mm_ops

REFERENCE = Path(__file__).parent / "data" / "nms_reference.npz"


def reference_cases():
    """[(boxes float32 (n, 4), scores float32 (n,), iou_threshold, offset, source, kept int64 (k,))]."""
    z = np.load(REFERENCE)
    ends, kends = np.cumsum(z["sizes"]), np.cumsum(z["kept_sizes"])
    out = []
    for i in range(len(ends)):
        lo, klo = ends[i] - z["sizes"][i], kends[i] - z["kept_sizes"][i]
        out.append(
            (
                z["boxes"][lo : ends[i]],
                z["scores"][lo : ends[i]],
                float(z["iou_threshold"][i]),
                int(z["offset"][i]),
                int(z["source"][i]),
                z["kept"][klo : kends[i]].astype(np.int64),
            )
        )
    return out


def test_nms_gives_the_compiled_kernels_answers():
    """Same kept indices in the same order as mmcv's compiled CPU nms, on every recorded case."""
    cases = reference_cases()
    assert len(cases) >= 200 and {c[4] for c in cases} == {0, 1}  # random sets and RTMDet calls
    assert any(len(c[1]) == 0 for c in cases) and any(len(c[1]) == 1 for c in cases)
    assert sum(len(np.unique(c[1])) < len(c[1]) for c in cases) > 100  # exact score ties
    assert {c[3] for c in cases} == {0, 1}
    wrong = [
        i
        for i, (b, s, thr, off, _, kept) in enumerate(cases)
        if not np.array_equal(mm_ops.nms(torch.from_numpy(b), torch.from_numpy(s), thr, off).numpy(), kept)
    ]
    assert wrong == []


def test_nms_edge_cases():
    empty = mm_ops.nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.long and empty.shape == (0,)
    assert mm_ops.nms(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.3]), 0.5).tolist() == [0]
    # equal scores: the order of torch's sort (as the kernel); duplicates: only the first is kept
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.9])
    order = scores.sort(0, descending=True)[1]
    assert mm_ops.nms(boxes, scores, 0.5).tolist() == [order[0].item(), 2]
    # IoU exactly at the threshold is kept (the kernel drops only IoU > threshold); offset 1 adds a pixel
    pair = torch.tensor([[0.0, 0, 4, 1], [0, 0, 2, 1]])  # IoU 0.5 with offset 0, 6/10 with offset 1
    assert mm_ops.nms(pair, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert mm_ops.nms(pair, torch.tensor([0.9, 0.8]), 0.5, offset=1).tolist() == [0]
    # zero-area boxes never suppress (0/0 IoU)
    dots = torch.tensor([[5.0, 5, 5, 5], [5, 5, 5, 5]])
    assert mm_ops.nms(dots, torch.tensor([0.9, 0.8]), 0.0).tolist() == [0, 1]
    with pytest.raises(RuntimeError, match="float32"):
        mm_ops.nms(boxes.double(), scores, 0.5)


def test_nms_blocks_and_non_finite_coordinates_agree_with_the_plain_greedy_loop():
    """More boxes than one block, and NaN/inf coordinates (the kernel's std::max/min spelled out), against a
    transcription of the kernel's loop in Python float32 scalars."""

    def loop(boxes, scores, thr, offset):
        b = boxes.numpy()
        f32 = np.float32
        x1, y1, x2, y2 = b.T
        area = (x2 - x1 + f32(offset)) * (y2 - y1 + f32(offset))
        order = scores.sort(0, descending=True)[1].numpy()
        keep = np.ones(len(order), bool)
        for _i, i in enumerate(order):
            if not keep[_i]:
                continue
            for _j in range(_i + 1, len(order)):
                j = order[_j]
                if not keep[_j]:
                    continue
                xx1 = x1[j] if x1[i] < x1[j] else x1[i]
                yy1 = y1[j] if y1[i] < y1[j] else y1[i]
                xx2 = x2[j] if x2[j] < x2[i] else x2[i]
                yy2 = y2[j] if y2[j] < y2[i] else y2[i]
                w, h = xx2 - xx1 + f32(offset), yy2 - yy1 + f32(offset)
                inter = (w if f32(0) < w else f32(0)) * (h if f32(0) < h else f32(0))
                if inter / (area[i] + area[j] - inter) > f32(thr):
                    keep[_j] = False
        return order[keep].tolist()

    g = torch.Generator().manual_seed(3)
    for n, bad in ((mm_ops.BLOCK * 2 + 17, False), (60, True)):
        xy = (torch.rand(n, 2, generator=g) * 64).round()
        boxes = torch.cat([xy, xy + (torch.rand(n, 2, generator=g) * 24).round()], 1)
        scores = (torch.rand(n, generator=g) * 8).round() / 8
        if bad:
            boxes[::7, 0], boxes[3::11, 2], boxes[5::13, 3] = float("nan"), float("inf"), -float("inf")
        for thr, off in ((0.5, 0), (0.3, 1)):
            with np.errstate(invalid="ignore", divide="ignore"):  # inf - inf, 0 / 0: as in the kernel
                expected = loop(boxes, scores, thr, off)
            assert mm_ops.nms(boxes, scores, thr, off).tolist() == expected


def test_stand_in_module():
    mod = mm_ops.stand_in()
    assert mod.__spec__.name == "mmcv._ext" and mod.__spec__.loader is None
    assert mod.nms is mm_ops.nms
    assert hasattr(mod, "roi_align_forward")  # mmcv's loader asserts every op it names exists
    with pytest.raises(mm_ops.CompiledOpMissing, match=r"'roi_align_forward'.*make mm-full"):
        mod.roi_align_forward(torch.zeros(1))
    with pytest.raises(AttributeError):
        mod.__path__  # noqa: B018 - not a package


def test_install_registers_the_stand_in_only_where_the_compiled_op_is_missing():
    pytest.importorskip("mmcv", reason="the OpenMMLab stack is installed by `make setup`")
    ops = mm_ops.install()
    assert ops == mm_ops.install()  # idempotent
    assert set(ops) == {"mmcv._ext", "xtcocotools._mask"}
    ext = importlib.import_module("mmcv._ext")
    if ops["mmcv._ext"] == mm_ops.STAND_IN:
        assert ext.nms is mm_ops.nms and sys.modules["mmcv._ext"] is ext
        assert pkgutil.find_loader("mmcv._ext") is None  # mmengine: mmcv_full_available() is False
    else:
        assert ops["mmcv._ext"] == "compiled" and ext.nms is not mm_ops.nms
    import mmcv.ops
    import mmdet.apis  # noqa: F401
    import mmpose.models  # noqa: F401
    import mmseg.apis  # noqa: F401

    from cocon.preprocess import mm

    versions = mm.mm_versions()
    assert versions["mmcv._ext"] == ops["mmcv._ext"] and "mmcv-lite" in versions and "mmcv" in versions
    assert "absent" in (versions["mmcv"], versions["mmcv-lite"])  # one or the other
    dets, kept = mmcv.ops.nms(
        np.array([[0, 0, 10, 10], [1, 1, 10, 10]], np.float32), np.array([0.5, 0.9], np.float32), 0.5
    )
    assert kept.tolist() == [1] and dets.shape == (1, 5)


def test_a_missing_stack_is_named_with_the_make_target(monkeypatch):
    from cocon.preprocess import mm

    monkeypatch.setattr(mm_ops, "MODULES", ("mmengine", "no_such_openmmlab_package"))
    with pytest.raises(mm_ops.StackMissing, match=r"no_such_openmmlab_package.*make mm-stack"):
        mm_ops.require()
    with pytest.raises(mm.ModelLoadError, match=r"OpenMMLab stack.*make mm-stack"):
        mm.build_model("seg", "segformer_mit-b0_8xb2-160k_ade20k-512x512", None, "cpu", 0)
