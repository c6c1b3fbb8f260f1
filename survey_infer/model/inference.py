"""Batched, deterministic MC-dropout inference on arrays: spectra in, catalog columns out.

Determinism rule (DESIGN §5): the network runs on micro-batches of fixed size :data:`MICRO_BATCH`; the object
with global row index ``g`` always sits in slot ``g mod MICRO_BATCH`` of the micro-batch covering rows
``[g − g mod B, …)``; empty slots are zero; dropout masks come from :mod:`survey_infer.model.mc` keyed by
(seed, object_id, t); statistics are computed per row. So an object's outputs are the same bits whatever the
chunking, the worker count or the resume history (on one platform and torch version).
"""
from __future__ import annotations

import numpy as np
import torch

from ..flags import ZWarn
from ..preprocess import preprocess
from ..screening import pdf_statistics, set_flags
from . import mc
from .checkpoint import Model
from .microbatch import MICRO_BATCH, STREAMS, window_stats  # noqa: F401  (re-exported: public names)

PREPROCESS_ROWS = 256  # rows preprocessed at once (bounds memory: ~250 kB per MOONS spectrum)


def make_masks(model: Model, object_id: np.ndarray, valid: np.ndarray, T: int, seed: int) -> dict[str, torch.Tensor]:
    """Counter-based dropout multipliers for one micro-batch (padding slots get ones)."""
    cfg = model.cfg
    out = {}
    for name, units in cfg.mask_units().items():
        if T == 1 and seed < 0:
            m = np.ones((len(object_id), 1, units), np.float32)
        else:
            m = mc.keep_masks(seed, object_id, T, units, cfg.p_drop, stream=STREAMS[name])
            m[~valid] = 1.0
        out[name] = torch.from_numpy(m)
    return out


def pack_micro_batch(x: np.ndarray, scalars: np.ndarray, object_id: np.ndarray, sel: np.ndarray,
                     slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One zero-padded micro-batch of :data:`MICRO_BATCH` slots: rows ``sel`` of the inputs go to ``slots``.

    Returns
    -------
    xb : (B, C, L) float32 channels; sb : (B, S) float32 scalars; ob : (B,) int64 object ids;
    valid : (B,) bool, True in the filled slots.
    """
    B = MICRO_BATCH
    xb = np.zeros((B,) + x.shape[1:], np.float32)
    sb = np.zeros((B, scalars.shape[1]), np.float32)
    ob = np.zeros(B, np.int64)
    valid = np.zeros(B, bool)
    xb[slots], sb[slots], ob[slots], valid[slots] = x[sel], scalars[sel], object_id[sel], True
    return xb, sb, ob, valid


@torch.inference_mode()
def run_network(model: Model, x: np.ndarray, scalars: np.ndarray, object_id: np.ndarray, row_index: np.ndarray,
                mc_samples: int, seed: int, device: str | torch.device = "cpu",
                cache: dict | None = None) -> dict[str, np.ndarray]:
    """Trunk once + T batched head passes for rows at global positions ``row_index`` (any order, any count).

    ``mc_samples = 1`` with ``seed = -1`` is the deterministic pass (no dropout). ``cache`` (a dict the caller
    keeps) stores the network's raw outputs per micro-batch, keyed by (window, T, seed): calling again on the
    same rows with another temperature or error scale (calibration) skips the network, and ``x``/``scalars``
    may then be None. The caller must not reuse a cache across models or inputs.

    Returns
    -------
    dict of per-row arrays: ``pz`` (n, Z) float64 in-range PDF, ``p_outside``, ``z_mc_std``, ``logmstar``,
    ``logmstar_err``, ``logmstar_err_mc``, ``logsfr``, ``logsfr_err``, ``logsfr_err_mc`` (float64).
    """
    B = MICRO_BATCH
    n = len(row_index)
    Z = model.zgrid.n
    zc = torch.from_numpy(model.zgrid.centres.astype(np.float32)).to(device)
    out = {k: np.full(n, np.nan) for k in ("p_outside", "z_mc_std", "logmstar", "logmstar_err", "logmstar_err_mc",
                                           "logsfr", "logsfr_err", "logsfr_err_mc")}
    out["pz"] = np.full((n, Z), np.nan)
    row_index = np.asarray(row_index, np.int64)
    windows = row_index // B
    for w in np.unique(windows):
        sel = np.flatnonzero(windows == w)
        slots = row_index[sel] % B
        key = (int(w), int(mc_samples), int(seed))
        if cache is not None and key in cache:
            hd = cache[key]
        else:
            xb, sb, ob, valid = pack_micro_batch(x, scalars, object_id, sel, slots)
            masks = {k: v.to(device) for k, v in make_masks(model, ob, valid, mc_samples, seed).items()}
            tr = model.net.trunk(torch.from_numpy(xb).to(device), torch.from_numpy(sb).to(device))
            hd = model.net.head(tr["a"], tr["ctx"], masks, tr.get("zadd"))
            if cache is not None:
                cache[key] = hd
        res = window_stats(model, hd, mc_samples, B, zc)
        for k, v in res.items():
            out[k][sel] = v.cpu().numpy()[slots]
    return out


def finish_rows(model: Model, pz: np.ndarray, net: dict[str, np.ndarray], snr: np.ndarray,
                masked_fraction: np.ndarray, n_good: np.ndarray, bad_input_fraction: np.ndarray,
                thresholds: dict | None, keep_pz: bool = True) -> dict[str, np.ndarray]:
    """A window's catalog columns from its PDFs and network outputs: statistics, flags and the NODATA rows
    (NaN floats; ``zwarn`` NODATA | bad-input bits | LITTLE_COVERAGE; quality 0; no peaks; NaN PDF).
    :func:`survey_infer.model.torch_screening.finish_rows` is its device twin (bit for bit on the CPU).

    Parameters
    ----------
    model : supplies the redshift grid; pz : (n, Z) float64 PDFs (NODATA rows overwritten in place);
    net : the network's (n,) float64 outputs (``p_outside``, ``z_mc_std``, ``logmstar``...);
    snr, masked_fraction : (n,) float32; n_good : (n,) int; bad_input_fraction : (n,) float64;
    thresholds : the model's calibrated ones; keep_pz : add ``pz`` (n, Z) float32.

    Returns
    -------
    dict of (n,) columns (``z_reliable`` excepted) and ``pz``.
    """
    nodata = n_good == 0
    pz[nodata] = 1.0 / pz.shape[1]  # placeholder for statistics; masked to NaN below
    stats = pdf_statistics(pz, model.zgrid.centres, model.zgrid.dz, thresholds)
    zwarn, quality = set_flags(stats, p_outside=net["p_outside"], z_mc_std=net["z_mc_std"], snr=snr,
                               usable_fraction=1.0 - masked_fraction, bad_input_fraction=bad_input_fraction,
                               n_good=n_good, z_range=(model.zgrid.z_min, model.zgrid.z_max), thresholds=thresholds)
    block = {**stats, **net, "snr": snr, "masked_fraction": masked_fraction, "zwarn": zwarn, "quality": quality}
    for k, v in block.items():
        v = np.asarray(v)
        if v.dtype.kind == "f":
            v = np.where(nodata, np.nan, v)
        block[k] = v
    block["zwarn"] = np.where(nodata, ZWarn.NODATA | (zwarn & ZWarn.BAD_INPUT) | ZWarn.LITTLE_COVERAGE,
                              zwarn).astype(np.int32)
    block["quality"] = np.where(nodata, 0.0, quality).astype(np.float32)
    block["pz_npeaks"] = np.where(nodata, 0, block["pz_npeaks"]).astype(np.int16)
    if keep_pz:
        block["pz"] = np.where(nodata[:, None], np.nan, pz).astype(np.float32)
    return block


def infer_block(model: Model, flux: np.ndarray, ivar: np.ndarray, object_id: np.ndarray, row_start: int, *,
                mask: np.ndarray | None = None, mc_samples: int = 50, seed: int = 0, keep_pz: bool = True,
                device: str | torch.device = "cpu", timings: dict | None = None,
                cache: dict | None = None) -> dict[str, np.ndarray]:
    """Catalog columns for rows ``row_start … row_start + n`` of a survey (preprocess → network → screening).

    Parameters
    ----------
    flux, ivar : (n, W) arrays; mask : optional (n, W) reduction mask.
    object_id : (n,) int64 — keys the dropout masks.
    row_start : int — global row index of the first row (fixes each object's micro-batch slot).
    mc_samples : int — T; seed : int — MC seed.
    timings : dict, optional — seconds per stage are added to it.
    cache : dict, optional — raw network outputs and per-row preprocessing results kept between calls on the
        same rows (:func:`run_network`); a second call skips preprocessing and the network.

    Returns
    -------
    dict of catalog columns (see :mod:`survey_infer.catalog.schema`), plus ``pz`` (n, Z) float32 when
    ``keep_pz``.
    """
    import time

    from ..flags import MASK_INVALID_INPUT

    tm = timings if timings is not None else {}
    n = len(flux)
    th = model.calibration.get("thresholds", {})
    cols: dict[str, list] = {}
    from .hotpath import use_device_path, window_rows

    on_device = use_device_path(device, cache)  # GPU: preprocessing, masks, network, statistics on the device
    step = window_rows(device, PREPROCESS_ROWS) if on_device else PREPROCESS_ROWS
    for s0 in range(0, n, step):
        s1 = min(n, s0 + step)
        t0 = time.perf_counter()
        f, iv = np.asarray(flux[s0:s1]), np.asarray(ivar[s0:s1])
        if on_device:  # preprocessing, network and screening on the device, one copy back (model.hotpath)
            from .hotpath import infer_window_device

            block = infer_window_device(model, f, iv, None if mask is None else np.asarray(mask[s0:s1]),
                                        np.asarray(object_id[s0:s1]), row_start + np.arange(s0, s1), mc_samples,
                                        seed, device, keep_pz=keep_pz, thresholds=th, timings=tm)
            for k, v in block.items():
                cols.setdefault(k, []).append(v)
            continue
        pkey = ("preprocess", row_start + s0, s1 - s0, int(mc_samples), int(seed))
        if cache is not None and pkey in cache:  # the network's outputs are cached too: its input is not needed
            x = scalars = None
            snr, masked_fraction, n_good, bad_in = cache[pkey]
        else:
            bad_in = ~np.isfinite(f) | ~np.isfinite(iv) | (iv < 0)
            if mask is not None:  # the store zeroes invalid input at ingest and marks it in the mask (bit value 2)
                bad_in |= (np.asarray(mask[s0:s1]) & MASK_INVALID_INPUT) != 0
            bad_in = bad_in.mean(axis=1)
            pp = preprocess(f, iv, model.instrument, model.sky_mask,
                            None if mask is None else np.asarray(mask[s0:s1]))
            x, scalars, snr, masked_fraction, n_good = pp.x, pp.scalars, pp.snr, pp.masked_fraction, pp.n_good
        t1 = time.perf_counter()
        res = run_network(model, x, scalars, np.asarray(object_id[s0:s1]), row_start + np.arange(s0, s1),
                          mc_samples, seed, device, cache=cache)
        if cache is not None:
            cache[pkey] = (snr, masked_fraction, n_good, bad_in)
        t2 = time.perf_counter()
        block = finish_rows(model, res.pop("pz"), res, snr, masked_fraction, n_good, bad_in, th, keep_pz)
        for k, v in block.items():
            cols.setdefault(k, []).append(v)
        t3 = time.perf_counter()
        for k, dt in (("preprocess", t1 - t0), ("network", t2 - t1), ("screening", t3 - t2)):
            tm[k] = tm.get(k, 0.0) + dt
    from ..flags import z_reliable

    out = {k: np.concatenate(v) for k, v in cols.items()}
    out["z_reliable"] = z_reliable(out["zwarn"])
    return out
