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
equivalent width for ``sf``, A, default 100), ``logmstar_true``, ``logsfr_true`` (copied to the headers and from
there into the survey store by ingest).

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

Examples::

    nice -n 10 python tools/make_moons1d_set.py --example-table galaxies.csv --n 3 --seed 1
    nice -n 10 python tools/make_moons1d_set.py galaxies.csv --out m1d/ --seed 1
    survey-infer ingest m1d/*.fits --out m1d.zarr          # onto the MOONS LR grid, channel for channel

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
    raise ValueError(f"unknown template family {family!r} (sf, passive, flat, kcorrect:w0,..,w4, file:PATH)")


def ab_mag_h(wave_obs: np.ndarray, flam_obs: np.ndarray) -> float:
    """Photon-counting AB magnitude in the top-hat H filter (15000-18000 A)."""
    w = np.linspace(H_FILTER[0], H_FILTER[1], 3001)
    f = np.interp(w, wave_obs, flam_obs)
    fnu = np.trapezoid(f * w, w) / np.trapezoid(C_AA_S / w, w)  # <f_nu> photon weighted
    return float(-2.5 * np.log10(fnu) - 48.6)


def observed_template(family: str, z: float, mag_h: float, ew_ha: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """Observed-frame SED (wave A, f_lambda erg/s/cm2/A) on a linear grid, normalised to ``mag_h`` AB."""
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

def _import_moons1d():
    if "str" not in vars(np):
        np.str = str  # moons1d 1.0.3 uses the removed numpy.str alias
    try:
        from moons1d import interface
    except ImportError as exc:
        sys.exit("moons1d is not installed: pip install --no-deps moons1d==1.0.3 && "
                 f"pip install spectres synphot configobj pyparsing ({exc})")
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


def simulate_object(row: dict, index: int, out: Path, *, seed: int, dit: float, mode: str, airmass: float,
                    seeing: float, workdir: Path, verbose: bool = False) -> list[Path]:
    """Run moons1d for one object on the three LR arms; returns the written files."""
    from astropy.io import fits

    interface = _import_moons1d()
    name = row["name"]
    z, mag_h, t_exp = float(row["z"]), float(row["mag_h"]), float(row["t_exp"])
    ndit = max(1, int(round(t_exp / dit)))
    wave, flam = observed_template(str(row["template"]), z, mag_h, float(row.get("ew_ha") or 100.0))
    tpl = workdir / f"{name}_template.fits"
    write_moons1d_template(tpl, wave, flam, f"{row['template']} z={z:.4f}")
    bp = interface.get_filter("H", "AB", verbose=False)
    files = []
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
            fn = out / f"{name}_{band}.fits"
            simu.setFileOut(str(fn))
            simu.SavetoFits(verbose=False)
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
            hd["TEXP"] = (ndit * dit, "s, NDIT*DIT")
            hd["FAMILY"] = str(row["template"])[:60]
            hd["SEED"] = int(seed)
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
    ap.add_argument("--verbose", action="store_true", help="show moons1d's own output")
    args = ap.parse_args(argv)
    if args.example_table:
        example_table(args.example_table, args.n or 3, args.seed)
        print(f"wrote {args.example_table}")
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
