"""The one command line (cocon.cli). The GPU check is bench/gpu_check.py (tests/test_gpu_check.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cocon.cli import COMMANDS

from conftest import run_cocon

REPO = Path(__file__).resolve().parents[1]


def cocon(*args: str, **env: str) -> subprocess.CompletedProcess:
    return run_cocon(*args, cwd=REPO, **env)


def test_help_lists_every_command():
    proc = cocon("--help")
    assert proc.returncode == 0
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(COMMANDS)
