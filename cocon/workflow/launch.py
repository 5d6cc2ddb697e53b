"""`cocon launch`: run a training command on every node of a multi-node SLURM job (runtime.nodes > 1).

    cocon launch --nodes 2 --gpus-per-node 4 --cpus-per-task 16 -- python -m cocon train cpc ...

The rules put it in front of a training command when runtime.nodes > 1 (rules/common.smk, `launcher`). The
SLURM executor runs such a job's shell in the batch step on the job's first node (the plugin's `mpi`
path). `cocon launch` runs there. It checks that it is inside a SLURM job, then starts one task per node
with `srun`, each running the command:

- `srun --nodes N --ntasks-per-node 1 --cpus-per-task C [--gpus-per-node G] --kill-on-bad-exit 1`;
- COCON_NODES = N and COCON_RENDEZVOUS = <first node's host name>:<port> in the tasks' environment;
- the port is 20000 + job id mod 40000, one per job, so that two jobs sharing a node never collide;
- COCON_RUN_ID is the job id.

The training command then relaunches itself under torchrun with a c10d rendezvous there, which gives
--nnodes N and --nproc_per_node G (cocon.train.distributed.torchrun_args).

The plugin's job step removes every SLURM_* variable but the job id from the rule's environment. So srun
gets the node count, tasks, CPUs and GPUs here, from the rule, not from the environment.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from cocon.train.distributed import NODES_ENV, RENDEZVOUS_ENV, RUN_ID_ENV


class NotInSlurmJob(SystemExit):
    pass


def rendezvous_port(job_id: str) -> int:
    """The c10d port of a job: 20000 + job id mod 40000 (a per-job port below 60000)."""
    return 20000 + int("".join(ch for ch in job_id if ch.isdigit()) or 0) % 40000


def srun_command(nodes: int, gpus_per_node: int, cpus_per_task: int, command: list[str], env: dict) -> list[str]:
    """The srun call that runs `command` once per node of the SLURM job whose environment is `env`."""
    job_id = env.get("SLURM_JOB_ID")
    if not job_id:
        raise NotInSlurmJob(
            f"cocon launch: runtime.nodes is {nodes}, and a job over several nodes runs only inside a SLURM job "
            "(snakemake --profile profiles/slurm); on a workstation set runtime.nodes: 1 (docs/cluster.md)"
        )
    endpoint = f"{socket.gethostname()}:{rendezvous_port(job_id)}"
    exports = f"ALL,{NODES_ENV}={nodes},{RENDEZVOUS_ENV}={endpoint},{RUN_ID_ENV}={job_id}"
    return [
        "srun",
        f"--nodes={nodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={cpus_per_task}",
        *([f"--gpus-per-node={gpus_per_node}"] if gpus_per_node > 0 else []),
        "--kill-on-bad-exit=1",
        f"--export={exports}",
        *command,
    ]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("usage: cocon launch --nodes N [--gpus-per-node G] [--cpus-per-task C] -- COMMAND ...")
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="cocon launch", description="Run a command on every node of a SLURM job.")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--cpus-per-task", type=int, default=1)
    a = p.parse_args(argv[:split])
    cmd = srun_command(a.nodes, a.gpus_per_node, a.cpus_per_task, argv[split + 1 :], os.environ)
    print(f"cocon launch: {' '.join(cmd)}", file=sys.stderr, flush=True)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
