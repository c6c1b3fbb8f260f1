"""The observation stage of the simulator: a noiseless spectrum above the atmosphere becomes what MOONS delivers.

Aperture losses (seeing, galaxy size, differential refraction in the fibre), object and sky electrons, dark and
read noise, noise misreported per arm, imperfect sky subtraction, flux calibration, arm offsets and telluric
correction errors. Called by :func:`survey_infer.simulate.simulator._simulate`; the draws it reads are columns of
the same per-object uniforms ``u`` (n, 96) and Gaussian noise (n, W).
"""
from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

import numpy as np
from scipy.special import ndtri

from ..instrument import Instrument
from ..skymodel import load_sky_model
from . import physics as ph


def _N(u: np.ndarray) -> np.ndarray:
    """Standard normal from a uniform (inverse CDF)."""
    return ndtri(np.clip(u, 1e-12, 1 - 1e-12))


def _logu(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Log-uniform in [lo, hi] from a uniform (lo may be 0: then uniform)."""
    if lo <= 0:
        return lo + (hi - lo) * u
    return np.exp(np.log(lo) + (np.log(hi) - np.log(lo)) * u)


def _unif(u: np.ndarray, col: int, rng: tuple[float, float]) -> np.ndarray:
    """Column ``col`` of the uniform draws mapped onto ``rng``."""
    return rng[0] + (rng[1] - rng[0]) * u[:, col]


@lru_cache(maxsize=8)
def _sky_continuum(inst: Instrument, airmass: float) -> np.ndarray:
    """Smooth sky continuum (running median over 101 pixels per arm), same units as the sky emission."""
    from scipy.ndimage import median_filter

    em = load_sky_model(inst, airmass=airmass).emission.astype(np.float64)
    out = np.empty_like(em)
    for sl in inst.arm_slices():
        out[sl] = np.minimum(median_filter(em[sl], size=101, mode="nearest"), em[sl])
    return out


@lru_cache(maxsize=8)
def _obs_vectors(inst: Instrument, airmass: float, n_spatial_pix: float) -> dict:
    """Per-pixel vectors of the observation model (float32): object e⁻/s per flux unit × transmission
    (``tel_conv``, before the aperture), its inverse without transmission (``inv_conv``), background variance
    per second (``bg_rate`` = sky + dark) and per exposure (``ron2``), the sky split into lines and continuum
    (e⁻/s), the sky's gradient per pixel, ln T, the Legendre abscissa per arm, and the coarse wavelength grid
    (``lam_c``) with linear-interpolation indices/weights (``ci``, ``cw``) for the chromatic aperture."""
    sky = load_sky_model(inst, airmass=airmass)
    area = float(inst.config.get("telescope_area_cm2", 490000.0))
    fib = float(inst.config.get("fiber_area_arcsec2", 0.9503))
    thr = sky.throughput.astype(np.float64)
    tel = sky.transmission.astype(np.float64)
    conv = 1e-17 * inst.wave / ph.HC_ERG_AA * area * thr * inst.dwave
    sky_rate = sky.emission.astype(np.float64) * fib * area * thr * inst.dwave
    cont = _sky_continuum(inst, airmass) * fib * area * thr * inst.dwave
    grad = np.empty_like(sky_rate)
    legx = np.empty_like(sky_rate)
    for sl in inst.arm_slices():
        grad[sl] = np.gradient(sky_rate[sl])
        legx[sl] = np.linspace(-1.0, 1.0, sl.stop - sl.start)
    lam_c = np.exp(np.linspace(np.log(inst.wave[0]), np.log(inst.wave[-1]), 48))
    x = (np.log(inst.wave) - np.log(lam_c[0])) / (np.log(lam_c[-1]) - np.log(lam_c[0])) * 47
    ci = np.clip(np.floor(x).astype(np.intp), 0, 46)
    f = np.float32
    return {"tel_conv": (tel * conv).astype(f), "inv_conv": (1.0 / conv).astype(f),
            "bg_rate": (sky_rate + sky.dark_e_per_s * n_spatial_pix).astype(f),
            "ron2": (sky.read_noise_e.astype(np.float64) ** 2 * n_spatial_pix).astype(f),
            "sky_line": (sky_rate - cont).astype(f), "sky_cont": cont.astype(f), "sky_grad": grad.astype(f),
            "lntel": np.log(np.maximum(tel, 1e-3)), "legx": legx, "r_fib2": fib / np.pi,
            "lam_c": lam_c, "ci": ci, "cw": (x - ci).astype(f)}


def refraction_arcsec(lam_aa: np.ndarray, airmass: np.ndarray, ref_aa: float = 12000.0) -> np.ndarray:
    """Atmospheric differential refraction (arcsec) of λ relative to ``ref_aa`` at ``airmass`` (n,) → (n, L).

    (n − 1) from Edlén (1966) for dry air at 15 °C, scaled to Paranal's 743 hPa; offset = 206265 Δn tan z.
    """
    def n1(lam):
        s2 = (1e4 / np.asarray(lam, float)) ** 2
        return (64.328 + 29498.1 / (146.0 - s2) + 255.4 / (41.0 - s2)) * 1e-6 * (743.0 / 1013.25)

    tanz = np.sqrt(np.maximum(np.asarray(airmass, float) ** 2 - 1.0, 0.0))
    return 206264.8 * (n1(lam_aa) - n1(ref_aa))[None, :] * tanz[:, None]


def _aperture(p: SimpleNamespace, u: np.ndarray, cfg, ob: dict, n: int, W: int) -> np.ndarray:
    """Aperture efficiency (n, W) of the population ``p`` under ``cfg`` (a :class:`SimConfig`): Gaussian seeing
    ⊗ Gaussian galaxy (σ = r_e / 1.1774), centred at 1.2 µm and offset by differential refraction, in the circular
    fibre: P(|X| < r) = ncx2.cdf(r²/σ², 2, d²/σ²) (a constant when ``cfg.aperture_efficiency`` is set)."""
    f32 = np.float32
    seeing = _unif(u, 59, cfg.seeing_range)
    r_e = np.where(p.star, 0.0, _unif(u, 60, cfg.size_range))
    x_air = _unif(u, 67, cfg.adr_airmass_range)
    if cfg.aperture_efficiency is not None:
        return np.full((n, W), cfg.aperture_efficiency, f32)
    from scipy.stats import ncx2

    lam = ob["lam_c"][None, :]
    fwhm = seeing[:, None] * (lam / 5000.0) ** -0.2 * x_air[:, None] ** 0.6
    s2_ap = (fwhm / 2.3548) ** 2 + (r_e[:, None] / 1.1774) ** 2
    d2 = refraction_arcsec(ob["lam_c"], x_air) ** 2
    ap_c = ncx2.cdf(ob["r_fib2"] / s2_ap, 2, d2 / s2_ap).astype(f32)
    a0 = ap_c[:, ob["ci"]]
    return a0 + (ap_c[:, ob["ci"] + 1] - a0) * ob["cw"]


def _observe(p: SimpleNamespace, u: np.ndarray, gauss: np.ndarray, cfg, inst: Instrument, ob: dict,
             model: np.ndarray, extras: bool) -> dict:
    """Observe ``model`` (n, W) through MOONS: electrons from object (aperture, throughput, exposure), sky,
    dark and read noise; noise misreported by a per-arm factor; imperfect per-arm sky subtraction (line scale,
    continuum, wavelength shift; optionally in the ivar); delivered flux with flux-calibration, arm-offset and
    telluric-correction errors.

    Kept as one function (~85 lines) because the noise, the sky residual and the delivery factor are built arm
    by arm in one loop whose order fixes the bytes of the output.

    Returns
    -------
    dict
        ``flux``, ``ivar`` (n, W) float32 delivered spectrum and inverse variance; ``fac`` (n, W) delivered flux
        per electron, ``obj_e`` (n, W) object electrons, ``resid_e`` (n, W) sky residual electrons (None unless
        ``extras``), ``aperture`` (n, W), ``chrom`` and ``in_ivar`` (n,) bool.
    """
    n, W = model.shape
    slices = inst.arm_slices()
    f32 = np.float32
    t_exp = p.t_exp
    aperture = _aperture(p, u, cfg, ob, n, W)
    chrom = (u[:, 79] < cfg.chromatic_aperture_fraction) & (cfg.aperture_efficiency is None)
    thr_s = _unif(u, 66, cfg.throughput_scale_range)
    vfac = _unif(u, 65, cfg.sky_sub_variance_range)
    n_exp = np.maximum(np.round(t_exp / cfg.dit_s), 1.0)
    tt = (t_exp * thr_s)[:, None].astype(f32) * aperture  # (n, W)
    # electrons: object × transmission × throughput × area × aperture × t; background: sky + dark + read noise
    obj_e = np.maximum(model, f32(0.0)) * ob["tel_conv"][None, :]
    obj_e *= tt
    var_bg = (vfac * t_exp)[:, None].astype(f32) * ob["bg_rate"][None, :] + (vfac * n_exp)[:, None].astype(f32) * ob["ron2"]
    var_e = obj_e + var_bg
    sig_e = np.sqrt(var_e)
    # imperfect sky subtraction per arm: scale error on the sky lines and on the continuum, wavelength shift
    lvl_line = _logu(u[:, 61], *cfg.sky_residual_range) * t_exp
    lvl_cont = _logu(u[:, 62], *cfg.sky_continuum_residual_range) * t_exp
    lvl_shift = _logu(u[:, 63], *cfg.sky_shift_range_pix) * t_exp
    in_ivar = u[:, 74] < cfg.sky_resid_ivar_fraction
    nscale = np.empty((n, W), f32)  # true σ / reported σ, per object and arm
    for j, sl in enumerate(slices):
        nscale[:, sl] = _unif(u, 76 + j if j < 3 else 64, cfg.noise_scale_range)[:, None]
    obs_e = obj_e + (sig_e * nscale) * gauss
    resid_e = np.empty((n, W), f32) if extras else None
    var_rep = var_e.copy() if in_ivar.any() else var_e
    # delivered flux = electrons / (conv × t × throughput × aperture × telluric correction) × calibration error;
    # chromatic-aperture objects keep aperture(λ) in the delivered flux
    fac = np.empty((n, W), f32)
    for j, sl in enumerate(slices):
        a = (lvl_line * _N(u[:, 27 + j]))[:, None].astype(f32)
        ac = (lvl_cont * _N(u[:, 33 + j]))[:, None].astype(f32)
        sh = (lvl_shift * _N(u[:, 30 + j]))[:, None].astype(f32)
        r_ = a * ob["sky_line"][None, sl] + ac * ob["sky_cont"][None, sl] + sh * ob["sky_grad"][None, sl]
        obs_e[:, sl] += r_
        if extras:
            resid_e[:, sl] = r_
        if in_ivar.any():
            ri = np.flatnonzero(in_ivar)
            var_rep[ri, sl] += ((lvl_line[ri, None] * ob["sky_line"][None, sl]) ** 2
                                + (lvl_cont[ri, None] * ob["sky_cont"][None, sl]) ** 2
                                + (lvl_shift[ri, None] * ob["sky_grad"][None, sl]) ** 2).astype(f32)
        x = ob["legx"][sl]
        cl = cfg.fluxcal_rms / np.sqrt(3.0) * _N(u[:, 80 + 3 * j:83 + 3 * j])
        off = np.exp(cfg.arm_offset_rms * _N(u[:, 89 + j]))
        cal = off[:, None] * (1.0 + cl[:, 0:1] * x + cl[:, 1:2] * (0.5 * (3 * x**2 - 1))
                              + cl[:, 2:3] * (0.5 * (5 * x**3 - 3 * x)))
        cal = (np.maximum(cal, 0.2) / (t_exp * thr_s)[:, None]).astype(f32)
        cal = cal / np.where(chrom[:, None], f32(1.0), aperture[:, sl])
        if cfg.telluric_correct:  # the correction uses T^(1+δ): T^-(1+δ) = exp(-(1+δ) ln T)
            dlt = cfg.telluric_residual_rms * _N(u[:, 68 + j])
            cal = cal * np.exp(-(1.0 + dlt)[:, None] * ob["lntel"][None, sl]).astype(f32)
        fac[:, sl] = cal * ob["inv_conv"][None, sl]
    flux = obs_e * fac
    ivar = np.square(fac)
    ivar *= var_rep
    np.reciprocal(ivar, out=ivar)
    return {"flux": flux, "ivar": ivar, "fac": fac, "obj_e": obj_e, "resid_e": resid_e, "aperture": aperture,
            "chrom": chrom, "in_ivar": in_ivar}
