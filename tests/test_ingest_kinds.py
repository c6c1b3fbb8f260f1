"""Inputs of kinds real survey files have (issue 13's ingest cases), each with its neighbours, in every reader.

Every input is built here (synthetic FITS / HDF5 files written with astropy / h5py); only the gzipped real SDSS
file needs ../shared/data/real_spectra and is skipped without it. Kinds covered:

* logarithmic wavelength units (``dex(...)``, ``log(...)``, ``ln(...)``, any length inside);
* containers with several spectra (FITS tables, HDF5 groups, msaexp / ESO tables): all read, or refused clearly;
* wavelength arrays that are not finite and strictly increasing (NaN, zero padding, joined arms, reversed);
* FITS null markers (TNULLn, BLANK), masked columns, HDF5 ``_FillValue``;
* ids of any integer width or sign: lossless or one clear error naming the file;
* empty inputs in every reader;
* invalid pixels zeroed at ingest still set ``BAD_INPUT`` (looked up by name);
* an append that adds columns, then the same ``run`` (the catalog resumes);
* string attributes as bytes / numpy strings / one-element arrays;
* compressed FITS (gzip, bzip2, xz, zip).
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from astropy.io import fits
from astropy.table import MaskedColumn, Table

from survey_infer.cli import main as cli_main
from survey_infer.instrument import load_instrument
from survey_infer.io.ingest import ingest
from survey_infer.io.readers import ReaderError, find_reader, read_spectra
from survey_infer.io.readers.base import (as_int_id, build_arms, fits_image, fits_table, parse_unit, probe_file,
                                          wave_to_angstrom)
from survey_infer.io.resample import air_to_vacuum, resample_arms
from survey_infer.io.survey_store import MASK_BAD_SOURCE, MASK_INVALID_INPUT, create_survey

FUNIT = "1e-17 erg/(s cm2 Angstrom)"
REAL = Path(os.environ.get("SURVEY_INFER_REAL_SPECTRA",
                           Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_spectra"))
pytestmark = pytest.mark.filterwarnings("ignore:Keyword name 'SOURCE_ID'")  # JWST's own keyword (HIERARCH)
MOONS_GRIDS = {"RI": (6470.0, 0.6970899470899469, 4117), "YJ": (9340.0, 0.9836347975882856, 4229),
               "H": (14520.0, 0.8988391376451075, 3871)}


# ------------------------------------------------------------------------------------------------ writers

def table_fits(path: Path, cols: dict, units: dict | None = None, *, header: dict | None = None, name=None) -> Path:
    """A FITS file with one binary table (one row per pixel) built from ``cols``."""
    units = units or {}
    fc = [fits.Column(name=k, format="K" if np.asarray(v).dtype.kind in "iu" else "D", array=np.asarray(v),
                      unit=units.get(k)) for k, v in cols.items()]
    h0 = fits.PrimaryHDU()
    h0.header.update(header or {})
    fits.HDUList([h0, fits.BinTableHDU.from_columns(fc, name=name)]).writeto(path, overwrite=True)
    return path


def x1d_like(path: Path, n_tables: int = 3, *, n: int = 1500, nan_wave: bool = False) -> Path:
    """A JWST x1d-like file: ``n_tables`` EXTRACT1D tables (WAVELENGTH um, FLUX / FLUX_ERROR Jy, DQ)."""
    rng = np.random.default_rng(7)
    h0 = fits.PrimaryHDU()
    h0.header.update({"TELESCOP": "JWST", "INSTRUME": "NIRSPEC"})
    hdus = [h0]
    for k in range(n_tables):
        m = n - 20 * k
        wl = np.linspace(0.97, 1.78, m)
        flux = (k + 1) * 1e-6 * (1 + rng.normal(0, 0.05, m))
        err = np.full(m, 5e-8)
        if nan_wave:
            bad = np.zeros(m, bool)
            bad[:40] = bad[-40:] = True
            bad[m // 2] = True
            wl[bad] = flux[bad] = err[bad] = np.nan
        cols = [fits.Column(name="WAVELENGTH", format="D", array=wl, unit="um"),
                fits.Column(name="FLUX", format="D", array=flux, unit="Jy"),
                fits.Column(name="FLUX_ERROR", format="D", array=err, unit="Jy"),
                fits.Column(name="DQ", format="J", array=np.zeros(m, np.int32))]
        t = fits.BinTableHDU.from_columns(cols, name="EXTRACT1D")
        t.header.update({"EXTVER": k + 1, "SOURCE_ID": 1000 + k, "SLTNAME": f"S{k}"})
        hdus.append(t)
    hdus.append(fits.ImageHDU(np.zeros(16, np.uint8), name="ASDF"))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def msaexp_like(path: Path, waves: list, *, wunit="um") -> Path:
    """msaexp ``*.spec.fits``-like: one SPEC1D table per entry of ``waves`` (wave, flux, err in uJy)."""
    hdus = [fits.PrimaryHDU()]
    for k, w in enumerate(waves):
        w = np.asarray(w, float)
        cols = [fits.Column(name="wave", format="D", array=w, unit=wunit),
                fits.Column(name="flux", format="D", array=np.full(w.size, 1.0 + k), unit="uJy"),
                fits.Column(name="err", format="D", array=np.full(w.size, 0.1), unit="uJy")]
        t = fits.BinTableHDU.from_columns(cols, name="SPEC1D")
        t.header["SRCNAME"] = f"src{k}"
        hdus.append(t)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def eso_like(path: Path, waves: list, *, wunit="Angstrom", n_tables: int = 1) -> Path:
    """ESO Phase-3 1D-like: WAVE/FLUX/ERR array cells, one row per entry of ``waves``, ``n_tables`` tables."""
    h0 = fits.PrimaryHDU()
    h0.header["PRODCATG"] = "SCIENCE.SPECTRUM"
    h0.header["OBJECT"] = "obj"
    hdus = [h0]
    for _ in range(n_tables):
        m = max((len(w) for w in waves), default=5)
        rows = len(waves)
        cols = [fits.Column(name="WAVE", format=f"{m}D", array=np.array(waves, float).reshape(rows, m), unit=wunit),
                fits.Column(name="FLUX", format=f"{m}D", array=np.ones((rows, m)), unit="erg/(s cm2 Angstrom)"),
                fits.Column(name="ERR", format=f"{m}D", array=np.full((rows, m), 0.1), unit="erg/(s cm2 Angstrom)")]
        hdus.append(fits.BinTableHDU.from_columns(cols, name="PHASE3SPECTRA"))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def sdss_like(path: Path, *, n: int = 3000, z: float = 0.1379, bestobjid=1237657070628372480) -> Path:
    """SDSS ``spec-*.fits``-like: COADD (loglam, flux, ivar, and_mask) and SPECOBJ (Z, PLUG_RA/DEC, ids)."""
    loglam = 3.5798 + 1e-4 * np.arange(n)
    coadd = fits.BinTableHDU.from_columns([
        fits.Column(name="flux", format="E", array=np.ones(n, np.float32)),
        fits.Column(name="loglam", format="E", array=loglam.astype(np.float32)),
        fits.Column(name="ivar", format="E", array=np.full(n, 4.0, np.float32)),
        fits.Column(name="and_mask", format="J", array=np.zeros(n, np.int32))], name="COADD")
    specobj = fits.BinTableHDU.from_columns([
        fits.Column(name="Z", format="E", array=np.array([z], np.float32)),
        fits.Column(name="PLUG_RA", format="D", array=[150.0]), fits.Column(name="PLUG_DEC", format="D", array=[2.0]),
        fits.Column(name="BESTOBJID", format="K", array=np.array([bestobjid], np.int64)),
        fits.Column(name="PLATE", format="J", array=[295]), fits.Column(name="MJD", format="J", array=[51585]),
        fits.Column(name="FIBERID", format="J", array=[596])], name="SPECOBJ")
    h0 = fits.PrimaryHDU()
    h0.header["BUNIT"] = "1E-17 erg/cm^2/s/Ang"
    fits.HDUList([h0, coadd, specobj]).writeto(path, overwrite=True)
    return path


def desi_like(path: Path, *, nspec: int = 3, npix: int = 500, targetid=None, wunit="Angstrom") -> Path:
    """DESI coadd-like: B arm images and a FIBERMAP table (TARGETID may be a MaskedColumn)."""
    w = np.linspace(3600.0, 5800.0, npix)
    hdus = [fits.PrimaryHDU(),
            fits.ImageHDU(w if wunit == "Angstrom" else np.log10(w), name="B_WAVELENGTH"),
            fits.ImageHDU(np.ones((nspec, npix)), name="B_FLUX"),
            fits.ImageHDU(np.full((nspec, npix), 4.0), name="B_IVAR")]
    hdus[1].header["BUNIT"] = wunit
    hdus[2].header["BUNIT"] = "10**-17 erg/(s cm2 Angstrom)"
    t = Table({"TARGETID": targetid if targetid is not None else np.arange(nspec, dtype=np.int64) + 100,
               "TARGET_RA": np.zeros(nspec), "TARGET_DEC": np.zeros(nspec)})
    fm = fits.table_to_hdu(t)
    fm.name = "FIBERMAP"
    hdus.append(fm)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def moons1d_like(folder: Path, name: str, *, z: float = 1.5, seed: int = 0, n_override: int | None = None):
    """moons1d 1.0.3-like per-arm files (flux / error / sky-mask / sky HDUs on the LR grids)."""
    rng = np.random.default_rng(seed)
    out = []
    for band, (w0, dw, n) in MOONS_GRIDS.items():
        n = n if n_override is None else n_override
        h0 = fits.PrimaryHDU()
        h0.header.update({"INST": "MOONS_SIM", "R_MODE": "LR", "BAND": band, "OBNAME": "SYNTH", "NDIT": 4.0,
                          "DIT": 1800.0, "Z": z, "MAG_H": 22.5})
        hdus = [h0]
        for data in (1e-18 + rng.normal(0, 2e-19, n), np.full(n, 2e-19), np.zeros(n, np.int32), np.ones(n)):
            h = fits.ImageHDU(data)
            h.header.update({"CRVAL1": w0, "CDELT1": dw, "CRPIX1": 1.0, "TUNIT1": "AA",
                             "TUNIT2": "erg Angstrom-1 s-1 cm-2"})
            hdus.append(h)
        p = folder / f"{name}_{band}.fits"
        fits.HDUList(hdus).writeto(p, overwrite=True)
        out.append(p)
    return out


def run_cli(*args) -> int:
    try:
        return cli_main([str(a) for a in args])
    except SystemExit as exc:  # argparse
        return int(exc.code or 0)


# ------------------------------------------------------------------------------ logarithmic wavelength units

@pytest.mark.parametrize("unit,values,expected", [
    ("dex(Angstrom)", [np.log10(6564.6)], 6564.6), ("log(Angstrom)", [np.log10(5000.0)], 5000.0),
    ("log10(nm)", [np.log10(656.46)], 6564.6), ("ln(Angstrom)", [np.log(5000.0)], 5000.0),
    ("dex(um)", [np.log10(1.5)], 15000.0), ("LOG(AA)", [np.log10(7000.0)], 7000.0), ("Angstrom", [5000.0], 5000.0),
])
def test_log_wavelength_units_convert_to_angstrom(unit, values, expected):
    assert wave_to_angstrom(np.array(values), unit)[0] == pytest.approx(expected, rel=1e-9)


def test_log_unit_is_not_a_flux_unit():
    with pytest.raises(ValueError):
        parse_unit("dex(Angstrom)", "flux")


def _line_spectrum(w):
    return 1.0 + 20.0 * np.exp(-0.5 * ((w - 6564.6) / 2.0) ** 2)


@pytest.mark.parametrize("colname,unit,transform", [
    ("LOGLAM", "dex(Angstrom)", np.log10),           # the case: SDSS-style loglam with a dex unit (not x10 off)
    ("LOGLAM", "", np.log10),                        # loglam without a unit: log10 Angstrom
    ("LOGLAM", "log(Angstrom)", np.log10),           # FITS spelling
    ("WAVE", "dex(Angstrom)", np.log10),             # any wavelength column with a log unit
    ("WAVE", "ln(Angstrom)", np.log),
    ("WAVELENGTH", "dex(nm)", lambda w: np.log10(w / 10.0)),
])
def test_generic_table_log_wavelengths(tmp_path, colname, unit, transform):
    w = np.geomspace(4000.0, 9000.0, 3000)
    p = table_fits(tmp_path / "t.fits", {colname: transform(w), "FLUX": _line_spectrum(w), "IVAR": np.full(w.size, 25.0)},
                   {colname: unit or None, "FLUX": FUNIT})
    s = read_spectra(p)[0]
    lo, hi = s.wave_range
    assert lo == pytest.approx(4000.0, abs=1e-3) and hi == pytest.approx(9000.0, abs=1e-3)
    assert s.arms[0].wave[np.argmax(s.arms[0].flux)] == pytest.approx(6564.6, abs=2.0)


def test_log_wavelengths_in_hdf5_images_msaexp_eso_desi(tmp_path):
    w = np.geomspace(4000.0, 9000.0, 2000)
    # HDF5 dataset attribute
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["wave"] = np.log10(w)
        f["wave"].attrs["units"] = "dex(Angstrom)"
        f["flux"] = _line_spectrum(w)
        f["flux"].attrs["units"] = FUNIT
        f["ivar"] = np.ones(w.size)
    assert read_spectra(tmp_path / "s.h5")[0].wave_range[1] == pytest.approx(9000.0, abs=1e-3)
    # FITS images (BUNIT of the WAVE HDU)
    hw = fits.ImageHDU(np.log10(w / 1e4), name="WAVE")
    hw.header["BUNIT"] = "dex(um)"
    hf = fits.ImageHDU(_line_spectrum(w), name="FLUX")
    hf.header["BUNIT"] = FUNIT
    fits.HDUList([fits.PrimaryHDU(), hw, hf, fits.ImageHDU(np.ones(w.size), name="IVAR")]).writeto(tmp_path / "i.fits")
    assert read_spectra(tmp_path / "i.fits")[0].wave_range[0] == pytest.approx(4000.0, abs=1e-3)
    # msaexp SPEC1D with a log unit
    wm = np.linspace(1.0, 1.7, 500)
    p = msaexp_like(tmp_path / "m.spec.fits", [np.log10(wm)], wunit="dex(um)")
    assert find_reader(p).name == "jwst_msaexp"
    assert read_spectra(p)[0].wave_range == pytest.approx((10000.0, 17000.0))
    # ESO Phase-3 with a log unit
    p = eso_like(tmp_path / "e.fits", [np.log10(np.linspace(650.0, 900.0, 300))], wunit="log(nm)")
    assert find_reader(p).name == "eso_phase3"
    assert read_spectra(p)[0].wave_range == pytest.approx((6500.0, 9000.0))
    # DESI: the wavelength HDU's BUNIT
    p = desi_like(tmp_path / "coadd-x.fits", wunit="dex(Angstrom)")
    assert read_spectra(p)[0].wave_range == pytest.approx((3600.0, 5800.0))


# ------------------------------------------------------------------------------ several spectra in one container

def test_x1d_with_three_extract1d_tables_gives_three_rows(tmp_path):
    p = x1d_like(tmp_path / "x1d.fits", 3)
    spectra = read_spectra(p)
    assert len(spectra) == 3
    assert [s.target_id for s in spectra] == [1000, 1001, 1002]  # SOURCE_ID of each table
    assert [round(float(np.median(s.flux)) / float(np.median(spectra[0].flux)), 1) for s in spectra] == [1.0, 2.0, 3.0]
    rep = ingest([p], tmp_path / "s.zarr", progress=False)
    assert rep.n_spectra == 3
    assert int(zarr.open_group(str(tmp_path / "s.zarr"), mode="r").attrs["n_objects"]) == 3


def test_hdf5_groups_msaexp_and_eso_tables_are_all_read(tmp_path):
    w = np.linspace(6500.0, 9000.0, 400)
    with h5py.File(tmp_path / "g.h5", "w") as f:
        for k in range(3):
            g = f.create_group(f"obj{k}")
            g["wave"], g["flux"], g["ivar"] = w, np.full(w.size, k + 1.0), np.ones(w.size)
            g.attrs["target_id"] = 50 + k
    sp = read_spectra(tmp_path / "g.h5")
    assert len(sp) == 3 and [s.target_id for s in sp] == [50, 51, 52]
    p = msaexp_like(tmp_path / "two.spec.fits", [np.linspace(1.0, 1.7, 300), np.linspace(1.0, 1.6, 200)])
    assert [s.name for s in read_spectra(p)] == ["src0", "src1"]
    p = eso_like(tmp_path / "two_tables.fits", [np.linspace(6500.0, 9000.0, 100)], n_tables=2)
    assert len(read_spectra(p)) == 2


def test_several_flux_images_are_refused_naming_the_count(tmp_path):
    w = np.linspace(6500.0, 9000.0, 100)
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(w, name="WAVE")]
    for v in (1, 2):
        hdus += [fits.ImageHDU(np.ones(w.size), name="FLUX", ver=v), fits.ImageHDU(np.ones(w.size), name="IVAR", ver=v)]
    fits.HDUList(hdus).writeto(tmp_path / "imgs.fits")
    with pytest.raises(ReaderError, match=r"imgs\.fits: holds 2 FLUX images"):
        read_spectra(tmp_path / "imgs.fits")


# ------------------------------------------------------------------------------ wavelength arrays out of shape

def test_nan_wavelengths_become_no_data_rest_kept(tmp_path):
    p = x1d_like(tmp_path / "x1d.fits", 1, n=1600, nan_wave=True)
    s = read_spectra(p)[0]
    arm = s.arms[0]
    assert arm.wave.size == 1600 - 80 and np.all(np.diff(arm.wave) > 0)  # ends dropped, the inside pixel kept
    assert (arm.ivar == 0).sum() == 1 and (arm.ivar > 0).sum() == 1600 - 81
    rep = ingest([p], tmp_path / "s.zarr", progress=False)
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert rep.n_spectra == 1 and float((g["ivar"][0] > 0).mean()) > 0.3


def test_build_arms_repairs_what_is_safe():
    n = 100
    w = np.linspace(5000.0, 6000.0, n)
    f, iv = np.ones(n), np.ones(n)
    # zero padding at both ends: dropped
    wz = w.copy()
    wz[:5] = wz[-3:] = 0.0
    arms = build_arms("z.fits", wz, f, iv)
    assert len(arms) == 1 and arms[0].wave.size == n - 8
    # reversed: reversed back
    arms = build_arms("r.fits", w[::-1], np.arange(n, dtype=float), iv)
    assert np.all(np.diff(arms[0].wave) > 0) and arms[0].flux[0] == n - 1
    # two arms joined in one array with a repeated sample where they meet: two arms
    wj = np.concatenate([np.linspace(5000.0, 5800.0, 60), np.linspace(5800.0, 6500.0, 40)])
    arms = build_arms("j.fits", wj, f, iv)
    assert [a.wave.size for a in arms] == [60, 40]
    # overlapping arms (the second starts below the end of the first)
    wo = np.concatenate([np.linspace(5000.0, 5800.0, 60), np.linspace(5700.0, 6500.0, 40)])
    assert len(build_arms("o.fits", wo, f, iv)) == 2


def test_build_arms_refuses_with_the_real_reason():
    rng = np.random.default_rng(0)
    with pytest.raises(ReaderError, match=r"u\.fits: wavelengths are not in order: they go back"):
        build_arms("u.fits", rng.uniform(5000, 6000, 100), np.ones(100), np.ones(100))
    with pytest.raises(ReaderError, match=r"n\.fits: no finite positive wavelength"):
        build_arms("n.fits", np.full(10, np.nan), np.ones(10), np.ones(10))


def test_nan_and_reversed_wavelengths_in_msaexp_and_eso(tmp_path):
    wm = np.linspace(1.0, 1.7, 300)
    wm[:10] = np.nan
    s = read_spectra(msaexp_like(tmp_path / "n.spec.fits", [wm]))[0]
    assert s.arms[0].wave.size == 290
    s = read_spectra(eso_like(tmp_path / "rev.fits", [np.linspace(9000.0, 6500.0, 200)]))[0]
    assert np.all(np.diff(s.arms[0].wave) > 0)


# ------------------------------------------------------------------------------ null markers, masked columns

def test_tnull_masked_target_ids_are_unknown(tmp_path):
    rng = np.random.default_rng(3)
    w = np.linspace(6500.0, 17900.0, 2000)
    t = Table({"WAVE": np.tile(w, (3, 1)), "FLUX": 1 + rng.normal(0, 0.1, (3, w.size)), "IVAR": np.full((3, w.size), 100.0),
               "TARGETID": MaskedColumn([11, 0, 0], mask=[False, True, True], dtype=np.int64)})
    t["WAVE"].unit = "Angstrom"
    t["FLUX"].unit = FUNIT
    p = tmp_path / "three.fits"
    t.write(p)
    assert fits.getheader(p, 1).get("TNULL4") is not None
    assert [s.target_id for s in read_spectra(p)] == [11, None, None]
    ingest([p], tmp_path / "s.zarr", progress=False)
    assert zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["target_id"][:].tolist() == [11, -1, -1]


def test_fast_fits_reader_honours_tnull_and_blank(tmp_path):
    t = Table({"ID": MaskedColumn([5, 0], mask=[False, True], dtype=np.int32)})
    t.write(tmp_path / "t.fits")
    probe = probe_file(tmp_path / "t.fits")
    col = fits_table(tmp_path / "t.fits", probe.hdu(1))["ID"]
    assert np.ma.is_masked(col[1]) and int(col[0]) == 5 and as_int_id(col[1]) is None
    img = fits.ImageHDU(np.array([1, -99, 3], np.int16))
    img.header["BLANK"] = -99
    fits.HDUList([fits.PrimaryHDU(), img]).writeto(tmp_path / "i.fits")
    data = fits_image(tmp_path / "i.fits", probe_file(tmp_path / "i.fits").hdu(1))
    assert np.isnan(data[1]) and data[0] == 1 and data[2] == 3


def test_desi_fibermap_tnull_and_sdss_tnull(tmp_path):
    p = desi_like(tmp_path / "coadd-t.fits",
                  targetid=MaskedColumn([7, 0, 9], mask=[False, True, False], dtype=np.int64))
    assert [s.target_id for s in read_spectra(p)] == [7, None, 9]
    # SDSS: a masked BESTOBJID falls back to the next id, never to the TNULL value
    p = sdss_like(tmp_path / "spec-0295-51585-0596.fits")
    with fits.open(p, mode="update") as h:
        h["SPECOBJ"].header["TNULL4"] = 1237657070628372480
    s = read_spectra(p)[0]
    assert s.target_id is None or s.target_id != 1237657070628372480


def test_hdf5_fill_value_ids_are_unknown(tmp_path):
    w = np.linspace(6500.0, 9000.0, 300)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["wave"], f["flux"], f["ivar"] = w, np.ones((2, w.size)), np.ones((2, w.size))
        f["target_id"] = np.array([4, -9999], np.int64)
        f["target_id"].attrs["_FillValue"] = np.int64(-9999)
    assert [s.target_id for s in read_spectra(tmp_path / "f.h5")] == [4, None]


# ------------------------------------------------------------------------------ ids of any width / sign

@pytest.mark.parametrize("dtype", ["int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"])  # astropy
# writes int8 as a logical column
def test_ids_of_any_width_are_lossless(tmp_path, dtype):
    w = np.linspace(6500.0, 17900.0, 1000)
    info = np.iinfo(dtype)
    ids = np.array([info.max, max(info.min, -5) if info.min < 0 else 0], dtype=dtype)
    t = Table({"WAVE": np.tile(w, (2, 1)), "FLUX": np.ones((2, w.size)), "IVAR": np.ones((2, w.size)), "TARGETID": ids})
    if dtype == "uint64":
        ids = np.array([2**63 - 1, 7], dtype=dtype)
        t["TARGETID"] = ids
    p = tmp_path / "ids.fits"
    t.write(p)
    assert [s.target_id for s in read_spectra(p)] == [int(v) for v in ids]


def test_uint64_id_beyond_int64_is_one_clear_error(tmp_path, capsys):
    w = np.linspace(6500.0, 17900.0, 1000)
    t = Table({"WAVE": np.tile(w, (2, 1)), "FLUX": np.ones((2, w.size)), "IVAR": np.ones((2, w.size)),
               "TARGETID": np.array([2**63 + 5, 7], dtype=np.uint64)})
    p = tmp_path / "big_ids.fits"
    t.write(p)
    with pytest.raises(ReaderError, match=r"big_ids\.fits: target id TARGETID value 9223372036854775813 does not fit"):
        read_spectra(p)
    assert run_cli("ingest", p, "--out", tmp_path / "s.zarr", "--no-progress") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(p) in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "s.zarr").exists()
    # the same in a header keyword and an HDF5 dataset
    with pytest.raises(ReaderError, match="does not fit"):
        as_int_id(str(2**64), "h.fits", "TARGETID")
    with h5py.File(tmp_path / "u.h5", "w") as f:
        f["wave"], f["flux"], f["ivar"] = w, np.ones((1, w.size)), np.ones((1, w.size))
        f["target_id"] = np.array([2**64 - 1], np.uint64)
    with pytest.raises(ReaderError, match=r"u\.h5: target id TARGET_ID value 18446744073709551615"):
        read_spectra(tmp_path / "u.h5")


# ------------------------------------------------------------------------------ empty input, every reader

def _empty_inputs(tmp: Path) -> dict[str, Path]:
    z = np.zeros(0)
    out = {"generic table": table_fits(tmp / "zero.fits", {"wave": z, "flux": z, "ivar": z}, {"wave": "Angstrom"})}
    t = Table({"WAVE": np.zeros((0, 5)), "FLUX": np.zeros((0, 5)), "IVAR": np.zeros((0, 5))})
    t.write(tmp / "zero_rows.fits")
    out["generic array cells"] = tmp / "zero_rows.fits"
    with h5py.File(tmp / "zero.h5", "w") as f:
        f["wave"], f["flux"], f["ivar"] = z, z, z
    out["hdf5"] = tmp / "zero.h5"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(z, name="WAVE"), fits.ImageHDU(z, name="FLUX"),
                  fits.ImageHDU(z, name="IVAR")]).writeto(tmp / "zero_img.fits")
    out["generic images"] = tmp / "zero_img.fits"
    out["msaexp"] = msaexp_like(tmp / "zero.spec.fits", [z])
    out["eso"] = eso_like(tmp / "zero_eso.fits", [])
    out["sdss"] = sdss_like(tmp / "spec-0000-00000-0000.fits", n=0)
    out["desi"] = desi_like(tmp / "coadd-zero.fits", nspec=0)
    (tmp / "m").mkdir()
    out["moons1d"] = moons1d_like(tmp / "m", "zero", n_override=0)[0]
    return out


def test_every_reader_refuses_empty_input_clearly(tmp_path):
    for kind, p in _empty_inputs(tmp_path).items():
        with pytest.raises(ReaderError) as ei:
            read_spectra(p)
        msg = str(ei.value)
        reason = msg.split(str(p), 1)[-1].lower()
        assert msg.startswith(str(p)), (kind, msg)
        assert any(k in reason for k in ("no pixel", "empty", "no rows", "zero")), (kind, msg)


def test_cli_empty_table_is_one_line_exit_2(tmp_path, capsys):
    p = table_fits(tmp_path / "zero_length.fits", {"wave": np.zeros(0), "flux": np.zeros(0), "ivar": np.zeros(0)})
    assert run_cli("ingest", p, "--out", tmp_path / "s.zarr", "--no-progress") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(p) in err[0] and "empty" in err[0] and "IndexError" not in err[0]


# ------------------------------------------------------------------------------ invalid pixels -> BAD_INPUT

def _bad_pixel_files(tmp: Path) -> list[Path]:
    rng = np.random.default_rng(11)
    w = np.linspace(6450.0, 18000.0, 12000)
    files = []
    for k, frac in enumerate([0.0, 0.2, 0.6]):
        f = 1 + rng.normal(0, 0.1, w.size)
        iv = np.full(w.size, 100.0)
        sel = np.flatnonzero(rng.random(w.size) < frac)
        third = len(sel) // 3
        f[sel[:third]] = np.nan
        f[sel[third:2 * third]] = np.inf
        iv[sel[2 * third:]] = -1.0
        files.append(table_fits(tmp / f"spec{k}.fits", {"wave": w, "flux": f, "ivar": iv}, {"wave": "Angstrom", "flux": FUNIT}))
    return files


def test_invalid_input_is_marked_in_the_store_mask(tmp_path):
    ingest(_bad_pixel_files(tmp_path), tmp_path / "s.zarr", progress=False)
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    frac = ((g["mask"][:] & MASK_INVALID_INPUT) != 0).mean(axis=1)
    assert frac[0] == 0 and 0.1 < frac[1] < 0.4 and frac[2] > 0.4
    assert np.all(g["ivar"][:][(g["mask"][:] & MASK_INVALID_INPUT) != 0] == 0)
    # a direct store write with NaN / negative ivar is marked too
    inst = load_instrument(None)
    wr = create_survey(tmp_path / "d.zarr", 1, inst, columns={}, with_mask=True)
    flux = np.ones((1, inst.n_wave), np.float32)
    ivar = np.ones((1, inst.n_wave), np.float32)
    flux[0, :10] = np.nan
    ivar[0, 10:20] = -1
    wr.write(0, {"flux": flux, "ivar": ivar, "object_id": np.array([0])})
    m = zarr.open_group(str(wr.work_path), mode="r")["mask"][0]
    assert np.all(m[:20] == MASK_INVALID_INPUT | MASK_BAD_SOURCE) and np.all(m[20:] == 0)


def test_resample_marks_invalid_source_pixels():
    inst = load_instrument(None)
    w = np.linspace(6500.0, 9000.0, 3000)
    f, iv = np.ones(w.size), np.ones(w.size)
    from survey_infer.io.readers.base import SpectrumArm

    _, _, m0 = resample_arms([SpectrumArm(wave=w, flux=f, ivar=iv, mask=(np.arange(w.size) % 7 == 0).astype(int))], inst)
    assert not (m0 & MASK_INVALID_INPUT).any()  # reduction-masked pixels are not "invalid input"
    f2 = f.copy()
    f2[1000:1100] = np.nan
    _, ivo, m = resample_arms([SpectrumArm(wave=w, flux=f2, ivar=iv)], inst)
    bad = (m & MASK_INVALID_INPUT) != 0
    assert bad.sum() > 50 and np.all(ivo[bad] == 0)


def test_bad_input_flag_is_set_from_an_ingested_store(tmp_path, tiny_model):
    from survey_infer.flags import ZWarn
    from survey_infer.model.checkpoint import load_model
    from survey_infer.model.inference import infer_block

    ingest(_bad_pixel_files(tmp_path), tmp_path / "s.zarr", progress=False)
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    model = load_model(tiny_model)
    out = infer_block(model, g["flux"][:], g["ivar"][:], g["object_id"][:], 0, mask=g["mask"][:], mc_samples=2,
                      keep_pz=False)
    bad_input = getattr(ZWarn, "BAD_INPUT")  # by name: the bit's position is the flags module's to define
    assert [(int(z) & bad_input) != 0 for z in out["zwarn"]] == [False, True, True]


# ------------------------------------------------------------------------------ append adding columns, then run

def test_append_adding_columns_then_the_same_run_resumes(tmp_path, tiny_model):
    from survey_infer.pipeline.runner import run_catalog

    w = np.linspace(6500.0, 17900.0, 3000)
    rng = np.random.default_rng(4)
    gen = [table_fits(tmp_path / f"g{k}.fits", {"wave": w, "flux": 1 + rng.normal(0, 0.1, w.size),
                                                "ivar": np.full(w.size, 100.0)}, {"wave": "Angstrom", "flux": FUNIT})
           for k in range(3)]
    store, cat = tmp_path / "s.zarr", tmp_path / "cat.zarr"
    ingest(gen, store, progress=False)
    kw = dict(model=tiny_model, cluster="inprocess", mc_samples=2, progress=False, print_fn=lambda *a, **k: None)
    assert run_catalog(store, cat, **kw).ok
    rep = ingest(moons1d_like(tmp_path, "objM", z=1.5, seed=1), store, append=True, progress=False)
    assert sorted(rep.added_columns) == ["mag_h", "z_true"] and "new column(s)" in rep.summary()
    before = zarr.open_group(str(cat), mode="r")["z"][:3].copy()
    s = run_catalog(store, cat, **kw)
    assert s.ok, s.blocks_failed
    c = zarr.open_group(str(cat), mode="r")
    assert c["object_id"].shape[0] == 4 and np.isfinite(c["z"][3]) and int(c["run_id"][3]) >= 0
    np.testing.assert_array_equal(c["z"][:3], before)  # old rows kept
    assert run_catalog(store, cat, **kw).ok  # and it stays complete


def test_append_lacking_store_columns_is_reported(tmp_path):
    store = tmp_path / "s.zarr"
    ingest(moons1d_like(tmp_path, "objM", z=1.5, seed=1), store, progress=False)
    w = np.linspace(6500.0, 17900.0, 1000)
    rep = ingest([table_fits(tmp_path / "g.fits", {"wave": w, "flux": np.ones(w.size), "ivar": np.ones(w.size)})],
                 store, append=True, progress=False)
    assert rep.unfilled_columns == ["mag_h", "z_true"] and rep.added_columns == []
    assert "not given by the appended files" in rep.summary()
    g = zarr.open_group(str(store), mode="r")
    assert np.isfinite(g["z_true"][0]) and np.isnan(g["z_true"][1])


def test_write_block_refuses_unknown_variables_before_writing(tmp_path, tiny_model):
    from survey_infer.catalog.store import CatalogError, write_block
    from survey_infer.pipeline.runner import run_catalog

    w = np.linspace(6500.0, 17900.0, 3000)
    store, cat = tmp_path / "s.zarr", tmp_path / "cat.zarr"
    ingest([table_fits(tmp_path / "g.fits", {"wave": w, "flux": np.ones(w.size), "ivar": np.ones(w.size)})], store,
           progress=False)
    assert run_catalog(store, cat, model=tiny_model, cluster="inprocess", mc_samples=2, progress=False,
                       print_fn=lambda *a, **k: None).ok
    z0 = zarr.open_group(str(cat), mode="r")["z"][:].copy()
    with pytest.raises(CatalogError, match="z_true"):
        write_block(cat, 0, 1, {"z": np.array([9.0]), "z_true": np.array([1.0])})
    np.testing.assert_array_equal(zarr.open_group(str(cat), mode="r")["z"][:], z0)


# ------------------------------------------------------------------------------ string attributes in any form

@pytest.mark.parametrize("value", ["air", b"air", np.bytes_(b"air"), np.array([b"air"]),
                                   np.array(["air"], dtype=h5py.string_dtype()), np.array(b"AIR")])
@pytest.mark.parametrize("where", ["file", "group", "wave"])
def test_hdf5_air_attribute_in_any_string_form(tmp_path, value, where):
    w = np.linspace(6000.0, 7000.0, 1001)
    p = tmp_path / "s.h5"
    with h5py.File(p, "w") as f:
        g = f.create_group("spec") if where == "group" else f
        g["wave"], g["flux"], g["ivar"] = w, np.ones(w.size), np.ones(w.size)
        g["wave"].attrs["units"] = np.array([b"Angstrom"])  # a one-element bytes array as the unit
        g["flux"].attrs["units"] = np.bytes_(FUNIT.encode())
        (f if where == "file" else (g if where == "group" else g["wave"])).attrs["wave_medium"] = value
    first = float(read_spectra(p)[0].arms[0].wave[0])
    assert first == pytest.approx(float(air_to_vacuum(np.array([6000.0]))[0]), abs=1e-6)


@pytest.mark.parametrize("value", [False, np.bool_(False), b"F", np.array([b"false"])])
def test_vacuum_false_attribute_in_any_form(tmp_path, value):
    w = np.linspace(6000.0, 7000.0, 101)
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["wave"], f["flux"], f["ivar"] = w, np.ones(w.size), np.ones(w.size)
        f.attrs["vacuum"] = value
    assert read_spectra(tmp_path / "v.h5")[0].arms[0].wave[0] > 6001.0


# ------------------------------------------------------------------------------ compressed FITS

def _compress(src: Path, kind: str) -> Path:
    data = src.read_bytes()
    if kind == "gzip":
        dst = src.with_name(src.name + ".gz")
        dst.write_bytes(gzip.compress(data))
    elif kind == "bzip2":
        dst = src.with_name(src.name + ".bz2")
        dst.write_bytes(bz2.compress(data))
    elif kind == "xz":
        dst = src.with_name(src.name + ".xz")
        dst.write_bytes(lzma.compress(data))
    else:
        dst = src.with_name(src.name + ".zip")
        with zipfile.ZipFile(dst, "w") as z:
            z.writestr(src.name, data)
    return dst


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz", "zip"])
def test_compressed_fits_read_like_the_plain_file(tmp_path, kind):
    plain = sdss_like(tmp_path / "spec-0295-51585-0596.fits")
    comp = _compress(plain, kind)
    a, b = read_spectra(plain)[0], read_spectra(comp)[0]
    assert find_reader(comp).name == "sdss" and b.z_catalog == pytest.approx(0.1379, abs=1e-4)
    np.testing.assert_array_equal(a.flux, b.flux)
    np.testing.assert_array_equal(a.wave, b.wave)
    gen = _compress(table_fits(tmp_path / "g.fits", {"wave": np.linspace(6500.0, 9000.0, 100), "flux": np.ones(100),
                                                     "ivar": np.ones(100)}), kind)
    assert find_reader(gen).name == "generic" and read_spectra(gen)[0].wave.size == 100
    eso = _compress(eso_like(tmp_path / "e.fits", [np.linspace(6500.0, 9000.0, 100)]), kind)
    assert read_spectra(eso)[0].wave.size == 100


def test_tile_compressed_images_read_like_plain_images(tmp_path):
    w = np.linspace(6500.0, 9000.0, 500)
    f = np.linspace(1.0, 2.0, 500)
    hdus = [fits.PrimaryHDU(), fits.CompImageHDU(w, name="WAVE", compression_type="GZIP_2", quantize_level=0.0),
            fits.CompImageHDU(f, name="FLUX", compression_type="GZIP_2", quantize_level=0.0),
            fits.CompImageHDU(np.ones(500), name="IVAR")]
    hdus[1].header["BUNIT"] = "Angstrom"
    hdus[2].header["BUNIT"] = FUNIT
    fits.HDUList(hdus).writeto(tmp_path / "fz.fits")
    assert "WAVE(image 500)" in probe_file(tmp_path / "fz.fits").describe()
    s = read_spectra(tmp_path / "fz.fits")[0]
    np.testing.assert_array_equal(s.wave, w)
    np.testing.assert_array_equal(s.flux, f)


def test_compressed_corrupt_and_hdf5_give_clear_errors(tmp_path):
    plain = sdss_like(tmp_path / "spec-0295-51585-0596.fits")
    gz = _compress(plain, "gzip")
    cut = tmp_path / "cut.fits.gz"
    cut.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    with pytest.raises(ReaderError, match=r"cut\.fits\.gz: corrupt or truncated gzip-compressed file"):
        read_spectra(cut)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["wave"] = np.ones(3)
    h5gz = _compress(tmp_path / "s.h5", "gzip")
    with pytest.raises(ReaderError, match=r"s\.h5\.gz: is a gzip-compressed HDF5 file"):
        read_spectra(h5gz)


def test_gzipped_real_sdss_file_ingests_like_the_plain_one(tmp_path):
    src = REAL / "gelato_sdss" / "spec-0295-51585-0596.fits"
    if not src.exists():
        pytest.skip(f"real spectra not available ({src})")
    shutil.copy(src, tmp_path / src.name)
    gz = _compress(tmp_path / src.name, "gzip")
    ingest([gz], tmp_path / "gz.zarr", instrument="sdss_like", progress=False)
    ingest([tmp_path / src.name], tmp_path / "plain.zarr", instrument="sdss_like", progress=False)
    a = zarr.open_group(str(tmp_path / "plain.zarr"), mode="r")
    b = zarr.open_group(str(tmp_path / "gz.zarr"), mode="r")
    assert float(b["z_catalog"][0]) == pytest.approx(0.1379, abs=1e-3)
    np.testing.assert_array_equal(a["flux"][:], b["flux"][:])
    np.testing.assert_array_equal(a["ivar"][:], b["ivar"][:])
