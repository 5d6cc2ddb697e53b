"""What reruns when one config key changes: on one finished tiny run (the session's demo_run: rgb, both flow
methods, pose and seg computed; rgb and TVL1 flow trained; four inits), each group of keys is changed in turn
and `snakemake -n` (Snakemake's default rerun triggers, no flag that changes them: what users get) must schedule
exactly the jobs that key can affect (docs/reruns.md has the same table). Raising an epoch count continues
the finished run from its last checkpoint and gives the weights of an uninterrupted run."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from cocon.train.checkpoints import load_checkpoint

from workflow_runs import ALL_VIEWS, TINY, snakemake, snakemake_command

pytestmark = pytest.mark.slow  # one finished DAG run, then a dry run per change

VIEWS = ["rgb", "flow_tvl1"]
INITS = ["random", "cpc", "cocon", "control"]
BASE = ALL_VIEWS  # what demo_run finished (finetune.inits: the default four)


def evaluation(inits, views=VIEWS, rules=("finetune", "evaluate", "features")) -> set[str]:
    """The evaluation jobs of these inits and views, as job names (see `scheduled`)."""
    return {f"{rule}[init={i},view={v}]" for rule in rules for i in inits for v in views}


def flow_shards(method: str) -> set[str]:
    return {f"flow[method={method},shard={k:05d}]" for k in range(3)}


COOPERATIVE = {"cocon", *evaluation(["cocon"]), "report"}  # CoCon and what uses its weights
STAGE2 = {"cocon", "control", *evaluation(["cocon", "control"]), "report"}
PRETRAINING = {"cpc[view=rgb]", "cpc[view=flow_tvl1]", *STAGE2, *evaluation(["cpc"])}
FLOW_VIEW = {"cpc[view=flow_tvl1]", *STAGE2, *evaluation(INITS, ["flow_tvl1"])}  # what trains on flow_tvl1

# (the group of keys changed, {section: {key: value}} written over BASE, the jobs a dry run must schedule)
CASES = [
    (
        "cooperative: cocon.lam, alpha, sync_weight, loss_variant, coop_centre",
        {"cocon": {"lam": 5.0, "alpha": 0.5, "sync_weight": 2.0, "loss_variant": "paper", "coop_centre": True}},
        COOPERATIVE,
    ),
    ("cocon.epochs", {"cocon": {"epochs": 2}}, STAGE2),
    (
        "cpc: lr, temperature, sibling_negatives",
        {"cpc": {"lr": 0.002, "temperature": 0.01, "sibling_negatives": False}},
        PRETRAINING,
    ),
    ("cpc.epochs", {"cpc": {"epochs": 2}}, PRETRAINING),
    ("train.input_size.flow", {"train": {"input_size": {"rgb": 32, "flow": 40}}}, FLOW_VIEW),
    (  # the flow crop rule: every flow training (random-init features are no training), not rgb's CPC
        "train.intensity_crop",
        {"train": {"intensity_crop": False}},
        FLOW_VIEW - {"features[init=random,view=flow_tvl1]"},
    ),
    (
        "flow.tvl1.scales",
        {"flow": {"tvl1": {**TINY["flow"]["tvl1"], "scales": 3}}},
        {*flow_shards("tvl1"), "preprocess_summary", "views_figure", *FLOW_VIEW},
    ),
    (
        "a new view: flow_farneback (its shards exist)",
        {"train": {"views": [*VIEWS, "flow_farneback"]}},
        {
            "cpc[view=flow_farneback]",
            *evaluation(INITS, ["flow_farneback"]),
            *STAGE2,
            *evaluation(["cocon", "control"], ["rgb", "flow_tvl1", "flow_farneback"]),
        },
    ),
    (
        "finetune: epochs, lr, protocol",
        {"finetune": {"epochs": 3, "lr": 0.002, "protocol": "reference"}},
        {*evaluation(INITS, rules=("finetune", "evaluate")), "report"},
    ),
    ("finetune.inits without control", {"finetune": {"inits": ["random", "cpc", "cocon"]}}, {"report"}),
    (
        "analyses: evaluate.ensemble_weights, tsne_perplexity, retrieval_ks",
        {"evaluate": {"ensemble_weights": {"rgb": 1, "flow_tvl1": 3}, "tsne_perplexity": 5, "retrieval_ks": [1, 2]}},
        {"report"},
    ),
    (
        "evaluate.window_stride",
        {"evaluate": {"window_stride": 1}},
        {*evaluation(INITS, rules=("evaluate", "features")), "report"},
    ),
    ("claim.* (not in the default target)", {"claim": {"seeds": [5], "cpc_epochs": 3, "cocon_epochs": 2}}, set()),
    (
        "speed and placement: runtime.*, evaluate.batch_size, flow.tvl1 batch_size and device",
        {
            "runtime": {
                "gpus": 2,
                "workers": 1,
                "device": "auto",
                "compile": True,
                "channels_last": True,
                "fused_adam": True,
                "cudnn_benchmark": True,
                "keep_checkpoints": 3,
                "max_job_minutes": 600,
                "threads": 2,
                "nodes": 1,
            },
            "evaluate": {"batch_size": 2},
            "flow": {"tvl1": {**TINY["flow"]["tvl1"], "batch_size": 8, "device": "cpu"}},
            "pose": {"batch_size": 4, "device": "cpu", "gpus": 1},
            "seg": {"batch_size": 4, "device": "cpu"},
        },
        set(),
    ),
]


def changed(overrides: dict) -> dict:
    cfg = copy.deepcopy(BASE)
    for section, values in overrides.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg


def scheduled(dry_run_output: str) -> set[str]:
    """The jobs a dry run lists, as "rule[key=value,...]" (wildcards sorted by name; `all` left out)."""
    jobs, rule = set(), None
    for line in dry_run_output.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if m:
            rule = m.group(1)
            if rule != "all":
                jobs.add(rule)
            continue
        m = re.match(r"^wildcards: (.*)$", line.strip())
        if m and rule and rule != "all":
            jobs.discard(rule)
            items = sorted(kv.strip() for kv in m.group(1).split(","))
            jobs.add(f"{rule}[{','.join(items)}]")
            rule = None
    return jobs


@pytest.fixture(scope="module")
def finished(demo_run):
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(snakemake(demo_run, BASE, "-n"))
    return demo_run


LAMBDA = {"cocon": {"lam": 1.0}}


@pytest.fixture(scope="module")
def dry_runs(finished, tmp_path_factory) -> dict[str, set[str]]:
    """{case: the jobs its dry run schedules} for every case and a lambda change, two dry runs at a time
    (each is one single-threaded process). They share the finished run's folder, so each has its own
    config file and --nolock (a dry run writes no file but Snakemake's lock)."""
    configs = tmp_path_factory.mktemp("dry_run_configs")
    runs = {what: changed(overrides) for what, overrides, _ in CASES} | {"lambda": changed(LAMBDA)}

    def dry_run(item):
        k, (what, cfg) = item
        cmd = snakemake_command(finished, cfg, "-n", "--nolock", configfile=configs / f"{k}.yaml")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{what}:\n{proc.stderr[-3000:]}"
        return what, scheduled(proc.stdout + proc.stderr)

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(dry_run, enumerate(runs.items())))


@pytest.mark.parametrize("what, overrides, expected", CASES, ids=[c[0] for c in CASES])
def test_a_change_reruns_exactly_the_jobs_it_can_affect(dry_runs, what, overrides, expected):
    assert dry_runs[what] == expected, what


def test_a_lambda_change_reruns_no_pretraining(dry_runs):
    assert dry_runs["lambda"] == COOPERATIVE and len(COOPERATIVE) <= 10


def test_raising_the_epochs_continues_the_finished_run(finished, tmp_path):
    """cpc.epochs 1 -> 2: the rerun trains only epoch 1, resumed from the finished run's last checkpoint, and
    ends with the weights and metrics of a run that trained 2 epochs from the start."""
    more = changed({"cpc": {"epochs": 2}})
    target = "results/train/cpc/rgb/model.pt"
    work = tmp_path / "continued"
    shutil.copytree(finished, work, symlinks=True)  # the session's run stays as it is
    with ThreadPoolExecutor(2) as pool:  # side by side: each is mostly one process at a time
        list(pool.map(lambda w: snakemake(w, more, "--cores", "1", target), (work, tmp_path / "straight")))
    log = (work / "logs" / "train" / "cpc_rgb.log").read_text()
    assert "resumed from" in log and "at epoch 1" in log and "epoch 0:" not in log
    continued, straight = (load_checkpoint(w / target) for w in (work, tmp_path / "straight"))
    assert continued["history"] == straight["history"] and [h["epoch"] for h in straight["history"]] == [0, 1]
    for k, t in straight["models"]["rgb"].items():
        torch.testing.assert_close(continued["models"]["rgb"][k], t, rtol=0, atol=0)
    metrics = "results/train/cpc/rgb/metrics.csv"
    assert (work / metrics).read_bytes() == (tmp_path / "straight" / metrics).read_bytes()


def test_the_claim_may_train_longer_than_the_default_run():
    """claim.cpc_epochs / cocon_epochs reach the claim's training jobs (those with a seed) only."""
    import json

    from cocon.config import load_config
    from cocon.workflow.jobs import job_config

    cfg = load_config(overrides={**TINY, "claim": {"seeds": [3], "cpc_epochs": 7, "cocon_epochs": 5}})
    epochs = lambda command, **kw: json.loads(job_config(cfg, command, **kw))  # noqa: E731
    assert epochs("cpc", views="rgb")["cpc"]["epochs"] == TINY["cpc"]["epochs"]  # the default run's
    assert epochs("cpc", views="rgb", seed=3)["cpc"]["epochs"] == 7
    for stage2 in ("cocon", "control", "cocon_paper"):
        job = epochs(stage2, seed=3)
        assert job["cocon"]["epochs"] == 5 and job["cpc"]["epochs"] == 7 and job["seed"] == 3
        assert epochs(stage2)["cocon"]["epochs"] == TINY["cocon"]["epochs"]
    assert "epochs" not in epochs("finetune", views="rgb", seed=3).get("cpc", {})  # fine-tuning: its own epochs
