"""Multi-process training helpers: process group, device, relaunch under torchrun, global BatchNorm.

A training job given N GPUs starts N DDP processes inside the same job (`relaunch_under_torchrun`);
on CPU the same code runs with the gloo backend (tests use 2 CPU processes). A job over several nodes
(runtime.nodes, cocon.workflow.launch) runs one copy of the command per node; each relaunches itself under
torchrun with a c10d rendezvous at NODES_ENV / RENDEZVOUS_ENV, which the launcher sets.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


NODES_ENV, RENDEZVOUS_ENV, RUN_ID_ENV = "COCON_NODES", "COCON_RENDEZVOUS", "COCON_RUN_ID"


def torchrun_args(nproc: int, env: dict | None = None) -> list[str] | None:
    """torchrun's options for `nproc` processes on this node, or None when no relaunch is needed (one
    process on one node, or already a torchrun worker). One node: --standalone. Several (NODES_ENV > 1):
    --nnodes, and a c10d rendezvous at RENDEZVOUS_ENV (host:port) with the id RUN_ID_ENV."""
    env = os.environ if env is None else env
    nodes = int(env.get(NODES_ENV, 1))
    if "LOCAL_RANK" in env or (nproc <= 1 and nodes <= 1):
        return None
    if nodes <= 1:
        return ["--standalone", f"--nproc_per_node={nproc}"]
    return [
        f"--nnodes={nodes}",
        f"--nproc_per_node={max(1, nproc)}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={env[RENDEZVOUS_ENV]}",
        f"--rdzv-id={env.get(RUN_ID_ENV, 'cocon')}",
        "--max-restarts=0",
    ]


def process_label(env: dict | None = None) -> str:
    """How this process's log lines are labelled: "rank<R>", and on a multi-node job also the node
    ("<node> rank<R>", SLURM's node name, else the host name), so that one log of all nodes reads apart."""
    env = os.environ if env is None else env
    label = f"rank{rank()}"
    if int(env.get(NODES_ENV, 1)) > 1:
        import socket

        label = f"{env.get('SLURMD_NODENAME') or socket.gethostname()} {label}"
    return label


def relaunch_under_torchrun(nproc: int, module: str, argv: list[str]) -> None:
    """Replace this process by `torchrun <torchrun_args> -m module argv` when torchrun_args says so
    (several GPUs, or several nodes). Does not return when it relaunches."""
    options = torchrun_args(nproc)
    if options is None:
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", *options, "-m", module, *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)


def setup(device: str = "cpu") -> torch.device:
    """Initialise the process group when started by torchrun (WORLD_SIZE > 1) and return this process's
    device: `device` is a resolved device string (cocon.runtime.resolve_device); "cuda" becomes
    cuda:<LOCAL_RANK> (NCCL backend), anything else runs on the CPU (gloo backend)."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = device.startswith("cuda")
    if cuda:
        dev = torch.device(device if ":" in device and "LOCAL_RANK" not in os.environ else f"cuda:{local_rank}")
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return dev


def barrier() -> None:
    """Wait for every process (nothing without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all processes, on any device (torch's SyncBatchNorm is
    CUDA-only). Per-channel sums and counts are all-reduced with autograd, so gradients equal those
    of one process holding the whole batch. Without a process group it is plain BatchNorm."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return nn.functional.batch_norm(
                x,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                self.training or not self.track_running_stats,
                self.momentum or 0.0,
                self.eps,
            )
        from torch.distributed.nn.functional import all_reduce

        dims = [d for d in range(x.dim()) if d != 1]
        c = x.shape[1]
        shape = [1, c] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
        stats = all_reduce(torch.cat([x.sum(dims), count]))
        n = stats[-1]
        mean = stats[:c] / n
        # two passes (sum, then squared deviations): E[x^2] - mean^2 cancels badly in float32
        var = all_reduce(((x - mean.view(shape)) ** 2).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
                self.num_batches_tracked += 1
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm normalise over the global batch: torch's SyncBatchNorm on CUDA, our
    GlobalBatchNorm elsewhere. A no-op without a process group."""
    if world_size() <= 1:
        return module
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _replace_bn(module)


def _replace_bn(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        ref = next(iter(module.parameters()), None)
        if ref is None:
            ref = module.running_mean
        out = GlobalBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            device=ref.device if ref is not None else None,
            dtype=ref.dtype if ref is not None else None,
        )
        if module.affine:
            with torch.no_grad():
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
        if module.track_running_stats:
            out.running_mean.copy_(module.running_mean)
            out.running_var.copy_(module.running_var)
            out.num_batches_tracked.copy_(module.num_batches_tracked)
    for name, child in module.named_children():
        out.add_module(name, _replace_bn(child))
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of `t` over all processes (itself without a process group)."""
    if world_size() <= 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t


def reduce_mean(value: float, device: torch.device) -> float:
    """Mean of a Python number over all processes (for logging)."""
    if world_size() <= 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world_size()
