"""Sky-line masks (DESIGN §4): from a sky spectrum, from the instrument's shipped sky model, or data-driven
from a survey's own per-channel noise."""
from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from .instrument import Instrument, load_instrument

__all__ = ["sky_mask_from_emission", "instrument_sky_mask", "data_driven_sky_mask", "mask_hash"]


def _arm_slices_from_arm(arm: np.ndarray) -> list[np.ndarray]:
    arm = np.asarray(arm)
    return [np.flatnonzero(arm == a) for a in np.unique(arm)]


def sky_mask_from_emission(emission: np.ndarray, instrument: Instrument | str | None = None,
                           threshold: float = 5.0) -> np.ndarray:
    """Mask channels where the sky exceeds ``threshold`` × the median sky of that channel's arm.

    Parameters
    ----------
    emission : ndarray, shape (W,)
        Sky spectrum on the instrument grid (any positive unit), already at the arm's resolution.
    instrument : Instrument or name
        Gives the arm of each channel.
    threshold : float
        Multiple of the arm's median sky.

    Returns
    -------
    ndarray uint8, shape (W,)
        1 = sky-line channel.
    """
    inst = instrument if isinstance(instrument, Instrument) else load_instrument(instrument)
    emission = np.asarray(emission, dtype=np.float64)
    if emission.shape != (inst.n_wave,):
        raise ValueError(f"sky emission has shape {emission.shape}, instrument {inst.name} has {inst.n_wave} channels")
    mask = np.zeros(inst.n_wave, np.uint8)
    for sl in inst.arm_slices():
        med = np.median(emission[sl])
        mask[sl] = emission[sl] > threshold * med
    return mask


@lru_cache(maxsize=16)
def _instrument_mask_cached(key: str, threshold: float, airmass: float) -> bytes:
    from .skymodel import load_sky_model

    inst = load_instrument(key) if not key.startswith("{") else load_instrument(__import__("json").loads(key))
    sky = load_sky_model(inst, airmass=airmass)
    return sky_mask_from_emission(sky.emission, inst, threshold).tobytes()


def instrument_sky_mask(instrument: Instrument | str | None = None, threshold: float = 5.0,
                        airmass: float = 1.0) -> np.ndarray:
    """The instrument's default sky mask from its shipped sky model (cached).

    Returns
    -------
    ndarray uint8, shape (W,)
        1 = sky-line channel (≈15% of MOONS LR channels at the default 5× threshold, airmass 1.0).

    Raises
    ------
    survey_infer.skymodel.SkyModelError
        If the instrument ships no sky model.
    """
    import json

    inst = instrument if isinstance(instrument, Instrument) else load_instrument(instrument)
    key = json.dumps(inst.config, sort_keys=True)
    return np.frombuffer(_instrument_mask_cached(key, float(threshold), float(airmass)), dtype=np.uint8).copy()


def data_driven_sky_mask(ivar, arm, threshold: float = 5.0) -> np.ndarray:
    """Sky mask from a survey's own noise: channels whose typical variance exceeds ``threshold`` × the arm median.

    The per-channel noise level is the median over objects of 1/ivar (objects with ivar = 0 at a channel are
    ignored there); a channel is masked when it exceeds ``threshold`` times the median of that level over the
    channel's arm. Sky-line channels stand out because sky photon noise dominates faint-object spectra.

    Parameters
    ----------
    ivar : ndarray or dask array, shape (N, W)
        Inverse variance of the survey's spectra (e.g. ``open_survey(p).ivar.data``); the reduction over objects
        is computed chunk by chunk for dask arrays (mean of per-chunk medians of variance).
    arm : ndarray, shape (W,)
        Arm index of each channel.
    threshold : float

    Returns
    -------
    ndarray uint8, shape (W,)
    """
    arm = np.asarray(arm)
    try:
        import dask.array as da
        is_dask = isinstance(ivar, da.Array)
    except ImportError:  # pragma: no cover
        is_dask = False

    def _block_level(block: np.ndarray) -> np.ndarray:
        b = np.asarray(block, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            var = np.where(b > 0, 1.0 / b, np.nan)
        out = np.nanmedian(var, axis=0) if var.shape[0] else np.full(var.shape[1], np.nan)
        return out[None, :]

    if is_dask:
        ivar = ivar.rechunk({1: -1})
        per_chunk = ivar.map_blocks(_block_level, chunks=((1,) * ivar.numblocks[0], (ivar.shape[1],)),
                                    dtype=np.float64)
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            level = np.nanmean(per_chunk.compute(), axis=0)
    else:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            level = _block_level(np.asarray(ivar))[0]
    if level.shape != arm.shape:
        raise ValueError(f"ivar has {level.shape[0]} channels but arm has {arm.shape[0]}")
    mask = np.zeros(arm.shape, np.uint8)
    for idx in _arm_slices_from_arm(arm):
        lv = level[idx]
        good = np.isfinite(lv)
        if not good.any():
            continue
        med = np.median(lv[good])
        mask[idx] = np.where(good, lv > threshold * med, 1).astype(np.uint8)
    return mask


def mask_hash(mask: np.ndarray) -> str:
    """sha256 hex (first 16 chars) of the mask as uint8 bytes: identifies the mask in models and catalogs."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(mask), dtype=np.uint8).tobytes()).hexdigest()[:16]
