"""The spectrum model every reader produces: :class:`SpectrumArm` (one contiguous piece) and :class:`Spectrum`
(one observed object), plus the helpers that build arms safely from raw arrays.

Conventions (see :mod:`survey_infer.io.readers.base`): vacuum Angstrom, flux density in
1e-17 erg s^-1 cm^-2 Angstrom^-1, inverse variance (0 = no data), optional integer mask (non-zero = bad).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from ...errors import ReaderError

log = logging.getLogger("survey_infer.io.readers")

__all__ = ["MAX_WAVE_PIECES", "Spectrum", "SpectrumArm", "build_arms", "centres_to_edges", "ivar_from_error"]


@dataclass
class SpectrumArm:
    """One contiguous piece of spectrum (an arm, or the whole spectrum for single-arm data).

    Attributes
    ----------
    wave : ndarray, shape (n,)
        Pixel centres, vacuum Angstrom, strictly increasing.
    flux : ndarray, shape (n,)
        Flux density, 1e-17 erg s^-1 cm^-2 Angstrom^-1.
    ivar : ndarray, shape (n,)
        Inverse variance of ``flux`` (0 = no data).
    mask : ndarray of int, shape (n,), optional
        Reduction mask, non-zero = bad pixel.
    name : str
        Arm label (``"B"``, ``"RI"``...), empty for single-arm spectra.
    edges : ndarray, shape (n + 1,), optional
        Pixel edges, vacuum Angstrom. When absent they are the mid-points between centres
        (see :func:`centres_to_edges`).
    """

    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray | None = None
    name: str = ""
    edges: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.wave = np.asarray(self.wave, dtype=np.float64)
        self.flux = np.asarray(self.flux, dtype=np.float64)
        self.ivar = np.asarray(self.ivar, dtype=np.float64)
        if self.mask is not None:
            self.mask = np.asarray(self.mask)
        n = self.wave.shape[0]
        if self.wave.ndim != 1 or self.flux.shape != (n,) or self.ivar.shape != (n,):
            raise ValueError(
                f"arm {self.name!r}: wave {self.wave.shape}, flux {self.flux.shape}, ivar {self.ivar.shape} "
                "must be 1-D and of equal length"
            )
        if self.mask is not None and self.mask.shape != (n,):
            raise ValueError(f"arm {self.name!r}: mask shape {self.mask.shape} != ({n},)")
        if self.edges is not None:
            self.edges = np.asarray(self.edges, dtype=np.float64)
            if self.edges.shape != (n + 1,):
                raise ValueError(f"arm {self.name!r}: edges shape {self.edges.shape} != ({n + 1},)")

    def pixel_edges(self) -> np.ndarray:
        """Pixel edges (vacuum Angstrom), shape ``(n + 1,)``."""
        return self.edges if self.edges is not None else centres_to_edges(self.wave)

    @property
    def good(self) -> np.ndarray:
        """Boolean, True where the pixel has usable data (finite flux, finite positive ivar, mask == 0)."""
        g = np.isfinite(self.flux) & np.isfinite(self.ivar) & (self.ivar > 0)
        if self.mask is not None:
            g &= self.mask == 0
        return g


@dataclass
class Spectrum:
    """One observed spectrum of one object, in the package conventions (see module docstring).

    Attributes
    ----------
    arms : list of SpectrumArm
        One entry for single-arm data; several (possibly overlapping) for multi-arm spectrographs.
    source_files : tuple of str
        The file(s) the spectrum came from.
    reader : str
        Name of the reader that produced it.
    name : str
        Human-readable object name (e.g. ``spec-0295-51585-0596``).
    ra, dec : float
        Position, degrees (NaN when unknown).
    target_id : int or None
        Target identifier; repeat observations of one target share it.
    z_catalog : float
        Catalog redshift carried by the file or a companion file (NaN when unknown).
    t_exp : float
        Exposure time, seconds (NaN when unknown).
    columns : dict
        Further per-row values named as in the survey-store contract (e.g. ``z_true``, ``mag_h``).
    meta : dict
        Anything else worth keeping for provenance (not written to the store).
    """

    arms: list[SpectrumArm]
    source_files: tuple[str, ...] = ()
    reader: str = ""
    name: str = ""
    ra: float = float("nan")
    dec: float = float("nan")
    target_id: int | None = None
    z_catalog: float = float("nan")
    t_exp: float = float("nan")
    columns: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def wave(self) -> np.ndarray:
        """Concatenated pixel centres of all arms, vacuum Angstrom."""
        return np.concatenate([a.wave for a in self.arms])

    @property
    def flux(self) -> np.ndarray:
        """Concatenated flux of all arms, 1e-17 erg s^-1 cm^-2 Angstrom^-1."""
        return np.concatenate([a.flux for a in self.arms])

    @property
    def ivar(self) -> np.ndarray:
        """Concatenated inverse variance of all arms."""
        return np.concatenate([a.ivar for a in self.arms])

    @property
    def wave_range(self) -> tuple[float, float]:
        """(min, max) pixel centre over all arms, Angstrom."""
        return float(min(a.wave[0] for a in self.arms)), float(max(a.wave[-1] for a in self.arms))


def ivar_from_error(err: np.ndarray) -> np.ndarray:
    """Inverse variance from a 1 sigma error array.

    ``1 / err**2`` where err is finite and > 0; 0 (no data) where err == 0 or is +inf (conventions for padding);
    NaN where err is NaN and -1 where err < 0, so that ingest counts those pixels as invalid (they are excluded
    from resampling either way).
    """
    err = np.asarray(err, dtype=np.float64)
    ok = np.isfinite(err) & (err > 0)
    out = np.zeros_like(err)
    out[ok] = 1.0 / err[ok] ** 2
    out[np.isnan(err)] = np.nan
    out[err < 0] = -1.0
    return out


def centres_to_edges(wave: np.ndarray) -> np.ndarray:
    """Pixel edges from pixel centres: mid-points inside, half a step outside at both ends.

    For a log-uniform grid (constant ``wave[i+1]/wave[i]``) the edges are geometric mid-points, which is exact for
    SDSS/BOSS ``loglam`` grids; otherwise arithmetic mid-points.
    """
    w = np.asarray(wave, dtype=np.float64)
    if w.size == 1:
        return np.array([w[0] - 0.5, w[0] + 0.5])
    ratio = w[1:] / w[:-1]
    step = np.diff(w)
    if w.size > 2 and np.all(w > 0) and np.ptp(ratio) < 1e-6 * np.mean(ratio - 1) and np.ptp(step) > 1e-6 * np.mean(step):
        lw = np.log(w)
        mid = 0.5 * (lw[1:] + lw[:-1])
        return np.exp(np.concatenate([[lw[0] - (mid[0] - lw[0])], mid, [lw[-1] + (lw[-1] - mid[-1])]]))
    mid = 0.5 * (w[1:] + w[:-1])
    return np.concatenate([[w[0] - (mid[0] - w[0])], mid, [w[-1] + (w[-1] - mid[-1])]])


#: at most this many increasing pieces are accepted in one wavelength array (arms joined in one array)
MAX_WAVE_PIECES = 16


def build_arms(path: str | os.PathLike, wave, flux, ivar, mask=None, *, name: str = "", edges=None,
               label: str = "") -> list[SpectrumArm]:
    """Arms from one wavelength array, repairing what is safe and refusing with the real reason otherwise.

    * no pixels at all: refused (``empty spectrum: no pixels``);
    * non-finite or non-positive wavelengths (NaN padding, zero padding): at the ends those pixels are dropped;
      inside, the wavelength is interpolated between its neighbours and the pixel gets ivar = 0 (no data);
    * decreasing order: reversed;
    * a few increasing pieces (arms joined in one array, a repeated sample where they meet): one arm per piece,
      merged later by inverse-variance weighting; more than :data:`MAX_WAVE_PIECES` pieces or a piece of a
      single pixel is refused, naming where the order breaks.

    Parameters
    ----------
    path : path
        The file (for error messages).
    wave : ndarray, shape (n,)
        Vacuum Angstrom (already converted).
    flux, ivar : ndarray, shape (n,)
        Store units.
    mask : ndarray, shape (n,), optional
        Non-zero = bad.
    edges : ndarray, shape (n + 1,), optional
        Pixel edges; kept when no repair was needed.
    label : str
        Prefix naming the spectrum in messages (e.g. ``"spectrum 2: "``).

    Returns
    -------
    list of SpectrumArm

    Raises
    ------
    ReaderError
        Empty spectrum, no usable wavelength, mismatched lengths, or wavelengths out of order beyond repair.
    """
    w = np.asarray(wave, dtype=np.float64).ravel()
    f = np.asarray(flux, dtype=np.float64).ravel()
    iv = np.array(ivar, dtype=np.float64).ravel()
    n = w.size
    if n == 0 or f.size == 0:
        raise ReaderError(path, f"{label}empty spectrum: no pixels (zero-length wavelength/flux arrays)")
    if f.size != n or iv.size != n:
        raise ReaderError(path, f"{label}wavelength ({n}), flux ({f.size}) and weight ({iv.size}) lengths differ")
    mk = None if mask is None else np.asarray(mask).ravel()
    if mk is not None and mk.size != n:
        raise ReaderError(path, f"{label}mask has {mk.size} pixels, wavelength {n}")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(w) & (w > 0)
    if not valid.any():
        raise ReaderError(path, f"{label}no finite positive wavelength in its {n} pixels (all NaN/inf/zero)")
    repaired = not valid.all()
    if repaired:
        idx = np.flatnonzero(valid)
        a, b = int(idx[0]), int(idx[-1]) + 1
        inner_bad = ~valid[a:b]
        w, f, iv = w[a:b].copy(), f[a:b], iv[a:b].copy()
        mk = None if mk is None else mk[a:b]
        if inner_bad.any():
            pos = np.arange(b - a)
            w[inner_bad] = np.interp(pos[inner_bad], pos[~inner_bad], w[~inner_bad])
            iv[inner_bad] = 0.0
        log.info("%s: %s%d pixels without a valid wavelength (NaN/inf/<= 0) get no data", path, label,
                 int(n - valid.sum()))
    d = np.diff(w)
    if np.all(d > 0):
        pieces = [np.arange(w.size)]
    elif np.all(d < 0):
        pieces = [np.arange(w.size)[::-1]]
        repaired = True
    else:
        order = np.arange(w.size)
        if (d < 0).sum() > (d > 0).sum():
            order = order[::-1]
        ww = w[order]
        cuts = np.flatnonzero(np.diff(ww) <= 0) + 1
        pieces = np.split(order, cuts)
        repaired = True
        if len(pieces) > MAX_WAVE_PIECES or min(len(p) for p in pieces) < 2:
            k = int(cuts[0])
            raise ReaderError(path, f"{label}wavelengths are not in order: they go back {len(cuts)} times (first at "
                                    f"pixel {int(order[k])}: {ww[k]:.6g} after {ww[k - 1]:.6g} Angstrom); sort the "
                                    f"spectrum or split it into arms")
        log.info("%s: %swavelengths go back %d times; read as %d arms", path, label, len(cuts), len(pieces))
    out = []
    for j, sel in enumerate(pieces):
        e = None
        if edges is not None and not repaired:
            e = np.asarray(edges, dtype=np.float64)
        out.append(SpectrumArm(wave=w[sel], flux=f[sel], ivar=iv[sel], mask=None if mk is None else mk[sel],
                               name=name if len(pieces) == 1 else f"{name}{'.' if name else ''}{j}", edges=e))
    return out

