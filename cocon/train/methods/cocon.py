"""Stage 2: CoCon, the views trained jointly on L_cocon = sum_v L_cpc + lam * sum_pairs (L_sync + alpha L_sim),
from the stage-1 weights of each view (L_cpc and the optimiser from the `cpc` section, the rest from
`cocon`). With cocon.lam = 0 it is the control run: the same epochs of stage 2 with the cooperative terms off."""

from __future__ import annotations

from cocon.train.methods.cpc import CPC


class CoCon(CPC):
    """Several views, their DPC networks initialised from stage 1 (--init VIEW=model.pt)."""

    name = "cocon"
    min_views, max_views = 2, None

    @property
    def command(self) -> str:
        return "control" if self.cfg["cocon"]["lam"] == 0 else "cocon"
