#!/usr/bin/env python
"""Build the shipped MOONS LR sky model ``survey_infer/data/sky/moons_lr_sky.npz`` from moons1d's data.

Source (MIT, moons1d 1.0.3): ``<moons1d>/Skymodel/SkyTemplate_ESO_a{airmass}.fits`` (ESO SkyCalc Paranal sky,
6000–18000 Å, 0.1 Å vacuum grid; HDU0 radiance ph/s/cm²/Å/arcsec², HDU1 transmission) and
``<moons1d>/Instrument/`` (telescope efficiency, per-arm throughput, detector QE, MOONS_mode.ini).

Processing, per arm and per airmass: the spectrum is resampled onto a grid uniform in ln λ (constant R ⇒
constant Gaussian σ in ln λ), convolved with a Gaussian of FWHM = λ/R, then integrated over each instrument
pixel (flux-conserving: mean radiance over the pixel). Throughput = telescope_eff × arm throughput (``best``) ×
QE, linearly interpolated at the pixel centres.

Usage::

    python tools/build_sky_model.py [--moons1d /work/shared/data/moons1d] [--out survey_infer/data/sky/moons_lr_sky.npz]
"""
from __future__ import annotations

import argparse
import configparser
import re
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy.ndimage import gaussian_filter1d

from survey_infer.instrument import load_instrument

AIRMASSES = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0)


def _read_curve(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Two-column text file (may use CR line endings); returns (x, y)."""
    txt = path.read_text().replace("\r", "\n")
    rows = [r.split() for r in txt.splitlines() if r.strip() and not r.lstrip().startswith("#")]
    arr = np.array([[float(v) for v in r[:2]] for r in rows])
    return arr[:, 0], arr[:, 1]


def _convolve_rebin(wave_src: np.ndarray, flux_src: np.ndarray, edges: np.ndarray, resolution: float) -> np.ndarray:
    """Gaussian LSF (FWHM = λ/R) then mean over each pixel [edges[i], edges[i+1]]."""
    lo, hi = edges[0] * 0.995, edges[-1] * 1.005
    sel = (wave_src >= lo) & (wave_src <= hi)
    ws, fs = wave_src[sel], flux_src[sel]
    dlnl = 0.1 / hi / 2.0  # finer than the 0.1 Å source everywhere
    lnl = np.arange(np.log(ws[0]), np.log(ws[-1]), dlnl)
    f = np.interp(np.exp(lnl), ws, fs)
    sigma_ln = 1.0 / resolution / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    f = gaussian_filter1d(f, sigma_ln / dlnl, mode="nearest", truncate=6.0)
    w = np.exp(lnl)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (f[1:] + f[:-1]) * np.diff(w))])
    c_edges = np.interp(edges, w, cum)
    return np.diff(c_edges) / np.diff(edges)


def _ini_arms(ini: Path) -> dict[str, dict[str, float]]:
    """Read the [LR] arm sections of MOONS_mode.ini (ron e-, dark e-/pixel/hour)."""
    text = ini.read_text()
    lr = text[text.index("[LR]"):]
    lr = lr[: lr.index("[Telescope]")] if "[Telescope]" in lr else lr
    out: dict[str, dict[str, float]] = {}
    for m in re.finditer(r"\[\[(\w+)\]\](.*?)(?=\[\[|\Z)", lr, re.S):
        body = m.group(2)
        vals = {}
        for key in ("ron", "dark", "resolution"):
            mm = re.search(rf"^\s*{key}\s*=\s*([0-9.]+)", body, re.M)
            if mm:
                vals[key] = float(mm.group(1))
        out[m.group(1)] = vals
    return out


def build(moons1d: Path, out: Path, throughput_case: str = "best") -> dict:
    inst = load_instrument("moons_lr")
    wave = inst.wave
    inst_dir = moons1d / "Instrument"
    arms_ini = _ini_arms(inst_dir / "MOONS_mode.ini")
    emission = np.zeros((len(AIRMASSES), wave.size), np.float64)
    transmission = np.zeros_like(emission)
    for k, am in enumerate(AIRMASSES):
        path = moons1d / "Skymodel" / f"SkyTemplate_ESO_a{am:.1f}.fits"
        with fits.open(path) as h:
            rad = np.asarray(h[0].data, np.float64)
            tra = np.asarray(h[1].data, np.float64)
            hdr = h[0].header
        wsrc = hdr["CRVAL1"] + hdr["CDELT1"] * np.arange(rad.size)
        for a, sl in zip(inst.arms, inst.arm_slices()):
            w = a.wave
            edges = np.concatenate([w - a.dwave / 2, [w[-1] + a.dwave / 2]])
            emission[k, sl] = _convolve_rebin(wsrc, rad, edges, a.resolution)
            transmission[k, sl] = _convolve_rebin(wsrc, tra, edges, a.resolution)
    tw, te = _read_curve(inst_dir / "telescope_eff.txt")  # µm, fraction
    throughput = np.zeros(wave.size)
    ron = np.zeros(wave.size)
    dark = np.zeros(wave.size)
    qe_files = {"RI": "QE_LBNL.txt", "YJ": "QE_4RG.txt", "H": "QE_4RG.txt"}
    for a, sl in zip(inst.arms, inst.arm_slices()):
        w_um = a.wave / 1e4
        xw, xt = _read_curve(inst_dir / f"throughput_{a.name}_{throughput_case}.txt")  # nm, fraction
        qw, qv = _read_curve(inst_dir / qe_files[a.name])  # µm, percent
        throughput[sl] = (np.interp(w_um, tw, te) * np.interp(a.wave / 10.0, xw, xt)
                          * np.interp(w_um, qw, qv) / 100.0)
        ron[sl] = arms_ini[a.name]["ron"]
        dark[sl] = arms_ini[a.name]["dark"] / 3600.0
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        wave=wave.astype(np.float64),
        airmass=np.asarray(AIRMASSES, np.float32),
        emission=emission.astype(np.float32),
        transmission=transmission.astype(np.float32),
        throughput=throughput.astype(np.float32),
        read_noise_e=ron.astype(np.float32),
        dark_e_per_s=dark.astype(np.float32),
        grid_hash=np.asarray(inst.grid_hash),
        source=np.asarray(
            "ESO SkyCalc Paranal sky and MOONS efficiency curves from moons1d 1.0.3 (MIT); "
            f"Gaussian LSF FWHM=lambda/R per arm, pixel-averaged; throughput=telescope_eff*throughput_{throughput_case}*QE"
        ),
        emission_units=np.asarray("ph / (s cm2 Angstrom arcsec2)"),
    )
    return {"size_bytes": out.stat().st_size, "n_wave": int(wave.size)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moons1d", type=Path, default=Path("/work/shared/data/moons1d"))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "survey_infer/data/sky/moons_lr_sky.npz")
    ap.add_argument("--throughput", default="best", choices=["best", "worst"])
    args = ap.parse_args()
    print(build(args.moons1d, args.out, args.throughput))


if __name__ == "__main__":
    main()
