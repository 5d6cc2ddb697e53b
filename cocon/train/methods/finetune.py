"""Fine-tuning an action classifier on one view, from random weights or a pretrained model (paper Sec. 4,
supplement A.4; docs/evaluation.md).

The network is cocon.models.networks.ActionClassifier (the view's encoder f and ConvGRU g, spatial
pooling, BatchNorm, dropout, linear), as finetune.protocol says (cocon.models.build.PROTOCOLS): "fixed"
(default: L2-normalised z into g, g trained, dropout 0.7) or "reference" (what produced the paper's
Table 1: raw z, g frozen, dropout 0.5). Clips: the pretraining clips with their labels and CoCon's
fine-tuning augmentation (clip-consistent colour jitter, p 0.3, no grey). Cross-entropy; Adam
(finetune.lr, finetune.weight_decay); the step schedule x finetune.lr_gamma after the finetune.lr_steps
fractions of the epochs. Selection: the epoch with the best top-1 on the validation subset (held out
from the training role, never the test split); ties to the lower validation loss, then the earlier epoch.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from cocon import inits as I
from cocon.data.clips import FINETUNE_AUGMENTATION
from cocon.models.build import PerViewNetworks, build_classifier, load_view_weights
from cocon.train.methods.base import Method


def milestones(epochs: int, fractions: list[float]) -> list[int]:
    """Epochs after which the step schedule lowers the learning rate: ceil(f * epochs), deduplicated."""
    return sorted({max(1, math.ceil(f * epochs)) for f in fractions})


class Finetune(Method):
    name = "finetune"
    min_views = max_views = 1
    augmentation = FINETUNE_AUGMENTATION

    def __init__(self, cfg, views, init=None, init_kind=None):
        init_kind = init_kind or ("random" if not init else "cpc")
        I.get(init_kind)  # unknown kinds fail here
        if (init_kind == "random") != (not init):
            raise ValueError("an init model is required for a pretrained initialisation and not allowed for 'random'")
        super().__init__(cfg, views, init, init_kind)
        self.class_names: list[str] = []

    @property
    def epochs(self) -> int:
        return int(self.cfg["finetune"]["epochs"])

    @property
    def section(self) -> dict:
        return self.cfg["finetune"]

    def partition(self):
        """The pretraining partition cut to the labeled groups (finetune.labeled_fraction)."""
        return dataclasses.replace(super().partition(), labeled=self.cfg["finetune"]["labeled_fraction"])

    def scheduler(self, opt):
        fc = self.cfg["finetune"]
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones(self.epochs, fc["lr_steps"]), gamma=fc["lr_gamma"])

    def scheduler_step(self, sched, val):
        sched.step()

    def networks(self, train_set) -> PerViewNetworks:
        view = self.views[0]
        self.class_names = list(train_set.class_names)
        model = build_classifier(view, len(self.class_names), self.cfg)
        if self.init:
            model.load_pretrained(load_view_weights(self.init[view], view))
        return PerViewNetworks({view: model})

    def loss(self, batch, outputs, weights):
        logits = outputs[self.views[0]].float()
        labels = batch["label"].to(logits.device)
        n = weights.sum().clamp_min(1.0)
        ce = F.cross_entropy(logits, labels, reduction="none")
        correct = (logits.detach().argmax(dim=1) == labels).float()
        return {"total": (ce * weights).sum() / n, "top1": (correct * weights).sum() / n}

    def select_epoch(self, history):
        """Best validation top-1, then lower validation loss, then the earlier epoch."""
        best = min(history, key=lambda r: (-r["val/top1"], r["val/total"], r["epoch"]))
        return int(best["epoch"])

    def identity(self):
        # finetune.epochs stays in (cocon.workflow.jobs.EPOCHS_KEY): the milestones are fractions of them
        ident = super().identity()
        ident["init"] = [f"{self.init_kind}:{v}" for v in sorted(self.init)] or ["random"]
        return ident

    def checkpoint_extras(self):
        return {"init_kind": self.init_kind, "class_names": list(self.class_names)}
