"""Stellar-population families, star-formation histories, dust laws and the empirical star library.

Data: ``survey_infer/data/templates/ssp_<family>.npz`` (``tools/build_ssp_families.py``) and
``survey_infer/data/stars/stars.npz`` (``tools/build_stars.py``); see docs/simulator.md for sources and licences.
All per-object functions are element-wise over rows (or loop over rows), so a row never depends on the batch.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

from . import physics as ph

__all__ = ["FAMILIES", "SSP_FAMILIES", "SFH_KINDS", "load_family", "load_stars", "sfh_weights", "dust_curve",
           "TBINS"]

#: template families, in the order of their ``template_family`` code (uint8)
FAMILIES = ("kcorrect", "m11_marcs", "m11_stelib", "mastar", "bpass")
SSP_FAMILIES = FAMILIES[1:]
#: star-formation-history kinds, in the order of their ``sfh_kind`` code (uint8); 255 = star
SFH_KINDS = ("delayed_tau", "constant", "burst", "post_starburst", "old_passive", "nmf_mix")
SFH_CODE = {k: i for i, k in enumerate(SFH_KINDS)}

# fine lookback-time grid for integrating SFHs (Gyr): 1 Myr – 14 Gyr, log-spaced, with trapezoid widths
TBINS = np.exp(np.linspace(np.log(1e-3), np.log(14.0), 241))
_DT = np.gradient(TBINS)


def _load_npz(*parts: str) -> dict:
    f = resources.files("survey_infer").joinpath("data", *parts)
    with f.open("rb") as fh, np.load(fh, allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


@lru_cache(maxsize=None)
def load_family(name: str) -> dict:
    """A stellar-population family on the common rest grid.

    Returns
    -------
    dict
        ``cube`` (K, L) float32 erg/s/cm²/Å at 10 pc per M☉ formed (Chabrier-equivalent), K = n_age × n_z with
        the metallicity varying fastest; ``age_gyr`` (n_age,), ``logz`` (n_z,), ``mremain`` (K,) M☉ per M☉
        formed; ``lnw0``, ``dlnw`` (ln Å); ``sigma_wave``, ``sigma_kms`` the template's own Gaussian σ;
        ``bin_of_t`` (len(TBINS),) age bin of each fine lookback time.

    Raises
    ------
    KeyError
        ``name`` is not one of :data:`SSP_FAMILIES`.
    """
    if name not in SSP_FAMILIES:
        raise KeyError(f"unknown SSP family {name!r}; known: {', '.join(SSP_FAMILIES)}")
    d = _load_npz("templates", f"ssp_{name}.npz")
    na, nz, L = d["flux"].shape
    cube = (d["flux"].astype(np.float32) * d["norm"][:, :, None].astype(np.float32)).reshape(na * nz, L)
    ages = d["age_gyr"].astype(np.float64)
    edges = np.concatenate([[0.0], np.sqrt(ages[1:] * ages[:-1]), [np.inf]])
    bin_of_t = np.clip(np.searchsorted(edges, TBINS, side="right") - 1, 0, na - 1)
    return {"cube": np.ascontiguousarray(cube), "age_gyr": ages, "logz": d["logz"].astype(np.float64),
            "mremain": d["mremain"].reshape(-1).astype(np.float64), "lnw0": float(d["lnw0"]),
            "dlnw": float(d["dlnw"]), "sigma_wave": d["sigma_wave"], "sigma_kms": d["sigma_kms"],
            "bin_of_t": bin_of_t, "n_age": na, "n_z": nz, "L": L, "native": d["native"]}


@lru_cache(maxsize=1)
def load_stars() -> dict:
    """Empirical star library: ``flux`` (n_star, L) float64 (unit mean over 15000–18000 Å), ``lnw0``, ``dlnw``,
    ``name`` (n_star,)."""
    d = _load_npz("stars", "stars.npz")
    return {"flux": d["flux"].astype(np.float64), "lnw0": float(d["lnw0"]), "dlnw": float(d["dlnw"]),
            "name": d["name"], "extension": d["extension"]}


@lru_cache(maxsize=4)
def dust_curve(law: str, lnw0: float, dlnw: float, L: int) -> np.ndarray:
    """A_λ / A_V on a log grid. ``calzetti``: Calzetti et al. (2000), R_V = 4.05; ``smc``: an SMC-bar-like steep
    power law A_λ/A_V = (λ / 5510 Å)^−1.2 (A_2000/A_V ≈ 3.4, close to Gordon et al. 2003)."""
    w = np.exp(lnw0 + dlnw * np.arange(L))
    if law == "calzetti":
        return ph.calzetti_k(w) / 4.05
    if law == "smc":
        return (w / 5510.0) ** -1.2
    raise KeyError(f"unknown dust law {law!r}")


def sfh_psi(kind: np.ndarray, t0: np.ndarray, tau: np.ndarray, tb: np.ndarray, fb: np.ndarray, tq: np.ndarray,
            lssfr_res: np.ndarray) -> np.ndarray:
    """Star-formation rate ψ(t) (M☉/Gyr per unit mass formed, up to a common scale) at the lookback times
    :data:`TBINS`, shape (n, T).

    Parameters (all (n,), Gyr unless stated)
    ----------
    kind : SFH code (see :data:`SFH_KINDS`); t0 : lookback time of formation; tau : e-folding time of the
    delayed-τ part ψ ∝ s e^(−s/τ), s = t0 − t; tb, fb : burst lookback time (a 50 Myr top-hat starting there) and
    the fraction of all mass it forms; tq : quenching lookback time (post-starburst); lssfr_res : log10 of the
    residual specific SFR (yr⁻¹) of quenched histories (post-starburst: after tq; old passive: over the last
    min(0.3 Gyr, t0)), relative to 0.6 × the mass formed (≈ the stellar mass).
    """
    t = TBINS[None, :]
    s = np.maximum(t0[:, None] - t, 0.0)
    base = s * np.exp(-s / tau[:, None])
    const = (s > 0).astype(np.float64)
    k = kind[:, None]
    alive = s > 0
    psi = np.where(k == SFH_CODE["constant"], const, base)
    is_q = kind == SFH_CODE["post_starburst"]
    is_old = kind == SFH_CODE["old_passive"]
    t_res = np.where(is_q, tq, np.minimum(0.3, t0))  # residual star formation period (lookback < t_res)
    psi = np.where(is_q[:, None] & (t < tq[:, None]), 0.0, psi)
    # bursts (kind burst: at tb; post-starburst: just before tq), 50 Myr top-hats holding a fraction fb of the mass
    t_start = np.where(is_q, tq, tb)
    in_b = (t >= t_start[:, None]) & (t < t_start[:, None] + 0.05) & alive
    has_b = ((k == SFH_CODE["burst"]) | (k == SFH_CODE["post_starburst"])) & in_b
    m_base = np.sum(psi * _DT[None, :], axis=1)
    m_b_unit = np.sum(in_b * _DT[None, :], axis=1)
    amp = np.where(m_b_unit > 0, fb / np.maximum(1 - fb, 1e-6) * m_base / np.maximum(m_b_unit, 1e-12), 0.0)
    psi = psi + np.where(has_b, amp[:, None], 0.0)
    # quenched: residual SF at the drawn sSFR (per Gyr) over the recent period, replacing what was there
    m_tot = np.sum(psi * _DT[None, :], axis=1)
    res = 10.0 ** (lssfr_res + 9.0) * 0.6 * m_tot
    recent = t < t_res[:, None]
    qd = (is_q | is_old)[:, None] & recent & alive
    psi = np.where(qd, res[:, None], psi)
    return psi


def sfh_weights(fam: dict, psi: np.ndarray, logz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                         np.ndarray]:
    """Mass formed per SSP of a family for SFHs ``psi`` (n, T) and metallicities ``logz`` (n,) [Z/H].

    Returns
    -------
    w : (n, K) M☉ formed per M☉ formed in total (rows sum to 1); metallicity interpolated linearly in [Z/H]
        between the two nearest grid values (clipped to the family's range).
    mstar_per_formed : (n,) M☉ in stars and remnants per M☉ formed.
    sfr_per_formed : (n,) yr⁻¹, ψ averaged over the last 10 Myr per M☉ formed.
    age_mw : (n,) Gyr, stellar-mass-weighted age (SSP nominal ages).
    """
    n = psi.shape[0]
    m_t = psi * _DT[None, :]
    na, nz = fam["n_age"], fam["n_z"]
    m_age = np.zeros((n, na))
    for j in range(na):  # fixed summation order
        sel = fam["bin_of_t"] == j
        if sel.any():
            m_age[:, j] = np.sum(m_t[:, sel], axis=1)
    tot = np.sum(m_age, axis=1)
    m_age /= tot[:, None]
    zg = fam["logz"]
    lz = np.clip(logz, zg[0], zg[-1])
    iz = np.clip(np.searchsorted(zg, lz, side="right") - 1, 0, max(nz - 2, 0))
    if nz > 1:
        tz = (lz - zg[iz]) / (zg[iz + 1] - zg[iz])
    else:
        tz = np.zeros(n)
    w = np.zeros((n, na, nz))
    r = np.arange(n)
    w[r, :, iz] = m_age * (1 - tz)[:, None]
    if nz > 1:
        w[r, :, iz + 1] += m_age * tz[:, None]
    w = w.reshape(n, na * nz)
    mrem = fam["mremain"]
    ages = np.repeat(fam["age_gyr"], nz)
    ms = np.sum(w * mrem[None, :], axis=1)
    age_mw = np.sum(w * mrem[None, :] * ages[None, :], axis=1) / ms
    recent = TBINS < 0.01
    sfr = np.sum(m_t[:, recent], axis=1) / np.sum(_DT[recent]) / tot * 1e-9
    return w, ms, sfr, age_mw
