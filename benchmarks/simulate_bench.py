#!/usr/bin/env python
"""Simulator benchmark and realism check.

Speed (default)::

    nice -n 10 python benchmarks/simulate_bench.py --n 4096 --workers 2

prints spectra/s of ``simulate_block`` (one process), of ``simulate_survey`` to a store (``--workers``
processes), the store's on-disk size, write MB/s (uncompressed float32 flux+ivar bytes per second of the whole
simulate+write) and read MB/s (``open_survey`` + load of flux and ivar).

Realism against moons1d 1.0.3 (``--compare-moons1d``; needs ``pip install --no-deps --target DIR moons1d==1.0.3
configobj synphot spectres`` and ``--moons1d-path DIR``)::

    nice -n 10 python benchmarks/simulate_bench.py --compare-moons1d --moons1d-path /tmp/m1dlib

feeds the same noiseless observed-frame galaxy spectra (from this simulator) to moons1d's XSWITCH simulation
(NDIT × 600 s, seeing 0.8", airmass 1.0, point source) and compares per-pixel noise, continuum S/N in H by
magnitude and exposure, and the residual amplitude at OH lines; it also prints Hα equivalent widths and the
SFR–M★ relation of a simulated sample.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def bench_speed(n: int, workers: int, chunk: int) -> dict:
    from survey_infer.io.survey_store import open_survey
    from survey_infer.io.simulated import simulate_survey
    from survey_infer.simulate import SimConfig, simulate_block

    simulate_block(0, 8, 0)  # warm caches (sky model, templates, cosmology)
    t0 = time.perf_counter()
    c0 = time.process_time()
    nb = min(n, 1024)
    for s in range(0, nb, chunk):
        simulate_block(s, min(chunk, nb - s), 0)
    t_block = time.perf_counter() - t0
    c_block = time.process_time() - c0
    tmp = Path(tempfile.mkdtemp(prefix="simbench-"))
    try:
        out = tmp / "bench.zarr"
        t0 = time.perf_counter()
        simulate_survey(n, 0, out, config=SimConfig(), chunk_objects=chunk,
                        scheduler="processes" if workers > 1 else "synchronous", num_workers=workers)
        t_sim = time.perf_counter() - t0
        disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        t0 = time.perf_counter()
        ds = open_survey(out)
        f = ds.flux.values
        iv = ds.ivar.values
        t_read = time.perf_counter() - t0
        raw = f.nbytes + iv.nbytes
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res = {
        "simulate_block_spectra_per_s_1proc": nb / t_block,
        "simulate_block_spectra_per_cpu_s": nb / c_block,  # robust to other jobs sharing the cores
        f"simulate_survey_spectra_per_s_{workers}workers": n / t_sim,
        "store_raw_MB": raw / 1e6,
        "store_disk_MB": disk / 1e6,
        "compression_ratio": raw / disk,
        "simulate+write_MB_per_s(raw)": raw / 1e6 / t_sim,
        "read_MB_per_s(raw)": raw / 1e6 / t_read,
        "projected_100k_minutes": 1e5 / (n / t_sim) / 60,
    }
    return res


def _moons1d_run(m1d, spec_wave, spec_flux_cgs, band: str, hours: float, seed: int):
    """One moons1d XSWITCH run on an observed-frame spectrum; returns its Simulation object."""
    import astropy.units as u
    from synphot import SourceSpectrum
    from synphot.models import Empirical1D

    np.random.seed(seed)
    sp = SourceSpectrum(Empirical1D, points=spec_wave * u.AA, lookup_table=spec_flux_cgs * u.erg / u.s / u.cm**2 / u.AA,
                        keep_neg=True)
    sp.name = "survey-infer"
    sel = (spec_wave > 16290) & (spec_wave < 16310)  # moons1d 'H' = AB at 1.63 µm (±10 Å)
    fnu = np.mean(spec_flux_cgs[sel] * spec_wave[sel] ** 2 / 2.99792458e18)
    mag = -2.5 * np.log10(fnu) - 48.6
    filt = m1d.interface.get_filter("H", "AB", verbose=False)
    obs = {"R_mode": "LR", "observing_mode": "XSWITCH", "band": band, "ndit": int(round(hours * 6)), "dit": 600,
           "seeing": 0.8, "airmass": 1.0}
    # mag_type "None": the spectrum is already in absolute flux units. (moons1d's own normalisation to its ±10 Å
    # 'H' pseudo-filter goes wrong with synphot 1.8 for tabulated spectra: 2.5e-3 × the requested flux.)
    return m1d.interface.run_1obj_1band(sp, "point-source", mag, "None", filt, obs, redshift=0.0, E_BV=None,
                                        verbose=False, debug=True)


def compare_moons1d(path: str, n_per: int = 2, mags=(21.0, 22.0, 23.0, 24.0), hours=(2.0, 8.0)) -> None:
    import contextlib
    import io

    sys.path.insert(0, path)
    np.str = str  # moons1d 1.0.3 uses the removed alias
    import moons1d.interface  # noqa: F401
    import moons1d as m1d

    from survey_infer.instrument import load_instrument
    from survey_infer.simulate.simulator import SimConfig, _simulate
    from survey_infer.skymask import instrument_sky_mask

    inst = load_instrument()
    wave = inst.wave
    skym = instrument_sky_mask(inst).astype(bool)
    arms = inst.arm_slices()
    rows = []
    noise_ratio = {a.name: [] for a in inst.arms}
    noise_ratio_sky = {a.name: [] for a in inst.arms}
    chi_sky_m1d, chi_sky_me, chi_off_me, chi_off_m1d = [], [], [], []
    for aperture in (1.0, None):
        for mag in mags:
            for hrs in hours:
                base = SimConfig()
                cfg = replace(base, interloper_fraction=0.0, mag_h_range=(mag, mag), exposures_h=(hrs,),
                              passive_fraction=0.0,
                              aperture_efficiency=aperture if aperture is not None else base.aperture_efficiency)
                d = _simulate(1000 * int(mag) + int(hrs), n_per, 11, cfg, inst, extras=True)
                for i in range(n_per):
                    model = d["model"][i]
                    sig_me = 1.0 / np.sqrt(d["ivar"][i])
                    h = arms[2]
                    off = ~skym[h]
                    snr_me = np.median(model[h][off] / sig_me[h][off])
                    rec = {"mag": mag, "hours": hrs, "aperture": aperture or 0.0,
                           "snr_me": snr_me, "z": float(d["z_true"][i])}
                    if aperture == 1.0:
                        chi = (d["flux"][i] - model) / sig_me
                        chi_sky_me.append(np.std(chi[skym]))
                        chi_off_me.append(np.std(chi[~skym]))
                        snr_m1 = []
                        for a, sl in zip(inst.arms, arms):
                            with contextlib.redirect_stdout(io.StringIO()):
                                S = _moons1d_run(m1d, wave, model * 1e-17, a.name, hrs, 7 + i)
                            mw = S.model.wave.to("AA").value
                            err = S.model.Error_calibrated.value * 1e17
                            obsf = S.model.Obs_calibrated.value * 1e17
                            tf = np.interp(mw, wave, model)
                            if mw.size != a.npix or not np.allclose(mw, a.wave, atol=1e-3):
                                err = np.interp(a.wave, mw, err)
                                obsf = np.interp(a.wave, mw, obsf)
                                tf = model[sl]
                            r = sig_me[sl] / err
                            noise_ratio[a.name].append(np.median(r[~skym[sl]]))
                            noise_ratio_sky[a.name].append(np.median(r[skym[sl]]))
                            scale = np.sum(obsf * tf / err**2) / np.sum(tf**2 / err**2)
                            chi_m = (obsf - scale * tf) / err
                            chi_sky_m1d.append(np.std(chi_m[skym[sl]]))
                            chi_off_m1d.append(np.std(chi_m[~skym[sl]]))
                            if a.name == "H":
                                snr_m1.append(np.median((scale * tf / err)[~skym[sl]]))
                        rec["snr_moons1d"] = snr_m1[0]
                    rows.append(rec)
    print("\nContinuum S/N per pixel in H (median over non-sky pixels), XSWITCH, airmass 1.0")
    print("| m_H (AB) | t_exp | this sim, aperture 1.0 | moons1d (point source, 0.8\") | this sim, seeing-dependent aperture |")
    print("|---|---|---|---|---|")
    for mag in mags:
        for hrs in hours:
            a = [r for r in rows if r["mag"] == mag and r["hours"] == hrs and r["aperture"] == 1.0]
            b = [r for r in rows if r["mag"] == mag and r["hours"] == hrs and r["aperture"] != 1.0]
            print(f"| {mag:.0f} | {hrs:.0f} h | {np.mean([r['snr_me'] for r in a]):.2f} | "
                  f"{np.mean([r['snr_moons1d'] for r in a]):.2f} | {np.mean([r['snr_me'] for r in b]):.2f} |")
    print("\nPer-pixel noise, this sim / moons1d (aperture 1.0), median over spectra of the median over pixels")
    for k in noise_ratio:
        print(f"  {k}: continuum pixels {np.median(noise_ratio[k]):.3f}, sky-line pixels {np.median(noise_ratio_sky[k]):.3f}")
    print("\nNormalised residual rms, std((flux - model)/sigma):")
    c0 = SimConfig()
    print(f"  this sim ({c0.sky_residual_range} line / {c0.sky_continuum_residual_range} continuum sky scale "
          f"error, {c0.sky_shift_range_pix} px shift): sky-line pixels {np.median(chi_sky_me):.2f}, "
          f"other pixels {np.median(chi_off_me):.2f}")
    print(f"  moons1d (Poisson-only sky subtraction):       sky-line pixels {np.median(chi_sky_m1d):.2f}, "
          f"other pixels {np.median(chi_off_m1d):.2f}")


def population_stats(n: int = 2000) -> None:
    from survey_infer.simulate.physics import main_sequence_logsfr
    from survey_infer.simulate.simulator import SimConfig, _simulate

    d = _simulate(0, n, 3, replace(SimConfig(), interloper_fraction=0.0), None, extras=True)
    sf = ~d["is_passive"]
    ew = d["halpha_flux"] / d["halpha_cont"] / (1 + d["z_true"])
    lm, ls, z = d["logmstar_true"], d["logsfr_true"], d["z_true"]
    print(f"\nPopulation (n={n}, z 0.9–2.6):")
    print(f"  rest EW(Hα) star-forming: 16/50/84% = {np.percentile(ew[sf], [16, 50, 84]).round(1)} Å; "
          f"passive: {np.percentile(ew[~sf], [16, 50, 84]).round(1)} Å")
    print(f"  log M*: 5/50/95% = {np.percentile(lm, [5, 50, 95]).round(2)}")
    for lo, hi in ((9.5, 10.0), (10.0, 10.5), (10.5, 11.0)):
        s = sf & (lm >= lo) & (lm < hi) & (z > 1.2) & (z < 1.8)
        if s.sum() > 5:
            print(f"  SF, 1.2<z<1.8, logM {lo}-{hi}: median log SFR {np.median(ls[s]):.2f} "
                  f"(Speagle+14 at z=1.5: {main_sequence_logsfr(np.array([(lo + hi) / 2]), np.array([1.5]))[0]:.2f}), "
                  f"scatter {np.std(ls[s] - main_sequence_logsfr(lm[s], z[s])):.2f} dex")
    print(f"  passive: median ΔMS {np.median(ls[~sf] - main_sequence_logsfr(lm[~sf], z[~sf])):.2f} dex")


def make_figure(out: str = "docs/figures/simulated_spectra.png") -> None:
    """The bright / faint / passive example spectra next to the sky (docs/figures/simulated_spectra.png)."""
    import numpy as np, matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from dataclasses import replace
    from survey_infer.instrument import load_instrument
    from survey_infer.skymodel import load_sky_model
    from survey_infer.skymask import instrument_sky_mask
    from survey_infer.simulate.simulator import SimConfig, _simulate
    inst = load_instrument(); w = inst.wave; sky = load_sky_model(inst); m = instrument_sky_mask(inst).astype(bool)
    base = replace(SimConfig(), interloper_fraction=0.0)
    cases = [("bright star-forming", replace(base, passive_fraction=0.0, mag_h_range=(21.3, 21.3), exposures_h=(8.0,)), 3),
             ("faint star-forming", replace(base, passive_fraction=0.0, mag_h_range=(23.8, 23.8), exposures_h=(8.0,)), 5),
             ("passive", replace(base, passive_fraction=1.0, mag_h_range=(21.5, 21.5), exposures_h=(8.0,)), 8)]
    fig, axes = plt.subplots(4, 1, figsize=(13, 11), sharex=True)
    def gapped(x, y):
        cut = np.flatnonzero(np.diff(x) > 100) + 1
        return np.insert(x.astype(float), cut, np.nan), np.insert(np.asarray(y, float), cut, np.nan)
    axes[0].semilogy(*gapped(w, sky.emission), lw=0.4, color="k")
    axes[0].set_ylabel("sky\nph/s/cm²/Å/arcsec²")
    axes[0].set_title("Paranal sky (SkyCalc, airmass 1.0) at MOONS LR resolution; shaded: sky mask (5× arm median, %.1f%% of channels)" % (100 * m.mean()), fontsize=9)
    def shade(ax):
        edges = np.flatnonzero(np.diff(np.r_[0, m.astype(int), 0]))
        for a, b in zip(edges[::2], edges[1::2]):
            ax.axvspan(w[a], w[b - 1], color="0.85", lw=0, zorder=0)
    shade(axes[0])
    for ax, (label, cfg, start) in zip(axes[1:], cases):
        d = _simulate(start, 1, 42, cfg, inst, extras=True)
        f, iv, mod = d["flux"][0], d["ivar"][0], d["model"][0]
        b = 8
        n = (w.size // b) * b
        ivm = np.where(m, 0, iv)[:n].reshape(-1, b)
        fb = (f[:n].reshape(-1, b) * ivm).sum(1) / np.maximum(ivm.sum(1), 1e-30)
        wb = w[:n].reshape(-1, b).mean(1)
        ok = ivm.sum(1) > 0
        gap = np.r_[np.diff(wb) > 100, False]
        ax.plot(*gapped(w, f), lw=0.3, color="0.7", label="simulated flux (per pixel)")
        wp = np.where(ok, wb, np.nan)
        ax.plot(*gapped(wb, np.where(ok, fb, np.nan)), lw=0.7, color="C0", label="binned ×8, sky-masked")
        ax.plot(*gapped(w, mod), lw=0.6, color="C3", label="noiseless model")
        lo, hi = np.percentile(mod, [1, 99.5])
        span = max(hi, 3 * np.median(1 / np.sqrt(iv)))
        ax.set_ylim(-1.0 * np.median(1 / np.sqrt(iv)) - 0.2 * abs(lo), 1.6 * span)
        ax.set_ylabel("f$_λ$ [1e-17 erg/s/cm²/Å]")
        ax.set_title(f"{label}: z = {d['z_true'][0]:.3f}, m_H = {d['mag_h'][0]:.1f} AB, t = {d['t_exp'][0]/3600:.0f} h, "
                     f"log M* = {d['logmstar_true'][0]:.2f}, log SFR = {d['logsfr_true'][0]:.2f}", fontsize=9)
        shade(ax)
    axes[1].legend(fontsize=8, loc="upper left", ncol=3)
    axes[-1].set_xlabel("vacuum wavelength [Å]")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def family_figure(out: str = "docs/figures/passive_families.png") -> None:
    """Passive spectra from each continuum family (docs/figures/passive_families.png).

    Top: rest-frame 5 Gyr (kcorrect: its oldest NMF template), solar-metallicity SSPs on the shipped grid,
    normalised at 5400–5600 Å, with each family's native range marked (outside it: the PopStar
    extension). Bottom: the noiseless observed continuum (MOONS arms) of the same old-passive galaxy
    (z = 1.6, m_H = 21.5, σ★ = 200 km/s, A_V = 0) simulated from each family.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from survey_infer.instrument import load_instrument
    from survey_infer.simulate import physics as ph
    from survey_infer.simulate.families import load_family
    from survey_infer.simulate.simulator import FAMILIES, SimConfig, _simulate

    inst = load_instrument()
    fig, axes = plt.subplots(2, 1, figsize=(13, 9))
    ax = axes[0]
    for k, name in enumerate(FAMILIES):
        if name == "kcorrect":
            tb = ph.template_basis()
            w, f, nat = tb["wave"], tb["flux"][3], (900.0, 30000.0)
            lab = "kcorrect (NMF template 3, oldest)"
        else:
            fam = load_family(name)
            ia = int(np.argmin(np.abs(np.log(fam["age_gyr"] / 5.0))))
            iz = int(np.argmin(np.abs(fam["logz"])))
            f = fam["cube"][ia * fam["n_z"] + iz].astype(float)
            w = np.exp(fam["lnw0"] + fam["dlnw"] * np.arange(f.size))
            nat = tuple(fam["native"])
            lab = f"{name} ({fam['age_gyr'][ia]:.1f} Gyr, [Z/H]={fam['logz'][iz]:+.2f})"
        sel = (w > 1200) & (w < 12500)
        f = f / np.mean(f[(w > 5400) & (w < 5600)])
        line, = ax.semilogy(w[sel], f[sel] * 2.0**k, lw=0.5, label=lab + f" ×{2**k}")
        if name != "kcorrect":
            ax.axvline(nat[0], color=line.get_color(), lw=0.6, ls=":")
            ax.axvline(nat[1], color=line.get_color(), lw=0.6, ls=":")
    ax.set_xlabel("rest wavelength [Å] (dotted: native range; outside it the PopStar extension)")
    ax.set_ylabel("f_λ / f_λ(5500 Å), offset")
    ax.legend(fontsize=8, loc="lower right")
    ax = axes[1]
    base = replace(SimConfig(), interloper_fraction=0.0, passive_fraction=1.0, post_starburst_fraction=0.0,
                   z_range=(1.6, 1.6001), mag_h_range=(21.5, 21.5), sigma_star_range=(200.0, 200.0), av_max_passive=0.0,
                   liner_fraction=0.0)
    for k, name in enumerate(FAMILIES):
        d = _simulate(3, 1, 5, replace(base, families=(name,)), inst, extras=True)
        c = d["continuum"][0].astype(float)
        cut = np.flatnonzero(np.diff(inst.wave) > 100) + 1
        ax.plot(np.insert(inst.wave, cut, np.nan), np.insert(c * 1.5**k, cut, np.nan), lw=0.4,
                label=f"{name}: age_mw {d['age_mw_true'][0]:.1f} Gyr, log M★ {d['logmstar_true'][0]:.2f}")
    ax.set_xlabel("observed wavelength [Å] (z = 1.6, noiseless, offsets ×1.5ᵏ)")
    ax.set_ylabel("f_λ [1e-17 erg/s/cm²/Å]")
    ax.set_yscale("log")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def diagnostics(n: int = 1500, seed: int = 99) -> None:
    """Population and observation diagnostics of the default configuration (printed as Markdown)."""
    from survey_infer.instrument import load_instrument
    from survey_infer.simulate.simulator import FAMILIES, SFH_KINDS, SimConfig, _simulate
    from survey_infer.skymask import instrument_sky_mask

    inst = load_instrument()
    sl = inst.arm_slices()
    d = _simulate(0, n, seed, replace(SimConfig(), interloper_fraction=0.0), inst, extras=True)
    c, z, p, f = d["continuum"], d["z_true"], d["is_passive"], d["template_family"]
    r = np.median(c[:, sl[0]], 1) / np.median(c[:, sl[2]], 1)
    bins = [0.9, 1.2, 1.5, 2.0, 2.3, 2.6]
    print(f"\nMedian RI/H continuum flux ratio of passive galaxies (n={n}, seed {seed})\n")
    print("| family | " + " | ".join(f"z {a}–{b}" for a, b in zip(bins[:-1], bins[1:])) + " |")
    print("|---" * len(bins) + "|")
    for k, name in list(enumerate(FAMILIES)) + [(None, "all passive"), (-1, "all star-forming")]:
        row = []
        for a, b in zip(bins[:-1], bins[1:]):
            s = (z >= a) & (z < b)
            s &= (~p) if k == -1 else p
            if k is not None and k >= 0:
                s &= f == k
            row.append(f"{np.median(r[s]):.2f}" if s.sum() else "–")
        print(f"| {name} | " + " | ".join(row) + " |")
    print(f"\npassive (sSFR < 0.2/t_H): {p.mean():.3f}; by SFH kind:")
    for k, name in enumerate(SFH_KINDS):
        s = d["sfh_kind"] == k
        if s.any():
            print(f"  {name}: {s.mean():.3f} of galaxies, passive {p[s].mean():.2f}, "
                  f"median age_mw {np.nanmedian(d['age_mw_true'][s]):.2f} Gyr, "
                  f"EW(Hα) 16/50/84% {np.percentile(d['ew_halpha_rest_true'][s], [16, 50, 84]).round(1)} Å")
    ew = d["ew_halpha_rest_true"]
    print(f"  EW(Hα) < 3 Å among star-forming: {(ew[~p] < 3).mean():.3f}; > 3 Å among passive: {(ew[p] > 3).mean():.3f}")
    m = instrument_sky_mask(inst).astype(bool)
    chi = (d["flux"] - d["expected"]) * np.sqrt(d["ivar"])
    print(f"\n|flux − noiseless| > 5σ: sky-mask channels {(np.abs(chi[:, m]) > 5).mean():.3f}, "
          f"other channels {(np.abs(chi[:, ~m]) > 5).mean():.4f}")
    print(f"aperture efficiency 5/50/95%: {np.percentile(d['aperture'], [5, 50, 95]).round(2)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--compare-moons1d", action="store_true")
    ap.add_argument("--moons1d-path", default="/tmp/m1dlib")
    ap.add_argument("--population", action="store_true", help="print Hα EW and SFR–M* statistics")
    ap.add_argument("--figure", default=None, help="write the example-spectra figure to this PNG path")
    ap.add_argument("--family-figure", default=None, help="write the passive-spectra-per-family figure here")
    ap.add_argument("--diagnostics", action="store_true", help="print population / observation diagnostics")
    args = ap.parse_args()
    if args.family_figure:
        family_figure(args.family_figure)
        return
    if args.diagnostics:
        diagnostics()
        return
    if args.compare_moons1d:
        compare_moons1d(args.moons1d_path)
        population_stats()
        return
    if args.figure:
        make_figure(args.figure)
        return
    if args.population:
        population_stats()
        return
    for k, v in bench_speed(args.n, args.workers, args.chunk).items():
        print(f"{k}: {v:.2f}")


if __name__ == "__main__":
    main()
