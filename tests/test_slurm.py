"""The SLURM profile on a real SLURM: a private two-node cluster on localhost (tests/slurm_cluster.py)
runs the demo DAG with tiny settings through `--profile profiles/slurm`; the results must equal a local
run's byte for byte. One training job is cancelled while it runs: the profile's retry resubmits it with
doubled memory and runtime, and the results are still identical. A training job longer than its
1-minute time limit, cancelled once mid-epoch too, finishes through retries (each stops itself before
the limit and the next resumes) with the weights and metrics of an uninterrupted local run. One training
job spans both nodes.

The runs start in the background when the session starts (tests/slurm_runs.py, conftest.py) and these
tests, ordered last, check what they left. Needs Debian's slurm-wlm and munge, root (slurmd), and
snakemake-executor-plugin-slurm (`make setup`). Skipped when they are missing, unless
COCON_REQUIRE_SLURM=1 (set by .ci/run, which installs them).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cocon.train.checkpoints import load_checkpoint

from slurm_runs import LONG, LONG_TARGET
from workflow_runs import artefacts, comparable

pytestmark = pytest.mark.slow  # a private SLURM cluster and five DAG runs (in the background: conftest.py)

# the SLURM jobs of the demo DAG run (slurm_runs.SMALL) by rule, and the GPUs each asks for
JOBS = {
    "frames": 1,
    "flow": 1,
    "views_figure": 1,
    "cpc": 2,
    "cocon": 1,
    "finetune": 2,
    "evaluate": 2,
    "features": 2,
    "report": 1,
}
GPUS = {"cpc": 2, "cocon": 2, "finetune": 2, "evaluate": 1, "features": 1}


@pytest.fixture(scope="module")
def cluster(slurm_runs):
    return slurm_runs[0]


@pytest.fixture(scope="module")
def slurm_run(slurm_runs):
    """(local run's folder, SLURM run's folder, the SLURM run's wall time, id of the cancelled job)."""
    _, done, killed = slurm_runs
    return done["local_run"][0], done["slurm_run"][0], done["slurm_run"][2], killed["slurm_run"]


def _mb(value: str) -> int:
    m = re.fullmatch(r"(\d+)([MG])", value)
    return int(m.group(1)) * (1024 if m.group(2) == "G" else 1)


def test_slurm_run_equals_local_run_byte_for_byte(slurm_run):
    local, work, seconds, _ = slurm_run
    first, second = artefacts(local), artefacts(work)
    assert comparable(first) == comparable(second)
    assert [k for k in comparable(first) if first[k] != second[k]] == []
    assert any(k.startswith("shards/rgb/") for k in first) and any(k.startswith("shards/flow_tvl1/") for k in first)
    assert json.loads(first["reports/metrics.json"]) == json.loads(second["reports/metrics.json"])
    print(f"SLURM run: {seconds:.0f} s")


def test_every_job_ran_as_a_slurm_job_sized_by_the_profile(slurm_run, cluster):
    _, work, _, killed = slurm_run
    jobs = [j for j in cluster.jobs() if j["WorkDir"] == str(work)]
    rules = [_rule(j) for j in jobs]
    # one SLURM job per DAG job (the local rules ran in snakemake's process), plus the resubmitted one
    assert {r: rules.count(r) for r in set(rules)} == {r: n + (r == _rule(_job(jobs, killed))) for r, n in JOBS.items()}
    by_rule = {}
    for rule, j in sorted(zip(rules, jobs), key=lambda rj: int(rj[1]["JobId"])):
        by_rule.setdefault(rule, j)  # first attempts
    assert _mb(by_rule["frames"]["MinMemoryNode"]) == 4000 and by_rule["frames"]["TimeLimit"] == "01:00:00"
    assert _mb(by_rule["report"]["MinMemoryNode"]) == 8000 and _mb(by_rule["cocon"]["MinMemoryNode"]) == 32000
    for j, rule in zip(jobs, rules):
        assert j["JobState"] == ("CANCELLED" if j["JobId"] == killed else "COMPLETED"), j
        assert j["NumCPUs"] in ("1", "2") and j["Partition"] == "long"
        # a GPU job is one task holding all its GPUs (tasks_per_gpu: 0), not one copy per GPU
        assert (j["NumTasks"], j.get("TresPerJob")) == ("1", f"gres:gpu:{GPUS[rule]}" if rule in GPUS else None), j
    # ... and ran one training process (on a GPU node it relaunches itself under torchrun, one per GPU);
    # under SLURM the GPU wrapper claims nothing: SLURM chose the job's GPUs
    log = (work / "logs" / "train" / "cocon.log").read_text()
    assert "1 process(es)" in log and "rank1" not in log and "cocon gpus" not in log
    # per-job SLURM logs, kept also for successful jobs
    logs = list((work / "logs" / "slurm").rglob("*.log"))
    assert len(logs) == len(jobs) and all(p.stat().st_size > 0 for p in logs)


def _rule(job: dict) -> str:
    return re.sub(r"_wildcards_.*", "", job["Comment"]).removeprefix("rule_")


def _job(jobs: list[dict], job_id: str) -> dict:
    return next(j for j in jobs if j["JobId"] == job_id)


def test_cancelled_job_is_resubmitted_with_doubled_resources(slurm_run, cluster):
    _, work, _, killed = slurm_run
    assert killed is not None, "no training job was seen running"
    jobs = cluster.jobs()
    first = next(j for j in jobs if j["JobId"] == killed)
    again = [j for j in jobs if j["Comment"] == first["Comment"] and j["WorkDir"] == str(work) and j["JobId"] != killed]
    assert len(again) == 1 and again[0]["JobState"] == "COMPLETED"
    assert _mb(again[0]["MinMemoryNode"]) == 2 * _mb(first["MinMemoryNode"])  # mem_mb: "... * attempt"
    assert _hours(again[0]["TimeLimit"]) == 2 * _hours(first["TimeLimit"])  # runtime: "... * attempt"


# ---- a training job longer than its time limit (slurm_runs.LONG)


@pytest.fixture(scope="module")
def time_limited_run(slurm_runs):
    """(local run's folder, SLURM run's folder, id of the job cancelled mid-epoch, what Snakemake printed):
    CPC on rgb through the profile with `runtime` 1 minute for every attempt (--set-resources), beside an
    uninterrupted local run."""
    _, done, killed = slurm_runs
    return done["local_long"][0], done["slurm_long"][0], killed["slurm_long"], done["slurm_long"][1]


def test_training_longer_than_its_time_limit_finishes_through_retries(time_limited_run, cluster):
    local, work, killed, printed = time_limited_run
    jobs = sorted(
        (j for j in cluster.jobs() if j["WorkDir"] == str(work) and _rule(j) == "cpc"), key=lambda j: int(j["JobId"])
    )
    states = [j["JobState"] for j in jobs]
    assert killed is not None and jobs[0]["JobId"] == killed and states[0] == "CANCELLED", states
    # allocations ended by the job itself at an epoch boundary (the profile shows their logs), then one finished
    assert len(jobs) >= 3 and set(states[1:-1]) == {"FAILED"} and states[-1] == "COMPLETED", states
    assert all(j["TimeLimit"] == "00:01:00" for j in jobs)
    # every allocation between the cancelled and the last one stopped itself (none was killed by SLURM);
    # one of them may have had no room for an epoch when its start-up ran long on a loaded machine
    # ("Not one epoch fits": the message is the engine's, the retry still resumes)
    assert printed.count("stopping before epoch") >= len(jobs) - 2
    assert "resumed from" in (work / "logs" / "train" / "cpc_rgb.log").read_text()
    ck = load_checkpoint(work / LONG_TARGET)
    assert [h["epoch"] for h in ck["history"]] == list(range(LONG["cpc"]["epochs"]))
    for name in ("model.pt", "metrics.csv"):
        path = Path(LONG_TARGET).with_name(name)
        assert (work / path).read_bytes() == (local / path).read_bytes(), name


# ---- one training job over two nodes (slurm_runs.TWO_NODES)


@pytest.fixture(scope="module")
def two_node_run(slurm_runs):
    return slurm_runs[1]["two_nodes"][:2]


def test_a_training_job_spans_two_nodes_as_one_ddp_run(two_node_run, cluster):
    work, printed = two_node_run
    job = next(j for j in cluster.jobs() if j["WorkDir"] == str(work) and _rule(j) == "cpc")
    assert job["JobState"] == "COMPLETED" and job["NumNodes"] == "2" and job["NodeList"] == "node[1-2]", job
    assert job["NumTasks"] == "2" and "gpu:1" in job.get("TresPerNode", ""), job  # --gpus-per-node=1
    log = (work / "logs" / "train" / "cpc_rgb.log").read_text()
    # one srun task per node, each a torchrun agent with one process: ranks 0 and 1 of one DDP run
    assert "cocon launch: srun --nodes=2 --ntasks-per-node=1" in log and "2 process(es)" in log
    assert {"node1", "node2"} == {m.group(1) for m in re.finditer(r"(node\d) rank\d", log)}
    ck = load_checkpoint(work / "results/train/cpc/rgb/model.pt")
    assert [h["epoch"] for h in ck["history"]] == [0, 1]


def _hours(limit: str) -> float:
    days, _, hms = limit.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return int(days or 0) * 24 + h + m / 60 + s / 3600
