"""Pose stage: 17-channel COCO keypoint confidence heatmaps per frame from an mmpose top-down heatmap
model, for every person in the frame, into the `pose` view. Spec: docs/pose_seg.md.

    cocon pose --rgb rgb/00003.h5 [--seg seg/00003.h5] --shard 00003 --out pose/00003.h5 \
        --config-json '{"seed": 0, "dataset": {...}, "pose": {"config": ..., "checkpoint": ..., "boxes": ...}}'

Per frame: person boxes (`boxes`: an mmdet detector, connected components of the seg view, or the whole
frame), one top-down crop per box through the pose model (batched over boxes of several frames), each
crop's heatmaps (17, h, w) warped back into the frame at the stored resolution, and the instances
combined: `sum` (weighted by box score, clipped at 1, as the original CoCon code) or `max` (weighted).
Stored uint8 (T', H', W', 17), q = round(clip(c, 0, 1) * 255); channel order = COCO keypoints
(nose, left_eye, ...; names in the root attribute `keypoints`). No person: all zeros.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from cocon.data.shards import ShardReader
from cocon.preprocess import mm
from cocon.preprocess.video import BadVideo
from cocon.runtime import resolve_device

VIEW = "pose"
BOX_SOURCES = ("detector", "seg", "frame")


def _edit_pose_cfg(params: dict):
    """Test-time settings of the pose config: heatmaps in the outputs, flip test as configured, and the
    crop size `input_size` [w, h] when set (heatmaps then have a quarter of it)."""

    def edit(cfg):
        cfg.model.test_cfg = {
            **cfg.model.get("test_cfg", {}),
            "output_heatmaps": True,
            "flip_test": params["flip_test"],
        }
        if params["input_size"]:
            for step in cfg.test_dataloader.dataset.pipeline:
                if step["type"] == "TopdownAffine":
                    step["input_size"] = tuple(params["input_size"])

    return edit


class PoseHeatmaps:
    """Frames -> combined keypoint heatmaps. `__call__(frames_rgb, boxes)`: frames uint8 (T, H, W, 3)
    RGB, boxes a list of float32 (n_t, 5) [x0, y0, x1, y1, score] in frame pixels -> uint8 (T, h, w, 17)."""

    def __init__(self, params: dict, device: str, seed: int):
        self.p = params
        self.device = device
        self.model, self.info = mm.build_model(
            "pose", params["config"], params["checkpoint"], device, seed, _edit_pose_cfg(params)
        )
        meta = self.model.dataset_meta
        self.keypoints = [meta["keypoint_id2name"][k] for k in range(meta["num_keypoints"])]
        from mmengine.dataset import Compose

        with mm.scope("pose"):
            self.pipeline = Compose(self.model.cfg.test_dataloader.dataset.pipeline)

    def _instances(self, items):
        """items: [(frame_bgr, box xyxy float32 (4,))] -> [(heatmaps float32 (17, h, w), hm->image 2x3)]."""
        from mmengine.dataset import pseudo_collate
        from mmpose.structures.bbox import get_warp_matrix

        out = []
        with mm.scope("pose"):
            for sl in mm.batches(len(items), self.p["batch_size"]):
                data = []
                for img, box in items[sl]:
                    info = dict(img=img, bbox=box[None], bbox_score=np.ones(1, np.float32))
                    info.update(self.model.dataset_meta)
                    data.append(self.pipeline(info))
                with torch.no_grad():
                    res = self.model.test_step(pseudo_collate(data))
                for r in res:
                    hm = r.pred_fields.heatmaps
                    hm = hm.detach().float().cpu().numpy() if torch.is_tensor(hm) else np.asarray(hm, np.float32)
                    h, w = hm.shape[1:]
                    back = get_warp_matrix(
                        np.asarray(r.input_center, np.float32).reshape(2),
                        np.asarray(r.input_scale, np.float32).reshape(2),
                        0.0,
                        output_size=(w, h),
                        inv=True,
                    )
                    out.append((hm, back))
        return out

    def __call__(self, frames: np.ndarray, boxes: list[np.ndarray]) -> np.ndarray:
        t, fh, fw = frames.shape[:3]
        oh, ow = mm.out_size(fh, fw, self.p["short_side"])
        k = len(self.keypoints)
        canvas = np.zeros((t, oh, ow, k), np.float32)
        bgr = [np.ascontiguousarray(f[:, :, ::-1]) for f in frames]
        items, owners = [], []
        for j, bj in enumerate(boxes):
            for b in bj:
                items.append((bgr[j], b[:4].astype(np.float32)))
                owners.append((j, float(b[4])))
        to_out = np.array([[ow / fw, 0, 0], [0, oh / fh, 0], [0, 0, 1]], np.float64)
        for (hm, back), (j, score) in zip(self._instances(items), owners):
            m = (to_out @ np.vstack([back, [0, 0, 1]]))[:2]
            warped = cv2.warpAffine(
                np.ascontiguousarray(hm.transpose(1, 2, 0)),
                m,
                (ow, oh),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
            warped = warped.reshape(oh, ow, k) * np.float32(score)
            if self.p["combine"] == "sum":
                canvas[j] += warped
            else:
                np.maximum(canvas[j], warped, out=canvas[j])
        return mm.to_uint8(canvas)


class DetectorBoxes:
    """Person boxes from an mmdet detector: `__call__(frames_rgb)` -> [float32 (n, 5) xyxy + score]."""

    def __init__(self, params: dict, device: str, seed: int):
        d = params["detector"]
        self.p, self.min_side, self.max_people = d, params["min_side"], params["max_people"]
        self.model, self.info = mm.build_model(
            "det", d["config"], d["checkpoint"], device, seed, mm.edit_resize(d["input_scale"])
        )
        classes = (self.info["dataset_meta"] or self.model.dataset_meta or {}).get("classes")
        if classes is None:
            raise mm.ModelLoadError(f"detector {d['config']!r}: no class names in checkpoint or config")
        self.person = mm.class_index(classes, d["person_class"], f"detector {d['config']!r}")
        self.info["person_class_index"] = self.person

    def __call__(self, frames: np.ndarray) -> list[np.ndarray]:
        from mmdet.apis import inference_detector

        fh, fw = frames.shape[1:3]
        imgs = mm.upscale_small([np.ascontiguousarray(f[:, :, ::-1]) for f in frames], self.min_side)
        out = []
        with mm.scope("det"):
            for sl in mm.batches(len(imgs), self.p["batch_size"]):
                for r in inference_detector(self.model, imgs[sl]):
                    inst = r.pred_instances
                    keep = (inst.labels == self.person) & (inst.scores >= self.p["score_threshold"])
                    b = inst.bboxes[keep].float().cpu().numpy()
                    s = inst.scores[keep].float().cpu().numpy()
                    ih, iw = r.ori_shape
                    b *= np.array([fw / iw, fh / ih, fw / iw, fh / ih], np.float32)
                    out.append(_top(np.hstack([b, s[:, None]]).astype(np.float32), self.max_people))
        return out


def _top(boxes: np.ndarray, n: int) -> np.ndarray:
    """The n highest-scoring boxes with a positive width and height (stable order)."""
    ok = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    boxes = boxes[ok]
    return boxes[np.argsort(-boxes[:, 4], kind="stable")[:n]]


def seg_boxes(
    maps: np.ndarray, frame_hw: tuple[int, int], threshold: float, min_area: float, max_people: int
) -> list[np.ndarray]:
    """Person boxes from seg maps uint8 (T, h, w, 1): connected components of prob >= threshold covering
    at least `min_area` of the map; box in frame pixels, score = mean probability inside it."""
    fh, fw = frame_hw
    out = []
    for m in maps[..., 0]:
        h, w = m.shape
        mask = (m.astype(np.float32) * mm.VALUE_SCALE >= threshold).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        boxes = []
        for c in range(1, n):
            x, y, bw, bh, area = stats[c]
            if area < min_area * h * w:
                continue
            score = float(m[labels == c].mean()) * mm.VALUE_SCALE
            boxes.append([x * fw / w, y * fh / h, (x + bw) * fw / w, (y + bh) * fh / h, score])
        out.append(_top(np.array(boxes, np.float32).reshape(-1, 5), max_people))
    return out


def run(rgb: str, shard: str, out: str, params: dict, dataset: dict, threads: int = 1, seg: str | None = None):
    """Write the pose shard `out` from rgb shard `rgb` (and seg shard `seg` when boxes = seg)."""
    device = resolve_device(params["device"])
    seed = int(params["seed"])
    heat = PoseHeatmaps(params, device, seed)
    attrs = {
        "weights": heat.info["checkpoint"],
        "model": {k: v for k, v in heat.info.items() if k != "dataset_meta"},
        "keypoints": heat.keypoints,
        "combine": params["combine"],
        "boxes": params["boxes"],
        "device": device,
    }
    upstream = {}
    if params["boxes"] == "detector":
        det = DetectorBoxes(params, device, seed)
        attrs["detector"] = {k: v for k, v in det.info.items() if k != "dataset_meta"}
        if det.info["checkpoint"] == "none":
            attrs["weights"] = "none"
    elif params["boxes"] == "seg":
        if not seg:
            raise SystemExit("pose boxes = seg needs --seg (the seg shard of the same shard)")
        upstream["seg"] = seg_reader = ShardReader(seg)
        sa = seg_reader.attrs
        if (sa.get("frame_stride"), sa.get("frame_offset")) != (params["frame_stride"], params["frame_offset"]):
            raise SystemExit(
                f"{seg}: frame_stride/offset {sa.get('frame_stride')}/{sa.get('frame_offset')} differ "
                f"from pose's {params['frame_stride']}/{params['frame_offset']}"
            )
        attrs["seg_weights"] = sa.get("weights", "none")
        if attrs["seg_weights"] == "none":
            attrs["weights"] = "none"

    def compute(row: int, idx: np.ndarray, frames: np.ndarray) -> np.ndarray:
        if params["boxes"] == "frame":
            h, w = frames.shape[1:3]
            boxes = [np.array([[0, 0, w, h, 1.0]], np.float32)] * len(frames)
        elif params["boxes"] == "detector":
            boxes = det(frames)
        else:
            maps = upstream["seg"].read(row)
            if len(maps) != len(idx):
                raise BadVideo(f"seg view has {len(maps)} frames, pose needs {len(idx)}")
            boxes = seg_boxes(
                maps, frames.shape[1:3], params["seg_threshold"], params["min_box_area"], params["max_people"]
            )
        return heat(frames, boxes)

    return mm.run_view(VIEW, rgb, shard, out, params, dataset, attrs, compute, upstream)


def main(argv=None) -> None:
    from cocon.preprocess import stage

    p = stage.stage_parser("Pose keypoint heatmaps (mmpose) of the frames of an rgb shard.")
    p.add_argument("--rgb", required=True, help="the rgb shard of the same shard name")
    p.add_argument("--seg", help="the seg shard of the same shard name (boxes = seg)")
    a, params, dataset = stage.stage_args(p, argv, "pose")
    mm.setup(a.threads)
    try:
        run(a.rgb, a.shard, a.out, params, dataset, a.threads, a.seg)
    except mm.ModelLoadError as exc:
        raise SystemExit(f"ERROR: {exc}") from exc


if __name__ == "__main__":
    main()
