"""Provenance recorded in every artefact: code revision, library versions, configuration.

Nothing here depends on time or the host, so re-running the same config on the same code yields the
same bytes."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
LIBRARIES = ("cocon-pipeline", "numpy", "h5py", "opencv-contrib-python-headless", "snakemake", "torch")


@functools.lru_cache(maxsize=1)
def code_revision() -> dict:
    """{"git": <commit or "unknown">, "dirty": bool | None, "source_sha256": <hash of cocon/*.py and schemas>}.

    `source_sha256` identifies the code even where there is no git checkout (an installed wheel);
    `dirty` says whether the package's own files differ from the commit."""
    digest = hashlib.sha256()
    for f in sorted(PACKAGE_DIR.rglob("*")):
        if f.is_file() and f.suffix in (".py", ".yaml"):
            digest.update(f.relative_to(PACKAGE_DIR).as_posix().encode())
            digest.update(f.read_bytes())
    rev, dirty = "unknown", None
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
            cwd=PACKAGE_DIR,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"git": rev, "dirty": dirty, "source_sha256": digest.hexdigest()}


def distribution_versions(names) -> dict:
    """{name: installed version, or "absent"} for the given distributions."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


@functools.lru_cache(maxsize=1)
def library_versions() -> dict:
    """Installed versions of the libraries that shape the outputs ("absent" when not installed)."""
    out = distribution_versions(LIBRARIES)
    try:
        import cv2

        out["cv2.__version__"] = cv2.__version__
    except ImportError:
        pass
    return out


def dumps(obj) -> str:
    """Canonical JSON (sorted keys, compact) used for every JSON attribute."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
