"""The runs that tests/test_slurm.py checks, on a private two-node SLURM cluster (tests/slurm_cluster.py),
started in the background when the test session starts (conftest.py): they mostly wait for the queue
(1-minute allocations, the executor plugin's status polls), so the rest of the suite runs beside them and
test_slurm.py, ordered last, reads what they left.

The runs, side by side: the demo DAG with tiny settings locally and through `--profile profiles/slurm`
(one training job cancelled while it runs); CPC longer than its 1-minute time limit locally and through
the profile (cancelled once mid-epoch too); CPC over two nodes through the profile.

Needs Debian's slurm-wlm and munge, root (slurmd), and snakemake-executor-plugin-slurm (`make setup`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from slurm_cluster import LocalSlurm, missing_binaries
from workflow_runs import REPO, TINY, snakemake_command

# Every rule of the default target on 8 videos in one shard, one flow method, CoCon init only: 13 SLURM
# jobs (+ 3 local rules). runtime.gpus: 2, so every training job asks SLURM for 2 GPUs and every test or
# feature job for 1 (the test nodes' 8 GPUs are bookkeeping only: everything computes on the CPU, as
# in the local run).
SMALL = {
    **TINY,
    "shards": {"videos_per_shard": 8},
    "flow": {**TINY["flow"], "methods": ["tvl1"]},
    "runtime": {**TINY["runtime"], "gpus": 2},
    "finetune": {**TINY["finetune"], "inits": ["cocon"]},
}
# The profile as users run it, with the partition chosen on the command line (as README says; not the
# cluster's default one), plus what this test cluster needs: no job accounting (squeue for status),
# 2 real cores (every job gets at most 2 threads, as in the local run with --cores 2, so that both runs
# do the same arithmetic), and quick status polls.
PROFILE = [
    "--profile",
    str(REPO / "profiles" / "slurm"),
    "--default-resources",
    "slurm_partition=long",
    "--max-threads",
    "2",
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "2",
]
TRAINING = ("rule_cpc", "rule_cocon", "rule_finetune")

# CPC on rgb alone, ~46 s of epochs of ~0.7 s on one idle core (28 training videos, 10 steps of 2 clips per
# epoch, width 32): more than one 1-minute allocation holds (each trains ~40 s after its start-up); beside
# the rest of the suite epochs are slower and more allocations hold them, each stopping itself in time
LONG = {
    **SMALL,
    "demo": {**SMALL["demo"], "groups_per_class": 8},
    "shards": {"videos_per_shard": 32},
    "train": {**SMALL["train"], "width": 32},
    "cpc": {**SMALL["cpc"], "epochs": 66, "max_steps_per_epoch": 10},
}
LONG_TARGET = "results/train/cpc/rgb/model.pt"
LONG_HEAD_START = 12  # seconds: the time-limited chain bounds the runs; it parses and submits first

# CPC on rgb over 2 nodes x 1 GPU (bookkeeping GPUs: one process per node on the CPU), global batch 2
TWO_NODES = {**SMALL, "runtime": {**SMALL["runtime"], "nodes": 2, "gpus": 1}, "cpc": {**SMALL["cpc"], "epochs": 2}}

# name -> (config, snakemake arguments)
CALLS = {
    "slurm_long": (LONG, *PROFILE, "--set-resources=cpc:runtime=1", LONG_TARGET),
    "local_run": (SMALL, "--cores", "2"),
    "slurm_run": (SMALL, *PROFILE),
    "local_long": (LONG, "--cores", "2", LONG_TARGET),
    "two_nodes": (TWO_NODES, *PROFILE, LONG_TARGET),
}


def unavailable() -> str | None:
    """Why the SLURM runs cannot run here, or None."""
    missing = missing_binaries()
    if missing:
        return f"SLURM is not installed (no {', '.join(missing)}): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "the test cluster's slurmd must run as root"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed (make setup)"
    return None


def running_jobs(cluster: LocalSlurm, work: Path) -> list[tuple[str, str]]:
    """(job id, comment) of the RUNNING jobs of the run in folder `work`."""
    out = cluster.run("squeue", "-h", "-o", "%i|%T|%Z|%k", check=False).stdout
    rows = [(line.split("|", 3) + ["", "", ""])[:4] for line in out.splitlines()]
    return [(i, comment) for i, state, wd, comment in rows if state == "RUNNING" and wd == str(work)]


class CancelFirstTrainingJob(threading.Thread):
    """Watch the queue; `scancel` the first training job of the run in `work` 1 s after it starts running."""

    def __init__(self, cluster: LocalSlurm, work: Path):
        super().__init__(daemon=True)
        self.cluster, self.work, self.killed, self.done = cluster, work, None, threading.Event()

    def run(self):
        while not self.done.is_set() and self.killed is None:
            for job_id, comment in running_jobs(self.cluster, self.work):
                if comment.startswith(TRAINING):
                    time.sleep(1.0)
                    self.cluster.run("scancel", job_id, check=False)
                    self.killed = job_id
                    return
            time.sleep(0.3)


class CancelMidEpoch(threading.Thread):
    """`scancel` (SIGTERM to every process, then SIGKILL) the first cpc job once its first epoch is
    checkpointed, i.e. in the middle of a later epoch."""

    def __init__(self, cluster: LocalSlurm, work: Path):
        super().__init__(daemon=True)
        self.cluster, self.work, self.killed, self.done = cluster, work, None, threading.Event()
        self.last = work / "results/train/cpc/rgb/checkpoints/last.pt"

    def run(self):
        while not self.done.is_set() and not self.last.exists():
            time.sleep(0.2)
        for job_id, comment in running_jobs(self.cluster, self.work):
            if comment.startswith("rule_cpc"):
                time.sleep(0.5)
                self.cluster.run("scancel", job_id, check=False)
                self.killed = job_id
                return


class SlurmRuns:
    """The cluster and the runs of CALLS in background threads: `start()` returns at once, `result()` waits.

    result() -> (cluster, {name: (folder, what Snakemake printed, seconds)}, {run: id of the job cancelled})
    """

    def __init__(self, root: Path, folders: dict[str, Path]):
        self.root, self.folders = root, folders
        self.env = dict(os.environ)  # as the session started: tests that change os.environ do not reach the runs
        self.cluster: LocalSlurm | None = None
        self.procs: list[subprocess.Popen] = []
        self.closing = threading.Event()  # set when the session ends: start nothing more
        self._procs_lock = threading.Lock()
        self.future: Future | None = None
        self._pool = ThreadPoolExecutor(len(CALLS) + 1)

    def start(self) -> SlurmRuns:
        self.future = self._pool.submit(self._run_all)
        return self

    def result(self):
        return self.future.result()

    def close(self) -> None:
        """Stop what still runs (an aborted session), then the cluster's daemons."""
        self.closing.set()
        with self._procs_lock:
            _stop(self.procs)
        self._pool.shutdown(wait=True)
        if self.cluster is not None:
            self.cluster.stop()
        _kill_leftovers(self.folders.values())

    def _run_all(self):
        self.cluster = LocalSlurm(self.root, gpus=8, nodes=2, env=self.env).start()
        env = self.cluster.env()  # snakemake, the plugin's sbatch/squeue and the jobs find this cluster
        watchers = [
            CancelFirstTrainingJob(self.cluster, self.folders["slurm_run"]),
            CancelMidEpoch(self.cluster, self.folders["slurm_long"]),
        ]
        for w in watchers:
            w.start()
        try:
            first, *others = CALLS
            futures = {first: self._pool.submit(self._snakemake, first, env)}
            self.closing.wait(LONG_HEAD_START)
            futures.update({name: self._pool.submit(self._snakemake, name, env) for name in others})
            done = {name: f.result() for name, f in futures.items()}
        finally:
            for w in watchers:
                w.done.set()
                w.join()
        return self.cluster, done, {"slurm_run": watchers[0].killed, "slurm_long": watchers[1].killed}

    def _snakemake(self, name: str, env: dict):
        config, *args = CALLS[name]
        t0 = time.monotonic()
        cmd = snakemake_command(self.folders[name], config, *args)
        with self._procs_lock:
            if self.closing.is_set():
                raise RuntimeError(f"{name} not started: the test session ended")
            proc = subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
            )
            self.procs.append(proc)
        printed, _ = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise AssertionError(f"snakemake {name} failed ({proc.returncode}):\n{printed[-8000:]}")
        return self.folders[name], printed, time.monotonic() - t0


def _stop(procs: list[subprocess.Popen], grace: float = 15) -> None:
    """SIGTERM to each running snakemake's process group (they cancel their SLURM jobs), SIGKILL to those
    still running `grace` seconds later."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _kill_leftovers(folders) -> None:
    """SIGKILL every process still working in one of `folders`: the job processes a cancelled SLURM job can
    leave behind (the test cluster tracks a job's processes by parentage only, proctrack/linuxproc)."""
    roots = [str(Path(f).resolve()) for f in folders]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if any(cwd == r or cwd.startswith(r + os.sep) for r in roots):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
