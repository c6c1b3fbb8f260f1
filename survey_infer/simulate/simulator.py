"""Vectorised, seeded MOONS-like survey simulator (DESIGN §3).

Every object's draws come from its own ``numpy.random.Generator(PCG64(SeedSequence([seed, object_index])))`` and
all physics is element-wise over rows (or a loop over rows), so a spectrum depends only on
``(seed, object index, config)``: any chunking of a survey gives identical bytes.
"""
from __future__ import annotations

import numpy as np

from ..instrument import Instrument, load_instrument
from ..skymodel import load_sky_model
from . import physics as ph
from .config import (COLUMN_FLAGS, FAMILIES, KIND_GALAXY, KIND_HIGHZ, KIND_LOWZ, KIND_STAR, NO_FAMILY,  # noqa: F401
                     SFH_KINDS, SIM_VERSION, TRUTH_COLUMNS, _NU, SimConfig)
from .galaxies import _add_gas_lines, _emission_lines, _kcorrect_galaxies, _population, _ssp_galaxies, _stars
from .observe import _obs_vectors, _observe

__all__ = ["SimConfig", "simulate_block", "SIM_VERSION", "TRUTH_COLUMNS", "KIND_GALAXY", "KIND_STAR",
           "KIND_LOWZ", "KIND_HIGHZ", "FAMILIES", "SFH_KINDS", "COLUMN_FLAGS"]


def _draws(seed: int, start: int, n: int, n_wave: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-object uniforms (n, _NU) and standard normals (n, W), each row from its own seeded generator."""
    u = np.empty((n, _NU), np.float64)
    z = np.empty((n, n_wave), np.float32)
    for i in range(n):
        g = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(start + i)])))
        u[i] = g.random(_NU)
        g.standard_normal(n_wave, dtype=np.float32, out=z[i])
    return u, z


def simulate_block(start: int, n: int, seed: int, config: SimConfig | None = None,
                   instrument: Instrument | str | None = None) -> dict[str, np.ndarray]:
    """Simulate rows ``start .. start + n`` of a survey.

    Parameters
    ----------
    start : int
        Index of the first object (also its ``object_id``).
    n : int
        Number of objects.
    seed : int
        Survey seed; object ``i`` depends only on ``(seed, i, config)``.
    config : SimConfig, optional
    instrument : Instrument or name, optional
        Must ship a sky model (default MOONS LR).

    Returns
    -------
    dict
        ``flux``, ``ivar`` (n, W) float32 in 1e-17 erg/s/cm²/Å (and its inverse square); per-row
        ``object_id`` int64, ``ra``, ``dec`` (deg), ``t_exp`` (s), ``z_true``, ``logmstar_true`` (log M☉,
        Chabrier), ``logsfr_true`` (log M☉/yr, Chabrier: SSP families ψ averaged over the last 10 Myr; kcorrect
        Hα-calibrated, Kennicutt & Evans 2012), ``is_passive`` (sSFR < 0.2/t_H(z)), ``mag_h`` (AB, top-hat
        15000–18000 Å), ``kind`` (0 galaxy in z_range, 1 star, 2 galaxy below, 3 galaxy above),
        ``template_family`` and ``sfh_kind`` (uint8 codes of :data:`FAMILIES`, :data:`SFH_KINDS`; 255 for
        stars), ``age_mw_true`` (Gyr), ``ew_halpha_rest_true`` (Å), ``av_true`` (mag), ``sigma_star_true``
        (km/s; NaN for the kcorrect family, whose continua are not broadened), ``star_index`` (int16, −1 for
        galaxies). Stars have NaN mass, SFR, age and EW.

    Raises
    ------
    ValueError
        An inconsistent ``config`` (see :meth:`SimConfig.validate`).
    """
    return _simulate(start, n, seed, config, instrument, extras=False)


def _simulate(start: int, n: int, seed: int, config: SimConfig | None, instrument, extras: bool = False) -> dict:
    """Implementation of :func:`simulate_block`; ``extras=True`` adds noiseless and diagnostic arrays:
    ``model`` (n, W) noiseless spectrum above the atmosphere, ``sky_flux`` (n, W) sky in flux units (same
    calibration as ``flux``), ``sky_resid`` (n, W) the sky-subtraction residual in flux units, ``halpha_flux``
    (observed, attenuated Hα, 1e-17 erg/s/cm²), ``halpha_cont`` (continuum at observed Hα, flux units),
    ``av`` (stellar A_V), ``sigma_v`` (gas, km/s), ``line_flux``, ``continuum``, ``halpha_pix``,
    ``delivery_factor`` (n, W) delivered flux per electron (calibration and telluric errors included),
    ``expected`` (n, W) the noiseless delivered spectrum without sky residuals, ``aperture`` (n, W),
    ``chromatic_aperture``, ``sky_resid_in_ivar`` (n,) bool, ``quench``.

    The stages run in a fixed order on the same uniform draws ``u`` (n, 96) and Gaussian noise (n, W):
    :func:`_population` → :func:`_ssp_galaxies` → :func:`_kcorrect_galaxies` → :func:`_emission_lines`
    → :func:`_stars` → :func:`_observe`; each column of ``u`` has one use, so the bytes of every output are
    fixed by (seed, row, config).
    """
    cfg = config or SimConfig()
    cfg.validate()
    inst = instrument if isinstance(instrument, Instrument) else load_instrument(instrument)
    load_sky_model(inst, airmass=cfg.airmass)  # an instrument without a sky model fails here, before the work
    wave = inst.wave
    W = wave.size
    n = int(n)
    u, gauss = _draws(seed, start, n, W)
    p = _population(u, cfg, n, len(inst.arms))
    model = np.zeros((n, W), np.float32)
    logm = np.full(n, np.nan)
    logsfr = np.full(n, np.nan)
    age_mw = np.full(n, np.nan)
    cont_ha = np.zeros(n)  # observed-frame continuum f_λ at observed Hα, 1e-17 units
    _ssp_galaxies(p, u, cfg, inst, model, logm, logsfr, age_mw, cont_ha)
    _kcorrect_galaxies(p, u, cfg, wave, model, logm, logsfr, cont_ha)
    lf, sig_v, ew_ha = _emission_lines(p, u, cfg, logm, logsfr, cont_ha)
    cont_model = model.copy() if extras else None
    _add_gas_lines(p, cfg, inst, model, lf, sig_v)
    star_index = _stars(p, u, wave, model)
    if extras:
        cont_model[p.star] = model[p.star]
    ob = _obs_vectors(inst, cfg.airmass, cfg.n_spatial_pix)
    o = _observe(p, u, gauss, cfg, inst, ob, model, extras)
    sfr_ok = p.gal & np.isfinite(logsfr)
    with np.errstate(invalid="ignore"):
        passive = sfr_ok & (logsfr - logm < np.log10(0.2 / (p.t_univ * 1e9)))
    star = p.star
    out = {
        "flux": o["flux"].astype(np.float32, copy=False),
        "ivar": o["ivar"].astype(np.float32, copy=False),
        "object_id": np.arange(start, start + n, dtype=np.int64),
        "ra": p.ra.astype(np.float64),
        "dec": p.dec.astype(np.float64),
        "t_exp": p.t_exp.astype(np.float32),
        "z_true": p.z.astype(np.float32),
        "logmstar_true": np.where(star, np.nan, logm).astype(np.float32),
        "logsfr_true": np.where(star, np.nan, logsfr).astype(np.float32),
        "is_passive": passive.astype(bool),
        "mag_h": p.mag_h.astype(np.float32),
        "kind": p.kind,
        "template_family": p.fam_code,
        "sfh_kind": p.sfh,
        "age_mw_true": np.where(star, np.nan, age_mw).astype(np.float32),
        "ew_halpha_rest_true": ew_ha.astype(np.float32),
        "av_true": np.where(star, np.nan, p.av).astype(np.float32),
        # kcorrect continua keep their own R ≈ 1160 (σ ≈ 110 km/s) and are not broadened: no σ★ truth
        "sigma_star_true": np.where(star | p.kc_rows, np.nan, p.sig_star).astype(np.float32),
        "star_index": star_index,
    }
    if extras:
        ia = ph.LINE_NAMES.index("Halpha")
        lam_ha = ph.LINE_WAVE[ia] * (1 + p.zg)
        jj = np.clip(np.searchsorted(wave, lam_ha), 0, W - 1)
        sky_e = p.t_exp[:, None] * (ob["sky_line"] + ob["sky_cont"])[None, :]
        fac = o["fac"]
        out.update({"model": model, "sky_flux": sky_e * fac, "sky_resid": o["resid_e"] * fac,
                    "halpha_flux": np.where(star, 0.0, lf[:, ia]), "halpha_cont": cont_ha, "av": p.av,
                    "sigma_v": sig_v, "line_flux": lf, "continuum": cont_model, "halpha_pix": jj,
                    "delivery_factor": fac, "aperture": o["aperture"], "expected": o["obj_e"] * fac,
                    "chromatic_aperture": o["chrom"], "sky_resid_in_ivar": o["in_ivar"], "quench": p.quench})
    return out
