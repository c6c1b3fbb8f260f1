"""The inference hot path on the worker's device: device-made masks, device-resident windows, one copy back.

:func:`run_network_device` computes exactly what :func:`survey_infer.model.inference.run_network` computes —
same micro-batch rule (row ``g`` in slot ``g mod B``), same dropout masks (:mod:`.torch_masks`, bit-exact with
:mod:`.mc`), same torch operations for the MC statistics — but

* the micro-batch size ``B`` comes from :func:`survey_infer.model.device.micro_batch_size` (32 on the CPU, so
  the CPU results are bit-identical to ``run_network``; 1,024 on a GPU);
* the inputs go to the device once per call (from page-locked staging buffers on CUDA, asynchronously), the
  micro-batches are packed on the device, the dropout masks are made on the device;
* the per-row results stay on the device and come back in one copy per call (one ``(n, 8)`` float64 array and
  the ``(n, Z)`` PDFs), instead of nine blocking ``.cpu()`` calls per micro-batch.

:func:`infer_window_device` is the whole window on the device — bad-input fractions, preprocessing
(:mod:`.torch_preprocess`), the network, then the screening (:mod:`.torch_screening`: statistics, HPD intervals,
``zwarn``, quality, NODATA rows) — and brings the finished catalog columns back in ONE copy: every column is
packed as bytes into one ``(n, bytes)`` buffer on the device (:func:`pack_rows`), copied into page-locked host
memory, and viewed back as typed numpy arrays (:func:`unpack_rows`).

:func:`pdf_moments_torch` computes the cheap PDF statistics (mode refined by a parabola, mean, z_err, peak,
confidence, entropy, number of peaks) on the device; :mod:`survey_infer.screening` remains the reference
(agreement within 1e-12 relative in float64: summation order differs; the mode bin is identical).
"""
from __future__ import annotations

import numpy as np
import torch

from .checkpoint import Model
from .device import device_class, micro_batch_size
from .microbatch import STREAMS, window_stats
from .torch_masks import make_masks

__all__ = [
    "STAT_KEYS",
    "infer_window_device",
    "pack_rows",
    "pdf_moments_torch",
    "pipeline_micro_batch",
    "preprocess_device",
    "run_network_device",
    "unpack_rows",
    "use_device_path",
    "window_rows",
]

#: per-row scalar outputs of :func:`run_network_device`, in the column order of its one host copy
STAT_KEYS = ("p_outside", "z_mc_std", "logmstar", "logmstar_err", "logmstar_err_mc", "logsfr", "logsfr_err",
             "logsfr_err_mc")


def _to_device(a: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.to(device)
    t = torch.from_numpy(np.ascontiguousarray(a))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


@torch.inference_mode()
def run_network_device(model: Model, x: np.ndarray, scalars: np.ndarray, object_id: np.ndarray,
                       row_index: np.ndarray, mc_samples: int, seed: int, device: str | torch.device = "cpu",
                       micro_batch: int | None = None, keep_on_device: bool = False) -> dict:
    """Trunk once + T batched head passes for rows at global positions ``row_index``, on ``device``.

    Parameters
    ----------
    model : loaded model, its network already on ``device``.
    x : (n, C, W) float32 network channels; scalars : (n, S) float32 — numpy arrays or tensors (tensors already
        on ``device`` are used in place); object_id : (n,) int64 (mask keys).
    row_index : (n,) int64 global rows (any order); fixes each row's micro-batch and slot.
    mc_samples : T; seed : MC seed (``T = 1, seed = -1``: the deterministic pass).
    device : torch device; micro_batch : B (default: per device, :func:`.device.micro_batch_size`).
    keep_on_device : return torch tensors on ``device`` (no copy back) instead of numpy arrays.

    Returns
    -------
    dict as :func:`survey_infer.model.inference.run_network`: ``pz`` (n, Z) float64 and the
    :data:`STAT_KEYS` (n,) float64 — bit-identical to it on the CPU with B = 32.
    """
    dev = torch.device(device)
    B = micro_batch_size(dev, micro_batch)
    n = len(row_index)
    Z = model.zgrid.n
    zc = torch.from_numpy(model.zgrid.centres.astype(np.float32)).to(dev)
    row_index = np.asarray(row_index, np.int64)
    if isinstance(x, torch.Tensor):  # already on the device (preprocess_device): no copy
        xd, sd = x.to(dev, torch.float32), scalars.to(dev, torch.float32)
    else:
        xd, sd = _to_device(np.asarray(x, np.float32), dev), _to_device(np.asarray(scalars, np.float32), dev)
    od = _to_device(np.asarray(object_id, np.int64), dev)
    stats = torch.full((n, len(STAT_KEYS)), float("nan"), dtype=torch.float64, device=dev)
    pz_out = torch.full((n, Z), float("nan"), dtype=torch.float64, device=dev)
    cfg = model.net.cfg
    units = cfg.mask_units()
    windows = row_index // B
    order = np.argsort(windows, kind="stable")
    uw, starts = np.unique(windows[order], return_index=True)
    bounds = np.r_[starts, len(order)]
    for i in range(len(uw)):
        sel_np = order[bounds[i]:bounds[i + 1]]
        slots_np = row_index[sel_np] % B
        sel, slots = _to_device(sel_np, dev), _to_device(slots_np, dev)
        xb = torch.zeros((B,) + tuple(xd.shape[1:]), dtype=torch.float32, device=dev)
        sb = torch.zeros((B, sd.shape[1]), dtype=torch.float32, device=dev)
        ob = torch.zeros(B, dtype=torch.int64, device=dev)
        valid = torch.zeros(B, dtype=torch.bool, device=dev)
        xb[slots], sb[slots], ob[slots] = xd[sel], sd[sel], od[sel]
        valid[slots] = True
        masks = make_masks(units, STREAMS, cfg.p_drop, ob, valid, mc_samples, seed)
        tr = model.net.trunk(xb, sb)
        hd = model.net.head(tr["a"], tr["ctx"], masks, tr.get("zadd"))
        res = window_stats(model, hd, mc_samples, B, zc)
        pz_out[sel] = res["pz"][slots]
        stats[sel] = torch.stack([res[k] for k in STAT_KEYS], dim=1)[slots]
    if keep_on_device:
        return {"pz": pz_out, **{k: stats[:, j] for j, k in enumerate(STAT_KEYS)}}
    st = stats.cpu().numpy()  # one copy back per call for the scalars, one for the PDFs
    out = {k: np.ascontiguousarray(st[:, j]) for j, k in enumerate(STAT_KEYS)}
    out["pz"] = pz_out.cpu().numpy()
    return out


def preprocess_device(flux: np.ndarray, ivar: np.ndarray, model: Model, mask: np.ndarray | None,
                      device: str | torch.device):
    """Preprocessing on ``device`` for :func:`run_network_device`: a :class:`survey_infer.preprocess.Preprocessed`
    whose ``x`` and ``scalars`` stay on the device (tensors) and whose per-row ``snr``, ``masked_fraction``,
    ``n_good`` come back to the host in one copy (they feed the flags). Tolerance against the numpy path: see
    :mod:`.torch_preprocess`."""
    from ..preprocess import Preprocessed
    from .torch_preprocess import preprocess_torch

    dev = torch.device(device)
    f = _to_device(np.asarray(flux, np.float32), dev)
    iv = _to_device(np.asarray(ivar, np.float32), dev)
    m = None if mask is None else _to_device(np.asarray(mask), dev)
    pp = preprocess_torch(f, iv, model.instrument, model.sky_mask, m, device=dev)
    small = torch.stack([pp["snr"].double(), pp["masked_fraction"].double(), pp["n_good"].double()], 1).cpu().numpy()
    return Preprocessed(x=pp["x"], scalars=pp["scalars"], snr=small[:, 0].astype(np.float32),
                        masked_fraction=small[:, 1].astype(np.float32), n_good=small[:, 2].astype(np.int64))


def pack_rows(cols: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[tuple[str, int, int, str, tuple]]]:
    """Pack per-row columns (first dimension n, any dtype) into one contiguous ``(n, bytes)`` uint8 tensor.

    Returns
    -------
    buffer : (n, total bytes) uint8 tensor on the columns' device; layout : list of (name, byte offset, byte
    width, numpy dtype name, trailing shape) for :func:`unpack_rows`.
    """
    parts, layout, off = [], [], 0
    for k, v in cols.items():
        n = v.shape[0]
        v2 = v.reshape(n, -1).contiguous()
        b = v2.view(torch.uint8) if v2.dtype != torch.bool else v2.to(torch.uint8)
        layout.append((k, off, b.shape[1], str(torch.empty((), dtype=v.dtype).numpy().dtype), tuple(v.shape[1:])))
        parts.append(b)
        off += b.shape[1]
    return torch.cat(parts, dim=1), layout


def unpack_rows(buf: np.ndarray, layout: list[tuple[str, int, int, str, tuple]]) -> dict[str, np.ndarray]:
    """Typed numpy columns from a host copy of a :func:`pack_rows` buffer (each column copied out contiguous)."""
    n = buf.shape[0]
    out = {}
    for k, off, nb, dt, shape in layout:
        a = np.ascontiguousarray(buf[:, off:off + nb]).view(np.dtype(dt))
        out[k] = a.reshape((n,) + tuple(shape))
    return out


def _one_copy_back(buf: torch.Tensor) -> np.ndarray:
    """The packed window on the host: into page-locked memory (cached by torch's host allocator) on CUDA."""
    if buf.device.type != "cuda":
        return buf.numpy()
    host = torch.empty(buf.shape, dtype=buf.dtype, pin_memory=True)
    host.copy_(buf, non_blocking=True)
    torch.cuda.current_stream(buf.device).synchronize()
    return host.numpy()


@torch.inference_mode()
def infer_window_device(model: Model, flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray | None,
                        object_id: np.ndarray, row_index: np.ndarray, mc_samples: int, seed: int,
                        device: str | torch.device, keep_pz: bool = True, thresholds: dict | None = None,
                        timings: dict | None = None) -> dict[str, np.ndarray]:
    """One window of :func:`survey_infer.model.inference.infer_block` entirely on ``device``, one copy back.

    Parameters
    ----------
    model : loaded model, its network on ``device``.
    flux, ivar : (n, W) float32 host arrays; mask : (n, W) uint8 reduction mask or None.
    object_id : (n,) int64; row_index : (n,) int64 global rows; mc_samples : T; seed : MC seed.
    device : torch device; keep_pz : also return ``pz`` (n, Z) float32; thresholds : the model's calibrated
    screening thresholds.
    timings : dict, optional — seconds added under ``preprocess`` (host work and launches up to the network),
        ``network`` (network, screening and the copy back: the device's work, waited for once) and
        ``screening`` (unpacking on the host).

    Returns
    -------
    dict of host numpy columns, named and typed as ``infer_block``'s (``z_reliable`` excepted). On the CPU the
    columns equal the numpy path's given the same PDFs (screening bit for bit, :mod:`.torch_screening`); the
    torch preprocessing agrees with numpy's within 1e-5 (:mod:`.torch_preprocess`).
    """
    import time

    from ..flags import MASK_INVALID_INPUT
    from .torch_preprocess import preprocess_torch
    from .torch_screening import finish_rows

    tm = timings if timings is not None else {}
    t0 = time.perf_counter()
    dev = torch.device(device)
    f = _to_device(np.asarray(flux, np.float32), dev)
    iv = _to_device(np.asarray(ivar, np.float32), dev)
    m = None if mask is None else _to_device(np.asarray(mask), dev)
    bad = ~torch.isfinite(f) | ~torch.isfinite(iv) | (iv < 0)
    if m is not None:  # the store zeroes invalid input at ingest and marks it in the mask
        bad |= (m & MASK_INVALID_INPUT) != 0
    bad_in = bad.sum(dim=1).to(torch.float64) / f.shape[1]  # = numpy's bool mean (exact count / W)
    pp = preprocess_torch(f, iv, model.instrument, model.sky_mask, m, device=dev)
    t1 = time.perf_counter()
    res = run_network_device(model, pp["x"], pp["scalars"], np.asarray(object_id, np.int64), row_index,
                             mc_samples, seed, dev, keep_on_device=True)
    pz = res.pop("pz")
    zg = model.zgrid
    block = finish_rows(pz, res, pp["snr"], pp["masked_fraction"], pp["n_good"].to(torch.int64), bad_in,
                        torch.from_numpy(np.asarray(zg.centres, np.float64)).to(dev), zg.dz, (zg.z_min, zg.z_max),
                        thresholds, keep_pz)
    buf, layout = pack_rows(block)
    host = _one_copy_back(buf)
    t2 = time.perf_counter()
    out = unpack_rows(host, layout)
    for k, dt in (("preprocess", t1 - t0), ("network", t2 - t1), ("screening", time.perf_counter() - t2)):
        tm[k] = tm.get(k, 0.0) + dt
    return out


def use_device_path(device: str | torch.device, cache: dict | None = None) -> bool:
    """Whether ``inference.infer_block`` takes this module's path: on a CUDA device (unless a raw-output
    ``cache`` is in use: calibration, which runs on the CPU path), or anywhere when ``SURVEY_INFER_HOTPATH=1``
    (to exercise it on the CPU in tests). The CPU default stays the numpy path (its catalogs keep their bits)."""
    import os

    if cache is not None:
        return False
    return device_class(device) == "cuda" or os.environ.get("SURVEY_INFER_HOTPATH") == "1"


def pipeline_micro_batch(device: str | torch.device) -> int:
    """The micro-batch size the pipeline really uses on ``device`` (for the fingerprint): the numpy path's
    ``inference.MICRO_BATCH`` (32) on the CPU, :func:`.device.micro_batch_size` on a GPU."""
    from .microbatch import MICRO_BATCH

    return micro_batch_size(device) if device_class(device) == "cuda" else MICRO_BATCH


def window_rows(device: str | torch.device, rows: int = 256, micro_batch: int | None = None) -> int:
    """Rows preprocessed at once on ``device``: ``rows`` rounded up to whole micro-batches (CPU: 256 stays 256;
    GPU: 1,024 with B = 1,024), so no micro-batch is split between two windows and computed twice."""
    from .device import aligned

    return aligned(rows, micro_batch_size(device, micro_batch))


def pdf_moments_torch(pz: torch.Tensor, zc: torch.Tensor, dz: float, conf_window: float = 0.01,
                      peak_mass: float = 0.05) -> dict[str, torch.Tensor]:
    """The cheap PDF statistics of :func:`survey_infer.screening.pdf_statistics` on the device (float64).

    Parameters
    ----------
    pz : (n, Z) float64 tensor, rows summing to 1; zc : (Z,) float64 bin centres; dz : bin width.
    conf_window : ``pz_conf`` half-width in z; peak_mass : minimum mass (±3 bins) of a counted peak.

    Returns
    -------
    dict of (n,) tensors: ``z`` (mode refined by a parabola through log p, :func:`screening.refine_mode`),
    ``z_mean``, ``z_err`` (:func:`screening.z_error`), ``pz_peak``, ``pz_conf``, ``pz_entropy`` (nats),
    ``pz_npeaks`` (int16). The HPD intervals stay in :mod:`survey_infer.screening`.
    """
    Z = pz.shape[1]
    zc = zc.to(pz.dtype)
    i = torch.argmax(pz, dim=1)
    lp = torch.log(torch.clamp(pz, min=1e-300))
    im, ip = torch.clamp(i - 1, 0, Z - 1), torch.clamp(i + 1, 0, Z - 1)
    a, b, c = lp.gather(1, im[:, None])[:, 0], lp.gather(1, i[:, None])[:, 0], lp.gather(1, ip[:, None])[:, 0]
    den = a - 2 * b + c
    ok = (den < 0) & (i > 0) & (i < Z - 1)
    delta = torch.where(ok, 0.5 * (a - c) / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))
    delta = torch.clamp(torch.nan_to_num(delta), -0.5, 0.5)
    z = zc[i] + delta * dz
    zmean = (pz * zc[None, :]).sum(dim=1)
    d2 = (pz * (zc[None, :] - z[:, None]) ** 2).sum(dim=1)
    zerr = torch.sqrt(torch.clamp(d2, min=0.0) + dz * dz / 12.0)
    near = (zc[None, :] - z[:, None]).abs() <= conf_window + 1e-12
    conf = (pz * near).sum(dim=1)
    pos = pz > 0
    ent = -torch.where(pos, pz * torch.log(torch.where(pos, pz, torch.ones_like(pz))), torch.zeros_like(pz)).sum(1)
    pad = torch.nn.functional.pad(pz, (1, 1))
    sm = (pad[:, :-2] + pad[:, 1:-1] + pad[:, 2:]) / 3.0
    left = torch.nn.functional.pad(sm, (1, 0), value=-1.0)[:, :-1]
    right = torch.nn.functional.pad(sm, (0, 1), value=-1.0)[:, 1:]
    is_max = (sm > left) & (sm >= right)
    from .torch_screening import running_sum

    cs = running_sum(torch.nn.functional.pad(pz, (4, 3)))  # torch.cumsum of floats raises on CUDA (deterministic)
    win = cs[:, 7:] - cs[:, :-7]
    npk = (is_max & (win >= peak_mass)).sum(dim=1).to(torch.int16)
    return {"z": z, "z_mean": zmean, "z_err": zerr, "pz_peak": pz.gather(1, i[:, None])[:, 0], "pz_conf": conf,
            "pz_entropy": ent, "pz_npeaks": npk}


def is_cuda(device: str | torch.device) -> bool:
    """True for a CUDA device."""
    return device_class(device) == "cuda"
