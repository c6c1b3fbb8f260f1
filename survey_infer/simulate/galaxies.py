"""The galaxies and stars of the survey simulator: who is in the survey (:func:`_population`), their continua
(SSP families or kcorrect templates), their emission lines, and the empirical stars. Each function is
element-wise over the rows of one block (see :mod:`survey_infer.simulate.simulator`)."""
from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

import numpy as np

from ..instrument import Instrument
from . import families as fm
from . import physics as ph
from .config import (FAMILIES, KIND_GALAXY, KIND_HIGHZ, KIND_LOWZ, KIND_STAR, LOG_SSFR_FLOOR, LOG_SSFR_QUENCHED_MAX,
                     NEB_STELLAR_AV, NO_FAMILY, SimConfig)
from .observe import _N, _logu


OLD_SET = (0, 2, 3, 4)  # kcorrect continuum templates (mixed with Dirichlet weights)
YOUNG = 1  # the young, line-emitting kcorrect template that carries the star formation


def _shape_per_unit_mass(tb: dict, z: np.ndarray, lssfr: np.ndarray, old_w: np.ndarray, av: np.ndarray,
                         young_scale: np.ndarray | float = 1.0):
    """kcorrect family: per-unit-stellar-mass rest spectrum (n, L) at 10 pc with dust, and its log sSFR (yr⁻¹).

    The galaxy is x M☉ formed of the continuum mixture ``old_w`` over :data:`OLD_SET` plus y M☉ formed of the
    young template; y/x is solved so that the instantaneous (Hα-calibrated, see ``tools/build_templates.py``)
    sSFR equals ``lssfr`` where possible (clipped to the pure-young and pure-old limits). The young template's
    light is multiplied by ``young_scale`` (quenched galaxies: 1/2.4, its UV per unit Hα-SFR being 2.4× that of
    a BC03 100 Myr constant-SFR population; moons1d comparison F1).
    """
    r, s_ha = tb["mremain"], tb["sfr_halpha"]
    r_o = sum(old_w[:, j] * r[t] for j, t in enumerate(OLD_SET))
    p_o = sum(old_w[:, j] * s_ha[t] for j, t in enumerate(OLD_SET))
    r_y, p_y = r[YOUNG], s_ha[YOUNG]
    K = 10.0 ** lssfr
    num = K * r_o - p_o
    den = p_y - K * r_y
    pure_young = den <= 0
    ratio = np.where(pure_young, 0.0, np.maximum(num, 0.0) / np.where(pure_young, 1.0, den))
    x = np.where(pure_young, 0.0, 1.0 / (1.0 + ratio))
    y = np.where(pure_young, 1.0, ratio / (1.0 + ratio))
    mstar = x * r_o + y * r_y
    sfr = x * p_o + y * p_y
    F = tb["flux"]
    spec = np.zeros((z.size, F.shape[1]))
    for j, t in enumerate(OLD_SET):
        spec += (x * old_w[:, j])[:, None] * F[t]
    spec += (y * young_scale)[:, None] * F[YOUNG]
    spec /= mstar[:, None]
    att = 10.0 ** (-0.4 * av[:, None] * ph.calzetti_k(tb["wave"])[None, :] / 4.05)
    spec *= att
    with np.errstate(divide="ignore"):
        lssfr_act = np.log10(sfr / mstar)
    return spec, lssfr_act


@lru_cache(maxsize=4)
def _arm_plan(inst: Instrument) -> list[dict]:
    """Per arm: FFT length on the 1e-4 ln λ rest grid, padding, and the arm's ln λ pixel centres."""
    from scipy.fft import next_fast_len

    plans = []
    d = 1e-4
    for a, sl in zip(inst.arms, inst.arm_slices()):
        lw = np.log(inst.wave[sl])
        pad = 48  # ≥ 5 σ of the widest kernel (≈ 360 km/s = 12 px)
        span = int(np.ceil((lw[-1] - lw[0]) / d)) + 2
        nfft = next_fast_len(span + 2 * pad, real=True)
        plans.append({"arm": a, "sl": sl, "lw": lw, "pad": pad, "nfft": nfft, "xf": np.arange(nfft, dtype=float),
                      "lw_c": 0.5 * (lw[0] + lw[-1]),
                      "f2": np.fft.rfftfreq(nfft) ** 2, "sigma_lsf": ph.C_KMS / (2.3548 * a.resolution)})
    return plans


def _ssp_continua(rows: np.ndarray, fam_name: str, w: np.ndarray, z: np.ndarray, av: np.ndarray,
                  dust_law: np.ndarray, sig_star: np.ndarray, lsf_scale: np.ndarray, lsf_slope: np.ndarray,
                  dist_fac: np.ndarray, mag_h: np.ndarray, inst: Instrument,
                  out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Observed continua (1e-17 erg/s/cm²/Å) of the rows of one SSP family, written into ``out[rows]``.

    For each row: S = Σ_k w_k SSP_k on the rest window the arms see (per M☉ formed, 10 pc), times the dust law;
    the mass formed M follows from m_H of S × ``dist_fac`` (unbroadened, top-hat H filter); then per arm a
    Gaussian broadening (FFT) by sqrt(σ★² + (s σ_LSF)² − σ_template²) in ln λ at the arm's centre and linear
    interpolation at the arm's pixels, × M × dist_fac × 1e17.

    Returns
    -------
    m_formed : (rows,) M☉ formed.
    cont_ha : (rows,) observed-frame continuum at observed Hα (1e-17 erg/s/cm²/Å, unbroadened).
    """
    fam = fm.load_family(fam_name)
    cube, lnw0, dlnw, L = fam["cube"], fam["lnw0"], fam["dlnw"], fam["L"]
    curves = {law: fm.dust_curve(law, lnw0, dlnw, L) * (-0.4 * np.log(10.0)) for law in ("calzetti", "smc")}
    plans = _arm_plan(inst)
    lw_min = min(min(float(p["lw"][0]) for p in plans), np.log(ph.H_FILTER[0]))
    lw_max = max(max(float(p["lw"][-1]) for p in plans), np.log(ph.H_FILTER[1]))
    pad = 64
    Lw = int(np.ceil((lw_max - lw_min) / dlnw)) + 2 * pad + 2
    xw = np.arange(Lw, dtype=np.float64)
    lh = np.log(ph._H_SAMPLES)
    h_den = ph.C_AA_S * np.log(ph.H_FILTER[1] / ph.H_FILTER[0]) / (ph.H_FILTER[1] - ph.H_FILTER[0])
    i_ha = (np.log(ph.LINE_WAVE[ph.LINE_NAMES.index("Halpha")]) - lnw0) / dlnw
    iha0 = int(np.floor(i_ha))
    tha = i_ha - iha0
    m_formed = np.empty(rows.size)
    cha = np.empty(rows.size)
    tmp = np.empty(Lw, np.float32)
    for j, r in enumerate(rows):
        lz = np.log1p(z[r])
        i0 = int(np.floor((lw_min - lz - lnw0) / dlnw)) - pad
        i0 = min(max(i0, 0), L - Lw)
        acc = np.zeros(Lw, np.float32)
        nz = np.flatnonzero(w[j])
        wj = w[j].astype(np.float32)
        for k in nz:  # fixed order: ascending component index
            np.multiply(cube[k, i0:i0 + Lw], wj[k], out=tmp)
            acc += tmp
        curve = curves["smc" if dust_law[r] else "calzetti"]
        acc *= np.exp(av[r] * curve[i0:i0 + Lw]).astype(np.float32)
        x0 = lnw0 + dlnw * i0 + lz  # observed ln λ of acc[0]
        fH = np.interp((lh - x0) / dlnw, xw, acc) * dist_fac[r]
        m_unit = -2.5 * np.log10(np.mean(fH * ph._H_SAMPLES) / h_den) - 48.60
        mf = 10.0 ** ((m_unit - mag_h[r]) / 2.5)
        m_formed[j] = mf
        scale = mf * dist_fac[r] * 1e17
        ha = 0.0
        for k in nz:
            ha += w[j, k] * (cube[k, iha0] * (1 - tha) + cube[k, iha0 + 1] * tha)
        cha[j] = ha * np.exp(av[r] * (curve[iha0] * (1 - tha) + curve[iha0 + 1] * tha)) * scale
        for ia, p in enumerate(plans):
            lo = int(np.floor((p["lw"][0] - x0) / dlnw)) - p["pad"]
            seg = acc[lo:lo + p["nfft"]]
            if seg.size < p["nfft"]:
                seg = np.concatenate([seg, np.full(p["nfft"] - seg.size, seg[-1])])
            # one Gaussian per arm, at the arm's centre: the LSF slope changes sqrt(σ★² + σ_LSF²) by < 2% across
            # an arm for σ★ ≥ 50 km/s, so it is applied to the emission lines only
            s_t = float(np.interp(np.exp(p["lw_c"] - lz), fam["sigma_wave"], fam["sigma_kms"]))
            s2 = sig_star[r] ** 2 + (lsf_scale[r, ia] * p["sigma_lsf"]) ** 2 - s_t ** 2
            spix = np.sqrt(max(s2, 0.0)) / (ph.C_KMS * dlnw)
            kern = np.exp((-2.0 * np.pi ** 2 * spix ** 2) * p["f2"]) * scale
            conv = np.fft.irfft(np.fft.rfft(seg) * kern, p["nfft"])
            out[r, p["sl"]] = np.interp((p["lw"] - x0) / dlnw - lo, p["xf"], conv)
    return m_formed, cha


def _mag_from_samples(fH: np.ndarray) -> np.ndarray:
    """AB magnitude in the top-hat H filter from f_λ (n, S) at ``physics._H_SAMPLES``."""
    return ph.ab_mag_h(lambda ws: fH)


def _population(u: np.ndarray, cfg: SimConfig, n: int, n_arm: int) -> SimpleNamespace:
    """Who the objects are: kind, redshift, m_H, exposure, sky position, family, star-formation history,
    distances, σ★, dust and per-arm LSF scale, from the uniform draws ``u`` (n, 96).

    Returns a namespace of (n,) arrays: ``kind z star gal mag_h t_exp quench ra dec fam_code sfh kc_rows zg dl
    t_univ dist_fac sig_star smc av lsf_slope`` and ``lsf_scale`` (n, n_arm).
    """
    mix = np.cumsum(np.asarray(cfg.interloper_mix, float) / np.sum(cfg.interloper_mix))
    inter = u[:, 0] < cfg.interloper_fraction
    v = u[:, 1]
    kind = np.full(n, KIND_GALAXY, np.uint8)
    kind[inter & (v < mix[0])] = KIND_STAR
    kind[inter & (v >= mix[0]) & (v < mix[1])] = KIND_LOWZ
    kind[inter & (v >= mix[1])] = KIND_HIGHZ
    zlo = np.select([kind == KIND_LOWZ, kind == KIND_HIGHZ], [cfg.lowz_range[0], cfg.highz_range[0]], cfg.z_range[0])
    zhi = np.select([kind == KIND_LOWZ, kind == KIND_HIGHZ], [cfg.lowz_range[1], cfg.highz_range[1]], cfg.z_range[1])
    z = zlo + (zhi - zlo) * u[:, 2]
    star = kind == KIND_STAR
    gal = ~star
    z = np.where(star, 50.0 * _N(u[:, 3]) / ph.C_KMS, z)  # radial velocity ~ N(0, 50 km/s)
    mag_h = cfg.mag_h_range[0] + (cfg.mag_h_range[1] - cfg.mag_h_range[0]) * u[:, 4]
    texp_h = np.asarray(cfg.exposures_h, float)[np.minimum((u[:, 5] * len(cfg.exposures_h)).astype(int),
                                                            len(cfg.exposures_h) - 1)]
    t_exp = texp_h * 3600.0
    quench = (u[:, 6] < cfg.passive_fraction) & gal
    c0, c1 = cfg.field_center_deg
    half = cfg.field_size_deg / 2
    dec = np.degrees(np.arcsin(np.sin(np.radians(c1 - half))
                               + u[:, 7] * (np.sin(np.radians(c1 + half)) - np.sin(np.radians(c1 - half)))))
    ra = c0 + (u[:, 8] - 0.5) * cfg.field_size_deg / np.cos(np.radians(c1))

    # family and star-formation history
    fw = np.asarray(cfg.family_weights if cfg.family_weights is not None else [1.0] * len(cfg.families), float)
    fcum = np.cumsum(fw / fw.sum())
    fidx = np.minimum(np.searchsorted(fcum, u[:, 40], side="right"), len(cfg.families) - 1)
    fam_code = np.array([FAMILIES.index(f) for f in cfg.families], np.uint8)[fidx]
    fam_code = np.where(star, NO_FAMILY, fam_code).astype(np.uint8)
    smix = np.cumsum(np.asarray(cfg.sfh_mix, float) / np.sum(cfg.sfh_mix))
    sf_kind = np.minimum(np.searchsorted(smix, u[:, 41], side="right"), 2)  # 0 delayed, 1 constant, 2 burst
    q_kind = np.where(u[:, 42] < cfg.post_starburst_fraction, fm.SFH_CODE["post_starburst"],
                      fm.SFH_CODE["old_passive"])
    sfh = np.where(quench, q_kind, sf_kind).astype(np.uint8)
    kc_rows = gal & (fam_code == 0)
    sfh = np.where(kc_rows, fm.SFH_CODE["nmf_mix"], sfh)
    sfh = np.where(star, NO_FAMILY, sfh).astype(np.uint8)

    zg = np.where(star, 1.0, z)  # placeholders for stars (overwritten below)
    dl = ph.lum_distance_cm(zg)
    t_univ = ph.age_gyr(zg)
    dist_fac = (10.0 * ph.PC_CM / dl) ** 2 / (1.0 + zg)
    sig_star = _logu(u[:, 48], *cfg.sigma_star_range)
    smc = u[:, 49] < cfg.smc_fraction
    av = np.where(quench, cfg.av_max_passive * u[:, 50], cfg.av_max_sf * u[:, 50] ** 1.5)
    lsf_scale = cfg.lsf_scale_range[0] + (cfg.lsf_scale_range[1] - cfg.lsf_scale_range[0]) * u[:, 71:71 + n_arm]
    lsf_slope = cfg.lsf_slope_range[0] + (cfg.lsf_slope_range[1] - cfg.lsf_slope_range[0]) * u[:, 75]
    return SimpleNamespace(kind=kind, z=z, star=star, gal=gal, mag_h=mag_h, t_exp=t_exp, quench=quench, ra=ra,
                           dec=dec, fam_code=fam_code, sfh=sfh, kc_rows=kc_rows, zg=zg, dl=dl, t_univ=t_univ,
                           dist_fac=dist_fac, sig_star=sig_star, smc=smc, av=av, lsf_scale=lsf_scale,
                           lsf_slope=lsf_slope)


def _ssp_galaxies(p: SimpleNamespace, u: np.ndarray, cfg: SimConfig, inst: Instrument, model: np.ndarray,
                  logm: np.ndarray, logsfr: np.ndarray, age_mw: np.ndarray, cont_ha: np.ndarray) -> None:
    """Continua of the galaxies of the SSP families (every family but kcorrect): SFH ψ(t) from the drawn
    history, SSP weights, dust, σ★ and LSF broadening, normalised to m_H; written into ``model`` and the truth
    arrays ``logm``, ``logsfr``, ``age_mw``, ``cont_ha`` in place (rows of those families only)."""
    tmax = np.maximum(p.t_univ - 0.05, 0.06)
    t0_sf = 0.1 + (tmax - 0.1) * u[:, 43]
    tau_sf = _logu(u[:, 44], 0.3, 10.0)
    t0_old = np.minimum(1.0 + (np.minimum(12.0, tmax) - 1.0) * u[:, 43], tmax)
    t0_old = np.where(tmax < 1.0, tmax, t0_old)
    tau_old = t0_old * (0.03 + 0.07 * u[:, 44])
    t0 = np.where(p.sfh == fm.SFH_CODE["old_passive"], t0_old, t0_sf)
    tau = np.where(p.sfh == fm.SFH_CODE["old_passive"], tau_old, tau_sf)
    tb = 0.3 * u[:, 45]
    fb = 0.05 + 0.35 * u[:, 46]
    tq = np.minimum(0.1 + 1.4 * u[:, 47], 0.8 * t0)
    lssfr_res = LOG_SSFR_FLOOR + (LOG_SSFR_QUENCHED_MAX - LOG_SSFR_FLOOR) * u[:, 52]
    logz = np.log10(cfg.metallicity_range[0]) + np.log10(cfg.metallicity_range[1] / cfg.metallicity_range[0]) * u[:, 53]
    for code, name in enumerate(FAMILIES):
        if code == 0:
            continue
        rows = np.flatnonzero(p.gal & (p.fam_code == code))
        if rows.size == 0:
            continue
        fam = fm.load_family(name)
        psi = fm.sfh_psi(p.sfh[rows], t0[rows], tau[rows], tb[rows], fb[rows], tq[rows], lssfr_res[rows])
        w, ms, sfr_pf, amw = fm.sfh_weights(fam, psi, logz[rows])
        sfr_pf = np.maximum(sfr_pf, 10.0 ** LOG_SSFR_FLOOR * ms)  # residual star formation floor
        mf, cha = _ssp_continua(rows, name, w, p.zg, p.av, p.smc, p.sig_star, p.lsf_scale, p.lsf_slope,
                                p.dist_fac, p.mag_h, inst, model)
        logm[rows] = np.log10(mf * ms)
        with np.errstate(divide="ignore"):
            logsfr[rows] = np.log10(np.maximum(mf * sfr_pf, 1e-30))
        age_mw[rows] = amw
        cont_ha[rows] = cha


def _kcorrect_galaxies(p: SimpleNamespace, u: np.ndarray, cfg: SimConfig, wave: np.ndarray, model: np.ndarray,
                       logm: np.ndarray, logsfr: np.ndarray, cont_ha: np.ndarray) -> None:
    """Continua of the kcorrect-family galaxies (5 NMF templates, Dirichlet mixture; as simulator 1.x), the mass
    iterated with the main-sequence sSFR and the m_H normalisation; written into ``model``, ``logm``,
    ``logsfr``, ``cont_ha`` in place."""
    krows = np.flatnonzero(p.kc_rows)
    if not krows.size:
        return
    tb_k = ph.template_basis()
    zk, qk = p.zg[krows], p.quench[krows]
    age_k = p.t_univ[krows]
    e = -np.log(np.clip(u[krows, 9:13], 1e-12, 1.0))
    # the oldest template (3) is down-weighted when the Universe is young, except in quenched galaxies: their
    # residual star formation comes from the young template on top of it (template 0 alone has log sSFR −11.05,
    # above most drawn residual sSFRs, and no young light; template 3 −12.1)
    e[:, 2] *= np.where(qk, 1.0, np.clip((age_k - 1.5) / 4.0, 0.05, 1.0))
    e[:, 1] = np.where(qk, 0.0, e[:, 1])
    e[:, 3] = np.where(qk, 0.0, e[:, 3])
    old_w = e / e.sum(axis=1, keepdims=True)
    d_ms = cfg.ms_scatter_dex * _N(u[krows, 15])
    # quenched: log sSFR U(−11.75, −10.75), mostly above the old templates' own (−11.05 … −12.1), so that
    # some young light (scaled by 1/2.4) offsets old templates that are older than the Universe at z > 2
    lssfr_q = -11.75 + 1.0 * u[krows, 14]
    av_k = p.av[krows]
    dfk = p.dist_fac[krows]
    lm = np.full(krows.size, 10.3)
    lnw0, dlnw = tb_k["lnw0"], tb_k["dlnw"]
    for _ in range(3):  # sSFR depends on mass, mass on the normalisation to m_H
        lssfr = np.where(qk, lssfr_q, ph.main_sequence_logsfr(lm, zk) + d_ms - lm)
        spec, lssfr_act = _shape_per_unit_mass(tb_k, zk, lssfr, old_w, av_k, np.where(qk, 1 / 2.4, 1.0))

        def _fh(ws, spec=spec):
            return ph.sample_log_grid(spec, lnw0, dlnw, ws[None, :] / (1.0 + zk[:, None])) * dfk[:, None]

        lm = (ph.ab_mag_h(_fh) - p.mag_h[krows]) / 2.5
    logm[krows] = lm
    logsfr[krows] = lssfr_act + lm
    scale = 10.0 ** lm * dfk * 1e17
    model[krows] = ph.sample_log_grid(spec, lnw0, dlnw, wave[None, :] / (1.0 + zk[:, None])) * scale[:, None]
    lam_ha = ph.LINE_WAVE[ph.LINE_NAMES.index("Halpha")]
    cont_ha[krows] = ph.sample_log_grid(spec, lnw0, dlnw, np.full((krows.size, 1), lam_ha))[:, 0] * scale


def _emission_lines(p: SimpleNamespace, u: np.ndarray, cfg: SimConfig, logm: np.ndarray, logsfr: np.ndarray,
                    cont_ha: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Emission-line fluxes from the SFR (Hα, Kennicutt & Evans 2012) with mass-dependent line ratios, line-free
    and weak-line regimes, nebular dust and LINER-like lines in some quenched galaxies.

    Returns ``(lf, sig_v, ew_ha)``: line fluxes (n, n_lines) in 1e-17 erg/s/cm² (order ``physics.LINE_NAMES``;
    0 for stars), gas velocity dispersion (n,) km/s, rest-frame Hα EW (n,) Å (NaN for stars).
    """
    gal, q, zg, dl = p.gal, p.quench, p.zg, p.dl
    lm0 = np.where(gal, logm, 10.0)
    dm = lm0 - 10.0
    n2 = np.where(q, 0.0 + 0.15 * _N(u[:, 18]), np.clip(-0.45 + 0.35 * dm, -1.3, -0.15) + 0.1 * _N(u[:, 18]))
    o3 = np.where(q, -0.3 + 0.2 * _N(u[:, 19]), np.clip(0.35 - 0.45 * dm, -0.8, 0.9) + 0.15 * _N(u[:, 19]))
    o2 = np.clip(-0.05 - 0.25 * dm, -0.7, 0.3) + 0.1 * _N(u[:, 20])
    s2 = -0.65 + 0.1 * _N(u[:, 21])
    sig_v = np.clip(10 ** (np.log10(70.0) + 0.25 * dm + 0.1 * _N(u[:, 22])), 20.0, cfg.sigma_v_max_kms)
    # line strength not tied to the continuum: weak-line and line-free regimes on any SFH
    reg = u[:, 54]
    eff = np.where(reg < cfg.line_free_fraction, 0.0,
                   np.where(reg < cfg.line_free_fraction + cfg.weak_line_fraction,
                            10.0 ** (-2.0 + 1.3 * u[:, 55]), 10.0 ** (0.15 * _N(u[:, 55]))))
    sfr_lin = np.where(gal, 10.0 ** np.nan_to_num(logsfr, nan=-30.0), 0.0)
    ha = sfr_lin * 10.0 ** ph.LOG_HALPHA_SFR / (4 * np.pi * dl**2) * 1e17 * eff  # intrinsic Hα, 1e-17 cgs
    hb = ha / 2.86
    o3_5007 = hb * 10**o3
    o2_tot = ha * 10**o2
    s2_tot = ha * 10**s2
    n2_6583 = ha * 10**n2
    rel = {
        "OII_3726": o2_tot / 2.4, "OII_3729": o2_tot * 1.4 / 2.4, "NeIII_3869": 0.08 * o3_5007,
        "Hdelta": ha * 0.259 / 2.86, "Hgamma": ha * 0.468 / 2.86, "Hbeta": hb, "OIII_4959": o3_5007 / 2.98,
        "OIII_5007": o3_5007, "NII_6548": n2_6583 / 2.94, "Halpha": ha, "NII_6583": n2_6583,
        "SII_6716": s2_tot * 1.35 / 2.35, "SII_6731": s2_tot / 2.35,
    }
    av_neb = p.av / NEB_STELLAR_AV
    lf = np.stack([rel[k] for k in ph.LINE_NAMES], axis=1)
    k_neb = np.where(p.smc[:, None], (ph.LINE_WAVE[None, :] / 5510.0) ** -1.2,
                     ph.calzetti_k(ph.LINE_WAVE)[None, :] / 4.05)
    lf *= 10.0 ** (-0.4 * av_neb[:, None] * k_neb)
    # LINER-like weak lines in some quenched galaxies (not from star formation)
    liner = q & (u[:, 56] < cfg.liner_fraction)
    ew_l = np.where(liner, 0.5 + 3.5 * u[:, 57], 0.0)  # Å rest
    ha_l = ew_l * (1 + zg) * cont_ha
    lrel = {"Halpha": 1.0, "NII_6583": 10 ** (0.1 + 0.15 * _N(u[:, 58])), "OII_3726": 0.7 / 2.4,
            "OII_3729": 0.7 * 1.4 / 2.4, "SII_6716": 0.35, "SII_6731": 0.3, "Hbeta": 1 / 3.5,
            "OIII_5007": 0.3, "OIII_4959": 0.1}
    for k, r_ in lrel.items():
        if k == "NII_6583":
            lf[:, ph.LINE_NAMES.index("NII_6548")] += ha_l * r_ / 2.94
        lf[:, ph.LINE_NAMES.index(k)] += ha_l * r_
    lf = np.where(p.star[:, None], 0.0, lf)
    ia_ha = ph.LINE_NAMES.index("Halpha")
    with np.errstate(divide="ignore", invalid="ignore"):
        ew_ha = np.where(gal, lf[:, ia_ha] / (cont_ha * (1 + zg)), np.nan)
    return lf, sig_v, ew_ha


def _add_gas_lines(p: SimpleNamespace, cfg: SimConfig, inst: Instrument, model: np.ndarray, lf: np.ndarray,
                   sig_v: np.ndarray) -> None:
    """Add the gas lines to ``model`` in place: Gaussians of intrinsic σ_v plus the arm's LSF scaled by the
    object's ``lsf_scale`` (and its wavelength slope)."""
    arms = inst.arms
    n_arm = len(arms)
    centers = ph.LINE_WAVE[None, :] * (1 + p.zg[:, None])
    arm_of = np.clip(np.searchsorted([a.wave_min for a in arms], centers, side="right") - 1, 0, n_arm - 1)
    s_lsf = np.array([ph.C_KMS / (2.3548 * a.resolution) for a in arms])[arm_of]
    lam_mid = np.array([np.sqrt(a.wave_min * a.wave_max) for a in arms])[arm_of]
    ls = np.take_along_axis(p.lsf_scale, arm_of, axis=1) * (centers / lam_mid) ** -p.lsf_slope[:, None]
    sv_eff = np.sqrt(np.maximum(sig_v[:, None] ** 2 + (ls**2 - 1.0) * s_lsf**2, 1.0))
    ph.add_gaussian_lines(model, arms, inst.arm_slices(), centers, lf, sv_eff, cfg.sigma_v_max_kms + 60.0)


def _stars(p: SimpleNamespace, u: np.ndarray, wave: np.ndarray, model: np.ndarray) -> np.ndarray:
    """Empirical star spectra (Doppler-shifted, normalised to m_H) into the star rows of ``model``; returns
    ``star_index`` (n,) int16: the library row of each star, −1 for galaxies."""
    n = len(p.star)
    star_index = np.full(n, -1, np.int16)
    srows = np.flatnonzero(p.star)
    if srows.size:
        lib = load_stars()
        ns = lib["flux"].shape[0]
        sidx = np.minimum((u[srows, 23] * ns).astype(int), ns - 1)
        star_index[srows] = sidx
        grid_n = np.arange(lib["flux"].shape[1])
        for j, r in enumerate(srows):
            spec = lib["flux"][sidx[j]]
            lz = np.log1p(p.z[r])
            fHs = np.interp((np.log(ph._H_SAMPLES) - lz - lib["lnw0"]) / lib["dlnw"], grid_n, spec)
            m_unit = _mag_from_samples(fHs[None, :])[0]
            s = 10 ** (-0.4 * (p.mag_h[r] - m_unit)) * 1e17
            model[r] = np.interp((np.log(wave) - lz - lib["lnw0"]) / lib["dlnw"], grid_n, spec) * s
    return star_index


def load_stars() -> dict:
    """The empirical star library (see :func:`survey_infer.simulate.families.load_stars`)."""
    return fm.load_stars()
