#!/usr/bin/env python
"""Build the shipped line-free galaxy continuum basis ``survey_infer/data/templates/kcorrect_linefree.npz``.

(The simulator's other continuum families, ``ssp_<family>.npz``, are built by ``tools/build_ssp_families.py``, its
star library by ``tools/build_stars.py``.)

Source: the five NMF templates of kcorrect (Blanton & Roweis 2007; ``kcorrect-default-v4.fits`` in the kcorrect
5.1.9 wheel on PyPI, BSD-3-Clause). They are Bruzual & Charlot (2003) stellar populations with a Chabrier (2003)
IMF, each normalised to 1 M☉ formed, flux in erg/s/cm²/Å at 10 pc, and carry the mass remaining (MREMAIN) and the
mass formed in the last 300 Myr and 1 Gyr (M300, M1000). The nebular Hα each template carried gives its
instantaneous SFR (``sfr_halpha``, M☉/yr per M☉ formed; Kennicutt & Evans 2012, Chabrier), so that the
simulator's SFR labels and the Hα it adds back are consistent with the continuum. They include nebular emission lines; these are removed
here: in a window of ±0.35% around each line of a list of 60 nebular lines (Lyα to Brγ) the flux is replaced by
min(flux, straight line between the window edges), keeping stellar absorption, then any remaining narrow peak
(> 3% above a 41-pixel running median, inside a line window) is clipped.

The result keeps the native logarithmic grid (Δln λ ≈ 8.6e-4, R_pix ≈ 1160) between 900 and 30000 Å, float32.

Usage::

    pip download --no-deps kcorrect==5.1.9 -d /tmp/kc && unzip /tmp/kc/kcorrect-*.whl -d /tmp/kc/whl
    python tools/build_templates.py --kcorrect /tmp/kc/whl/kcorrect/data/templates/kcorrect-default-v4.fits
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy.ndimage import median_filter

# vacuum rest wavelengths (Å) of nebular lines present in photoionisation-model templates
NEBULAR_LINES = [
    1215.67, 1240.8, 1335.0, 1397.6, 1402.1, 1486.5, 1549.1, 1640.4, 1663.5, 1750.0, 1908.7, 2326.0, 2424.0,
    2471.0, 2798.8, 3346.8, 3426.9, 3727.1, 3729.9, 3771.7, 3798.98, 3836.5, 3869.9, 3890.2, 3968.6, 3971.2,
    4069.7, 4102.9, 4341.7, 4364.4, 4472.7, 4687.0, 4712.6, 4741.5, 4862.7, 4960.3, 5008.2, 5877.3, 6302.0, 6313.8,
    6365.5, 6549.9, 6564.6, 6585.3, 6680.0, 6718.3, 6732.7, 7067.1, 7137.8, 7321.9, 7332.2, 9071.1, 9533.2,
    9548.6, 10052.1, 10833.3, 10941.1, 12821.6, 18756.1, 21661.2,
]


def remove_lines(wave: np.ndarray, flux: np.ndarray, half_width: float = 0.0035) -> np.ndarray:
    f = flux.astype(np.float64).copy()
    inwin = np.zeros(wave.size, bool)
    for lam in NEBULAR_LINES:
        lo, hi = np.searchsorted(wave, [lam * (1 - half_width), lam * (1 + half_width)])
        lo = max(lo - 1, 0)
        hi = min(hi, wave.size - 1)
        if hi - lo < 2:
            continue
        line = np.interp(wave[lo:hi + 1], [wave[lo], wave[hi]], [f[lo], f[hi]])
        f[lo:hi + 1] = np.minimum(f[lo:hi + 1], line)
        inwin[lo:hi + 1] = True
    med = median_filter(f, size=41, mode="nearest")
    peak = inwin & (f > 1.03 * med)
    f[peak] = med[peak]
    return f


def build(src: Path, out: Path, wmin: float = 900.0, wmax: float = 30000.0) -> dict:
    with fits.open(src) as h:
        wave = np.asarray(h["FLUX"].data["wave"][0], np.float64)
        flux = np.asarray(h["FLUX"].data["flux"][0], np.float64)
        meta = {k: np.asarray(h[k].data, np.float64) for k in ("INTSFH", "MREMAIN", "METS", "M300", "M1000")}
    sel = (wave >= wmin) & (wave <= wmax)
    wave = wave[sel]
    clean = np.stack([remove_lines(wave, f[sel]) for f in flux])
    removed = 1 - clean.sum(1) / flux[:, sel].sum(1)
    # Instantaneous SFR of each template from its own (removed) nebular Hα, with the same Kennicutt & Evans
    # (2012) Chabrier calibration the simulator uses for its lines: SFR = L(Hα) / 10^41.27 erg/s. The template
    # resolution blends Hα with [NII]6548,6583; [NII]/Hα = 0.35 (total) is assumed to deblend.
    fourpi_d2 = 4 * np.pi * (10 * 3.0856775814913673e18) ** 2
    sfr_ha = np.zeros(len(flux))
    for t in range(len(flux)):
        d = flux[t, sel] - clean[t]
        win = (wave > 6564.6 * 0.993) & (wave < 6564.6 * 1.007)
        sfr_ha[t] = max(np.trapezoid(d[win], wave[win]), 0.0) / 1.35 * fourpi_d2 / 10**41.27
    np.savez_compressed(
        out,
        wave=wave.astype(np.float64),
        flux=clean.astype(np.float32),
        intsfh=meta["INTSFH"], mremain=meta["MREMAIN"], mets=meta["METS"], m300=meta["M300"], m1000=meta["M1000"],
        sfr_halpha=sfr_ha,
        flux_units=np.asarray("erg / (s cm2 Angstrom) at 10 pc per Msun formed"),
        imf=np.asarray("Chabrier 2003"),
        source=np.asarray("kcorrect 5.1.9 kcorrect-default-v4.fits (Blanton & Roweis 2007; BC03, Chabrier IMF), "
                          "nebular lines removed by tools/build_templates.py"),
    )
    return {"n_wave": int(wave.size), "size_bytes": out.stat().st_size, "flux_removed_frac": removed.round(4).tolist(),
            "sfr_halpha_per_msun_formed": sfr_ha.tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kcorrect", type=Path, required=True, help="path to kcorrect-default-v4.fits")
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parents[1] / "survey_infer/data/templates/kcorrect_linefree.npz")
    args = ap.parse_args()
    print(build(args.kcorrect, args.out))


if __name__ == "__main__":
    main()
