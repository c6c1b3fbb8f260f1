"""Units as written in spectrum files, converted to the package's: wavelengths to Angstrom (linear or
logarithmic units), flux densities (f_lambda or f_nu) to 1e-17 erg s^-1 cm^-2 Angstrom^-1. Parsing is astropy's
(:mod:`astropy.units`, FITS/OGIP/CDS/generic formats); this module only normalises the spellings found in
survey files (leading numeric scales, ``Ang``, ``A`` in a flux context, ``log(...)`` wavelengths) before it.
"""
from __future__ import annotations

import re
import warnings
from functools import lru_cache

import numpy as np

from .values import attr_str

__all__ = ["FLUX_UNIT_STR", "flux_factor", "is_log_unit", "parse_unit", "wave_to_angstrom"]

#: The flux unit every reader converts to (string form as stored in survey attrs).
FLUX_UNIT_STR = "1e-17 erg / (s cm2 Angstrom)"


def _flux_unit():
    import astropy.units as u

    return u.Unit(1e-17 * u.erg / u.s / u.cm**2 / u.AA)


_LOG_UNIT_RE = re.compile(r"^\s*(dex|log|log10|lg|ln)\s*\(\s*(.*?)\s*\)\s*$", re.IGNORECASE)
_SCALE_RE = re.compile(r"^\s*(?:(1(?:\.0*)?[eE]([-+]?\d+))|10\s*\*\*\s*\(?\s*([-+]?\d+)\s*\)?)\s*[*.]?\s*")


@lru_cache(maxsize=128)
def parse_unit(text: str, kind: str = "flux"):
    """Parse a unit string as written in FITS/HDF5 files into an :class:`astropy.units.Unit`.

    Handles FITS/OGIP/CDS/generic spellings, a leading numeric scale (``1E-17 ...``, ``10**(-19) ...``),
    ``Ang``/``AA``/``Angstroms`` and ``A`` meaning Angstrom in a flux-density or wavelength context.

    Parameters
    ----------
    text : str
        The unit string.
    kind : {"flux", "wave"}
        What the unit should describe: a spectral flux density (f_lambda or f_nu) or a length.

    Raises
    ------
    ValueError
        If the string cannot be parsed or does not describe ``kind``.
    """
    import astropy.units as u

    s = attr_str(text)
    if not s:
        raise ValueError("empty unit string")
    if kind == "wave":
        m = _LOG_UNIT_RE.match(s)
        if m:  # logarithmic wavelength: log10 (dex, log, lg, log10) or natural (ln) of a length
            from astropy.units.function.logarithmic import LogUnit

            inner = parse_unit(m.group(2) or "Angstrom", "wave")
            if m.group(1).lower() == "ln":
                return LogUnit(inner, function_unit=u.dex / np.log(10.0))
            return u.dex(inner)
    scale = 1.0
    m = _SCALE_RE.match(s)
    if m:
        exp = m.group(2) if m.group(2) is not None else m.group(3)
        scale = 10.0 ** int(exp)
        s = s[m.end():].strip()
    s = s.replace("^", "**")
    s = re.sub(r"\b(Ang|ANG|Angs|Angstroms|ANGSTROM|ANGSTROMS|angstroms|AA|angstrom)\b", "Angstrom", s)
    s = re.sub(r"\b(microns?|MICRONS?|Microns?|mum|micrometer)\b", "um", s)
    s = re.sub(r"\b(ergs)\b", "erg", s)
    candidates = [s]
    if re.search(r"(?<![A-Za-z])A(?![A-Za-z])", s):
        candidates.append(re.sub(r"(?<![A-Za-z])A(?![A-Za-z])", "Angstrom", s))
    last_exc: Exception | None = None
    for cand in candidates:
        for fmt in ("fits", "generic", "ogip", "cds"):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    unit = u.Unit(cand, format=fmt)
            except Exception as exc:  # noqa: BLE001
                last_exc = exc
                continue
            if isinstance(unit, u.FunctionUnitBase):
                if kind == "wave" and scale == 1.0 and unit.physical_unit.is_equivalent(u.m):
                    return unit
                continue
            unit = u.Unit(scale * unit)
            if kind == "wave" and unit.is_equivalent(u.m):
                return unit
            if kind == "flux" and (unit.is_equivalent(u.erg / u.s / u.cm**2 / u.AA) or unit.is_equivalent(u.Jy)):
                return unit
    raise ValueError(f"cannot interpret {text!r} as a {'wavelength' if kind == 'wave' else 'flux density'} unit"
                     + (f" ({last_exc})" if last_exc else ""))


def is_log_unit(unit) -> bool:
    """True for a logarithmic (function) unit such as ``dex(Angstrom)``, ``log(um)`` or ``ln(Angstrom)``."""
    import astropy.units as u

    if isinstance(unit, (str, bytes, np.bytes_, np.ndarray)):
        try:
            unit = parse_unit(attr_str(unit), "wave")
        except ValueError:
            return False
    return isinstance(unit, u.FunctionUnitBase)


def wave_to_angstrom(wave: np.ndarray, unit) -> np.ndarray:
    """Convert wavelengths in ``unit`` (astropy unit or string) to Angstrom (float64).

    Logarithmic units (``dex(Angstrom)``, FITS ``log(Angstrom)`` = log10, ``ln(um)``...) are converted to their
    physical length: ``10**value`` (or ``e**value``) in the unit inside the parentheses.
    """
    import astropy.units as u

    if not isinstance(unit, u.UnitBase) and not isinstance(unit, u.FunctionUnitBase):
        unit = parse_unit(unit, "wave")
    w = np.asarray(wave, dtype=np.float64)
    if isinstance(unit, u.FunctionUnitBase):
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray((w * unit).physical.to_value(u.AA), dtype=np.float64)
    return w * float(unit.to(u.AA))


def flux_factor(unit, wave_aa: np.ndarray) -> np.ndarray | float:
    """Multiplicative factor(s) that convert flux density in ``unit`` to 1e-17 erg s^-1 cm^-2 Angstrom^-1.

    f_lambda units give one number; f_nu units (Jy, uJy, erg/s/cm2/Hz) give an array over ``wave_aa``
    (f_lambda = f_nu c / lambda^2). Inverse variances scale by ``factor**-2``.
    """
    import astropy.units as u

    if isinstance(unit, str):
        unit = parse_unit(unit, "flux")
    target = _flux_unit()
    if unit.is_equivalent(target):
        return float(unit.to(target))
    # f_nu: c / lambda^2, evaluated per pixel
    c_aa = 2.99792458e18  # Angstrom / s
    fnu_cgs = float(unit.to(u.erg / u.s / u.cm**2 / u.Hz))
    return fnu_cgs * c_aa / np.asarray(wave_aa, dtype=np.float64) ** 2 / 1e-17

