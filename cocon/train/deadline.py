"""A training job's deadline: stop at an epoch boundary while the next epoch still fits in the job's time.

Under a batch scheduler a job that reaches its time limit is killed (SLURM: SIGTERM, then SIGKILL after
its grace period). A training job instead checks, after every epoch (whose checkpoint is written), whether
the next epoch would end before its deadline; if not, it stops with `RESUME_EXIT_CODE` and Snakemake's retry
(a new allocation) resumes from checkpoints/last.pt exactly. A job killed anyway loses at most the epoch
it was in.

The deadline applies where a scheduler sets one: under SLURM (SLURM_JOB_ID is set; the SLURM executor's job
step keeps it) it is the job's end time as `squeue` reports it, else the job's start plus `--time-limit`
(the rule's `runtime` resource, minutes). On a workstation there is none. Epoch durations are kept in
checkpoints/epoch_seconds.json (not in the checkpoints: those stay byte-identical across reruns).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from datetime import datetime
from pathlib import Path

log = logging.getLogger("cocon.train")

# EX_TEMPFAIL: "try again later" - the run stopped at its deadline and resumes when rerun.
RESUME_EXIT_CODE = 75
TIMES_FILE = "epoch_seconds.json"


class DeadlineReached(SystemExit):
    """Raised at an epoch boundary when the next epoch would not fit; exits with RESUME_EXIT_CODE."""

    def __init__(self, message: str):
        log.warning(message)
        super().__init__(RESUME_EXIT_CODE)
        self.message = message


def slurm_end_time(job_id: str) -> float | None:
    """The end of SLURM job `job_id` (Unix seconds) from squeue, or None when squeue cannot tell."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%e"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        return datetime.fromisoformat(out.splitlines()[0]).timestamp()
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


class Deadline:
    """When the job must have stopped (Unix seconds, or None for no deadline), and the margin kept for
    writing the outputs and exiting (seconds): `margin` or, by default, 5 % of the time left at the start,
    between 10 s and 5 min."""

    def __init__(self, end: float | None, margin: float | None = None, now: float | None = None):
        self.end = end
        left = (end - (now or time.time())) if end is not None else 0.0
        self.margin = margin if margin is not None else min(300.0, max(10.0, 0.05 * left))

    @classmethod
    def for_job(cls, time_limit_min: float | None, start: float | None = None) -> Deadline:
        """The deadline of this process's job: none outside SLURM; under SLURM the job's end time from
        squeue, else `start` (default now) + `time_limit_min`."""
        job_id = os.environ.get("SLURM_JOB_ID")
        if not job_id:
            return cls(None)
        end = slurm_end_time(job_id)
        if end is None and time_limit_min:
            end = (start or time.time()) + 60.0 * float(time_limit_min)
        return cls(end)

    def left(self, now: float | None = None) -> float:
        """Seconds left before the deadline minus the margin (inf without a deadline)."""
        if self.end is None:
            return float("inf")
        return self.end - self.margin - (now or time.time())

    def fits(self, seconds: float, now: float | None = None) -> bool:
        return seconds <= self.left(now)


def epoch_estimate(folder: Path) -> float | None:
    """Seconds the next epoch is expected to take: the longest of the last 3 recorded epochs."""
    try:
        times = json.loads((folder / TIMES_FILE).read_text())["seconds"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return max(times[-3:]) if times else None


def record_epoch(folder: Path, seconds: float) -> None:
    """Append one epoch's duration (train + validation + checkpoint) to checkpoints/epoch_seconds.json."""
    path = folder / TIMES_FILE
    try:
        times = json.loads(path.read_text())["seconds"]
    except (OSError, ValueError, KeyError, TypeError):
        times = []
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps({"seconds": [*times, round(seconds, 3)][-20:]}) + "\n")
    os.replace(tmp, path)
