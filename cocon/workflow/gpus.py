"""Give a job its own GPUs on a workstation: `cocon gpus N -- command args...`.

Snakemake's local executor counts a `gpu` resource (`--resources gpu=4` lets at most 4 GPUs' worth of
jobs run at once) but does not say *which* GPUs a job may use, so two concurrent jobs would both
start on GPU 0. This wrapper claims N GPU ids for the job, sets CUDA_VISIBLE_DEVICES to them, and
replaces itself with the command (exec), so the command (and torchrun's workers) sees exactly those
GPUs as cuda:0..N-1.

A claim is an exclusive `flock` on `<lock dir>/gpu<id>.lock`, held by the open file descriptor that
the command inherits: it lasts exactly as long as the job's process, and the kernel drops it when
the process ends in any way (SIGKILL included), so no stale claim survives a crash. A job that finds
fewer than N free ids holds none and waits (no partial claims, so no deadlock between jobs).

- N = 0: the job may use no GPU: CUDA_VISIBLE_DEVICES is set to "" (the resource accounting gave it
  none, so it must not take one that another job claimed).
- Inside a SLURM job (SLURM_JOB_ID set) nothing is claimed: SLURM already gave the job its GPUs and
  set CUDA_VISIBLE_DEVICES.
- The ids: COCON_GPU_IDS (comma-separated) if set, else CUDA_VISIBLE_DEVICES if set (restrict a run
  to some GPUs), else the GPUs `nvidia-smi -L` lists. None at all (a CPU machine): the command runs
  unchanged.
- The lock folder: COCON_GPU_LOCK_DIR, default /tmp/cocon-gpu-locks (shared by every run and user
  on the machine).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import subprocess
import sys
import time

DEFAULT_LOCK_DIR = "/tmp/cocon-gpu-locks"


def machine_gpu_ids(environ=os.environ) -> list[str]:
    """The GPU ids jobs may be given (see the module docstring)."""
    for var in ("COCON_GPU_IDS", "CUDA_VISIBLE_DEVICES"):
        value = environ.get(var)
        if value is not None and value.strip():
            return [x.strip() for x in value.split(",") if x.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, _ in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]


def _open_lock(lock_dir: str, gpu_id: str) -> int:
    os.makedirs(lock_dir, exist_ok=True)
    try:
        os.chmod(lock_dir, 0o1777)  # every user's jobs share the folder (sticky, like /tmp)
    except PermissionError:
        pass
    path = os.path.join(lock_dir, f"gpu{gpu_id.replace('/', '_')}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        os.fchmod(fd, 0o666)
    except PermissionError:
        pass
    return fd


def try_claim(n: int, ids: list[str], lock_dir: str) -> tuple[list[str], list[int]] | None:
    """Claim n of `ids` (lowest first) or none: (claimed ids, their locked descriptors) or None."""
    got: list[tuple[str, int]] = []
    for gpu_id in ids:
        fd = _open_lock(lock_dir, gpu_id)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                continue
            raise
        got.append((gpu_id, fd))
        if len(got) == n:
            break
    if len(got) < n:
        for _, fd in got:
            os.close(fd)  # closing the descriptor drops its lock
        return None
    for _, fd in got:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
    return [g for g, _ in got], [fd for _, fd in got]


def claim(n: int, ids: list[str], lock_dir: str, poll_s: float = 1.0, log=sys.stderr) -> tuple[list[str], list[int]]:
    """Wait until n of `ids` are free, then claim them (see try_claim)."""
    if n > len(ids):
        raise SystemExit(
            f"cocon.workflow.gpus: the job asks for {n} GPUs, this machine has {len(ids)} ({','.join(ids)})"
        )
    start = time.monotonic()
    said = False
    while True:
        got = try_claim(n, ids, lock_dir)
        if got is not None:
            if said:
                print(
                    f"cocon.workflow.gpus: waited {time.monotonic() - start:.0f} s for free GPUs", file=log, flush=True
                )
            return got
        if not said:
            print(
                f"cocon.workflow.gpus: waiting for {n} free GPU(s) of {','.join(ids)} (locks in {lock_dir})",
                file=log,
                flush=True,
            )
            said = True
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="cocon gpus", description=__doc__.splitlines()[0])
    p.add_argument("n", type=int, help="GPUs the job needs (the rule's `gpu` resource)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- command and its arguments")
    a = p.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        p.error("no command given (cocon gpus N -- command ...)")
    env = os.environ
    if a.n <= 0:
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif "SLURM_JOB_ID" not in env:
        ids = machine_gpu_ids(env)
        if ids:
            got, fds = claim(a.n, ids, env.get("COCON_GPU_LOCK_DIR", DEFAULT_LOCK_DIR))
            for fd in fds:
                os.set_inheritable(fd, True)  # the command holds the claim until it exits
            env["CUDA_VISIBLE_DEVICES"] = ",".join(got)
            print(
                f"cocon.workflow.gpus: this job uses GPU(s) {','.join(got)} (CUDA_VISIBLE_DEVICES)",
                file=sys.stderr,
                flush=True,
            )
    sys.stdout.flush()
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
