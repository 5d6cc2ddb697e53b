"""Dense test of a fine-tuned classifier on one view (paper Sec. 4, supplement A.4).

    cocon evaluate --view rgb --model results/finetune/cpc/rgb/model.pt \
        --config-json '{...}' --out results/eval/cpc/rgb/scores.h5

Every test video whose view is ok is cut into windows (`cocon.data.clips.dense_windows`: N blocks of K
frames at `train.stride`, a window every `evaluate.window_stride` blocks, half overlap by default;
too-short videos get one window, never dropped), each window is centre-cropped and classified, and
the video's class probabilities are the mean of the windows' softmax. Videos that failed
preprocessing are listed as unscored (they have no frames).

Output: an HDF5 file (written atomically, provenance in its attributes):

    /video_id  str (V,)       /label  int64 (V,)     /windows  int64 (V,)  test windows per video
    /probs     float32 (V, C) mean softmax over the windows
    /unscored  str (U,)       test videos of the manifest without frames in this view
    attrs: view, init_kind, class_names (JSON), accuracy, n_videos, n_unscored, config, code_revision,
           library_versions, model_selected_epoch, complete
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from cocon.config import add_config_args, config_from_args
from cocon.evaluate.common import (
    dense_dataset,
    iterate_videos,
    provenance,
    resolve_precision,
    run_in_chunks,
    unscored_videos,
)
from cocon.files import write_h5
from cocon.runtime import resolve_device, set_threads, setup_logging

log = logging.getLogger("cocon.evaluate.dense")


def evaluate(cfg: dict, view: str, model_path: str | Path, out: Path) -> dict:
    """Score every test video; write `out`; return {"accuracy", "accuracy_all", "n_videos", "n_unscored"}.

    accuracy: top-1 over the scored videos; accuracy_all: over every test video of the split, the
    unscored ones (failed in preprocessing) counted wrong - the paper's denominator."""
    from cocon.models.build import build_classifier
    from cocon.train.checkpoints import load_checkpoint

    ck = load_checkpoint(model_path)
    class_names = list(ck["class_names"])
    model = build_classifier(view, len(class_names), cfg)
    model.load_state_dict(ck["models"][view])
    device = torch.device(resolve_device(cfg["runtime"]["device"]))
    precision = resolve_precision(cfg, device)
    model.to(device).eval()
    data = dense_dataset(cfg, view, "test")
    if data.class_names and data.class_names != class_names[: len(data.class_names)]:
        raise ValueError(
            f"{model_path}: its classes differ from the shards' ({class_names[:3]}... vs {data.class_names[:3]}...)"
        )
    video_ids = [v.video_id for v in data.videos]
    probs = np.zeros((len(data), len(class_names)), np.float32)
    windows = np.zeros(len(data), np.int64)
    for item in iterate_videos(data, cfg["runtime"]["workers"]):
        i = int(item["index"])
        logits = run_in_chunks(model, item[view], cfg["evaluate"]["batch_size"], device, precision)
        probs[i] = torch.softmax(logits.double(), dim=1).mean(dim=0).numpy()
        windows[i] = int(item["windows"])
    labels = np.array([v.label_index for v in data.videos], np.int64)
    accuracy = float((probs.argmax(axis=1) == labels).mean()) if len(labels) else float("nan")
    unscored = unscored_videos(cfg, view, "test", set(video_ids))
    total = len(video_ids) + len(unscored)
    accuracy_all = float((probs.argmax(axis=1) == labels).sum() / total) if total else float("nan")
    write_h5(
        out,
        {"video_id": video_ids, "label": labels, "windows": windows, "probs": probs, "unscored": unscored},
        provenance(
            "evaluate",
            cfg,
            view=view,
            init_kind=ck.get("init_kind", ""),
            class_names=class_names,
            accuracy=accuracy,
            accuracy_all=accuracy_all,
            n_videos=len(video_ids),
            n_unscored=len(unscored),
            model_selected_epoch=int(ck.get("selected_epoch", -1)),
        ),
    )
    log.info(
        "%s (%s): top-1 %.4f over %d scored test videos (%d windows), %.4f over all %d; %d unscored",
        view,
        ck.get("init_kind"),
        accuracy,
        len(video_ids),
        int(windows.sum()),
        accuracy_all,
        total,
        len(unscored),
    )
    return {"accuracy": accuracy, "accuracy_all": accuracy_all, "n_videos": len(video_ids), "n_unscored": len(unscored)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Dense test of a fine-tuned classifier on one view.")
    p.add_argument("--view", required=True)
    p.add_argument("--model", required=True, help="fine-tuned model.pt (cocon train finetune)")
    p.add_argument("--out", required=True, type=Path, help="scores .h5")
    p.add_argument("--threads", type=int, default=None)
    add_config_args(p)
    a = p.parse_args(argv)
    cfg = config_from_args(a)
    setup_logging()
    set_threads(a.threads)
    evaluate(cfg, a.view, a.model, a.out)


if __name__ == "__main__":
    main()
