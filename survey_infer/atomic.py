"""Atomic file writes: a reader sees the old file or the whole new one, never a torn one.

Every file survey-infer writes outside a Zarr store (markers, locks, model metadata, training state, exported
FITS/Parquet, figures) goes through :func:`atomic_path`: the content is written to a temporary file in the same
folder (same file system, so the rename is atomic on POSIX), flushed to disk, and renamed over the final name;
on any error the temporary file is removed and the final name is untouched. Kept in the project rather than
taken from a library because the one that did this (``atomicwrites``) is archived, and the whole job is the
dozen lines below.

This module imports nothing from the package (a base of the layer contracts in ``pyproject.toml``).
"""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def temporary_name(path: str | os.PathLike) -> Path:
    """A unique hidden temporary name beside ``path`` (``.name.<8 hex>.tmp``), for a later :func:`os.replace`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error, rename it to ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        The final file. Its folder is created if missing.
    fsync : bool
        Flush the written file to disk before the rename (markers and locks need it; a figure does not).

    Yields
    ------
    pathlib.Path
        Where the caller writes the complete content (a file; the caller opens and closes it).

    Raises
    ------
    OSError
        From the write or the rename (a full disk, a read-only folder); the temporary file is removed and
        ``path`` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def json_default(o: Any) -> Any:
    """``json.dump`` fallback for numpy scalars and arrays (``TypeError`` for anything else)."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = None, fsync: bool = True) -> None:
    """Write ``obj`` as JSON (sorted keys; numpy values as Python numbers) to ``path`` atomically.

    Raises
    ------
    TypeError
        ``obj`` holds something JSON cannot encode (nothing is written).
    OSError
        As :func:`atomic_path`.
    """
    atomic_write_text(path, json.dumps(obj, sort_keys=True, indent=indent, default=json_default), fsync=fsync)
