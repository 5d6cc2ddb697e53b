"""Fine-tuning an action classifier on one view, from one initialisation (paper Sec. 4, supplement A.4).

    python -m cocon.train.finetune --view rgb --init-kind cpc --init results/train/cpc/rgb/model.pt \
        --config-json '{...}' --out results/finetune/cpc/rgb
    python -m cocon.train.finetune --view rgb --init-kind random --config-json '{...}' --out results/finetune/random/rgb

The network is :class:`cocon.models.networks.ActionClassifier`: the view's encoder f and ConvGRU g (from the
stage-1 CPC or stage-2 CoCon model.pt, or random), spatial pooling, BatchNorm, dropout
(`finetune.dropout`, 0.7 as in the paper) and a linear layer; every layer is trained. Clips are
the pretraining clips (N blocks of K frames, `train.*` geometry and augmentation) with their labels;
the loss is cross-entropy. Adam (`finetune.lr`, `finetune.weight_decay`), step schedule (x
`finetune.lr_gamma` after the `finetune.lr_steps` fractions of the epochs).

Model selection: the epoch with the best top-1 accuracy on the validation subset held out from the
training role (`train.val_fraction`, the same subset as pretraining; never the test split); ties go
to the lower validation loss, then to the earlier epoch. Its weights are model.pt.

Outputs in --out, as for pretraining (docs/training.md): checkpoints/ (every epoch, exact resume),
model.pt (selected weights, `selected_epoch`, class names, provenance), metrics.csv, tb/.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cocon.train import distributed as D
from cocon.data.clips import CHANNELS, view_kind
from cocon.config import add_config_args, config_from_args
from cocon.models.networks import ActionClassifier
from cocon.train.engine import PerViewNetworks, Trainer, load_checkpoint, run_hash

log = logging.getLogger("cocon.train.finetune")
INIT_KINDS = ("random", "cpc", "cocon")


def build_classifier(view: str, num_classes: int, cfg: dict) -> ActionClassifier:
    return ActionClassifier(CHANNELS[view_kind(view)], num_classes, depth=cfg["train"]["depth"],
                            dropout=cfg["finetune"]["dropout"], width=cfg["train"]["width"])


def milestones(epochs: int, fractions: list[float]) -> list[int]:
    """Epochs after which the step schedule lowers the learning rate: ceil(f * epochs), deduplicated."""
    return sorted({max(1, math.ceil(f * epochs)) for f in fractions})


class FinetuneTrainer(Trainer):
    """Stage "finetune": one view, cross-entropy, step schedule, best-validation-accuracy selection."""

    def __init__(self, view: str, init_kind: str, init_path: str | None, cfg: dict, out: Path):
        if init_kind not in INIT_KINDS:
            raise ValueError(f"init kind must be one of {INIT_KINDS}, got {init_kind!r}")
        if (init_kind == "random") != (init_path is None):
            raise ValueError("--init is required for a pretrained initialisation and not allowed for 'random'")
        self.init_kind = init_kind
        super().__init__("finetune", [view], cfg, out, {view: init_path} if init_path else {})

    def make_datasets(self):
        from cocon.data.clips import FINETUNE_AUGMENTATION
        from cocon.train.engine import build_datasets

        return build_datasets(self.cfg, self.views, FINETUNE_AUGMENTATION)

    def hyperparameters(self) -> dict:
        fc = self.cfg["finetune"]
        return {k: fc[k] for k in ("epochs", "lr", "weight_decay", "batch_size", "max_steps_per_epoch")}

    def build_models(self) -> nn.ModuleDict:
        view = self.views[0]
        self.class_names = self.train_set.class_names
        model = build_classifier(view, len(self.class_names), self.cfg)
        if self.init:
            model.load_pretrained(load_checkpoint(self.init[view])["models"][view])
        return PerViewNetworks({view: model})

    def make_scheduler(self):
        return torch.optim.lr_scheduler.MultiStepLR(
            self.opt, milestones(self.epochs, self.cfg["finetune"]["lr_steps"]), gamma=self.cfg["finetune"]["lr_gamma"])

    def scheduler_step(self, val: dict[str, float]) -> None:
        self.sched.step()

    def run_hash(self) -> str:
        # epochs stay in the hash: the step schedule's milestones are fractions of them
        fc = {k: v for k, v in self.cfg["finetune"].items() if k != "inits"}
        return run_hash(self.stage, self.views, {**self.cfg, "train": {**self.cfg["train"], "finetune": fc}},
                        {f"{self.init_kind}:{v}": p for v, p in self.init.items()} or {"random": ""})

    def loss_terms(self, batch: dict, outputs: dict) -> dict[str, torch.Tensor]:
        logits = outputs[self.views[0]].float()
        labels = batch["label"].to(self.device)
        return {"total": F.cross_entropy(logits, labels),
                "top1": (logits.argmax(dim=1) == labels).float().mean()}

    def final_epoch(self) -> int:
        """Best validation top-1, then lower validation loss, then the earlier epoch."""
        best = min(self.history, key=lambda r: (-r["val/top1"], r["val/total"], r["epoch"]))
        return int(best["epoch"])

    def checkpoint(self, epoch: int) -> dict:
        return {**super().checkpoint(epoch), "init_kind": self.init_kind, "class_names": list(self.class_names)}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description="Fine-tune an action classifier on one view.")
    p.add_argument("--view", required=True)
    p.add_argument("--init-kind", required=True, choices=INIT_KINDS)
    p.add_argument("--init", default=None, metavar="PATH", help="pretrained model.pt (CPC or CoCon)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads per process")
    add_config_args(p)
    a = p.parse_args(argv)
    cfg = config_from_args(a)
    if (a.init_kind == "random") != (a.init is None):
        p.error("--init is required for --init-kind cpc/cocon and not allowed for random")
    Trainer.run_main("cocon.train.finetune", argv, cfg, a.threads,
                     lambda: FinetuneTrainer(a.view, a.init_kind, a.init, cfg, a.out))


if __name__ == "__main__":
    main()
