"""Process set-up shared by every command: logging, devices, threads."""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def setup_logging(prefix: str = "") -> None:
    """INFO log lines on stderr (the rule sends stderr to the job's log); `prefix` goes before the
    level (e.g. the DDP rank)."""
    fmt = LOG_FORMAT if not prefix else LOG_FORMAT.replace("%(levelname)s", f"{prefix} %(levelname)s")
    logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr, force=True)


class NoGPU(RuntimeError):
    """CUDA was asked for and torch sees no CUDA device."""


def resolve_device(pref: str = "auto") -> str:
    """A device string from a config value: auto -> "cuda" when torch sees a GPU, else "cpu";
    "cpu", "cuda", "cuda:N" as given; "cuda*" without a GPU raises NoGPU naming the request."""
    import torch

    if pref == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda") and not torch.cuda.is_available():
        raise NoGPU(f"device {pref!r} requested but torch sees no CUDA device")
    return pref


def set_threads(threads: int | None) -> None:
    """torch's intra-op threads (None or 0: leave torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(max(1, int(threads)))
