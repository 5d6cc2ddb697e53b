"""Video representations F(x) of a pretrained (or random) network, for the paper's analyses.

    cocon features --view rgb --init-kind cocon --model results/train/cocon/model.pt \
        --config-json '{...}' --out results/features/cocon/rgb.h5

For every video of the training role (the retrieval gallery) and of the test role (queries, t-SNE,
similarities), with the dense test windows of cocon.evaluate.common: the view's DPC encoder f and ConvGRU g
run over all N blocks of each window; the last hidden state (L2-normalised per position, as in
pretraining) is averaged over space; the video's feature is the mean over its windows (CoCon
supplement C.1: "one context representation per video, pooled into a vector"). For test videos also
`evaluate.alignment_blocks` block features z' spread over the whole video (supplement C: soft
alignment), each averaged over space. `--init-kind random` uses a randomly initialised network
(seeded), the baseline of the analyses.

Output: an HDF5 file (atomic, provenance in attributes):

    /<role>/video_id str (V,)  /<role>/label int64 (V,)  /<role>/feature float32 (V, D)   role: train, test
    /train/is_labeled bool (V_train,)  the videos whose labels fine-tuning and the probes use (finetune.labeled_fraction)
    /train/is_val bool (V_train,)  of those, the validation subset (the probes' k and C are chosen on it)
    /test/blocks  float32 (V_test, alignment_blocks, D)
    attrs: view, init_kind, class_names, config, code_revision, library_versions, complete
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from cocon import inits as I
from cocon.config import add_config_args, config_from_args
from cocon.evaluate.common import (
    dense_dataset,
    iterate_videos,
    labeled_split,
    provenance,
    resolve_precision,
    run_in_chunks,
)
from cocon.files import write_h5
from cocon.models.build import build_dpc, load_view_weights
from cocon.models.networks import DPC, l2_normalize
from cocon.runtime import resolve_device, set_threads, setup_logging

log = logging.getLogger("cocon.evaluate.features")


def pretrained_network(cfg: dict, view: str, init_kind: str, model_path: str | None) -> DPC:
    """The view's DPC network from a stage-1/2 model.pt, or random weights (seeded by `seed`)."""
    torch.manual_seed(cfg["seed"])
    net = build_dpc(view, cfg)
    if init_kind != "random":
        net.load_state_dict(load_view_weights(model_path, view))
    return net.eval()


def context_feature(net: DPC, x: torch.Tensor) -> torch.Tensor:
    """x (W, N, C, K, H, W) -> (W, D): g over all N blocks, last state L2-normalised per position,
    averaged over space."""
    _, h = net.gru(net.encode(x))
    return l2_normalize(h, dim=1).mean(dim=(2, 3))


def block_features(net: DPC, x: torch.Tensor) -> torch.Tensor:
    """x (B, T, C, K, H, W) blocks -> (B, T, D): z' of each block (unit norm per position), averaged over space."""
    return net.encode(x).mean(dim=(3, 4))


def extract(cfg: dict, view: str, init_kind: str, model_path: str | None, out: Path) -> None:
    net = pretrained_network(cfg, view, init_kind, model_path)
    device = torch.device(resolve_device(cfg["runtime"]["device"]))
    precision = resolve_precision(cfg, device)
    net.to(device)
    batch = cfg["evaluate"]["batch_size"]
    arrays, class_names = {}, []
    for role in ("train", "test"):
        extra = cfg["evaluate"]["alignment_blocks"] if role == "test" else 0
        data = dense_dataset(cfg, view, role, extra_blocks=extra)
        class_names = class_names or data.class_names
        feats = np.zeros((len(data), net.feature_size), np.float32)
        blocks = np.zeros((len(data), extra, net.feature_size), np.float32)
        for item in iterate_videos(data, cfg["runtime"]["workers"]):
            i = int(item["index"])
            f = run_in_chunks(lambda x: context_feature(net, x), item[view], batch, device, precision)
            feats[i] = f.double().mean(dim=0).numpy()
            if extra:
                blocks[i] = run_in_chunks(
                    lambda x: block_features(net, x), item[f"blocks/{view}"][None], 1, device, precision
                )[0].numpy()
        arrays[f"{role}/video_id"] = [v.video_id for v in data.videos]
        arrays[f"{role}/label"] = np.array([v.label_index for v in data.videos], np.int64)
        if role == "train":  # the labels the frozen-feature probes use, and the subset k and C are chosen on
            labeled, val = labeled_split(cfg, view)
            arrays["train/is_labeled"] = np.array([v.video_id in labeled for v in data.videos], bool)
            arrays["train/is_val"] = np.array([v.video_id in val for v in data.videos], bool)
        arrays[f"{role}/feature"] = feats
        if extra:
            arrays[f"{role}/blocks"] = blocks
        log.info("%s %s (%s): %d videos", view, role, init_kind, len(data))
    write_h5(out, arrays, provenance("features", cfg, view=view, init_kind=init_kind, class_names=class_names))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Pretrained video features for the analyses.")
    p.add_argument("--view", required=True)
    p.add_argument("--init-kind", required=True, choices=I.NAMES)
    p.add_argument("--model", default=None, help="stage-1 or stage-2 model.pt (not for random)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--threads", type=int, default=None)
    add_config_args(p)
    a = p.parse_args(argv)
    if (a.init_kind == "random") != (a.model is None):
        p.error("--model is required for --init-kind cpc/cocon and not allowed for random")
    cfg = config_from_args(a)
    setup_logging()
    set_threads(a.threads)
    with torch.no_grad():
        extract(cfg, a.view, a.init_kind, a.model, a.out)


if __name__ == "__main__":
    main()
