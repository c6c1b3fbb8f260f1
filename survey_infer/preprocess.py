"""Preprocessing shared by training and inference (after M-TOPnet): one implementation, pure numpy.

From flux, inverse variance and masks it makes, per object,

* the usable-pixel mask: ``ivar > 0``, reduction mask clear, not a sky-line channel;
* a continuum estimate: per arm, blocks of ``BLOCK`` channels, an ivar-weighted mean with emission/absorption
  outliers clipped (two passes), linearly interpolated between block centres;
* a scale ``norm`` (flux units): the median over usable pixels of sqrt(continuum² + σ²), so faint, noise-
  dominated spectra and bright ones both map to O(1);
* network channels (float32, shape ``(n, N_CHANNELS, W)``):
  0. residual significance ``(flux − cont)·sqrt(ivar)`` (line S/N per pixel, clipped);
  1. normalised continuum-subtracted spectrum ``(flux − cont)/norm``;
  2. normalised continuum ``cont/norm``;
  3. normalised noise ``σ/norm`` (0 where unusable);
  4. usable mask (1/0);
* per-object scalars (float32, shape ``(n, N_SCALARS)``): log10 norm, per-arm asinh continuum level and log10
  noise (flux units 1e-17 erg/s/cm²/Å), usable fraction;
* the median continuum S/N per usable pixel (``snr``) and the masked fraction.

``PREPROCESSING_VERSION`` is part of every model checkpoint and catalog fingerprint: change it whenever the
output of this module changes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .instrument import Instrument

PREPROCESSING_VERSION = "pp-1"
BLOCK = 64
N_CHANNELS = 5
CLIP_SIG = 30.0
CLIP_NORM = 30.0

__all__ = ["Preprocessed", "preprocess", "PREPROCESSING_VERSION", "N_CHANNELS", "n_scalars", "usable_mask"]


def n_scalars(instrument: Instrument) -> int:
    """Number of per-object scalar features for ``instrument`` (1 + 2 per arm + 1)."""
    return 2 + 2 * len(instrument.arms)


@dataclass
class Preprocessed:
    """Network-ready arrays for a batch of spectra (see the module docstring)."""

    x: np.ndarray  # (n, N_CHANNELS, W) float32
    scalars: np.ndarray  # (n, n_scalars) float32
    snr: np.ndarray  # (n,) float32
    masked_fraction: np.ndarray  # (n,) float32
    n_good: np.ndarray  # (n,) int64


def usable_mask(ivar: np.ndarray, sky_mask: np.ndarray | None, mask: np.ndarray | None = None) -> np.ndarray:
    """Boolean (n, W): usable pixels (``ivar > 0``, no reduction flag, not a sky-line channel)."""
    good = ivar > 0
    if mask is not None:
        good &= np.asarray(mask) == 0
    if sky_mask is not None:
        good &= ~np.asarray(sky_mask, dtype=bool)[None, :]
    return good


def _block_layout(instrument: Instrument) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Block id of every channel and, per channel, the two block centres to interpolate between."""
    block_of = np.empty(instrument.n_wave, np.int64)
    centres: list[float] = []
    left = np.empty(instrument.n_wave, np.int64)
    wleft = np.empty(instrument.n_wave, np.float32)
    nb = 0
    for sl in instrument.arm_slices():
        npx = sl.stop - sl.start
        nblk = max(1, int(round(npx / BLOCK)))
        edges = np.linspace(0, npx, nblk + 1).round().astype(int)
        b = np.searchsorted(edges, np.arange(npx), side="right") - 1
        block_of[sl] = nb + b
        c = 0.5 * (edges[:-1] + edges[1:] - 1)
        pix = np.arange(npx, dtype=np.float64)
        j = np.clip(np.searchsorted(c, pix, side="right") - 1, 0, max(nblk - 2, 0))
        if nblk == 1:
            left[sl] = nb
            wleft[sl] = 1.0
        else:
            t = np.clip((pix - c[j]) / (c[j + 1] - c[j]), 0.0, 1.0)
            left[sl] = nb + j
            wleft[sl] = (1.0 - t).astype(np.float32)
        centres.extend(c + sl.start)
        nb += nblk
    # a single-block arm interpolates with itself
    right = np.minimum(left + 1, nb - 1)
    same_arm = np.zeros(instrument.n_wave, bool)
    for sl in instrument.arm_slices():
        same_arm[sl] = block_of[sl].max() >= right[sl]
    right = np.where(same_arm, right, left)
    return block_of, left, right, wleft, nb


_LAYOUT_CACHE: dict[str, tuple] = {}


def _layout(instrument: Instrument):
    key = instrument.grid_hash
    if key not in _LAYOUT_CACHE:
        _LAYOUT_CACHE[key] = _block_layout(instrument)
    return _LAYOUT_CACHE[key]


def _block_sums(values: np.ndarray, block_of: np.ndarray, nb: int) -> np.ndarray:
    """Sum ``values`` (n, W) over channel blocks → (n, nb), row by row (order fixed: deterministic)."""
    n = values.shape[0]
    out = np.zeros((n, nb), np.float64)
    # np.add.reduceat over contiguous blocks (block ids are sorted and contiguous)
    starts = np.flatnonzero(np.r_[True, block_of[1:] != block_of[:-1]])
    out[:, :] = np.add.reduceat(values.astype(np.float64), starts, axis=1)
    return out


def continuum(flux: np.ndarray, ivar: np.ndarray, good: np.ndarray, instrument: Instrument,
              n_iter: int = 2, clip: float = 2.5, return_blocks: bool = False):
    """Smooth continuum (n, W), flux units: clipped ivar-weighted block means, linearly interpolated.

    Blocks with no usable pixel take the nearest usable block of the same arm (0 when the arm is empty).
    """
    block_of, left, right, wleft, nb = _layout(instrument)
    w = np.where(good, ivar, 0.0).astype(np.float32)
    f = np.where(good, flux, 0.0).astype(np.float32)
    for it in range(n_iter + 1):
        sw = _block_sums(w, block_of, nb)
        sf = _block_sums(w * f, block_of, nb)
        cb = np.divide(sf, sw, out=np.zeros_like(sf), where=sw > 0)
        if it == n_iter:
            break
        resid = (f - cb[:, block_of].astype(np.float32)) * np.sqrt(w)
        w = np.where(np.abs(resid) > clip, np.float32(0.0), w)
    has = sw > 0
    cbf = _fill_empty_blocks(cb, has, instrument, block_of)
    cont = (cbf[:, left] * wleft + cbf[:, right] * (1.0 - wleft)).astype(np.float32)
    if not return_blocks:
        return cont
    cnt = _block_sums(w > 0, block_of, nb)
    ivb = np.divide(sw, cnt, out=np.zeros_like(sw), where=cnt > 0)
    return cont, cb, ivb, cnt


def _fill_empty_blocks(cb: np.ndarray, has: np.ndarray, instrument: Instrument, block_of: np.ndarray) -> np.ndarray:
    out = cb.copy()
    for sl in instrument.arm_slices():
        b0, b1 = int(block_of[sl.start]), int(block_of[sl.stop - 1]) + 1
        h = has[:, b0:b1]
        if h.all():
            continue
        idx = np.arange(b1 - b0)
        for r in np.flatnonzero(~h.all(axis=1)):
            ok = np.flatnonzero(h[r])
            if ok.size == 0:
                out[r, b0:b1] = 0.0
                continue
            near = ok[np.abs(idx[:, None] - ok[None, :]).argmin(axis=1)]
            out[r, b0:b1] = cb[r, b0 + near]
    return out


def preprocess(flux: np.ndarray, ivar: np.ndarray, instrument: Instrument, sky_mask: np.ndarray | None,
               mask: np.ndarray | None = None) -> Preprocessed:
    """Turn spectra into network inputs (see the module docstring).

    Parameters
    ----------
    flux, ivar : ndarray, shape (n, W)
        Flux density (1e-17 erg/s/cm²/Å) and inverse variance; non-finite values are treated as unusable.
    instrument : Instrument
        The grid (arm layout for the continuum blocks).
    sky_mask : ndarray (W,) or None
        1 = sky-line channel.
    mask : ndarray (n, W), optional
        Reduction mask, non-zero = bad.
    """
    flux = np.asarray(flux, dtype=np.float32)
    ivar = np.asarray(ivar, dtype=np.float32)
    finite = np.isfinite(flux) & np.isfinite(ivar)
    good = usable_mask(np.where(finite, ivar, 0.0), sky_mask, mask)
    ivar = np.where(good, ivar, 0.0).astype(np.float32)
    flux = np.where(good, flux, 0.0).astype(np.float32)
    n, W = flux.shape
    cont, cb, ivb, cnt = continuum(flux, ivar, good, instrument, return_blocks=True)
    sqiv = np.sqrt(ivar)
    sigma = np.divide(1.0, sqiv, out=np.zeros_like(sqiv), where=good)
    n_good = good.sum(axis=1)
    # robust per-object statistics at block level (cheap: ~W/BLOCK values per object)
    has = cnt > 0
    sig_b = np.where(has, 1.0 / np.sqrt(np.where(ivb > 0, ivb, 1.0)), np.nan)
    cb_n = np.where(has, cb, np.nan)
    with np.errstate(all="ignore"):
        norm = _nanmedian_rows(np.sqrt(cb_n ** 2 + sig_b ** 2))
    norm = np.where(np.isfinite(norm) & (norm > 0), norm, 1.0).astype(np.float32)
    inv = (1.0 / norm)[:, None]
    resid = flux - cont
    gf = good.astype(np.float32)
    x = np.empty((n, N_CHANNELS, W), np.float32)
    np.multiply(np.clip(resid * sqiv, -CLIP_SIG, CLIP_SIG), gf, out=x[:, 0])
    np.multiply(np.clip(resid * inv, -CLIP_NORM, CLIP_NORM), gf, out=x[:, 1])
    np.multiply(np.clip(cont * inv, -CLIP_NORM, CLIP_NORM), gf, out=x[:, 2])
    np.multiply(np.clip(sigma * inv, 0, CLIP_NORM), gf, out=x[:, 3])
    x[:, 4] = gf
    block_of, _, _, _, nb = _layout(instrument)
    sc = np.zeros((n, n_scalars(instrument)), np.float32)
    sc[:, 0] = np.log10(norm)
    for a, sl in enumerate(instrument.arm_slices()):
        b0, b1 = int(block_of[sl.start]), int(block_of[sl.stop - 1]) + 1
        with np.errstate(all="ignore"):
            c_med = _nanmedian_rows(cb_n[:, b0:b1])
            s_med = _nanmedian_rows(sig_b[:, b0:b1])
        sc[:, 1 + 2 * a] = np.where(np.isfinite(c_med), np.arcsinh(np.nan_to_num(c_med)), 0.0)
        ok = np.isfinite(s_med) & (s_med > 0)
        sc[:, 2 + 2 * a] = np.where(ok, np.log10(np.where(ok, s_med, 1.0)), 0.0)
    sc[:, -1] = n_good / float(W)
    with np.errstate(all="ignore"):
        snr = _nanmedian_rows(cb_n / sig_b)
    snr = np.where(n_good > 0, snr, np.nan).astype(np.float32)
    masked_fraction = (1.0 - n_good / float(W)).astype(np.float32)
    return Preprocessed(x=x, scalars=sc, snr=snr, masked_fraction=masked_fraction, n_good=n_good)


def _nanmedian_rows(a: np.ndarray) -> np.ndarray:
    """Row-wise median ignoring NaN; NaN for all-NaN rows (no warning)."""
    a = np.asarray(a, dtype=np.float64)
    out = np.full(a.shape[0], np.nan)
    ok = ~np.isnan(a).all(axis=1)
    if ok.any():
        out[ok] = np.nanmedian(a[ok], axis=1)
    return out
