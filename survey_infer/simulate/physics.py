"""Astrophysical ingredients of the simulator: template basis, cosmology tables, dust, emission lines, stars.

Everything here is vectorised over objects and uses only element-wise numpy operations (no BLAS reductions), so
a row's result never depends on how many rows are computed together (bit-for-bit chunk invariance).
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
from scipy.special import ndtr

C_KMS = 299792.458
C_AA_S = 2.99792458e18  # speed of light, Å/s
HC_ERG_AA = 1.98644586e-8  # h c, erg Å
PC_CM = 3.0856775814913673e18
LOG_HALPHA_SFR = 41.27  # log L(Hα)[erg/s] − log SFR[M☉/yr], Kennicutt & Evans 2012, Chabrier IMF

#: H filter used for m_H: top-hat 15000–18000 Å, photon-counting AB magnitude.
H_FILTER = (15000.0, 18000.0)
_H_SAMPLES = np.linspace(H_FILTER[0], H_FILTER[1], 301)

# Emission lines: (name, vacuum rest wavelength Å)
LINES = (
    ("OII_3726", 3727.09), ("OII_3729", 3729.88), ("NeIII_3869", 3869.86), ("Hdelta", 4102.89),
    ("Hgamma", 4341.68), ("Hbeta", 4862.68), ("OIII_4959", 4960.30), ("OIII_5007", 5008.24),
    ("NII_6548", 6549.86), ("Halpha", 6564.61), ("NII_6583", 6585.27), ("SII_6716", 6718.29),
    ("SII_6731", 6732.67),
)
LINE_WAVE = np.array([w for _, w in LINES])
LINE_NAMES = tuple(n for n, _ in LINES)

# Stellar absorption lines for the star interlopers: vacuum Å; index 0 = "cool" (Ca II triplet, Na I, Mg I, Al I),
# 1 = "hot" (Paschen, Brackett series)
STAR_LINES_COOL = np.array([8500.36, 8544.44, 8664.52, 8185.5, 8197.1, 11831.0, 12085.0, 15770.1, 15753.3, 16723.5])
STAR_LINES_HOT = np.array([9017.4, 9231.5, 9548.6, 10052.1, 10941.1, 12821.6, 15704.9, 15884.9, 16113.7,
                           16411.7, 16811.1, 17366.9])


@lru_cache(maxsize=1)
def template_basis() -> dict:
    """The line-free kcorrect basis shipped in ``survey_infer/data/templates/kcorrect_linefree.npz``.

    Returns
    -------
    dict
        ``wave`` (L,) rest Å on a log grid, ``lnw0``, ``dlnw``, ``flux`` (5, L) erg/s/cm²/Å at 10 pc per M☉ formed,
        ``mremain``, ``m300``, ``m1000`` (5,) M☉ per M☉ formed.
    """
    f = resources.files("survey_infer") / "data" / "templates" / "kcorrect_linefree.npz"
    with f.open("rb") as fh, np.load(fh, allow_pickle=False) as d:
        out = {k: d[k] for k in d.files}
    lnw = np.log(out["wave"])
    out["lnw0"] = float(lnw[0])
    out["dlnw"] = float((lnw[-1] - lnw[0]) / (lnw.size - 1))
    out["flux"] = out["flux"].astype(np.float64)
    # the kcorrect grid is logarithmic to float32 precision; put it exactly on the log grid
    out["wave"] = np.exp(out["lnw0"] + out["dlnw"] * np.arange(lnw.size))
    return out


@lru_cache(maxsize=1)
def cosmology_tables() -> dict:
    """Planck18 (astropy) luminosity distance [cm] and cosmic age [Gyr] tabulated on 0 ≤ z ≤ 6 (Δz = 1e-3)."""
    from astropy.cosmology import Planck18

    z = np.linspace(0.0, 6.0, 6001)
    dl = Planck18.luminosity_distance(z).to("cm").value
    dl[0] = 10 * PC_CM
    za = np.linspace(0.0, 6.0, 301)  # the age is smooth: a coarse table is exact to < 1e-4 Gyr
    age = np.interp(z, za, Planck18.age(za).to("Gyr").value)
    return {"z": z, "dl_cm": dl, "age_gyr": age}


def lum_distance_cm(z: np.ndarray) -> np.ndarray:
    t = cosmology_tables()
    return np.interp(z, t["z"], t["dl_cm"])


def age_gyr(z: np.ndarray) -> np.ndarray:
    t = cosmology_tables()
    return np.interp(z, t["z"], t["age_gyr"])


def calzetti_k(wave_aa: np.ndarray) -> np.ndarray:
    """Calzetti et al. (2000) k(λ) (R_V = 4.05), extrapolated linearly in 1/λ outside 0.12–2.2 µm, k ≥ 0."""
    x = np.asarray(wave_aa, np.float64) / 1e4
    xs = np.clip(x, 0.12, 2.2)
    blue = 2.659 * (-2.156 + 1.509 / xs - 0.198 / xs**2 + 0.011 / xs**3) + 4.05
    red = 2.659 * (-1.857 + 1.040 / xs) + 4.05
    k = np.where(xs < 0.63, blue, red)
    # linear extrapolation in 1/λ beyond the range
    k = np.where(x > 2.2, 2.659 * (-1.857 + 1.040 / x) + 4.05, k)
    return np.maximum(k, 0.0)


def main_sequence_logsfr(logm: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Speagle et al. (2014) star-forming main sequence (Chabrier/Kroupa), log M☉/yr."""
    t = age_gyr(z)
    return (0.84 - 0.026 * t) * logm - (6.51 - 0.11 * t)


def ab_mag_h(flux_fn) -> np.ndarray:
    """Photon-counting AB magnitude in the top-hat H filter; ``flux_fn(wave)`` gives f_λ (n, S) erg/s/cm²/Å."""
    f = flux_fn(_H_SAMPLES)
    num = np.mean(f * _H_SAMPLES, axis=-1) * (H_FILTER[1] - H_FILTER[0])
    den = C_AA_S * np.log(H_FILTER[1] / H_FILTER[0])
    with np.errstate(divide="ignore"):
        return -2.5 * np.log10(num / den) - 48.60


def sample_log_grid(spec: np.ndarray, lnw0: float, dlnw: float, wave: np.ndarray) -> np.ndarray:
    """Linear interpolation of per-row spectra ``spec`` (n, L) on a log grid at per-row wavelengths (n, S)."""
    x = (np.log(wave) - lnw0) / dlnw
    L = spec.shape[1]
    x = np.clip(x, 0.0, L - 1.000001)
    i0 = np.floor(x).astype(np.intp)
    t = x - i0
    rows = np.arange(spec.shape[0])[:, None]
    return spec[rows, i0] * (1.0 - t) + spec[rows, i0 + 1] * t


def add_gaussian_lines(out: np.ndarray, arms, arm_slices, center: np.ndarray, flux: np.ndarray,
                       sigma_v_kms: np.ndarray, sigma_v_max_kms: float) -> None:
    """Add pixel-integrated Gaussian lines to ``out`` (n, W) in place.

    Parameters
    ----------
    center : (n, K) observed centres, Å; flux : (n, K) integrated line fluxes (flux-density unit × Å; negative
        for absorption); sigma_v_kms : (n,) or (n, K) intrinsic velocity dispersion. The observed width is
        σ² = (λ σ_v / c)² + (λ / (2.3548 R))² of the arm the line falls in. Each line is evaluated on a fixed
        window of ±6 σ_max pixels (fixed per arm, so results do not depend on the batch).
    """
    n, K = center.shape
    if n == 0 or K == 0:
        return
    sv = np.broadcast_to(np.asarray(sigma_v_kms, np.float64).reshape(n, -1), (n, K))
    for a, sl in zip(arms, arm_slices):
        lo_w = a.wave_min - 0.5 * a.dwave
        hi_w = a.wave_max + 0.5 * a.dwave
        inside = (center > lo_w) & (center < hi_w) & (flux != 0)
        r, k = np.nonzero(inside)  # row-major: per row, lines in ascending k (fixed summation order)
        if r.size == 0:
            continue
        smax = a.wave_max * np.hypot(sigma_v_max_kms / C_KMS, 1.0 / (2.3548 * a.resolution))
        half = int(np.ceil(6.0 * smax / a.dwave)) + 1
        offs = np.arange(-half, half + 1)
        c = center[r, k]
        sig = c * np.hypot(sv[r, k] / C_KMS, 1.0 / (2.3548 * a.resolution))
        cpix = np.floor((c - lo_w) / a.dwave).astype(np.intp)
        idx = cpix[:, None] + offs  # (M, P)
        e_lo = lo_w + idx * a.dwave
        z_lo = (e_lo - c[:, None]) / sig[:, None]
        z_hi = (e_lo + a.dwave - c[:, None]) / sig[:, None]
        prof = (ndtr(z_hi) - ndtr(z_lo)) * (flux[r, k] / a.dwave)[:, None]
        valid = (idx >= 0) & (idx < a.npix)
        rr = np.broadcast_to(r[:, None], idx.shape)
        block = out[:, sl]  # a view: np.add.at writes into ``out``
        np.add.at(block, (rr[valid], idx[valid]), prof[valid].astype(block.dtype, copy=False))


def planck_flam(wave_aa: np.ndarray, teff: np.ndarray) -> np.ndarray:
    """Blackbody B_λ shape (arbitrary normalisation) for rows of ``teff`` (n,) at ``wave_aa`` (W,) or (n, S)."""
    x = 1.4387769e8 / (np.asarray(wave_aa) * np.asarray(teff)[:, None])  # hc/(λ k T), λ in Å
    return 1.0 / (np.asarray(wave_aa) / 1e4) ** 5 / np.expm1(np.minimum(x, 700.0))
