"""Atomic file writes, the one way every artefact is written: a killed job never leaves a file under
its final name that looks complete.

Each writer writes a sibling temporary file (``<name>.partial``, or ``<stem>.partial<suffix>`` where
the writing library picks the format from the suffix) and renames it into place (``os.replace``,
atomic on POSIX) only once it is whole; on any error the temporary file is removed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL = ".partial"


def partial_path(path: str | os.PathLike, keep_suffix: bool = False) -> Path:
    """The temporary sibling of `path`: <name>.partial, or <stem>.partial<suffix> with keep_suffix."""
    path = Path(path)
    return path.with_name(path.stem + PARTIAL + path.suffix) if keep_suffix else path.with_name(path.name + PARTIAL)


@contextmanager
def atomic_path(path: str | os.PathLike, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write `path` through; rename it into place when the block succeeds,
    remove it when the block raises. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path, keep_suffix)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically (newlines as given)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)


def write_json(path: str | os.PathLike, obj, indent: int | None = 1) -> None:
    """Write JSON (sorted keys, final newline) atomically."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=True, allow_nan=True) + "\n")


def save_torch(obj, path: str | os.PathLike) -> None:
    """torch.save atomically (checkpoints, model.pt)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_h5(path: str | os.PathLike, arrays: dict, attrs: dict) -> None:
    """An HDF5 result file (scores, features), atomically: `arrays` {name: array, or list of str (stored
    as variable-length strings)}, `attrs` {name: str/bool/number, or anything JSON-encodable (stored as
    canonical JSON)}; attrs["complete"] = True is set last."""
    import h5py
    import numpy as np

    from cocon.provenance import dumps

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        for key in sorted(attrs):
            value = attrs[key]
            h5.attrs[key] = (
                value if isinstance(value, (str, bool, int, float, np.integer, np.floating)) else dumps(value)
            )
        for key, value in arrays.items():
            if isinstance(value, list) and (not value or isinstance(value[0], str)):
                h5.create_dataset(key, data=value, dtype=h5py.string_dtype())
            else:
                h5.create_dataset(key, data=np.asarray(value))
        h5.attrs["complete"] = True


def read_h5(path: str | os.PathLike) -> tuple[dict, dict]:
    """(datasets {name: array, or list of str}, attrs with JSON values decoded) of a file written by
    `write_h5`; an incomplete file is an error."""
    import h5py

    arrays, attrs = {}, {}
    with h5py.File(path, "r") as h5:
        if not h5.attrs.get("complete", False):
            raise ValueError(f"{path}: incomplete file")

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                arrays[name] = [s.decode() for s in obj[()]] if obj.dtype.kind == "O" else obj[()]

        h5.visititems(visit)
        for k, v in h5.attrs.items():
            try:
                attrs[k] = json.loads(v) if isinstance(v, str) else v
            except ValueError:
                attrs[k] = v
    return arrays, attrs
