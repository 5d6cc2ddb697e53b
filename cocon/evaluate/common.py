"""What the evaluation commands share (dense test, features): the dense clips of a role, running a network
over them in chunks, the arithmetic precision, the videos left unscored, the validation subset and the
provenance attributes of a result file."""

from __future__ import annotations

from collections.abc import Callable

import torch

from cocon import views as V
from cocon.data.clips import ClipGeometry, DenseClips, Partition, discover, eval_centre_crop, make_loader
from cocon.data.index import open_views
from cocon.provenance import code_revision, library_versions


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


def labeled_split(cfg: dict, view: str) -> tuple[set[str], set[str]]:
    """(labeled, validation) video ids of the training role, as fine-tuning sees it: the labeled groups
    (finetune.labeled_fraction; all when 1) and, among them, the validation subset (train.val_fraction,
    drawn with `seed`; cocon.data.index.Partition). Never the test split."""
    table = open_views(discover(cfg["output_dir"], [view]), [view])
    partition = Partition(
        split=cfg["dataset"]["split"],
        fraction=cfg["train"]["val_fraction"],
        seed=cfg["seed"],
        labeled=cfg["finetune"]["labeled_fraction"],
    )
    labeled = {r.video_id for r in partition.training_rows(table.rows)}
    return labeled, {v.video_id for v in partition.select("val", table.videos, table.rows)}
