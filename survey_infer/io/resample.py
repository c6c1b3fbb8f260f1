"""Flux-conserving resampling onto an instrument grid, and air-to-vacuum wavelength conversion.

Resampling
----------
Each output channel ``j`` with edges ``[t_j, t_{j+1}]`` receives the mean flux density of the *good* source pixels
that overlap it, weighted by the overlap length ``a_ij`` (Angstrom):

    f_j = sum_i a_ij f_i / sum_i a_ij,        var_j = sum_i a_ij^2 sigma_i^2 / (sum_i a_ij)^2,

the exact propagation of independent pixel errors through that linear combination (``ivar_j = 1 / var_j``).
When the good source pixels cover a channel completely the integral of f_lambda over any range of whole output
channels equals the source integral over the same range: the resampling conserves flux. The overlaps are found
for all pixel pairs at once from the sorted union of both edge sets (one ``searchsorted``), stored as a sparse
matrix, and applied to whole batches of spectra with sparse matrix products.

Rules:

* a source pixel is *good* when its flux and ivar are finite, ivar > 0 and its mask (if any) is 0; other pixels
  contribute nothing (they are "excluded", not interpolated over);
* a channel keeps data (ivar > 0) only if good source pixels cover at least ``min_coverage`` of its width
  (default 0.5); otherwise ivar = 0. Channels outside the source's wavelength footprint, or in gaps between
  source arms, therefore get ivar = 0;
* the returned ``mask`` is 1 for channels that lie inside the source footprint but were rejected for lack of good
  pixels (masked or invalid source data), 0 elsewhere. Channels outside the footprint have ivar = 0 and mask = 0,
  so "no data" and "bad data" stay distinguishable;
* several source arms are resampled separately and combined per channel by inverse-variance weighting
  (overlapping arms, e.g. DESI B/R/Z, are averaged where both have data);
* a source arm whose pixel centres equal an instrument arm's to 1% of a pixel (moons1d outputs on the MOONS LR
  grid) is copied without resampling, so its values are reproduced exactly.

Limitation (standard for any resampler): when the output channels are much narrower than the source pixels
(e.g. a JWST prism spectrum on the MOONS grid), neighbouring channels copy the same source pixel; each channel's
ivar is right on its own but their errors are fully correlated, which per-channel ivar cannot express.

Air to vacuum
-------------
:func:`air_to_vacuum` inverts the vacuum-to-air relation of Morton (2000, ApJS 130, 403, eq. 8), itself the Ciddor
(1996, Applied Optics 35, 1566) refractive index of standard air (15 degC, 101 325 Pa, 450 ppm CO2). This is the
relation used by the IAU/VALD convention and offered by ``specutils.utils.wcs_utils.air_to_vac(method=
"Morton2000", scheme="iteration")``; the inversion here is iterated to machine precision. Following the IAU
convention, wavelengths below 2000 Angstrom are taken to be vacuum already and are returned unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from ..instrument import Instrument

__all__ = [
    "air_to_vacuum",
    "vacuum_to_air",
    "instrument_edges",
    "overlap_matrix",
    "resample_flux",
    "resample_arms",
    "resample_spectrum",
    "DEFAULT_MIN_COVERAGE",
]

DEFAULT_MIN_COVERAGE = 0.5
_AIR_VAC_MIN_WAVE = 2000.0  # Angstrom; below this wavelengths are vacuum by convention


def _morton_n(wave_vac_aa: np.ndarray) -> np.ndarray:
    """Refractive index of standard air at vacuum wavelength (Angstrom), Morton (2000) eq. 8."""
    s2 = (1e4 / wave_vac_aa) ** 2  # (1/micron)^2
    return 1.0 + 8.34254e-5 + 2.406147e-2 / (130.0 - s2) + 1.5998e-4 / (38.9 - s2)


def vacuum_to_air(wave) -> np.ndarray:
    """Vacuum to air wavelength (Angstrom in, Angstrom out), Morton (2000) eq. 8; < 2000 A unchanged."""
    w = np.asarray(wave, dtype=np.float64)
    out = w.copy()
    m = w >= _AIR_VAC_MIN_WAVE
    out[m] = w[m] / _morton_n(w[m])
    return out


def air_to_vacuum(wave, *, tol: float = 1e-13, maxiter: int = 30) -> np.ndarray:
    """Air to vacuum wavelength (Angstrom in, Angstrom out).

    Solves ``lambda_air = lambda_vac / n(lambda_vac)`` for ``lambda_vac`` with the Morton (2000) / Ciddor (1996)
    index of standard air (see module docstring), by fixed-point iteration to relative precision ``tol``.
    Near 7500 Angstrom the shift is about +2.07 Angstrom (e.g. H-alpha 6562.80 air -> 6564.61 vacuum).
    Wavelengths below 2000 Angstrom are returned unchanged (IAU convention).

    Parameters
    ----------
    wave : array_like
        Air wavelengths, Angstrom.

    Returns
    -------
    ndarray of float64
        Vacuum wavelengths, Angstrom.
    """
    w = np.asarray(wave, dtype=np.float64)
    out = w.copy()
    m = w >= _AIR_VAC_MIN_WAVE
    air = w[m]
    vac = air * _morton_n(air)
    for _ in range(maxiter):
        new = air * _morton_n(vac)
        done = np.all(np.abs(new - vac) <= tol * np.abs(vac))
        vac = new
        if done:
            break
    out[m] = vac
    return out


def instrument_edges(instrument: Instrument) -> list[np.ndarray]:
    """Channel edges (vacuum Angstrom) of each arm of ``instrument``; arm ``k`` has ``npix + 1`` edges."""
    return [a.wave_min - 0.5 * a.dwave + a.dwave * np.arange(a.npix + 1, dtype=np.float64) for a in instrument.arms]


def overlap_matrix(src_edges: np.ndarray, dst_edges: np.ndarray) -> sp.csr_matrix:
    """Sparse matrix ``A`` (n_dst x n_src) of overlap lengths between source and destination pixels.

    Both edge arrays must be strictly increasing. ``A[j, i]`` is the length (Angstrom) of the intersection of
    destination pixel ``j`` with source pixel ``i``. Built without loops from the sorted union of both edge sets:
    every interval between consecutive union edges lies in exactly one source and one destination pixel.
    """
    se = np.asarray(src_edges, dtype=np.float64)
    de = np.asarray(dst_edges, dtype=np.float64)
    n_src, n_dst = se.size - 1, de.size - 1
    lo, hi = max(se[0], de[0]), min(se[-1], de[-1])
    if hi <= lo:
        return sp.csr_matrix((n_dst, n_src))
    u = np.union1d(se[(se >= lo) & (se <= hi)], de[(de >= lo) & (de <= hi)])
    u = np.union1d(u, [lo, hi])
    length = np.diff(u)
    mid = 0.5 * (u[1:] + u[:-1])
    i = np.searchsorted(se, mid, side="right") - 1
    j = np.searchsorted(de, mid, side="right") - 1
    ok = (length > 0) & (i >= 0) & (i < n_src) & (j >= 0) & (j < n_dst)
    return sp.csr_matrix((length[ok], (j[ok], i[ok])), shape=(n_dst, n_src))


def _as2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x[None, :] if x.ndim == 1 else x


def resample_flux(
    src_edges: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    dst_edges: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    matrix: sp.csr_matrix | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample one or a batch of spectra sharing a source grid onto ``dst_edges``, conserving flux.

    Parameters
    ----------
    src_edges : ndarray, shape (n + 1,)
        Source pixel edges, Angstrom, increasing.
    flux, ivar : ndarray, shape (n,) or (k, n)
        Flux density (any f_lambda unit) and its inverse variance.
    dst_edges : ndarray, shape (m + 1,)
        Destination channel edges, Angstrom, increasing.
    mask : ndarray, optional
        Non-zero = bad source pixel (excluded).
    min_coverage : float
        Fraction of a channel's width that good source pixels must cover for it to keep data.
    matrix : sparse matrix, optional
        Precomputed :func:`overlap_matrix` (src_edges, dst_edges).

    Returns
    -------
    flux, ivar : ndarray, shape (m,) or (k, m), float64
        Resampled flux density and inverse variance (0 where no data).
    bad : ndarray of bool, same shape
        True where a channel lies inside the source footprint but was rejected for lack of good pixels.
    """
    one = np.asarray(flux).ndim == 1
    f = _as2d(np.asarray(flux, dtype=np.float64))
    iv = _as2d(np.asarray(ivar, dtype=np.float64))
    good = np.isfinite(f) & np.isfinite(iv) & (iv > 0)
    if mask is not None:
        good &= _as2d(np.asarray(mask)) == 0
    A = matrix if matrix is not None else overlap_matrix(src_edges, dst_edges)
    A2 = A.multiply(A).tocsr()
    g = good.astype(np.float64)
    fg = np.where(good, f, 0.0)
    var = np.zeros_like(iv)
    np.divide(1.0, iv, out=var, where=good)
    cov = (A @ g.T).T                       # (k, m) good coverage, Angstrom
    num = (A @ fg.T).T
    vnum = (A2 @ var.T).T
    width = np.diff(np.asarray(dst_edges, dtype=np.float64))
    footprint = np.asarray(A.sum(axis=1)).ravel()  # source footprint in each channel, Angstrom
    keep = cov >= min_coverage * width[None, :] * (1 - 1e-9)
    out_f = np.zeros_like(cov)
    out_iv = np.zeros_like(cov)
    np.divide(num, cov, out=out_f, where=keep)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(keep, vnum / np.where(keep, cov, 1.0) ** 2, np.inf)
    ok = keep & (v > 0) & np.isfinite(v)
    out_iv[ok] = 1.0 / v[ok]
    out_f[~ok] = 0.0
    inside = footprint >= min_coverage * width * (1 - 1e-9)
    bad = inside[None, :] & ~ok
    if one:
        return out_f[0], out_iv[0], bad[0]
    return out_f, out_iv, bad


def _same_grid(wave: np.ndarray, arm_wave: np.ndarray, dwave: float) -> bool:
    return wave.shape == arm_wave.shape and bool(np.max(np.abs(wave - arm_wave)) <= 0.01 * dwave)


def resample_arms(
    arms: Sequence,
    instrument: Instrument,
    *,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample a (multi-arm) spectrum onto ``instrument``'s full grid and merge the arms.

    Parameters
    ----------
    arms : sequence of :class:`~survey_infer.io.readers.base.SpectrumArm`
        Source arms (vacuum Angstrom, flux in the store unit).
    instrument : Instrument
        Destination grid (its arms' channels, concatenated).

    Returns
    -------
    flux : ndarray float32, shape (W,)
    ivar : ndarray float32, shape (W,)
    mask : ndarray uint8, shape (W,)
        1 (:data:`~survey_infer.io.survey_store.MASK_BAD_SOURCE`) where a channel inside the source footprint was
        rejected for bad/masked source pixels and no other arm supplied data there, plus 2
        (:data:`~survey_infer.io.survey_store.MASK_INVALID_INPUT`) when invalid values (non-finite flux, NaN/inf or
        negative ivar) overlap such a channel; 0 elsewhere.
    """
    from .survey_store import MASK_BAD_SOURCE, MASK_INVALID_INPUT

    W = instrument.n_wave
    wsum = np.zeros(W)
    fsum = np.zeros(W)
    badany = np.zeros(W, dtype=bool)
    invany = np.zeros(W, dtype=bool)
    dst_edges = instrument_edges(instrument)
    slices = instrument.arm_slices()
    for arm in arms:
        src_wave = arm.wave
        src_lo, src_hi = arm.pixel_edges()[[0, -1]]
        with np.errstate(invalid="ignore"):
            invalid = ~np.isfinite(arm.flux) | ~np.isfinite(arm.ivar) | (arm.ivar < 0)
        for k, iarm in enumerate(instrument.arms):
            sl = slices[k]
            de = dst_edges[k]
            if src_hi <= de[0] or src_lo >= de[-1]:
                continue
            if _same_grid(src_wave, iarm.wave, iarm.dwave):
                good = arm.good
                f = np.where(good, arm.flux, 0.0)
                iv = np.where(good, arm.ivar, 0.0)
                bad = ~good
                inv = invalid
            else:
                A = overlap_matrix(arm.pixel_edges(), de)
                f, iv, bad = resample_flux(arm.pixel_edges(), arm.flux, arm.ivar, de, arm.mask,
                                           min_coverage=min_coverage, matrix=A)
                inv = (A @ invalid.astype(np.float64)) > 0 if invalid.any() else np.zeros(len(de) - 1, bool)
            invany[sl] |= bad & inv
            fsum[sl] += f * iv
            wsum[sl] += iv
            badany[sl] |= bad
    flux = np.zeros(W)
    np.divide(fsum, wsum, out=flux, where=wsum > 0)
    rejected = badany & (wsum <= 0)
    mask = np.where(rejected, MASK_BAD_SOURCE, 0).astype(np.uint8)
    mask[rejected & invany] |= MASK_INVALID_INPUT
    return flux.astype(np.float32), wsum.astype(np.float32), mask


def resample_spectrum(spectrum, instrument: Instrument, *, min_coverage: float = DEFAULT_MIN_COVERAGE):
    """:func:`resample_arms` applied to a :class:`~survey_infer.io.readers.base.Spectrum`."""
    return resample_arms(spectrum.arms, instrument, min_coverage=min_coverage)
