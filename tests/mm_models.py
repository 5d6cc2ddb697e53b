"""The OpenMMLab models of the pose and seg tests (test_pose_seg on the CPU, test_gpu on CUDA): the stage
parameters that build small models from the packages' own configs (seg_params, pose_params; random weights
unless a checkpoint is given) and balance_person, which makes a random seg model's person maps vary.
Building the models needs the OpenMMLab stack (mmcv, mmengine, mmpose, mmseg, mmdet)."""

from __future__ import annotations

import numpy as np
import torch

from cocon.config import load_config
from cocon.preprocess import mm, seg

# small models of the packages' own configs, at small input sizes: the tests stay fast on 2 CPU cores
POSE_CONFIG = "td-hm_mobilenetv2_8xb64-210e_coco-256x192"
SEG_CONFIG = "segformer_mit-b0_8xb2-160k_ade20k-512x512"
DET_CONFIG = "rtmdet_tiny_8xb32-300e_coco"
DEFAULTS = load_config()


def seg_params(**kw) -> dict:
    p = {
        **DEFAULTS["seg"],
        "config": SEG_CONFIG,
        "checkpoint": None,
        "input_scale": [64, 64],
        "short_side": 32,
        "frame_stride": 2,
        "frame_offset": 1,
        "batch_size": 4,
        "device": "cpu",
        "seed": 0,
    }
    for k in ("enabled", "gpus"):
        p.pop(k)
    return {**p, **kw}


def pose_params(**kw) -> dict:
    p = {
        **DEFAULTS["pose"],
        "config": POSE_CONFIG,
        "checkpoint": None,
        "input_size": [48, 64],
        "short_side": 32,
        "boxes": "frame",
        "frame_stride": 2,
        "frame_offset": 1,
        "batch_size": 8,
        "device": "cpu",
        "seed": 0,
        "detector": {
            **DEFAULTS["pose"]["detector"],
            "config": DET_CONFIG,
            "checkpoint": None,
            "input_scale": [64, 64],
            "score_threshold": 0.0,
        },
        "max_people": 2,
    }
    for k in ("enabled", "gpus"):
        p.pop(k)
    return {**p, **kw}


def balance_person(model: seg.PersonProbability, frames_: np.ndarray, factor: float) -> None:
    """Amplify the seg model's classifier and shift the person logit so that about half of the pixels of
    `frames_` are person: the probability maps then vary strongly across pixels and frames."""
    from mmseg.apis import inference_model

    conv = model.model.decode_head.conv_seg
    with torch.no_grad():
        conv.weight *= factor
        conv.bias *= factor
        with mm.scope("seg"):
            logits = torch.stack(
                [r.seg_logits.data for r in inference_model(model.model, list(frames_[..., ::-1].copy()))]
            )
        others = torch.cat([logits[:, : model.person], logits[:, model.person + 1 :]], 1).amax(1)
        conv.bias[model.person] += (others - logits[:, model.person]).median()
