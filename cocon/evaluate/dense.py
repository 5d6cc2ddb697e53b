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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cocon import views as V
from cocon.config import add_config_args, config_from_args
from cocon.data.clips import ClipGeometry, DenseClips, Partition, discover, eval_centre_crop, make_loader
from cocon.data.index import open_views
from cocon.files import write_h5
from cocon.provenance import code_revision, library_versions
from cocon.runtime import resolve_device, set_threads, setup_logging

log = logging.getLogger("cocon.evaluate.dense")


def dense_dataset(cfg: dict, view: str, role: str, extra_blocks: int = 0) -> DenseClips:
    """Every video of `role` ("test", or "train" = the whole training role, val subset included)."""
    tc = cfg["train"]
    return DenseClips(
        discover(cfg["output_dir"], [view]),
        views=[view],
        role=role,
        partition=Partition(split=cfg["dataset"]["split"], fraction=0.0),
        clip=ClipGeometry(
            tc["num_blocks"], tc["block_len"], tc["stride"], sizes={view: V.input_size(view, tc["input_size"])}
        ),
        seed=cfg["seed"],
        window_stride=cfg["evaluate"]["window_stride"],
        extra_blocks=extra_blocks,
        centre_crop=eval_centre_crop(cfg),
    )


def iterate_videos(dataset: DenseClips, workers: int):
    """One dataset item (a whole video, see DenseClips) at a time, in index order."""
    return make_loader(dataset, batch_size=None, workers=workers, shuffle=False)


@torch.no_grad()
def run_in_chunks(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int, device: torch.device, precision: str
) -> torch.Tensor:
    """fn over x (W, ...) in chunks of `batch` rows on `device` (bf16 autocast when asked) -> float32 CPU."""
    outs = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            outs.append(fn(chunk).float().cpu())
    return torch.cat(outs)


def resolve_precision(cfg: dict, device: torch.device) -> str:
    p = cfg["train"]["precision"]
    return ("bf16" if device.type == "cuda" else "fp32") if p == "auto" else p


def unscored_videos(cfg: dict, view: str, role: str, scored: set[str]) -> list[str]:
    """Videos of `role` present in the shards (any status) that were not scored."""
    rows = open_views(discover(cfg["output_dir"], [view]), [view]).rows  # every row, failed videos included
    split = str(cfg["dataset"]["split"])
    return sorted(r.video_id for r in rows if r.role(split) == role and r.video_id not in scored)


def provenance(command: str, cfg: dict, **extra) -> dict:
    """Attributes of a result file: the command that wrote it, its config, code revision and versions."""
    return {
        "command": command,
        "config": cfg,
        "code_revision": code_revision(),
        "library_versions": library_versions(),
        **extra,
    }


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
