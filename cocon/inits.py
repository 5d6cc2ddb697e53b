"""The initialisations registry: the starting points that fine-tuning, the features and the claim compare.

One declaration per kind, read by everything that enumerates them: the config schema (`finetune.inits`),
the config checks, the fine-tuning method and the features command (`--init-kind`), the rules (wildcards,
which model file a job starts from, the claim's inits), the report and the claim (order, titles, colours).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Init:
    """name: the kind (`--init-kind`, wildcard, config value); title and colour: how tables and figures show
    it; model: the pretrained model.pt under a run's train/ folder ("{view}" = the view), None = random
    weights; min_views: train.views it needs (stage 2 trains views jointly); stage2: for a stage-2 run other
    than CoCon's, what it sets in the `cocon` section (the job's config, cocon.workflow.jobs)."""

    name: str
    title: str
    colour: str
    model: str | None
    min_views: int = 1
    stage2: dict | None = None


# in the paper's order: each should beat the one before; the control tells "more training" from cooperation
INITS: dict[str, Init] = {
    i.name: i
    for i in (
        Init("random", "Random", "tab:gray", None),
        Init("cpc", "CPC", "k", "cpc/{view}/model.pt"),
        Init("cocon", "CoCon", "tab:red", "cocon/model.pt", min_views=2),
        Init("control", "Control (λ = 0)", "tab:blue", "control/model.pt", min_views=2, stage2={"lam": 0.0}),
        # named, not a default of finetune.inits: Eq. 2-3 read literally (squared L_sync), beside the coded loss
        Init(
            "cocon_paper",
            "CoCon, paper's loss",
            "tab:orange",
            "cocon_paper/model.pt",
            min_views=2,
            stage2={"loss_variant": "paper"},
        ),
    )
}
DEFAULT_INITS = ("random", "cpc", "cocon", "control")  # finetune.inits' default
NAMES: tuple[str, ...] = tuple(INITS)


def get(name: str) -> Init:
    if name not in INITS:
        raise ValueError(f"unknown initialisation {name!r}; known: {', '.join(INITS)}")
    return INITS[name]


def model_path(name: str, view: str, train_dir: str) -> str | None:
    """The model.pt a job of init `name` on `view` starts from, under `train_dir` (None for random)."""
    init = get(name)
    return None if init.model is None else f"{train_dir}/{init.model.format(view=view)}"


def possible(n_views: int) -> list[str]:
    """The inits a run training `n_views` views can compare."""
    return [i.name for i in INITS.values() if n_views >= i.min_views]
