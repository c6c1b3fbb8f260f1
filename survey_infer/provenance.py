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


def software_versions() -> dict[str, str]:
    """Versions that must match between the driver and its workers (a worker with other versions is refused).

    Returns
    -------
    dict
        ``survey_infer``, ``torch``, ``numpy`` and ``zarr`` versions.
    """
    import numpy
    import torch
    import zarr

    return {"survey_infer": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "zarr": zarr.__version__}


def hardware(device: str = "cpu") -> dict:
    """The hardware class a result's bits depend on (bit identity holds per CPU instruction set / GPU model).

    Parameters
    ----------
    device : ``cpu``, ``cuda`` or ``cuda:N`` — the device the model runs on.

    Returns
    -------
    dict
        ``machine`` (e.g. ``x86_64``) and ``cpu_capability``: the instruction set torch's CPU kernels dispatch
        to (``torch.backends.cpu.get_cpu_capability()``: ``DEFAULT``, ``AVX2``, ``AVX512``, ...); on a CUDA
        device also ``gpu`` (device name), ``compute_capability``, ``cuda`` (torch's CUDA runtime) and ``cudnn``
        (version number). ``cpu_model`` (informational, not part of the class) is the CPU's model name.
        :func:`hardware_label` gives the class as one string.
    """
    import platform as _platform

    import torch

    out = {"machine": _platform.machine(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        dev = torch.device(device)
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(idx)
        out.update(gpu=torch.cuda.get_device_name(idx), compute_capability=f"{major}.{minor}",
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    out["cpu_model"] = _cpu_model()
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def hardware_label(hw: dict | None) -> str:
    """One string naming a :func:`hardware` record's class: ``"x86_64 AVX512"`` or ``"NVIDIA H200 (sm 9.0), CUDA
    12.8, cuDNN 91002"``; ``"unrecorded"`` for None (markers of older versions)."""
    if not hw:
        return "unrecorded"
    if hw.get("gpu"):
        return (f"{hw['gpu']} (sm {hw.get('compute_capability')}), CUDA {hw.get('cuda')}, "
                f"cuDNN {hw.get('cudnn')}")
    return f"{hw.get('machine')} {hw.get('cpu_capability')}"


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
