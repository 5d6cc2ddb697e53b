"""Building a view's network from the config: the one place that knows which network a view gets.

build_dpc(view, cfg)                    DPC network (encoder f, ConvGRU g, predictor phi) of a view
build_classifier(view, classes, cfg)    ActionClassifier of a view (fine-tuning, dense test)
load_view_weights(path, view)           the view's state_dict from a model.pt / checkpoint
"""

from __future__ import annotations

import torch
from torch import nn

from cocon import views as V
from cocon.models.networks import DPC, ActionClassifier

# Fine-tuning protocols (finetune.protocol, docs/evaluation.md): the network of Table 1 as the public code
# ran it ("reference") and our corrections ("fixed").
PROTOCOLS = {
    "fixed": {"l2_norm": True, "freeze_gru": False, "dropout": 0.7},
    "reference": {"l2_norm": False, "freeze_gru": True, "dropout": 0.5},
}


class PerViewNetworks(nn.ModuleDict):
    """One network per view, keyed by view name (a DPC in pretraining, an ActionClassifier in
    fine-tuning); forward({view: (B, N, C, K, H, W)}) -> {view: that network's output}. One module, so
    DDP synchronises all views' gradients together."""

    def forward(self, x: dict[str, torch.Tensor]) -> dict:
        return {v: self[v](x[v]) for v in x}


def build_dpc(view: str, cfg: dict) -> DPC:
    """The DPC network of `view` with the `train` section's depth, width and blocks and the `cpc` section's
    prediction steps and variant (cpc.variant: "cocon" = CoCon's L2-normalised rollout, "dpc" = DPC's original)."""
    tc, cpc = cfg["train"], cfg["cpc"]
    return DPC(
        V.channels(view),
        depth=tc["depth"],
        num_blocks=tc["num_blocks"],
        pred_steps=cpc["pred_steps"],
        width=tc["width"],
        l2_norm=cpc["variant"] == "cocon",
    )


def protocol_settings(cfg: dict) -> dict:
    """The fine-tuning network settings of finetune.protocol; finetune.dropout, when set, overrides."""
    fc = cfg["finetune"]
    settings = dict(PROTOCOLS[fc["protocol"]])
    if fc.get("dropout") is not None:
        settings["dropout"] = fc["dropout"]
    return settings


def build_classifier(view: str, num_classes: int, cfg: dict) -> ActionClassifier:
    """The ActionClassifier of `view` for finetune.protocol (see PROTOCOLS)."""
    s = protocol_settings(cfg)
    model = ActionClassifier(
        V.channels(view),
        num_classes,
        depth=cfg["train"]["depth"],
        dropout=s["dropout"],
        width=cfg["train"]["width"],
        l2_norm=s["l2_norm"],
    )
    if s["freeze_gru"]:
        model.gru.requires_grad_(False)
    return model


def load_view_weights(path: str, view: str) -> dict:
    """The state_dict of `view` in a model.pt or checkpoint written by the training engine."""
    from cocon.train.checkpoints import load_checkpoint

    models = load_checkpoint(path)["models"]
    if view not in models:
        raise ValueError(f"{path} holds no weights for view {view!r} (it has {sorted(models)})")
    return models[view]
