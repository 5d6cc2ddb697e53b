"""A private SLURM cluster on localhost for the tests (Debian's slurm-wlm and munge), of one node or
several: Debian's slurm-wlm is built with --enable-multiple-slurmd, so one machine runs one slurmd per
node (`slurmd -N <name>`), each with its own port, spool folder, log and PID file.

Everything lives in one folder: its own munge key and socket, slurm.conf on free ports, state,
spool, logs and PID files, so it neither needs nor touches /etc/slurm or a system munged, and two
of them can run side by side. Clients find it through SLURM_CONF and through `bin/`, put first on
the PATH by `env`: shims of the client commands that set SLURM_CONF, because snakemake's SLURM jobstep
plugin drops every SLURM_* variable but the job's ids before it calls `srun` inside a job (a real
cluster's clients read /etc/slurm/slurm.conf, which this cluster leaves alone). The node advertises
more CPUs, memory and GPUs than the machine has (`SlurmdParameters=config_overrides`), so a
profile's production-sized requests are accepted; nothing is enforced (no cgroups), and the GPUs
are bookkeeping only (plain files named in gres.conf; slurmd logs that they are not devices, then
counts and allocates them like GPUs).

    with LocalSlurm(folder, nodes=2) as cluster:   # munged, slurmctld, a slurmd per node; waits until idle
        subprocess.run(["sbatch", ...], env=cluster.env())
                                             # leaving the block stops every daemon it started
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("srun", "sbatch", "squeue", "scancel", "sinfo", "scontrol", "sacct")
PARTITIONS = ("debug", "long")  # the first is the default


def missing_binaries() -> list[str]:
    return [b for b in (*DAEMONS, *CLIENTS, "mungekey") if not shutil.which(b)]


def _free_ports(n: int) -> list[int]:
    """n distinct ports free now (all bound at once, so the kernel cannot hand out one twice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalSlurm:
    def __init__(
        self,
        root: Path,
        cpus: int = 8,
        mem_mb: int = 262144,
        gpus: int = 2,
        node: str = "localhost",
        nodes: int = 1,
        env: dict[str, str] | None = None,
    ):
        self.root = Path(root).resolve()
        self.base_env = dict(os.environ if env is None else env)  # what daemons and clients run with
        self.cpus, self.mem_mb, self.gpus = cpus, mem_mb, gpus
        # one node keeps the machine's name; several are node1, node2, ... (one slurmd each, all on 127.0.0.1)
        self.host = node  # slurmctld's host name
        self.nodes = [node] if nodes == 1 else [f"node{k + 1}" for k in range(nodes)]
        self.conf = self.root / "slurm.conf"
        self.bin = self.root / "bin"
        self.pids = {d: self.root / f"{d}.pid" for d in ("munged", "slurmctld")}
        self.pids.update({f"slurmd {n}": self.root / f"slurmd.{n}.pid" for n in self.nodes})
        self.started: list[str] = []

    def env(self, base: dict | None = None) -> dict[str, str]:
        """`base` (default: the environment given at construction, else os.environ then) with SLURM_CONF
        pointing at this cluster and its shims first on PATH."""
        base = self.base_env if base is None else base
        return {**base, "SLURM_CONF": str(self.conf), "PATH": f"{self.bin}{os.pathsep}{base.get('PATH', '')}"}

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env(), capture_output=True, text=True, check=check, timeout=timeout)

    # -- start / stop
    def start(self, timeout: float = 90) -> LocalSlurm:
        for sub in ("state", "munge", "log", *(f"spool/{n}" for n in self.nodes)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key, sock = self.root / "munge" / "munge.key", self.root / "munge" / "munge.socket"
        if not key.exists():
            subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
        self._write_conf(sock)
        self._write_shims()
        try:
            self._daemon(
                "munged",
                "munged",
                "--force",
                f"--socket={sock}",
                f"--key-file={key}",
                f"--pid-file={self.pids['munged']}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--seed-file={self.root / 'munge' / 'munge.seed'}",
            )
            self._daemon("slurmctld", "slurmctld", "-i", "-f", str(self.conf))
            for n in self.nodes:
                self._daemon(f"slurmd {n}", "slurmd", "-N", n, "-f", str(self.conf))
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the daemons this object started (by their PID files): the SLURM daemons together (each
        takes ~2 s to exit), then munged, which they talk through; wait for them."""
        slurm = [name for name in self.started if name != "munged"]
        for group in (slurm, [name for name in self.started if name == "munged"]):
            pids = [pid for pid in map(self._pid, group) if pid is not None]
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and any(map(_alive, pids)):
                time.sleep(0.1)
            for pid in filter(_alive, pids):
                os.kill(pid, signal.SIGKILL)
        self.started.clear()

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- queries
    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still remembers (MinJobAge: 2 hours, longer than a test session), as `scontrol
        show job` fields."""
        out = self.run("scontrol", "show", "job", "--oneliner").stdout
        jobs = []
        for line in out.splitlines():
            if not line.startswith("JobId="):
                continue
            fields = {}
            for tok in line.split():
                k, _, v = tok.partition("=")
                fields[k] = v
            jobs.append(fields)
        return jobs

    def log_tail(self, n: int = 40) -> str:
        parts = []
        for f in sorted((self.root / "log").glob("*.log")):
            parts.append(f"== {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-n:]))
        return "\n".join(parts)

    # -- internals
    def _write_conf(self, munge_socket: Path) -> None:
        log = self.root / "log"
        gres = f" Gres=gpu:{self.gpus}" if self.gpus else ""
        ctld_port, *slurmd_ports = _free_ports(1 + len(self.nodes))
        lines = [
            f"ClusterName=cocontest{os.getpid()}",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_ports[0]}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={munge_socket}",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool' / '%n'}",  # %n: the node's name, one folder per slurmd
            f"SlurmctldPidFile={self.pids['slurmctld']}",
            f"SlurmdPidFile={self.root / 'slurmd.%n.pid'}",
            f"SlurmctldLogFile={log / 'slurmctld.log'}",
            f"SlurmdLogFile={log / 'slurmd.%n.log'}",
            # no systemd and emulated cgroups on these machines
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SlurmdParameters=config_overrides",
            "SchedulerType=sched/backfill",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "MinJobAge=7200",
            "KillWait=5",
            "InactiveLimit=0",
            *(["GresTypes=gpu"] if self.gpus else []),
            *(
                f"NodeName={n} NodeHostname={self.host} NodeAddr=127.0.0.1 Port={port} CPUs={self.cpus}"
                f" RealMemory={self.mem_mb}{gres} State=UNKNOWN"
                for n, port in zip(self.nodes, slurmd_ports)
            ),
            *(
                f"PartitionName={p} Nodes={','.join(self.nodes)} Default={'YES' if i == 0 else 'NO'}"
                " MaxTime=INFINITE State=UP"
                for i, p in enumerate(PARTITIONS)
            ),
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        # GPUs as plain files: slurmd counts and allocates them (it logs that they are not devices)
        for i in range(self.gpus):
            (self.root / f"fakegpu{i}").touch()
        files = f"{self.root}/fakegpu[0-{self.gpus - 1}]" if self.gpus > 1 else f"{self.root}/fakegpu0"
        gres_lines = "".join(f"NodeName={n} Name=gpu File={files}\n" for n in self.nodes)
        (self.root / "gres.conf").write_text(gres_lines if self.gpus else "")

    def _write_shims(self) -> None:
        self.bin.mkdir(exist_ok=True)
        for name in CLIENTS:
            shim = self.bin / name
            shim.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {shutil.which(name)} "$@"\n')
            shim.chmod(0o755)

    def _daemon(self, name: str, binary: str, *args: str) -> None:
        proc = subprocess.run([binary, *args], env=self.env(), capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} did not start ({proc.returncode}): {proc.stderr}\n{self.log_tail()}")
        deadline = time.monotonic() + 20
        while self._pid(name) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if self._pid(name) is None:
            raise RuntimeError(f"{name} wrote no PID file\n{self.log_tail()}")
        self.started.append(name)

    def _pid(self, name: str) -> int | None:
        try:
            return int(self.pids[name].read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            proc = self.run("sinfo", "-h", "-N", "-o", "%t", check=False)
            state = " ".join(proc.stdout.split())  # one line per (node, partition)
            if set(state.split()) == {"idle"}:
                return
            time.sleep(0.5)
        raise RuntimeError(f"the SLURM nodes are not idle after {timeout:.0f} s (state {state!r})\n{self.log_tail()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours would look alive: the daemons double-fork, so they are not our children
    return True
