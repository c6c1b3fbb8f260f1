"""The instrument's sky model: Paranal sky emission, telluric transmission and end-to-end throughput.

The model is a small ``.npz`` shipped in ``survey_infer/data/sky/`` (named by the instrument JSON's
``sky_model`` key) and built by ``tools/build_sky_model.py`` from the moons1d 1.0.3 data (MIT). Only the shipped
file is read at run time.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from .instrument import Instrument, load_instrument

__all__ = ["SkyModel", "SkyModelError", "load_sky_model"]


class SkyModelError(ValueError):
    """The instrument has no (usable) sky model."""


@dataclass(frozen=True)
class SkyModel:
    """Sky and efficiency on an instrument grid (all arrays shape ``(W,)``).

    Attributes
    ----------
    wave : ndarray
        Channel centres, vacuum Å (float64).
    emission : ndarray
        Sky radiance convolved to each arm's resolution and averaged over each pixel,
        photons / (s cm² Å arcsec²) at the telescope (float32).
    transmission : ndarray
        Telluric transmission (0–1), convolved and pixel-averaged (float32).
    throughput : ndarray
        End-to-end efficiency: telescope × arm throughput × detector QE (0–1, float32).
    read_noise_e : ndarray
        Detector read noise per pixel per read, electrons rms.
    dark_e_per_s : ndarray
        Dark current per pixel, electrons / s.
    airmass : float
        Airmass of this model.
    source : str
        Origin of the data.
    """

    wave: np.ndarray
    emission: np.ndarray
    transmission: np.ndarray
    throughput: np.ndarray
    read_noise_e: np.ndarray
    dark_e_per_s: np.ndarray
    airmass: float
    source: str
    emission_units: str = "ph / (s cm2 Angstrom arcsec2)"


@lru_cache(maxsize=8)
def _load_npz(fname: str) -> dict:
    f = resources.files("survey_infer") / "data" / "sky" / fname
    if not f.is_file():
        raise SkyModelError(f"sky model file {fname!r} is not shipped in survey_infer/data/sky/")
    with f.open("rb") as fh:
        with np.load(fh, allow_pickle=False) as d:
            return {k: d[k] for k in d.files}


def load_sky_model(instrument: Instrument | str | None = None, airmass: float = 1.0) -> SkyModel:
    """Load the shipped sky model of ``instrument`` (default MOONS LR).

    Parameters
    ----------
    instrument : Instrument or name, optional
    airmass : float
        1.0–2.0; emission and transmission are interpolated linearly between the shipped airmasses.

    Raises
    ------
    SkyModelError
        When the instrument has no ``sky_model`` entry, the file is missing, or its grid does not match.
    """
    inst = instrument if isinstance(instrument, Instrument) else load_instrument(instrument)
    fname = inst.config.get("sky_model")
    if not fname:
        raise SkyModelError(
            f"instrument {inst.name!r} has no sky model (no 'sky_model' key in its JSON); the simulator and "
            "the instrument sky mask need one — pass a sky mask explicitly or use a data-driven mask"
        )
    d = _load_npz(str(fname))
    wave = d["wave"]
    if wave.shape != inst.wave.shape or not np.allclose(wave, inst.wave, rtol=1e-9, atol=0):
        raise SkyModelError(f"sky model {fname} is not on the grid of instrument {inst.name!r}")
    ams = d["airmass"].astype(np.float64)
    if not (ams[0] - 1e-6 <= airmass <= ams[-1] + 1e-6):
        raise SkyModelError(f"airmass {airmass} outside the sky model range {ams[0]}–{ams[-1]} ({fname})")
    k = int(np.clip(np.searchsorted(ams, airmass) - 1, 0, len(ams) - 2))
    t = float(np.clip((airmass - ams[k]) / (ams[k + 1] - ams[k]), 0.0, 1.0))
    em = ((1 - t) * d["emission"][k] + t * d["emission"][k + 1]).astype(np.float32)
    tr = ((1 - t) * d["transmission"][k] + t * d["transmission"][k + 1]).astype(np.float32)
    return SkyModel(
        wave=wave, emission=em, transmission=tr, throughput=d["throughput"].astype(np.float32),
        read_noise_e=d["read_noise_e"].astype(np.float32), dark_e_per_s=d["dark_e_per_s"].astype(np.float32),
        airmass=float(airmass), source=str(d["source"]), emission_units=str(d["emission_units"]),
    )
