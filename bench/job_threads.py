"""Threads per training job on a CPU machine: two jobs side by side with one thread each, against the same
two jobs one after the other with all the machine's threads each (the baseline: what `runtime.threads: 0`
gives when Snakemake runs one network job at a time). The choice behind the CPU demo's `runtime.threads: 1`.

    python bench/job_threads.py [--steps 12] [--size 48] [--batch 8] [--width 8] [--repeats 2]

A job = one process that builds the demo's network (a DPC over ResNet2d3d-18 of width 8, 8 blocks of 5
frames at 48 px, one flow view of 2 channels) and runs --steps CPC training steps (forward, L_cpc, backward,
Adam) on a fixed batch of --batch standard normal clips, after one untimed step. The loader is not part of
it (the demo reads its clips in the training process, on one thread, which favours one-thread jobs further).

Prints one JSON object: per layout the wall seconds for both jobs (median over --repeats), and
`speedup_side_by_side` = sequential seconds / side-by-side seconds (> 1: one-thread jobs side by side win).
Means something only on an otherwise idle machine; the threads of the baseline = os.cpu_count().
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import cpu_model  # noqa: E402


def worker(a) -> None:
    """One job: --steps training steps on --threads threads; prints its own seconds."""
    import torch

    from cocon.models.losses import cpc_loss
    from cocon.models.networks import DPC

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = DPC(2, depth=18, num_blocks=8, pred_steps=3, width=a.width)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    x = torch.randn(a.batch, 8, 2, 5, a.size, a.size, generator=torch.Generator().manual_seed(0))

    def step() -> None:
        out = model(x)
        loss, _ = cpc_loss(out.pred, out.target, distributed=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # untimed: allocator and kernel selection
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    print(json.dumps({"seconds": time.perf_counter() - t0}))


def job(a, threads: int) -> subprocess.Popen:
    args = [sys.executable, __file__, "--worker", "--threads", str(threads), "--steps", str(a.steps)]
    args += ["--size", str(a.size), "--batch", str(a.batch), "--width", str(a.width)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True)


def wall(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.communicate()
        if p.returncode:
            raise SystemExit(f"a job failed (exit {p.returncode})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    cores = os.cpu_count() or 1
    times: dict[str, list[float]] = {"sequential_all_threads": [], "side_by_side_1_thread": []}
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        for _ in range(2):
            wall([job(a, cores)])
        times["sequential_all_threads"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        wall([job(a, 1), job(a, 1)])
        times["side_by_side_1_thread"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    import torch

    print(
        json.dumps(
            {
                "benchmark": "job_threads",
                "cpu": cpu_model(),
                "cpu_count": cores,
                "torch": torch.__version__,
                "jobs": 2,
                "steps_per_job": a.steps,
                "size": a.size,
                "batch": a.batch,
                "width": a.width,
                "seconds": {k: round(v, 2) for k, v in med.items()},
                "runs": {k: [round(x, 2) for x in v] for k, v in times.items()},
                "speedup_side_by_side": round(med["sequential_all_threads"] / med["side_by_side_1_thread"], 3),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
