"""Training data loader: multi-view clips read from the HDF5 shards. Spec: docs/loader.md.

    shards = discover("results", ["rgb", "flow_tvl1"])          # {view: [path, ...]}
    train = MultiViewClips(shards, role="train", partition=Partition(split=1, fraction=0.1))
    loader = make_loader(train, batch_size=16, workers=8, shuffle=True, seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:     # batch["rgb"]: float32 (B, N, 3, K, H, W); "label", "index", "group": int64 (B,)
            ...

This module only gathers the loader's public names; the work is done by, in order of dependence:
cocon.data.sampling (clip indices, dense windows, frame maps), cocon.data.index (shards, video table,
roles, hold-out), cocon.data.augment (random draws, the uint8 canvas, Finish), cocon.data.reading (decoding,
crops and resizes), cocon.data.datasets (MultiViewClips, DenseClips) and cocon.data.loader (make_loader).
"""

from __future__ import annotations

from cocon.data.augment import FINETUNE_AUGMENTATION, Augmentation, Finish
from cocon.data.datasets import DenseClips, MultiViewClips, eval_centre_crop, training_augmentation
from cocon.data.index import (
    ClipsError,
    Partition,
    Video,
    discover,
    frame_map,
    group_id,
    holdout,
    video_table,
)
from cocon.data.loader import ClipLoader, make_loader
from cocon.data.sampling import ClipGeometry, clip_indices, dense_windows, view_frame_indices

__all__ = [
    "ClipsError",
    "Video",
    "Augmentation",
    "FINETUNE_AUGMENTATION",
    "Finish",
    "ClipGeometry",
    "Partition",
    "MultiViewClips",
    "DenseClips",
    "ClipLoader",
    "dense_windows",
    "discover",
    "video_table",
    "holdout",
    "group_id",
    "clip_indices",
    "frame_map",
    "view_frame_indices",
    "make_loader",
    "eval_centre_crop",
    "training_augmentation",
]
