"""Per-device settings of the inference hot path: micro-batch size, GPU numerics, hardware record, warm-up.

The determinism rule (:mod:`survey_infer.model.inference`) puts the object at global row ``g`` in slot
``g mod B`` of a fixed-size micro-batch. ``B`` is chosen per device here — 32 on the CPU (today's value, so CPU
catalogs keep their bits), 1,024 on a CUDA GPU (enough work per kernel launch to keep an H200 busy) — and is
part of the catalog fingerprint (:func:`fingerprint_fields`), so a catalog is never resumed with another ``B``.

GPU numerics (:func:`configure_numerics`) default to IEEE fp32: PyTorch ≥ 2.9 controls the internal precision
of fp32 convolutions and matrix products with ``torch.backends.cudnn.conv.fp32_precision`` and
``torch.backends.cuda.matmul.fp32_precision`` (values ``"ieee"`` / ``"tf32"``; the cuDNN convolution default is
``"tf32"``, i.e. 10-bit mantissas — see the PyTorch notes "TensorFloat-32 (TF32) on Ampere (and later)
devices"). Deterministic algorithms are requested with ``torch.use_deterministic_algorithms(True)``, which on
CUDA ≥ 10.2 needs ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (or ``:16:8``) set before cuBLAS starts (PyTorch notes
"Reproducibility"). TF32 is an explicit, fingerprinted option (``precision="tf32"``).
"""
from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["MICRO_BATCH_BY_DEVICE", "PRECISIONS", "micro_batch_size", "aligned", "configure_numerics",
           "hardware_description", "fingerprint_fields", "check_resume_hardware", "warm_up", "device_class",
           "GPU_FINGERPRINT_KEYS", "gpu_fingerprint", "merge_worker_fingerprints"]

#: micro-batch size B per device class (CPU keeps the historical 32: CPU catalogs stay bit-identical)
MICRO_BATCH_BY_DEVICE = {"cpu": 32, "cuda": 1024}
#: fp32 internal precisions offered; "ieee" is the default and the only one CPU supports
PRECISIONS = ("ieee", "tf32")
_CUBLAS_OK = (":4096:8", ":16:8")
_ENV_B = "SURVEY_INFER_MICRO_BATCH"


def device_class(device: str | torch.device) -> str:
    """``"cuda"`` for any CUDA device (``cuda``, ``cuda:1``...), else ``"cpu"``.

    Raises
    ------
    ValueError
        For a device type this project does not run on (``mps``, ``xpu``...).
    """
    t = torch.device(device).type
    if t not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r}: survey-infer runs on cpu or cuda")
    return t


def micro_batch_size(device: str | torch.device, override: int | None = None) -> int:
    """The micro-batch size B for ``device``.

    Parameters
    ----------
    device : the torch device the network runs on.
    override : int, optional
        An explicit B (else the environment variable ``SURVEY_INFER_MICRO_BATCH``, else
        :data:`MICRO_BATCH_BY_DEVICE`). Must be a positive multiple of 32 (block sizes and preprocessing
        windows are rounded to whole micro-batches with :func:`aligned`).

    Raises
    ------
    ValueError
        One line naming the bad value and where it came from.
    """
    cls = device_class(device)
    src = "micro_batch"
    if override is None and os.environ.get(_ENV_B):
        src, override = _ENV_B, os.environ[_ENV_B]
    if override is None:
        return MICRO_BATCH_BY_DEVICE[cls]
    try:
        b = int(override)
    except (TypeError, ValueError):
        raise ValueError(f"{src}={override!r}: expected a positive multiple of 32") from None
    if b <= 0 or b % 32:
        raise ValueError(f"{src}={b}: expected a positive multiple of 32")
    return b


def aligned(rows: int, B: int) -> int:
    """``rows`` rounded up to a multiple of ``B`` (block sizes and preprocessing windows are whole micro-batches).

    Raises
    ------
    ValueError
        When ``rows`` or ``B`` is not positive.
    """
    if rows <= 0 or B <= 0:
        raise ValueError(f"aligned(rows={rows}, B={B}): both must be positive")
    return -(-int(rows) // int(B)) * int(B)


def configure_numerics(device: str | torch.device, precision: str = "ieee", deterministic: bool = True
                       ) -> dict[str, Any]:
    """Apply the numerics settings for ``device`` in this process and return what was set.

    On ``cuda``: ``torch.backends.cudnn.conv.fp32_precision`` and ``torch.backends.cuda.matmul.fp32_precision``
    = ``precision``; with ``deterministic``: ``CUBLAS_WORKSPACE_CONFIG`` (``:4096:8`` unless already one of the
    two valid values), ``torch.use_deterministic_algorithms(True)``, ``cudnn.deterministic = True`` and
    ``cudnn.benchmark = False``. On ``cpu`` nothing global changes (the CPU kernels are deterministic and fp32;
    changing process-wide flags there would affect training in the same process).

    Parameters
    ----------
    device : torch device; precision : ``"ieee"`` (default) or ``"tf32"`` (GPU only); deterministic : bool.

    Returns
    -------
    dict with ``fp32_precision``, ``deterministic`` and, on cuda, ``cublas_workspace_config``.

    Raises
    ------
    ValueError
        Unknown ``precision``, ``tf32`` on the CPU, or an invalid ``CUBLAS_WORKSPACE_CONFIG`` already set.
    """
    cls = device_class(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if cls == "cpu":
        if precision != "ieee":
            raise ValueError(f"precision {precision!r} needs a CUDA device (the CPU computes fp32 in IEEE)")
        return {"fp32_precision": "ieee", "deterministic": True}
    out: dict[str, Any] = {"fp32_precision": precision, "deterministic": bool(deterministic)}
    if deterministic:
        cur = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        if cur is None:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = _CUBLAS_OK[0]
        elif cur not in _CUBLAS_OK:
            raise ValueError(f"CUBLAS_WORKSPACE_CONFIG={cur!r}: deterministic cuBLAS needs one of "
                             f"{', '.join(_CUBLAS_OK)}")
        out["cublas_workspace_config"] = os.environ["CUBLAS_WORKSPACE_CONFIG"]
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.conv.fp32_precision = precision
    torch.backends.cuda.matmul.fp32_precision = precision
    return out


def hardware_description(device: str | torch.device) -> dict[str, Any]:
    """What a result's bits depend on, for ``device`` (taken in the process that runs the model).

    Returns
    -------
    dict
        ``device_class``; ``torch`` (version, no local suffix); ``machine`` and ``cpu_capability`` (torch's CPU
        kernel dispatch level) and ``cpu_model`` (informational); on cuda also ``gpu`` (name),
        ``compute_capability`` (``"9.0"``), ``sm_count`` (multiprocessors), ``cuda`` (torch's CUDA runtime),
        ``cudnn`` (version number) and ``gpu_memory_gib``.
    """
    from ..provenance import hardware

    cls = device_class(device)
    out: dict[str, Any] = {"device_class": cls, "torch": torch.__version__.split("+")[0]}
    out.update(hardware(str(device)))
    if cls == "cuda" and torch.cuda.is_available():
        dev = torch.device(device)
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        p = torch.cuda.get_device_properties(idx)
        out.update(sm_count=int(p.multi_processor_count), gpu_memory_gib=round(p.total_memory / 2 ** 30, 1))
    return out


#: keys whose change breaks bit identity (compared on resume); ``cpu_model`` / memory are informational
_BIT_KEYS = ("device_class", "micro_batch", "fp32_precision", "torch", "machine", "cpu_capability", "gpu",
             "compute_capability", "sm_count", "cuda", "cudnn")


def fingerprint_fields(device: str | torch.device, precision: str = "ieee", micro_batch: int | None = None
                       ) -> dict[str, Any]:
    """The hardware/numerics part of a catalog fingerprint for a run on ``device``.

    Returns
    -------
    dict with ``device_class``, ``micro_batch``, ``fp32_precision`` and the :func:`hardware_description` keys
    (all in :data:`_BIT_KEYS` plus informational ``cpu_model`` / ``gpu_memory_gib``).
    """
    hw = hardware_description(device)
    return {**hw, "micro_batch": micro_batch_size(device, micro_batch), "fp32_precision": precision}


def check_resume_hardware(stored: dict, current: dict, what: str = "catalog") -> None:
    """Refuse to continue a catalog made on other hardware/numerics (bit identity would be claimed falsely).

    Parameters
    ----------
    stored : the fingerprint fields recorded in the catalog; current : :func:`fingerprint_fields` of this run.
    what : name of the catalog (path) for the message.

    Raises
    ------
    ValueError
        One line naming the catalog and the first differing key with both values, e.g.
        ``cat.zarr was made with device_class=cpu, this run has device_class=cuda: ...``.
    """
    for k in _BIT_KEYS:
        a, b = stored.get(k), current.get(k)
        if a is None and b is None:
            continue
        if a != b:
            raise ValueError(f"{what} was made with {k}={a}, this run has {k}={b}: its results would not be "
                             f"bit-identical; write a new catalog (or run on the same hardware and settings)")


#: keys :func:`gpu_fingerprint` adds to a catalog's numerics fingerprint on a GPU (none on the CPU)
GPU_FINGERPRINT_KEYS = ("micro_batch", "fp32_precision", "gpu", "compute_capability", "sm_count", "cuda", "cudnn")


def gpu_fingerprint(device: str = "cuda", precision: str = "ieee", micro_batch: int | None = None,
                    description: dict[str, Any] | None = None) -> dict[str, Any]:
    """The GPU part of a catalog's numerics fingerprint, taken in the worker process that runs the model.

    Meant to be run on every worker by the driver (``client.run(gpu_fingerprint, device)``) and merged with
    :func:`merge_worker_fingerprints`: the GPU model, its CUDA/cuDNN build, the micro-batch size B and the fp32
    precision are those of the workers, not of the driver (which may have no GPU at all).

    On ``cuda`` it first applies :func:`configure_numerics` (``precision``, deterministic; idempotent: the
    worker's model plug-in applies the same settings) and then reads the fp32 precision back from torch, so the
    record is what the process really computes with.

    Parameters
    ----------
    device : str
        The run's device (``cpu``, ``cuda``, ``cuda:N``).
    precision : str
        ``"ieee"`` (default) or ``"tf32"``.
    micro_batch : int, optional
        Explicit B (else ``SURVEY_INFER_MICRO_BATCH`` in the worker's environment, else 1,024).
    description : dict, optional
        A device description (:func:`hardware_description` keys) used instead of asking torch: tests, and a
        driver that re-checks a recorded fingerprint. No numerics are set when it is given.

    Returns
    -------
    dict
        ``{}`` on the CPU (a CPU catalog's fingerprint keeps exactly its keys, so existing CPU catalogs resume).
        On a GPU the :data:`GPU_FINGERPRINT_KEYS`: ``micro_batch`` (int), ``fp32_precision`` (``"ieee"`` /
        ``"tf32"``), ``gpu`` (device name, e.g. ``"NVIDIA H200"``), ``compute_capability`` (``"9.0"``),
        ``sm_count`` (int, streaming multiprocessors), ``cuda`` (torch's CUDA runtime, ``"12.8"``), ``cudnn``
        (int, e.g. ``91002``).

    Raises
    ------
    survey_infer.errors.ClusterError
        ``device`` is CUDA but this process sees no CUDA GPU (one line naming the host).
    ValueError
        Unknown device type or precision, bad ``micro_batch`` (:func:`micro_batch_size`).
    """
    if device_class(device) == "cpu":
        return {}
    B = micro_batch_size(device, micro_batch)
    if description is None:
        if not torch.cuda.is_available():
            import socket

            from ..errors import ClusterError

            raise ClusterError(f"device {device}: torch {torch.__version__} sees no CUDA GPU on host "
                               f"{socket.gethostname()} (a --cluster cuda worker must run on a GPU node)")
        configure_numerics(device, precision)
        conv, mm = torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
        live = conv if conv == mm else f"conv={conv},matmul={mm}"
        description = hardware_description(device)
    else:
        live = precision
    out: dict[str, Any] = {"micro_batch": B, "fp32_precision": live}
    for k in GPU_FINGERPRINT_KEYS[2:]:
        out[k] = description.get(k)
    return out


def merge_worker_fingerprints(per_worker: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One GPU fingerprint from the :func:`gpu_fingerprint` of every worker (``client.run``'s answer).

    Parameters
    ----------
    per_worker : dict
        Worker address → that worker's :func:`gpu_fingerprint`.

    Returns
    -------
    dict
        The common record (``{}`` for CPU workers or when there are no workers).

    Raises
    ------
    survey_infer.errors.ClusterError
        The workers differ (e.g. an H200 and an A100 in one cluster): their results would not be bit-identical
        to each other; the line names both workers and the first differing key with both values.
    """
    from ..errors import ClusterError

    items = sorted(per_worker.items())
    if not items:
        return {}
    first_addr, first = items[0]
    for addr, rec in items[1:]:
        for k in sorted(set(first) | set(rec)):
            if first.get(k) != rec.get(k):
                raise ClusterError(f"workers differ in {k}: {first_addr} has {first.get(k)!r}, {addr} has "
                                   f"{rec.get(k)!r}; results would not be bit-identical across them: run on one "
                                   f"GPU model and software build (one Slurm partition / node type)")
    return dict(first)


@torch.inference_mode()
def warm_up(model, device: str | torch.device, B: int | None = None, T: int = 2) -> float:
    """Run the trunk and a ``T``-sample head once on zeros of micro-batch size ``B`` (kernel selection, cuDNN and
    cuBLAS handles, allocator pools) so that the first real window is not slowed down; returns seconds taken.

    Parameters
    ----------
    model : :class:`survey_infer.model.checkpoint.Model` already on ``device``.
    device : torch device; B : micro-batch size (default :func:`micro_batch_size`); T : MC samples.
    """
    import time

    from .microbatch import STREAMS
    from .torch_masks import make_masks

    B = B or micro_batch_size(device)
    cfg = model.net.cfg
    t0 = time.perf_counter()
    x = torch.zeros((B, cfg.n_in, model.instrument.n_wave), dtype=torch.float32, device=device)
    s = torch.zeros((B, cfg.n_scalars), dtype=torch.float32, device=device)
    oid = torch.arange(B, dtype=torch.int64, device=device)
    masks = make_masks(cfg.mask_units(), STREAMS, cfg.p_drop, oid, torch.ones(B, dtype=torch.bool, device=device),
                       T, 0)
    tr = model.net.trunk(x, s)
    model.net.head(tr["a"], tr["ctx"], masks, tr.get("zadd"))
    if device_class(device) == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0
