"""Threads, memory and runtime of every rule, in one place (the rules read it; the SLURM profile adds
only executor settings). Memory and runtime are multiplied by the attempt, so a job that SLURM killed
for memory or time is resubmitted (profiles/slurm: retries) with twice, then three times, as much; the
runtime never above runtime.max_job_minutes (a partition's limit: sbatch rejects longer requests).

threads: CPUs of the job (SLURM --cpus-per-task; the stages size their thread pools from it);
mem_mb: memory in MB; runtime: minutes. Sizes for UCF101-scale shards (256 videos) and GPU training.
"""

from __future__ import annotations

from typing import NamedTuple


class Resources(NamedTuple):
    threads: int
    mem_mb: int
    runtime: int


RULES: dict[str, Resources] = {
    "demo_dataset": Resources(1, 2000, 30),
    "manifest": Resources(1, 2000, 30),
    "preprocess_summary": Resources(1, 2000, 30),
    "views_figure": Resources(1, 2000, 30),  # a few frames read and drawn
    "frames": Resources(4, 4000, 60),
    "flow": Resources(8, 4000, 240),
    "seg": Resources(4, 8000, 240),
    "pose": Resources(4, 8000, 240),
    "cpc": Resources(8, 16000, 1440),
    "cocon": Resources(8, 32000, 2880),
    "finetune": Resources(8, 16000, 1440),
    "evaluate": Resources(4, 8000, 240),
    "features": Resources(4, 8000, 240),
    "report": Resources(1, 8000, 60),
    "claim": Resources(1, 8000, 60),
}


def training_placement(nodes: int, gpus_per_node: int) -> dict:
    """Resources of a training rule for `nodes` nodes with `gpus_per_node` GPUs each (`node_gpus`, what
    `cocon gpus` gives each node's command). One node: its GPUs as one task (`gpu`, `tasks_per_gpu: 0`) and
    an empty `launcher`. Several: one SLURM job over the nodes through the SLURM executor's multi-node path
    (`nodes`, `tasks`, `mpi`; the GPUs per node in `slurm_extra`), whose shell starts one task per node with
    `cocon launch` (the `launcher` resource)."""
    if nodes <= 1:
        return {"gpu": gpus_per_node, "tasks_per_gpu": 0, "node_gpus": gpus_per_node, "launcher": ""}
    per_node = f" --gpus-per-node {gpus_per_node}" if gpus_per_node else ""
    return {
        "gpu": 0,  # GPUs are asked per node (--gpus-per-node), not in total
        "tasks_per_gpu": 0,
        "node_gpus": gpus_per_node,
        "nodes": nodes,
        "tasks": nodes,
        "mpi": "srun",
        **({"slurm_extra": f"--gpus-per-node={gpus_per_node}"} if gpus_per_node else {}),
        "launcher": lambda wildcards, threads: (
            f"python -m cocon launch --nodes {nodes}{per_node} --cpus-per-task {threads} --"
        ),
    }


# the rules whose jobs run a network: their threads can be set in the config (runtime.threads)
NETWORK_RULES = ("cpc", "cocon", "finetune", "evaluate", "features", "pose", "seg")


def threads(rule: str, config_threads: int | None = None) -> int:
    """CPUs of a job of `rule`: the table's, or, for the rules that run a network, runtime.threads when set
    (a CPU run with small networks is faster with one thread per job and jobs side by side)."""
    if config_threads is not None and rule in NETWORK_RULES:
        return int(config_threads)
    return RULES[rule].threads


def mem_mb(rule: str):
    """Snakemake resource callable: memory of `rule` x attempt."""
    base = RULES[rule].mem_mb
    return lambda wildcards, attempt: base * attempt


def runtime(rule: str, max_minutes: int | None = None):
    """Snakemake resource callable: runtime of `rule` x attempt (minutes), at most `max_minutes`."""
    base = RULES[rule].runtime
    cap = max_minutes or base * 1000
    return lambda wildcards, attempt: min(base * attempt, cap)
