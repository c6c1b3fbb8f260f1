"""PDF statistics, flag bits and the calibrated screening rule (DESIGN §6).

Every statistic is computed row by row from the MC-averaged PDF (float64 internally), so an object's values do
not depend on its neighbours. The screening rule is

``quality = pz_conf · (1 − p_outside)``;  SCREENED when ``quality < thresholds["quality"]``,

with the threshold calibrated on a validation set (:func:`calibrate_thresholds`) and stored in the model.
"""
from __future__ import annotations

import numpy as np

from .flags import DEFAULT_THRESHOLDS, ZWarn, z_reliable

SCREENING_VERSION = "sc-3"  # part of the catalog's numerics fingerprint: change it whenever a statistic changes
# (sc-2: intervals resolved below the bin width; sc-3: zwarn at Redrock's bit positions, z_err about the mode
# with the within-bin spread)
# DEFAULT_THRESHOLDS (the thresholds of the flag bits) is defined in survey_infer.flags, imported above


def refine_mode(pz: np.ndarray, zc: np.ndarray, dz: float) -> tuple[np.ndarray, np.ndarray]:
    """Mode bin and the mode refined below the bin width by a parabola through log p at the peak.

    Returns
    -------
    imode : (n,) int64
    z : (n,) float64
    """
    n, Z = pz.shape
    i = np.argmax(pz, axis=1)
    r = np.arange(n)
    lp = np.log(np.maximum(pz, 1e-300))
    im, ip = np.clip(i - 1, 0, Z - 1), np.clip(i + 1, 0, Z - 1)
    a, b, c = lp[r, im], lp[r, i], lp[r, ip]
    den = a - 2 * b + c
    with np.errstate(all="ignore"):
        delta = np.where((den < 0) & (i > 0) & (i < Z - 1), 0.5 * (a - c) / den, 0.0)
    delta = np.clip(np.nan_to_num(delta), -0.5, 0.5)
    return i, zc[i] + delta * dz


def _greedy_interval(cell: np.ndarray, start: np.ndarray, level: float) -> tuple[np.ndarray, ...]:
    """Grow a contiguous run of cells from ``start`` towards the denser neighbour until it holds ``level``.

    Returns the first and last cell, the mass held and whether the level was reached (row by row).
    """
    n, M = cell.shape
    r = np.arange(n)
    lo, hi = start.copy(), start.copy()
    mass = cell[r, start].copy()
    active = mass < level
    while active.any():
        left_p = np.where(lo > 0, cell[r, np.maximum(lo - 1, 0)], -1.0)
        right_p = np.where(hi < M - 1, cell[r, np.minimum(hi + 1, M - 1)], -1.0)
        go_left = active & (left_p >= right_p) & (left_p >= 0)
        go_right = active & ~go_left & (right_p >= 0)
        lo = np.where(go_left, lo - 1, lo)
        hi = np.where(go_right, hi + 1, hi)
        mass = mass + np.where(go_left, left_p, 0.0) + np.where(go_right, right_p, 0.0)
        active = active & (go_left | go_right) & (mass < level)
    return lo, hi, mass, mass >= level


def _trim(cell: np.ndarray, lo: np.ndarray, hi: np.ndarray, mass: np.ndarray, level: float
          ) -> tuple[np.ndarray, np.ndarray]:
    """Fractions of the outermost cells to drop so that the run holds exactly ``level`` (half per side)."""
    r = np.arange(len(lo))
    excess = np.clip(mass - level, 0.0, None)
    pl, ph = cell[r, lo], cell[r, hi]
    with np.errstate(all="ignore"):
        frac_l = np.where(pl > 0, np.minimum(excess / 2 / pl, 1.0), 0.0)
        frac_h = np.where(ph > 0, np.minimum(excess / 2 / ph, 1.0), 0.0)
    return frac_l, frac_h


def _coarse_interval(pz: np.ndarray, imode: np.ndarray, z: np.ndarray, zc: np.ndarray, dz: float,
                     level: float) -> tuple[np.ndarray, np.ndarray]:
    """Interval on the bins themselves (density uniform within a bin): the fallback for broad PDFs."""
    n = len(pz)
    r = np.arange(n)
    lo, hi, mass, _ = _greedy_interval(pz, imode, level)
    frac_l, frac_h = _trim(pz, lo, hi, mass, level)
    # the mode bin is only trimmed when it holds the level alone: then the interval is the fraction
    # level / p_mode of the bin, centred on the refined mode, inside the bin
    frac_l = np.where(lo == imode, 0.0, frac_l)
    frac_h = np.where(hi == imode, 0.0, frac_h)
    lo_edge = zc[lo] - 0.5 * dz + frac_l * dz
    hi_edge = zc[hi] + 0.5 * dz - frac_h * dz
    single = lo == hi
    pl = pz[r, lo]
    with np.errstate(all="ignore"):
        w = np.where(pl > 0, np.minimum(level / pl, 1.0), 1.0) * dz
    b_lo, b_hi = zc[imode] - 0.5 * dz, zc[imode] + 0.5 * dz
    s_lo = np.clip(z - 0.5 * w, b_lo, b_hi - w)
    return np.where(single, s_lo, lo_edge), np.where(single, s_lo + w, hi_edge)


HPD_WINDOW = 16  # bins each side of the mode resolved below the bin width
HPD_SUBCELLS = 8  # sub-cells per bin


def hpd_interval(pz: np.ndarray, imode: np.ndarray, z: np.ndarray, zc: np.ndarray, dz: float,
                 level: float) -> tuple[np.ndarray, np.ndarray]:
    """Narrowest contiguous interval around the mode holding ``level`` of the mass; always contains ``z``.

    The density is resolved below the bin width: within ±``HPD_WINDOW`` bins of the mode each bin is split into
    ``HPD_SUBCELLS`` cells whose density varies linearly between bin centres (each bin keeps its own mass), and
    the interval grows greedily from the cell holding ``z`` (the last cells taken fractionally). A PDF peaked in
    one or two bins thus gets a 68% interval narrower than a bin pair, which a bin-resolution interval cannot
    give (it over-covered: 0.79 instead of 0.68 on the held-out survey). Rows whose window holds less than
    ``level`` use the interval on the bins themselves.

    Parameters
    ----------
    pz : (n, Z) float64, rows summing to 1.
    imode : (n,) int, mode bin; z : (n,) refined mode; zc : (Z,) bin centres; dz : bin width.
    level : enclosed probability, e.g. 0.68.

    Returns
    -------
    lo, hi : (n,) float64 interval edges (redshift).
    """
    n, Z = pz.shape
    r = np.arange(n)
    W, K = HPD_WINDOW, HPD_SUBCELLS
    idx = imode[:, None] + np.arange(-W, W + 1)[None, :]
    valid = (idx >= 0) & (idx < Z)
    pw = np.where(valid, pz[r[:, None], np.clip(idx, 0, Z - 1)], 0.0)  # (n, 2W+1) bin masses
    left = np.pad(pw, ((0, 0), (1, 0)))[:, :-1]
    right = np.pad(pw, ((0, 0), (0, 1)))[:, 1:]
    f = ((np.arange(K) + 0.5) / K - 0.5)[None, None, :]  # sub-cell centre offsets, in bins
    dens = np.where(f < 0, pw[:, :, None] * (1 + f) - left[:, :, None] * f,
                    pw[:, :, None] * (1 - f) + right[:, :, None] * f)
    tot = dens.sum(axis=2, keepdims=True)
    with np.errstate(all="ignore"):
        cell = np.where(tot > 0, dens / tot, 1.0 / K) * pw[:, :, None]
    cell = cell.reshape(n, -1)
    width = dz / K
    edge0 = zc[imode] - (W + 0.5) * dz  # left edge of the window
    start = np.clip(np.floor((z - edge0) / width).astype(np.int64), 0, cell.shape[1] - 1)
    lo, hi, mass, reached = _greedy_interval(cell, start, level)
    frac_l, frac_h = _trim(cell, lo, hi, mass, level)
    lo_edge = edge0 + (lo + frac_l) * width
    hi_edge = edge0 + (hi + 1 - frac_h) * width
    if not reached.all():
        c_lo, c_hi = _coarse_interval(pz, imode, z, zc, dz, level)
        lo_edge, hi_edge = np.where(reached, lo_edge, c_lo), np.where(reached, hi_edge, c_hi)
    return np.minimum(lo_edge, z), np.maximum(hi_edge, z)


def count_peaks(pz: np.ndarray, min_mass: float) -> np.ndarray:
    """Significant peaks: local maxima of the 3-bin smoothed PDF holding ≥ ``min_mass`` within ±3 bins."""
    n, Z = pz.shape
    pad = np.pad(pz, ((0, 0), (1, 1)))
    sm = (pad[:, :-2] + pad[:, 1:-1] + pad[:, 2:]) / 3.0
    left = np.pad(sm, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
    right = np.pad(sm, ((0, 0), (0, 1)), constant_values=-1)[:, 1:]
    is_max = (sm > left) & (sm >= right)
    c = np.cumsum(np.pad(pz, ((0, 0), (4, 3))), axis=1)
    win = c[:, 7:] - c[:, :-7]  # mass in [i-3, i+3]
    return (is_max & (win >= min_mass)).sum(axis=1).astype(np.int16)


def z_error(pz: np.ndarray, zc: np.ndarray, dz: float, z: np.ndarray) -> np.ndarray:
    """Root-mean-square deviation of the redshift from ``z`` (the mode), the spread inside each bin included.

    The density is taken uniform within each bin, so bin ``i`` contributes ``p_i ((zc_i - z)^2 + dz^2 / 12)``
    (the variance of a uniform distribution of width ``dz`` is ``dz^2 / 12``; Sheppard's correction, added
    because the bins hold a continuous density):

    ``z_err = sqrt( sum_i p_i (zc_i - z)^2 + dz^2 / 12 )``.

    A PDF held in one bin thus gives ``dz / sqrt(12)``, not 0. Measured about the mode, ``z_err**2`` is the
    variance about the mean plus ``(z_mean - z)^2``: a skewed or multi-peaked PDF gets a larger error than its
    standard deviation. Redrock's ``ZERR`` is a different quantity: the 1-sigma width of the parabola fitted to
    chi2(z) at the best minimum (local curvature only, blind to other minima); for a single narrow Gaussian
    peak both agree. For the width of the main peak alone use ``(z_hi68 - z_lo68) / 2``.

    Parameters
    ----------
    pz : (n, Z) float64 PDFs, rows summing to 1.
    zc : (Z,) bin centres; dz : bin width (uniform grid).
    z : (n,) the refined mode.

    Returns
    -------
    (n,) float64 z_err (redshift units).
    """
    # elementwise products + row sums (not matmul): a row's value must not depend on its block
    d2 = (pz * (zc[None, :] - z[:, None]) ** 2).sum(axis=1)
    return np.sqrt(np.maximum(d2, 0.0) + dz * dz / 12.0)


def pdf_statistics(pz: np.ndarray, zc: np.ndarray, dz: float, thresholds: dict | None = None) -> dict[str, np.ndarray]:
    """All per-object redshift statistics of DESIGN §6/§7 from MC-averaged PDFs.

    Parameters
    ----------
    pz : (n, Z) PDFs, rows summing to 1 (computed in float64).
    zc : (Z,) bin centres; dz : bin width.
    thresholds : overrides of :data:`DEFAULT_THRESHOLDS` (the model's calibrated ones).

    Returns
    -------
    dict of (n,) arrays: ``z`` (refined mode), ``z_mean``, ``z_err`` (:func:`z_error`), the 68%/95% intervals,
    ``pz_peak``, ``pz_conf``, ``pz_entropy`` (nats), ``pz_npeaks``.
    """
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    pz = np.asarray(pz, dtype=np.float64)
    imode, z = refine_mode(pz, zc, dz)
    # elementwise products + row sums, not BLAS matmul: BLAS blocking depends on the number of rows,
    # which would make a row's value depend on its block (determinism rule)
    zmean = (pz * zc[None, :]).sum(axis=1)
    zerr = z_error(pz, zc, dz, z)
    lo68, hi68 = hpd_interval(pz, imode, z, zc, dz, 0.68)
    lo95, hi95 = hpd_interval(pz, imode, z, zc, dz, 0.95)
    lo95, hi95 = np.minimum(lo95, lo68), np.maximum(hi95, hi68)  # nested by construction
    near = np.abs(zc[None, :] - z[:, None]) <= th["conf_window"] + 1e-12
    conf = (pz * near).sum(axis=1)
    with np.errstate(all="ignore"):
        ent = -(np.where(pz > 0, pz * np.log(np.where(pz > 0, pz, 1.0)), 0.0)).sum(axis=1)
    return {
        "z": z, "z_mean": zmean, "z_err": zerr, "z_lo68": lo68, "z_hi68": hi68, "z_lo95": lo95, "z_hi95": hi95,
        "pz_peak": pz[np.arange(len(pz)), imode], "pz_conf": conf, "pz_entropy": ent,
        "pz_npeaks": count_peaks(pz, th["peak_mass"]),
    }


def flag_conditions(stats: dict, *, p_outside, z_mc_std, snr, usable_fraction, bad_input_fraction, nodata, quality,
                    z_range: tuple[float, float], th: dict) -> list[tuple[object, int]]:
    """The screening's rules: one ``(condition, zwarn bit)`` pair per bit, in the order they are set.

    Element-wise comparisons and ``& | ~`` only, so the same rules serve numpy arrays (:func:`set_flags`) and
    torch tensors on a device (:func:`survey_infer.model.torch_screening.set_flags`) and cannot drift apart.

    Parameters
    ----------
    stats : dict of (n,) arrays or tensors
        :func:`pdf_statistics` (or its torch twin) of the objects.
    p_outside, z_mc_std, snr, usable_fraction, bad_input_fraction : (n,) arrays or tensors
        Per-object inputs as in :func:`set_flags`.
    nodata : (n,) bool
        Objects without a usable channel.
    quality : (n,) float
        ``pz_conf * (1 - p_outside)`` clipped to 0-1.
    z_range : (z_min, z_max)
        The redshift grid's range.
    th : dict
        Complete thresholds (:data:`DEFAULT_THRESHOLDS` with the model's overrides).

    Returns
    -------
    list of (condition, int)
        Boolean (n,) condition and the :class:`~survey_infer.flags.ZWarn` bit it sets.
    """
    return [
        (nodata, ZWarn.NODATA),
        (bad_input_fraction > th["bad_input"], ZWarn.POORDATA),
        (usable_fraction < th["little_coverage"], ZWarn.LITTLE_COVERAGE),
        (~nodata & ~(snr >= th["low_snr"]), ZWarn.LOW_SNR),
        (stats["pz_npeaks"] > 1, ZWarn.MULTI_PEAK),
        ((stats["z_hi68"] - stats["z_lo68"]) > th["broad_pdf"], ZWarn.BROAD_PDF),
        (stats["pz_conf"] < th["low_confidence"], ZWarn.LOW_CONFIDENCE),
        (z_mc_std > th["mc_unstable"], ZWarn.MC_UNSTABLE),
        ((stats["z"] < z_range[0] + th["z_edge"]) | (stats["z"] > z_range[1] - th["z_edge"]), ZWarn.Z_FITLIMIT),
        (p_outside > th["p_outside"], ZWarn.OUT_OF_RANGE),
        (quality < th["quality"], ZWarn.SCREENED),
    ]


def set_flags(stats: dict[str, np.ndarray], *, p_outside: np.ndarray, z_mc_std: np.ndarray, snr: np.ndarray,
              usable_fraction: np.ndarray, bad_input_fraction: np.ndarray, n_good: np.ndarray,
              z_range: tuple[float, float], thresholds: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``zwarn`` (int32, bits of :mod:`survey_infer.flags`) and ``quality`` (float32) for every object.

    Parameters
    ----------
    stats : :func:`pdf_statistics` of the objects.
    p_outside, z_mc_std, snr, usable_fraction, bad_input_fraction : (n,) per-object inputs (fractions in 0-1).
    n_good : (n,) number of usable channels; 0 sets NODATA.
    z_range : (z_min, z_max) of the redshift grid (Z_FITLIMIT within ``thresholds["z_edge"]`` of either).
    thresholds : overrides of :data:`DEFAULT_THRESHOLDS` (the model's calibrated ones).

    Returns
    -------
    zwarn : (n,) int32; quality : (n,) float32, ``pz_conf * (1 - p_outside)`` clipped to 0-1, 0 for NODATA.
    """
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    n = len(n_good)
    zw = np.zeros(n, np.int64)

    def setbit(cond, bit):
        nonlocal zw
        zw |= np.where(np.asarray(cond, bool), bit, 0)

    quality = np.clip(stats["pz_conf"] * (1.0 - p_outside), 0.0, 1.0)
    quality = np.where(np.isfinite(quality), quality, 0.0)
    nodata = n_good == 0
    for cond, bit in flag_conditions(stats, p_outside=p_outside, z_mc_std=z_mc_std, snr=snr,
                                     usable_fraction=usable_fraction, bad_input_fraction=bad_input_fraction,
                                     nodata=nodata, quality=quality, z_range=z_range, th=th):
        setbit(cond, bit)
    quality = np.where(nodata, 0.0, quality)
    return zw.astype(np.int32), quality.astype(np.float32)


def calibrate_thresholds(quality: np.ndarray, correct: np.ndarray, target_accuracy: float = 0.99,
                         max_set_aside: float = 0.12) -> dict:
    """Choose the SCREENED threshold on a validation set.

    The smallest quality threshold whose kept set reaches ``target_accuracy``; when that sets aside more than
    ``max_set_aside`` of the objects, the threshold that sets aside exactly ``max_set_aside`` is used instead
    (and the report says the target was not met).

    Parameters
    ----------
    quality : (n,) quality scores (interlopers included: they count as incorrect).
    correct : (n,) bool, |Δz| < 0.01 for galaxies in range, False for interlopers.
    """
    q = np.asarray(quality, np.float64)
    ok = np.asarray(correct, bool)
    order = np.argsort(-q, kind="stable")
    acc_kept = np.cumsum(ok[order]) / np.arange(1, len(q) + 1)
    # keeping the top k: find the largest k with accuracy ≥ target
    good_k = np.flatnonzero(acc_kept >= target_accuracy)
    k_target = int(good_k.max()) + 1 if good_k.size else 0
    k_floor = int(np.ceil((1.0 - max_set_aside) * len(q)))
    met = k_target >= k_floor
    k = k_target if met else k_floor
    k = max(1, min(k, len(q)))
    thr = float(q[order[k - 1]])
    kept = q >= thr
    return {
        "quality": thr,
        "target_accuracy": target_accuracy,
        "target_met": bool(met),
        "val_accuracy_kept": float(ok[kept].mean()) if kept.any() else float("nan"),
        "val_set_aside": float(1.0 - kept.mean()),
        "val_accuracy_all": float(ok.mean()),
    }


__all__ = ["SCREENING_VERSION", "DEFAULT_THRESHOLDS", "pdf_statistics", "set_flags", "calibrate_thresholds", "refine_mode",
           "hpd_interval", "z_error", "count_peaks", "z_reliable"]
