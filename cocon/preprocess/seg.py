"""Segmentation stage: per-frame person probability from an mmsegmentation model, into the `seg` view.
Spec: docs/pose_seg.md.

    cocon seg --rgb rgb/00003.h5 --shard 00003 --out seg/00003.h5 \
        --config-json '{"seed": 0, "dataset": {...}, "seg": {"config": ..., "checkpoint": ..., ...}}'

Per frame: the model's class logits at frame resolution (mmseg's own test pipeline and resizing back),
softmax over classes (sigmoid for a one-channel model), the channel of the class named `person_class`
in the model's dataset metadata (the checkpoint's `dataset_meta`, else the config's dataset class), no
other post-processing; resized (area) to the stored size. Stored uint8 (T', H', W', 1),
q = round(p * 255).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from cocon.preprocess import mm
from cocon.runtime import resolve_device

VIEW = "seg"


def _edit_seg_cfg(params: dict):
    """The test pipeline's Resize scale (`input_scale`); no padding of the frames to the training crop
    size (ADE20K configs pad to 512x512: 50x the work for a 86x64 frame)."""
    resize = mm.edit_resize(params["input_scale"])

    def edit(cfg):
        resize(cfg)
        pre = cfg.model.get("data_preprocessor")
        if pre is not None and pre.get("size") is not None:
            pre["size"] = None

    return edit


def model_input_size(h: int, w: int, scale) -> tuple[int, int]:
    """(w, h) the model sees for a (h, w) frame: the keep-ratio fit into `scale` of mmcv's Resize, each
    side rounded to a multiple of 32 (CPU convolutions on other sizes ran up to 20x slower here, and
    backbones of overall stride 32 need it); the logits are resized back to the frame either way."""
    lo, hi = min(scale), max(scale)
    f = min(hi / max(h, w), lo / min(h, w))
    return max(32, int(round(w * f / 32)) * 32), max(32, int(round(h * f / 32)) * 32)


def dataset_classes(model, info: dict) -> list[str]:
    """Class names of a segmentor: the checkpoint's dataset_meta, else the METAINFO of the dataset class
    named in its config (mmseg leaves dataset_meta unset when no checkpoint is loaded)."""
    meta = info.get("dataset_meta") or getattr(model, "dataset_meta", None) or {}
    if meta.get("classes"):
        return list(meta["classes"])
    from mmseg.registry import DATASETS

    with mm.scope("seg"):
        ds = model.cfg.test_dataloader.dataset
        cls = ds["type"] if isinstance(ds["type"], type) else DATASETS.get(ds["type"])
    if cls is None or "classes" not in getattr(cls, "METAINFO", {}):
        raise mm.ModelLoadError(f"seg config {info['config']!r}: no class names in the checkpoint or its dataset")
    return list(cls.METAINFO["classes"])


class PersonProbability:
    """Frames -> person probability maps: `__call__(frames)` uint8 (T, H, W, 3) RGB -> uint8 (T, h, w, 1)."""

    def __init__(self, params: dict, device: str, seed: int):
        self.p = params
        self.model, self.info = mm.build_model(
            "seg", params["config"], params["checkpoint"], device, seed, _edit_seg_cfg(params)
        )
        self.classes = dataset_classes(self.model, self.info)
        self.person = mm.class_index(self.classes, params["person_class"], f"seg config {params['config']!r}")
        self.info["person_class_index"] = self.person
        self.resize = [t for t in self.model.cfg.test_pipeline if t["type"] == "Resize"]
        self.scale = tuple(self.resize[0]["scale"]) if self.resize else None

    def probabilities(self, frames: np.ndarray) -> list[torch.Tensor]:
        """float32 (H, W) person probability per frame, at frame resolution (before storage)."""
        from mmseg.apis import inference_model

        fh, fw = frames.shape[1:3]
        imgs = mm.upscale_small([np.ascontiguousarray(f[:, :, ::-1]) for f in frames], self.p["min_side"])
        for step in self.resize:  # every frame of a video has the same size
            step["scale"], step["keep_ratio"] = model_input_size(*imgs[0].shape[:2], self.scale), False
        out = []
        with mm.scope("seg"):
            for sl in mm.batches(len(imgs), self.p["batch_size"]):
                for r in inference_model(self.model, imgs[sl]):
                    logits = r.seg_logits.data.float()
                    prob = logits.softmax(0)[self.person] if logits.shape[0] > 1 else logits[0].sigmoid()
                    out.append(prob.cpu())
        return out

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        oh, ow = mm.out_size(*frames.shape[1:3], self.p["short_side"])
        maps = np.empty((len(frames), oh, ow, 1), np.uint8)
        for j, prob in enumerate(self.probabilities(frames)):
            p = prob.numpy()
            inter = cv2.INTER_AREA if p.shape[0] >= oh else cv2.INTER_LINEAR
            maps[j, :, :, 0] = mm.to_uint8(cv2.resize(p, (ow, oh), interpolation=inter))
        return maps


def run(rgb: str, shard: str, out: str, params: dict, dataset: dict, threads: int = 1):
    """Write the seg shard `out` from rgb shard `rgb`; returns the failures (video_id, reason)."""
    device = resolve_device(params["device"])
    seg = PersonProbability(params, device, int(params["seed"]))
    attrs = {
        "weights": seg.info["checkpoint"],
        "model": {k: v for k, v in seg.info.items() if k != "dataset_meta"},
        "person_class": seg.classes[seg.person],
        "person_class_index": seg.person,
        "device": device,
    }
    return mm.run_view(VIEW, rgb, shard, out, params, dataset, attrs, lambda row, idx, frames: seg(frames))


def main(argv=None) -> None:
    from cocon.preprocess import stage

    p = stage.stage_parser("Person segmentation probability (mmsegmentation) of the frames of an rgb shard.")
    p.add_argument("--rgb", required=True, help="the rgb shard of the same shard name")
    a, params, dataset = stage.stage_args(p, argv, "seg")
    mm.setup(a.threads)
    try:
        run(a.rgb, a.shard, a.out, params, dataset, a.threads)
    except mm.ModelLoadError as exc:
        raise SystemExit(f"ERROR: {exc}") from exc


if __name__ == "__main__":
    main()
