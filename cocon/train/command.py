"""`cocon train <method>`: run a training method (cocon.train.methods) to the end in an output folder.

    cocon train cpc --views rgb --out results/train/cpc/rgb --config-json '{...}'
    cocon train cocon --views rgb flow_tvl1 --init rgb=.../cpc/rgb/model.pt --init flow_tvl1=... --out ...
    cocon train finetune --views rgb --init-kind cpc --init rgb=.../cpc/rgb/model.pt --out ...

With runtime.gpus > 1 and CUDA visible the command re-executes itself under torchrun (one DDP process per
GPU, in the same job); started on every node of a multi-node job by `cocon launch`, it joins the other nodes
through torchrun's c10d rendezvous (cocon.train.distributed). The final metrics are printed as one JSON line
on stderr. Under SLURM the run stops
at an epoch boundary before the job's time limit and exits with code 75 (cocon.train.deadline); run again,
it resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from cocon.config import add_config_args, config_from_args
from cocon.runtime import set_threads, setup_logging
from cocon.train import distributed as D
from cocon.train.methods import METHODS, get_method

STARTED = time.time()  # the job's start, as near as this process knows it


def parse_init(items: list[str], views: list[str]) -> dict[str, str]:
    """["VIEW=PATH", ...] (or a bare PATH when one view is trained) -> {view: path}."""
    out = {}
    for item in items:
        if "=" in item:
            view, path = item.split("=", 1)
        elif len(views) == 1:
            view, path = views[0], item
        else:
            raise SystemExit(f"--init {item!r}: give VIEW=PATH when several views are trained")
        if view not in views:
            raise SystemExit(f"--init {item!r}: {view!r} is not one of the trained views {views}")
        out[view] = path
    return out


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="cocon train", description="Run a training method (CPC, CoCon, fine-tuning).")
    p.add_argument("method", choices=sorted(METHODS))
    p.add_argument("--views", required=True, nargs="+")
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, model.pt, metrics.csv, tb/)")
    p.add_argument(
        "--init",
        action="append",
        default=[],
        metavar="VIEW=PATH",
        help="model.pt a view starts from (stage-1 weights for cocon; a pretrained model for finetune)",
    )
    p.add_argument("--init-kind", default=None, help="finetune: random | cpc | cocon | control (bookkeeping)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads of the job (split over processes)")
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="MINUTES",
        help="the job's time limit (the rule's runtime); under SLURM the run stops at an epoch boundary before it",
    )
    add_config_args(p)
    a = p.parse_args(argv)
    cfg = config_from_args(a, command="train")
    init = parse_init(a.init, a.views)
    try:
        method = get_method(a.method)(cfg, a.views, init, a.init_kind)
    except ValueError as exc:
        p.error(str(exc))
    import torch

    from cocon.train.deadline import Deadline
    from cocon.train.engine import Engine

    D.relaunch_under_torchrun(cfg["runtime"]["gpus"] if torch.cuda.is_available() else 1, "cocon", ["train", *argv])
    setup_logging(D.process_label())
    if a.threads:
        set_threads(max(1, a.threads // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))))
    engine = Engine(method, a.out, deadline=Deadline.for_job(a.time_limit, start=STARTED))
    try:
        engine.fit()
    finally:
        D.teardown()
    if D.is_main():
        print(
            json.dumps(
                {
                    "method": a.method,
                    "views": a.views,
                    "epochs": engine.epochs,
                    "final": engine.history[-1] if engine.history else None,
                }
            ),
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
