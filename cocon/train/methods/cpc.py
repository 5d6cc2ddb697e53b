"""Stage 1: dense predictive coding (DPC/CPC) of one view, L_cpc (cocon.models.losses.CoconLoss on one view)."""

from __future__ import annotations

import torch

from cocon.models.build import PerViewNetworks, build_dpc, load_view_weights
from cocon.models.losses import CoconLoss, pool_blocks
from cocon.train.methods.base import Method


class CPC(Method):
    """One view's DPC network trained on L_cpc alone (the paper's CPC baseline)."""

    name = "cpc"
    min_views = max_views = 1

    def __init__(self, cfg, views, init=None, init_kind=None):
        super().__init__(cfg, views, init, init_kind)
        self.criterion = CoconLoss(**loss_settings(cfg, cooperative=self.min_views > 1))

    def networks(self, train_set) -> PerViewNetworks:
        nets = PerViewNetworks({v: build_dpc(v, self.cfg) for v in self.views})
        for v, path in self.init.items():
            nets[v].load_state_dict(load_view_weights(path, v))
        return nets

    def loss(self, batch, outputs, weights):
        """L_cpc summed over views plus lam x the cooperative terms over view pairs (none for one view),
        in float32 whatever the autocast precision; plus `cos/<view>`, a diagnostic that is not
        optimised: the mean pairwise cosine of the batch's pooled block features (1 = collapsed)."""
        outputs = {v: type(o)(*(t.float() for t in o)) for v, o in outputs.items()}
        terms = self.criterion(outputs, groups=batch["group"].to(weights.device))
        for v, out in outputs.items():
            terms[f"cos/{v}"] = mean_pairwise_cosine(out.z.detach())
        return terms


def loss_settings(cfg: dict, cooperative: bool) -> dict:
    """CoconLoss arguments: L_cpc from the `cpc` section; with `cooperative` (stage 2) the cooperative terms
    from the `cocon` section, else none (stage 1 trains one view: there is no view pair to cooperate)."""
    cpc = cfg["cpc"]
    coop = cfg["cocon"] if cooperative else {"lam": 0.0}
    return dict(
        lam=coop["lam"],
        alpha=coop.get("alpha", 1.0),
        variant=coop.get("loss_variant", "code"),
        temperature=cpc["temperature"] if cpc["variant"] == "cocon" else 1.0,
        normalize=cpc["variant"] == "cocon",
        mask_group_negatives=not cpc["sibling_negatives"],
        centre=coop.get("coop_centre", False),
        sync_weight=coop.get("sync_weight", 1.0),
    )


def mean_pairwise_cosine(z: torch.Tensor) -> torch.Tensor:
    """z (B, N, D, S, S) -> the mean cosine over all pairs of distinct blocks of the batch, of the block
    features h = pool_blocks(z) (B*N unit vectors; the features L_sync and L_sim compare)."""
    h = pool_blocks(z).reshape(-1, z.shape[2])
    m = h.shape[0]
    if m < 2:
        return h.new_zeros(())
    total = (h.sum(0) ** 2).sum() - m  # sum over i != j of <h_i, h_j> for unit vectors
    return total / (m * (m - 1))
