"""Rest-frame spectral lines (vacuum Angstrom) used for labels in plots, by the simulator and by the model.

Every entry is a :class:`Line` record with ``name`` (ASCII, unique, usable as a key), ``wave_vac`` (rest-frame
vacuum wavelength, Angstrom) and ``kind`` (``"emission"`` or ``"absorption"``); :attr:`Line.label` is a
pretty label for figures.

Wavelengths are vacuum values (NIST / SDSS line lists). Blends are given at a representative centre:
Mg b (the 5169/5174/5185 triplet) at 5176.7, Na D at the mean of D2 5891.58 and D1 5897.56 (5894.6), the
G band (CH, 4300-4310) at 4305.0.

Examples
--------
>>> from survey_infer.lines import LINES, lines_in_range
>>> [ln.name for ln in lines_in_range(1.2, 6470.0, 18000.0)][:3]
['[OII]3727', '[OII]3730', '[NeIII]3870']
"""
from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np

__all__ = ["Line", "LINES", "EMISSION_LINES", "ABSORPTION_LINES", "line", "observed_wavelength", "lines_in_range"]


class Line(NamedTuple):
    """One rest-frame line.

    Attributes
    ----------
    name : str
        Unique ASCII name, e.g. ``"Halpha"``, ``"[NII]6585"``, ``"CaK"``.
    wave_vac : float
        Rest-frame vacuum wavelength, Angstrom.
    kind : {"emission", "absorption"}
        Whether the feature is usually seen in emission or absorption.
    """

    name: str
    wave_vac: float
    kind: Literal["emission", "absorption"]

    @property
    def label(self) -> str:
        """Label for figures (Unicode Greek letters, e.g. ``"Hα"``, ``"[NII]"``)."""
        return _LABELS.get(self.name, self.name)

    def observed(self, z: float) -> float:
        """Observed-frame vacuum wavelength at redshift ``z``, Angstrom."""
        return float(self.wave_vac) * (1.0 + float(z))


LINES: tuple[Line, ...] = (
    Line("[OII]3727", 3727.09, "emission"),
    Line("[OII]3730", 3729.88, "emission"),
    Line("[NeIII]3870", 3869.86, "emission"),
    Line("CaK", 3934.78, "absorption"),
    Line("CaH", 3969.59, "absorption"),
    Line("Hdelta", 4102.89, "emission"),
    Line("Gband", 4305.0, "absorption"),
    Line("Hgamma", 4341.68, "emission"),
    Line("Hbeta", 4862.68, "emission"),
    Line("[OIII]4960", 4960.30, "emission"),
    Line("[OIII]5008", 5008.24, "emission"),
    Line("Mgb", 5176.7, "absorption"),
    Line("NaD", 5894.6, "absorption"),
    Line("[NII]6550", 6549.86, "emission"),
    Line("Halpha", 6564.61, "emission"),
    Line("[NII]6585", 6585.27, "emission"),
    Line("[SII]6718", 6718.29, "emission"),
    Line("[SII]6733", 6732.67, "emission"),
)

_LABELS = {
    "[OII]3727": "[OII]", "[OII]3730": "[OII]", "[NeIII]3870": "[NeIII]", "CaK": "Ca K", "CaH": "Ca H",
    "Hdelta": "Hδ", "Gband": "G", "Hgamma": "Hγ", "Hbeta": "Hβ", "[OIII]4960": "[OIII]",
    "[OIII]5008": "[OIII]", "Mgb": "Mg b", "NaD": "Na D", "[NII]6550": "[NII]", "Halpha": "Hα",
    "[NII]6585": "[NII]", "[SII]6718": "[SII]", "[SII]6733": "[SII]",
}

EMISSION_LINES: tuple[Line, ...] = tuple(ln for ln in LINES if ln.kind == "emission")
ABSORPTION_LINES: tuple[Line, ...] = tuple(ln for ln in LINES if ln.kind == "absorption")

assert len({ln.name for ln in LINES}) == len(LINES), "line names must be unique"


def line(name: str) -> Line:
    """The line called ``name`` (raises ``KeyError`` naming the known lines)."""
    for ln in LINES:
        if ln.name == name:
            return ln
    raise KeyError(f"unknown line {name!r}; known: {', '.join(ln.name for ln in LINES)}")


def observed_wavelength(z: float | np.ndarray, lines: tuple[Line, ...] = LINES) -> np.ndarray:
    """Observed vacuum wavelengths (Angstrom) of ``lines`` at redshift(s) ``z``; shape ``z.shape + (len(lines),)``."""
    rest = np.array([ln.wave_vac for ln in lines], dtype=np.float64)
    return (1.0 + np.asarray(z, dtype=np.float64))[..., None] * rest


def lines_in_range(z: float, wave_min: float, wave_max: float, lines: tuple[Line, ...] = LINES) -> list[Line]:
    """Lines whose observed wavelength at ``z`` falls within ``[wave_min, wave_max]`` Angstrom (none if z is NaN)."""
    if not np.isfinite(z):
        return []
    return [ln for ln in lines if wave_min <= ln.observed(z) <= wave_max]
