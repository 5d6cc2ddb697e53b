"""Stage 1: dense predictive coding (DPC/CPC) of one view, L_cpc (cocon.models.losses.DenseNCELoss)."""

from __future__ import annotations

from cocon.models.build import PerViewNetworks, build_dpc, load_view_weights
from cocon.models.losses import CoconLoss
from cocon.train.methods.base import Method


class CPC(Method):
    """One view's DPC network trained on L_cpc alone (the paper's CPC baseline)."""

    name = "cpc"
    min_views = max_views = 1

    def __init__(self, cfg, views, init=None, init_kind=None):
        super().__init__(cfg, views, init, init_kind)
        tc = self.tc
        self.criterion = CoconLoss(
            lam=tc["lam"],
            alpha=tc["alpha"],
            variant=tc["loss_variant"],
            temperature=tc["temperature"] if tc["cpc_variant"] == "cocon" else 1.0,
            normalize=tc["cpc_variant"] == "cocon",
            mask_group_negatives=not tc["sibling_negatives"],
        )

    def networks(self, train_set) -> PerViewNetworks:
        nets = PerViewNetworks({v: build_dpc(v, self.cfg) for v in self.views})
        for v, path in self.init.items():
            nets[v].load_state_dict(load_view_weights(path, v))
        return nets

    def loss(self, batch, outputs, weights):
        """L_cpc summed over views plus lam x the cooperative terms over view pairs (none for one view),
        in float32 whatever the autocast precision."""
        outputs = {v: type(o)(*(t.float() for t in o)) for v, o in outputs.items()}
        return self.criterion(outputs, groups=batch["group"].to(weights.device))
