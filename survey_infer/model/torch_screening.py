"""Screening on the worker's device: PDF statistics, HPD intervals and ``zwarn`` flags in torch (float64).

The torch twin of :mod:`survey_infer.screening` (the reference), so a GPU window returns its finished per-object
results in one copy. Every operation is the reference's, in the reference's order:

* sums over the redshift grid use numpy's pairwise summation order (:func:`numpy_order_sum`: blocks of ≤ 128
  values summed with 8 accumulators, larger runs split in two at a multiple of 8 — numpy's ``pairwise_sum``),
  not torch's own reduction order, so a row's sums are the numpy bits on any device and never depend on the
  other rows of the window (the determinism rule);
* running sums (:func:`count_peaks`, the intervals' enclosed mass) are :func:`running_sum`: ``torch.cumsum`` on
  the CPU (sequential: numpy's order), a doubling scan of elementwise additions on a GPU (``torch.cumsum`` of
  floats raises there under deterministic algorithms);
* the greedy interval growth of :func:`survey_infer.screening._greedy_interval` (a loop with one step per
  cell) is computed without a loop (:func:`greedy_interval`): taking the denser of the two neighbouring cells
  at each step is a merge of the cells left and right of the start, ordered by their running minima (see
  there), so its result is found with ``cummin``, ``searchsorted``, a scatter and a running sum.

Agreement with the reference (``tests/test_torch_hotpath.py``): on the CPU every column is bit-identical on
the same PDFs — the elementwise operations and the division are IEEE, the orders above are numpy's, and ``log``
and ``sqrt`` of CPU tensors are numpy's own (torch's CPU float64 ``sqrt`` is not always correctly rounded).
On a GPU ``sqrt`` and division are IEEE round-to-nearest, but ``log`` (refined mode, entropy) has ≤ 1 ulp error
and the running sums add in another order; so ``z``, ``z_err``, the intervals and ``pz_entropy`` may differ from the
host's by a few ulp (≲ 1e-15 in z; 1e-12 relative is the stated tolerance), and a ``zwarn`` bit, a peak count or
an interval's start cell can differ only for an object whose statistic lies within that distance of a
threshold or a sub-cell edge. On one GPU the results are repeatable and independent of the other rows.
"""
from __future__ import annotations

import numpy as np
import torch

from ..flags import ZWarn
from ..screening import DEFAULT_THRESHOLDS, HPD_SUBCELLS, HPD_WINDOW, flag_conditions

__all__ = [
    "count_peaks",
    "finish_rows",
    "greedy_interval",
    "hpd_interval",
    "numpy_order_sum",
    "pdf_statistics",
    "refine_mode",
    "running_sum",
    "scan_sum",
    "set_flags",
    "z_error",
]

_PW_BLOCK = 128  # numpy's PW_BLOCKSIZE


def numpy_order_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last dimension in the order of numpy's pairwise summation (``np.add.reduce`` on a
    contiguous float64 axis): runs of < 8 values left to right, runs of ≤ 128 with 8 interleaved accumulators
    combined as ``((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7))`` then the remainder, longer runs split at
    ``n // 2 - (n // 2) % 8``. Only elementwise additions: the same bits on CPU and GPU, row by row.

    Parameters
    ----------
    x : (..., n) tensor.

    Returns
    -------
    (...) tensor of the same dtype.
    """
    n = x.shape[-1]
    if n < 8:
        res = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
        for i in range(n):
            res = res + x[..., i]
        return res
    if n <= _PW_BLOCK:
        m = n - n % 8
        r = x[..., 0:8]
        for i in range(8, m, 8):
            r = r + x[..., i:i + 8]
        res = ((r[..., 0] + r[..., 1]) + (r[..., 2] + r[..., 3])) + ((r[..., 4] + r[..., 5]) + (r[..., 6] + r[..., 7]))
        for i in range(m, n):
            res = res + x[..., i]
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return numpy_order_sum(x[..., :n2]) + numpy_order_sum(x[..., n2:])


def _log(x: torch.Tensor) -> torch.Tensor:
    """Natural log; on the CPU numpy's (torch's CPU kernel may round differently in the last bit)."""
    return torch.from_numpy(np.log(x.numpy())) if x.device.type == "cpu" else torch.log(x)


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    """Square root, correctly rounded: numpy's on the CPU (torch's CPU float64 kernel is not always correctly
    rounded: 16 of 2,000 values differed in the last bit here), CUDA's ``sqrt`` (IEEE round-to-nearest) on a GPU."""
    return torch.from_numpy(np.sqrt(x.numpy())) if x.device.type == "cpu" else torch.sqrt(x)


def scan_sum(x: torch.Tensor) -> torch.Tensor:
    """Inclusive running sum along dim 1 by doubling steps (Hillis & Steele 1986): ``⌈log2 m⌉`` elementwise
    additions, the same order for every row on any device (deterministic, independent of the other rows).

    Parameters
    ----------
    x : (n, m) tensor.

    Returns
    -------
    (n, m) tensor; the cumulative sum up to rounding (a tree of additions per element).
    """
    s = 1
    while s < x.shape[1]:
        x = torch.cat([x[:, :s], x[:, s:] + x[:, :-s]], dim=1)
        s *= 2
    return x


def running_sum(x: torch.Tensor) -> torch.Tensor:
    """Inclusive running sum along dim 1: ``torch.cumsum`` on the CPU (sequential: numpy's ``cumsum`` bits), the
    doubling scan :func:`scan_sum` elsewhere — ``torch.cumsum`` of floats on CUDA has no deterministic
    implementation and raises under ``torch.use_deterministic_algorithms(True)``, which GPU workers set
    (:func:`survey_infer.model.device.configure_numerics`).

    Parameters
    ----------
    x : (n, m) tensor.

    Returns
    -------
    (n, m) tensor.
    """
    return torch.cumsum(x, dim=1) if x.device.type == "cpu" else scan_sum(x)


def _rows(t: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """``t[r, i[r]]`` for every row r."""
    return t.gather(1, i[:, None])[:, 0]


def refine_mode(pz: torch.Tensor, zc: torch.Tensor, dz: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mode bin and the mode refined by a parabola through log p (:func:`survey_infer.screening.refine_mode`).

    Parameters
    ----------
    pz : (n, Z) float64; zc : (Z,) float64 bin centres; dz : bin width.

    Returns
    -------
    imode : (n,) int64; z : (n,) float64.
    """
    Z = pz.shape[1]
    i = torch.argmax(pz, dim=1)
    im, ip = torch.clamp(i - 1, 0, Z - 1), torch.clamp(i + 1, 0, Z - 1)
    a, b, c = (_log(torch.clamp(_rows(pz, j), min=1e-300)) for j in (im, i, ip))
    den = a - 2 * b + c
    ok = (den < 0) & (i > 0) & (i < Z - 1)
    delta = torch.where(ok, 0.5 * (a - c) / den, torch.zeros_like(den))
    delta = torch.clamp(torch.nan_to_num(delta), -0.5, 0.5)
    return i, zc[i] + delta * dz


def greedy_interval(cell: torch.Tensor, start: torch.Tensor, level: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The contiguous run of cells grown from ``start``, one cell per step towards the denser neighbour (ties:
    left), until it holds ``level`` — :func:`survey_infer.screening._greedy_interval` without its loop.

    Why a merge: write ``L_1, L_2, ...`` for the cells left of the start (nearest first) and ``R_1, ...`` for
    those right of it. Cut each side into segments that begin at a running minimum (``L_k ≤ min(L_<k)``); the
    cells after a segment's first one are larger than it. When the greedy step takes a segment's first cell
    (it was ≥ the other side's head), the rest of the segment is larger still, so the whole segment is taken
    before the other side is looked at again: the greedy order is the merge of the two sides' segments by
    their first values, i.e. the stable merge of the cells by their running minima (``cummin``) in decreasing
    order, ties to the left. Each cell's place in the merge is its index on its side plus the number of cells
    on the other side merged before it (``searchsorted`` on the other side's running minima); the enclosed mass
    after ``t`` steps is the running sum (:func:`running_sum`) of the merged cells, on the CPU the same
    additions as the loop's.

    Parameters
    ----------
    cell : (n, M) float64, non-negative (finite) cell masses; start : (n,) int64 start cell; level : float.

    Returns
    -------
    lo, hi : (n,) int64 first and last cell; mass : (n,) float64 held; reached : (n,) bool ``mass >= level``.
    """
    n, M = cell.shape
    dev = cell.device
    start = start.to(torch.int64)
    c0 = _rows(cell, start)
    L = M - 1
    if L == 0 or n == 0:
        return start.clone(), start.clone(), c0, c0 >= level
    k = torch.arange(L, device=dev)
    li = start[:, None] - 1 - k[None, :]
    ri = start[:, None] + 1 + k[None, :]
    neg1 = torch.tensor(-1.0, dtype=cell.dtype, device=dev)
    lval = torch.where(li >= 0, cell.gather(1, li.clamp(0, M - 1)), neg1)  # -1: past the edge (as the loop)
    rval = torch.where(ri < M, cell.gather(1, ri.clamp(0, M - 1)), neg1)
    lkey = torch.cummin(lval, dim=1).values
    rkey = torch.cummin(rval, dim=1).values
    nl, nr = (-lkey).contiguous(), (-rkey).contiguous()  # ascending
    pos_l = k[None, :] + torch.searchsorted(nr, nl, right=False)  # right cells with a larger key go first
    pos_r = k[None, :] + torch.searchsorted(nl, nr, right=True)  # left cells with a larger or equal key go first
    merged = torch.zeros((n, 2 * L), dtype=cell.dtype, device=dev)
    merged.scatter_(1, pos_l, lval)
    merged.scatter_(1, pos_r, rval)
    # the first L merged cells are the real ones (sentinels sort last); running mass after t = 0..L steps
    mass_t = running_sum(torch.cat([c0[:, None], merged[:, :L]], dim=1))
    ge = mass_t >= level
    t = torch.where(ge.any(dim=1), torch.argmax(ge.to(torch.uint8), dim=1), torch.full_like(start, L))
    mass = _rows(mass_t, t)
    n_left = (pos_l < t[:, None]).sum(dim=1)
    return start - n_left, start + (t - n_left), mass, mass >= level


def _trim(cell: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, mass: torch.Tensor, level: float
          ) -> tuple[torch.Tensor, torch.Tensor]:
    excess = torch.clamp(mass - level, min=0.0)
    pl, ph = _rows(cell, lo), _rows(cell, hi)
    one, zero = torch.ones_like(excess), torch.zeros_like(excess)
    frac_l = torch.where(pl > 0, torch.minimum(excess / 2 / pl, one), zero)
    frac_h = torch.where(ph > 0, torch.minimum(excess / 2 / ph, one), zero)
    return frac_l, frac_h


def _coarse_interval(pz, imode, z, zc, dz, level):
    lo, hi, mass, _ = greedy_interval(pz, imode, level)
    frac_l, frac_h = _trim(pz, lo, hi, mass, level)
    zero = torch.zeros_like(frac_l)
    frac_l = torch.where(lo == imode, zero, frac_l)
    frac_h = torch.where(hi == imode, zero, frac_h)
    lo_edge = zc[lo] - 0.5 * dz + frac_l * dz
    hi_edge = zc[hi] + 0.5 * dz - frac_h * dz
    single = lo == hi
    pl = _rows(pz, lo)
    w = torch.where(pl > 0, torch.minimum(level / pl, torch.ones_like(pl)), torch.ones_like(pl)) * dz
    b_lo, b_hi = zc[imode] - 0.5 * dz, zc[imode] + 0.5 * dz
    s_lo = torch.minimum(torch.maximum(z - 0.5 * w, b_lo), b_hi - w)  # np.clip
    return torch.where(single, s_lo, lo_edge), torch.where(single, s_lo + w, hi_edge)


def hpd_interval(pz: torch.Tensor, imode: torch.Tensor, z: torch.Tensor, zc: torch.Tensor, dz: float,
                 level: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Narrowest contiguous interval around the mode holding ``level`` (:func:`survey_infer.screening.hpd_interval`:
    density resolved to ``HPD_SUBCELLS`` cells per bin within ``HPD_WINDOW`` bins of the mode, bins otherwise).

    Parameters
    ----------
    pz : (n, Z) float64, rows summing to 1; imode : (n,) int64; z : (n,) refined mode; zc : (Z,) float64;
    dz : bin width; level : enclosed probability.

    Returns
    -------
    lo, hi : (n,) float64 interval edges (redshift).
    """
    n, Z = pz.shape
    dev = pz.device
    W, K = HPD_WINDOW, HPD_SUBCELLS
    idx = imode[:, None] + torch.arange(-W, W + 1, device=dev)[None, :]
    valid = (idx >= 0) & (idx < Z)
    pw = torch.where(valid, pz.gather(1, idx.clamp(0, Z - 1)), torch.zeros((), dtype=pz.dtype, device=dev))
    left = torch.nn.functional.pad(pw, (1, 0))[:, :-1]
    right = torch.nn.functional.pad(pw, (0, 1))[:, 1:]
    f = ((torch.arange(K, device=dev, dtype=pz.dtype) + 0.5) / K - 0.5)[None, None, :]
    dens = torch.where(f < 0, pw[:, :, None] * (1 + f) - left[:, :, None] * f,
                       pw[:, :, None] * (1 - f) + right[:, :, None] * f)
    tot = numpy_order_sum(dens)[:, :, None]
    cell = torch.where(tot > 0, dens / tot, torch.full_like(dens, 1.0 / K)) * pw[:, :, None]
    cell = cell.reshape(n, -1)
    width = dz / K
    edge0 = zc[imode] - (W + 0.5) * dz
    start = torch.clamp(torch.floor((z - edge0) / width).to(torch.int64), 0, cell.shape[1] - 1)
    lo, hi, mass, reached = greedy_interval(cell, start, level)
    frac_l, frac_h = _trim(cell, lo, hi, mass, level)
    lo_edge = edge0 + (lo + frac_l) * width
    hi_edge = edge0 + (hi + 1 - frac_h) * width
    if not bool(reached.all()):  # one host sync; the bin-resolution fallback on those rows only
        bad = torch.nonzero(~reached)[:, 0]
        c_lo, c_hi = _coarse_interval(pz[bad], imode[bad], z[bad], zc, dz, level)
        lo_edge, hi_edge = lo_edge.index_copy(0, bad, c_lo), hi_edge.index_copy(0, bad, c_hi)
    return torch.minimum(lo_edge, z), torch.maximum(hi_edge, z)


def count_peaks(pz: torch.Tensor, min_mass: float) -> torch.Tensor:
    """Significant peaks (:func:`survey_infer.screening.count_peaks`); (n,) int16."""
    F = torch.nn.functional
    pad = F.pad(pz, (1, 1))
    sm = (pad[:, :-2] + pad[:, 1:-1] + pad[:, 2:]) / 3.0
    left = F.pad(sm, (1, 0), value=-1.0)[:, :-1]
    right = F.pad(sm, (0, 1), value=-1.0)[:, 1:]
    is_max = (sm > left) & (sm >= right)
    c = running_sum(F.pad(pz, (4, 3)))
    win = c[:, 7:] - c[:, :-7]
    return (is_max & (win >= min_mass)).sum(dim=1).to(torch.int16)


def z_error(pz: torch.Tensor, zc: torch.Tensor, dz: float, z: torch.Tensor) -> torch.Tensor:
    """RMS deviation from the mode with the within-bin spread (:func:`survey_infer.screening.z_error`)."""
    d2 = numpy_order_sum(pz * (zc[None, :] - z[:, None]) ** 2)
    return _sqrt(torch.clamp(d2, min=0.0) + dz * dz / 12.0)


def pdf_statistics(pz: torch.Tensor, zc: torch.Tensor, dz: float, thresholds: dict | None = None
                   ) -> dict[str, torch.Tensor]:
    """:func:`survey_infer.screening.pdf_statistics` on ``pz``'s device.

    Parameters
    ----------
    pz : (n, Z) float64 tensor, rows summing to 1 (finite); zc : (Z,) bin centres (any float dtype: used as
    float64); dz : bin width; thresholds : overrides of :data:`survey_infer.screening.DEFAULT_THRESHOLDS`.

    Returns
    -------
    dict of (n,) tensors in the reference's order: ``z``, ``z_mean``, ``z_err``, ``z_lo68``, ``z_hi68``,
    ``z_lo95``, ``z_hi95``, ``pz_peak``, ``pz_conf``, ``pz_entropy`` (float64), ``pz_npeaks`` (int16).
    """
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    pz = pz.to(torch.float64)
    zc = zc.to(device=pz.device, dtype=torch.float64)
    imode, z = refine_mode(pz, zc, dz)
    zmean = numpy_order_sum(pz * zc[None, :])
    zerr = z_error(pz, zc, dz, z)
    lo68, hi68 = hpd_interval(pz, imode, z, zc, dz, 0.68)
    lo95, hi95 = hpd_interval(pz, imode, z, zc, dz, 0.95)
    lo95, hi95 = torch.minimum(lo95, lo68), torch.maximum(hi95, hi68)
    near = (zc[None, :] - z[:, None]).abs() <= th["conf_window"] + 1e-12
    conf = numpy_order_sum(pz * near)
    pos = pz > 0
    ent = -numpy_order_sum(torch.where(pos, pz * _log(torch.where(pos, pz, torch.ones_like(pz))),
                                       torch.zeros_like(pz)))
    return {"z": z, "z_mean": zmean, "z_err": zerr, "z_lo68": lo68, "z_hi68": hi68, "z_lo95": lo95,
            "z_hi95": hi95, "pz_peak": _rows(pz, imode), "pz_conf": conf, "pz_entropy": ent,
            "pz_npeaks": count_peaks(pz, th["peak_mass"])}


def set_flags(stats: dict[str, torch.Tensor], *, p_outside: torch.Tensor, z_mc_std: torch.Tensor,
              snr: torch.Tensor, usable_fraction: torch.Tensor, bad_input_fraction: torch.Tensor,
              n_good: torch.Tensor, z_range: tuple[float, float], thresholds: dict | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`survey_infer.screening.set_flags` on the device: ``zwarn`` (n,) int32 and ``quality`` (n,) float32.

    Inputs as the reference's, as tensors on one device (``snr`` and ``usable_fraction`` float32,
    ``bad_input_fraction``, ``p_outside``, ``z_mc_std`` float64: comparisons with the thresholds then happen in
    the same precision as numpy's, a Python float being a weak scalar in both).
    """
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    zw = torch.zeros(n_good.shape, dtype=torch.int64, device=n_good.device)

    def bit(cond: torch.Tensor, b: int) -> None:
        nonlocal zw
        zw = zw | torch.where(cond, int(b), 0)

    quality = torch.clamp(stats["pz_conf"] * (1.0 - p_outside), 0.0, 1.0)
    quality = torch.where(torch.isfinite(quality), quality, torch.zeros_like(quality))
    nodata = n_good == 0
    for cond, b in flag_conditions(stats, p_outside=p_outside, z_mc_std=z_mc_std, snr=snr,
                                   usable_fraction=usable_fraction, bad_input_fraction=bad_input_fraction,
                                   nodata=nodata, quality=quality, z_range=z_range, th=th):
        bit(cond, b)
    quality = torch.where(nodata, torch.zeros_like(quality), quality)
    return zw.to(torch.int32), quality.to(torch.float32)


def finish_rows(pz: torch.Tensor, net: dict[str, torch.Tensor], snr: torch.Tensor, masked_fraction: torch.Tensor,
                n_good: torch.Tensor, bad_input_fraction: torch.Tensor, zc: torch.Tensor, dz: float,
                z_range: tuple[float, float], thresholds: dict | None = None, keep_pz: bool = True
                ) -> dict[str, torch.Tensor]:
    """A window's catalog columns on the device, as :func:`survey_infer.model.inference.infer_block` makes them
    (statistics, flags, NODATA rows: NaN floats, ``zwarn`` NODATA | bad-input bits | LITTLE_COVERAGE, quality
    0, no peaks, NaN PDF).

    Parameters
    ----------
    pz : (n, Z) float64 MC-averaged PDFs; net : the network's (n,) float64 outputs (``p_outside``,
    ``z_mc_std``, ``logmstar``... — :data:`survey_infer.model.hotpath.STAT_KEYS`); snr, masked_fraction : (n,)
    float32; n_good : (n,) int64; bad_input_fraction : (n,) float64; zc, dz, z_range : the redshift grid;
    thresholds : the model's calibrated ones; keep_pz : add ``pz`` (n, Z) float32.

    Returns
    -------
    dict of tensors keyed and typed as ``infer_block``'s block columns (``z_reliable`` excepted).
    """
    nodata = n_good == 0
    pz = torch.where(nodata[:, None], torch.full_like(pz, 1.0 / pz.shape[1]), pz)
    stats = pdf_statistics(pz, zc, dz, thresholds)
    zwarn, quality = set_flags(stats, p_outside=net["p_outside"], z_mc_std=net["z_mc_std"], snr=snr,
                               usable_fraction=1.0 - masked_fraction, bad_input_fraction=bad_input_fraction,
                               n_good=n_good, z_range=z_range, thresholds=thresholds)
    block = {**stats, **net, "snr": snr, "masked_fraction": masked_fraction, "zwarn": zwarn, "quality": quality}
    for k, v in block.items():
        if v.is_floating_point():
            block[k] = torch.where(nodata, torch.full_like(v, float("nan")), v)
    bad = int(ZWarn.BAD_INPUT)
    block["zwarn"] = torch.where(nodata, int(ZWarn.NODATA) | (zwarn & bad) | int(ZWarn.LITTLE_COVERAGE),
                                 zwarn).to(torch.int32)
    block["quality"] = torch.where(nodata, torch.zeros_like(quality), quality).to(torch.float32)
    block["pz_npeaks"] = torch.where(nodata, torch.zeros_like(block["pz_npeaks"]), block["pz_npeaks"])
    if keep_pz:
        block["pz"] = torch.where(nodata[:, None], torch.full_like(pz, float("nan")), pz).to(torch.float32)
    return block
