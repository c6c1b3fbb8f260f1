"""One place that says who made a file: software and dependency versions, command line, host and time."""
from __future__ import annotations

import datetime as _dt
import hashlib
import platform
import sys
from importlib import metadata

from . import __version__

_DEPS = ("numpy", "torch", "dask", "distributed", "zarr", "xarray", "astropy")


def dependency_versions() -> dict[str, str]:
    """Installed versions of the packages whose behaviour shapes the numbers."""
    out = {}
    for name in _DEPS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # pragma: no cover - optional
            out[name] = "absent"
    return out


def file_sha256(path) -> str:
    """sha256 (hex) of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def utc_now() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def provenance(command: str | None = None) -> dict:
    """A provenance record for store / catalog / checkpoint attrs.

    Parameters
    ----------
    command : str, optional
        The command line; defaults to ``sys.argv`` joined by spaces.
    """
    return {
        "software": "survey-infer",
        "version": __version__,
        "command": command if command is not None else " ".join(sys.argv),
        "created": utc_now(),
        "host": platform.node(),
        "python": platform.python_version(),
        "dependencies": dependency_versions(),
    }
