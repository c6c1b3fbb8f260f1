"""Instruments as data: wavelength grids, arms and resolving powers.

An instrument is a JSON file (see ``survey_infer/data/instruments/``); the default is MOONS low-resolution
mode on exactly the moons1d grids (12,217 channels, vacuum Angstrom). Another spectrograph is another JSON
file, passed by path or by the name of a shipped file.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np

DEFAULT_INSTRUMENT = "moons_lr"

__all__ = ["Arm", "Instrument", "load_instrument", "DEFAULT_INSTRUMENT", "available_instruments"]


@dataclass(frozen=True)
class Arm:
    """One spectrograph arm on a linear grid.

    Parameters
    ----------
    name : str
        Arm label (e.g. ``"RI"``).
    wave_min : float
        Centre of the first pixel, vacuum Angstrom.
    dwave : float
        Pixel step, Angstrom.
    npix : int
        Number of pixels.
    resolution : float
        Resolving power R = lambda / FWHM.
    """

    name: str
    wave_min: float
    dwave: float
    npix: int
    resolution: float

    @property
    def wave(self) -> np.ndarray:
        """Pixel centres, vacuum Angstrom (float64)."""
        return self.wave_min + self.dwave * np.arange(self.npix, dtype=np.float64)

    @property
    def wave_max(self) -> float:
        """Centre of the last pixel, Angstrom."""
        return self.wave_min + self.dwave * (self.npix - 1)


@dataclass(frozen=True)
class Instrument:
    """A multi-arm spectrograph grid.

    Attributes
    ----------
    name : str
        Instrument name stored in survey attrs and model checkpoints.
    arms : tuple of Arm
        Arms in wavelength order; the survey's ``wave`` axis is their concatenation.
    config : dict
        The full JSON description (detector and telescope figures used by the simulator).
    """

    name: str
    arms: tuple[Arm, ...]
    config: dict = field(default_factory=dict, compare=False, hash=False)

    @cached_property
    def wave(self) -> np.ndarray:
        """Concatenated pixel centres, vacuum Angstrom, shape ``(W,)``."""
        return np.concatenate([a.wave for a in self.arms])

    @cached_property
    def arm_index(self) -> np.ndarray:
        """Arm number of each channel (uint8), shape ``(W,)``."""
        return np.concatenate([np.full(a.npix, i, np.uint8) for i, a in enumerate(self.arms)])

    @cached_property
    def resolution(self) -> np.ndarray:
        """Resolving power of each channel, shape ``(W,)``."""
        return np.concatenate([np.full(a.npix, a.resolution, np.float64) for a in self.arms])

    @cached_property
    def dwave(self) -> np.ndarray:
        """Pixel width of each channel, Angstrom, shape ``(W,)``."""
        return np.concatenate([np.full(a.npix, a.dwave, np.float64) for a in self.arms])

    @property
    def n_wave(self) -> int:
        """Number of channels."""
        return int(sum(a.npix for a in self.arms))

    @property
    def arm_names(self) -> list[str]:
        return [a.name for a in self.arms]

    def arm_slices(self) -> list[slice]:
        """Channel slice of each arm in the concatenated grid."""
        out, start = [], 0
        for a in self.arms:
            out.append(slice(start, start + a.npix))
            start += a.npix
        return out

    @cached_property
    def grid_hash(self) -> str:
        """sha256 (hex, 16 chars) of the float64 wavelength grid: identifies the grid in stores and models."""
        return hashlib.sha256(np.ascontiguousarray(self.wave, dtype="<f8").tobytes()).hexdigest()[:16]

    def matches(self, wave: np.ndarray, rtol: float = 1e-9) -> bool:
        """True when ``wave`` is this instrument's grid (same length, same values within ``rtol``)."""
        wave = np.asarray(wave, dtype=np.float64)
        return wave.shape == self.wave.shape and bool(np.allclose(wave, self.wave, rtol=rtol, atol=0.0))

    def to_dict(self) -> dict:
        return dict(self.config)


def available_instruments() -> list[str]:
    """Names of the instrument files shipped with the package."""
    root = resources.files("survey_infer") / "data" / "instruments"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def load_instrument(name_or_path: str | Path | dict | None = None) -> Instrument:
    """Load an instrument by shipped name (``"moons_lr"``), JSON path, or an already-parsed dict.

    Parameters
    ----------
    name_or_path : str, Path, dict or None
        ``None`` gives the default (MOONS LR).

    Raises
    ------
    ValueError
        If the name is unknown or the description is malformed (the message names the file).
    """
    if name_or_path is None:
        name_or_path = DEFAULT_INSTRUMENT
    if isinstance(name_or_path, dict):
        cfg, origin = dict(name_or_path), "<dict>"
    else:
        p = Path(str(name_or_path))
        if p.suffix == ".json" and p.exists():
            origin = str(p)
            cfg = json.loads(p.read_text())
        else:
            key = str(name_or_path).lower().replace("-", "_")
            root = resources.files("survey_infer") / "data" / "instruments"
            f = root / f"{key}.json"
            if not f.is_file():
                # also accept the display name stored in attrs, e.g. "MOONS-LR"
                for cand in root.iterdir():
                    if cand.name.endswith(".json") and json.loads(cand.read_text()).get("name") == name_or_path:
                        f = cand
                        break
                else:
                    raise ValueError(
                        f"unknown instrument {name_or_path!r}: not a JSON file and not one of "
                        f"{available_instruments()}"
                    )
            origin = str(f)
            cfg = json.loads(f.read_text())
    try:
        arms = tuple(
            Arm(str(a["name"]), float(a["wave_min"]), float(a["dwave"]), int(a["npix"]), float(a["resolution"]))
            for a in cfg["arms"]
        )
        name = str(cfg["name"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed instrument description {origin}: {exc!r}") from exc
    if not arms:
        raise ValueError(f"instrument {origin} has no arms")
    for a, b in zip(arms[:-1], arms[1:]):
        if b.wave_min <= a.wave_max:
            raise ValueError(f"instrument {origin}: arm {b.name} overlaps or precedes arm {a.name}")
    return Instrument(name=name, arms=arms, config=cfg)
