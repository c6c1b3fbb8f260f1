"""Spectrum readers, format sniffing, units, air->vacuum and flux-conserving resampling.

Real spectra from ../shared/data/real_spectra are used when present (skipped cleanly otherwise); everything else
runs on small synthetic files written here.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from survey_infer.instrument import load_instrument
from survey_infer.io.readers import ReaderError, companion_of, default_readers, find_reader, read_spectra
from survey_infer.io.readers.base import SpectrumArm, centres_to_edges, parse_unit
from survey_infer.io.readers.moons1d import Moons1dReader
from survey_infer.io.resample import (air_to_vacuum, instrument_edges, overlap_matrix, resample_arms, resample_flux,
                                      vacuum_to_air)

# ../shared/data/real_spectra beside the checkout (override with SURVEY_INFER_REAL_SPECTRA)
REAL = Path(os.environ.get("SURVEY_INFER_REAL_SPECTRA",
                           Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_spectra"))


def real(rel: str) -> Path:
    p = REAL / rel
    if not p.exists():
        pytest.skip(f"real spectra not available ({p})")
    return p


SDSS = {"gelato_sdss/spec-0295-51585-0596.fits": 0.1379, "gelato_sdss/spec-0280-51612-0117.fits": 0.2446,
        "gelato_sdss/spec-1599-53089-0469.fits": 0.1849}
DESI = {"desi_fastspecfit_test/coadd-4-80613-thru20210324.fits": 0.36874,
        "desi_fastspecfit_test/coadd-special-dark-27247.fits": 0.00727}
LEGAC = "legac_M19_56670_v3.0.fits"
JWST = "jwst_msaexp/static-test-driz-center-bkg_933.spec.fits"


# ------------------------------------------------------------------------------------------ synthetic writers

def write_table_fits(path: Path, wave, flux, err=None, ivar=None, mask=None, *, wunit="Angstrom",
                     funit="1e-17 erg/(s cm2 Angstrom)", header=None, tucd=None) -> Path:
    cols = [fits.Column(name="wave", format="D", array=np.asarray(wave), unit=wunit),
            fits.Column(name="flux", format="D", array=np.asarray(flux), unit=funit)]
    if err is not None:
        cols.append(fits.Column(name="error", format="D", array=np.asarray(err), unit=funit))
    if ivar is not None:
        cols.append(fits.Column(name="ivar", format="D", array=np.asarray(ivar)))
    if mask is not None:
        cols.append(fits.Column(name="mask", format="J", array=np.asarray(mask)))
    t = fits.BinTableHDU.from_columns(cols)
    if tucd:
        t.header["TUCD1"] = tucd
    h0 = fits.PrimaryHDU()
    for k, v in (header or {}).items():
        h0.header[k] = v
    fits.HDUList([h0, t]).writeto(path, overwrite=True)
    return path


def write_moons1d_like(folder: Path, name: str, *, z=1.5, seed=0, bands=("RI", "YJ", "H")) -> list[Path]:
    """Files in moons1d 1.0.3's SavetoFits layout on the exact moons1d LR grids (header CDELT1 unrounded)."""
    rng = np.random.default_rng(seed)
    grids = {"RI": (6470.0, 0.6970899470899469, 4117), "YJ": (9340.0, 0.9836347975882856, 4229),
             "H": (14520.0, 0.8988391376451075, 3871)}
    out = []
    for band in bands:
        w0, dw, n = grids[band]
        err = np.full(n, 2e-19)
        flux = 1e-18 + rng.normal(0, 2e-19, n)
        h0 = fits.PrimaryHDU()
        h0.header.update({"INST": "MOONS_SIM", "R_MODE": "LR", "OBS_MODE": "STARE", "BAND": band, "OBNAME": "TestOB",
                          "NDIT": 8.0, "DIT": 1800.0, "Z": z, "MAG": 22.0, "WAVE": "H", "TEMPLATE": "test"})
        hdus = [h0]
        for data, nm in ((flux, f"DATA_{band}"), (err, f"ERR_{band}"), ((rng.random(n) < 0.15).astype(int), f"QUAL_{band}"),
                         (np.ones(n), "Sky")):
            h = fits.ImageHDU(data)
            h.header.update({"NAME": nm, "CRVAL1": w0, "CDELT1": dw, "CRPIX1": 1.0, "TUNIT1": "AA",
                             "TUNIT2": "erg Angstrom-1 s-1 cm-2"})
            hdus.append(h)
        p = folder / f"{name}_{band}.fits"
        fits.HDUList(hdus).writeto(p, overwrite=True)
        out.append(p)
    return out


# ------------------------------------------------------------------------------------------ real files

@pytest.mark.parametrize("rel,z", sorted(SDSS.items()))
def test_sdss_reader(rel, z):
    p = real(rel)
    r = find_reader(p)
    assert r.name == "sdss"
    (s,) = r.read(p)
    assert s.z_catalog == pytest.approx(z, abs=1e-4)
    raw = fits.getdata(p, "COADD")
    np.testing.assert_allclose(s.arms[0].wave, 10.0 ** raw["loglam"].astype(float))  # vacuum, unchanged
    good = s.arms[0].ivar > 0
    med = np.median(s.arms[0].flux[good])
    assert 1 < med < 100  # 1e-17 erg/s/cm2/A
    assert s.target_id and s.target_id > 0
    assert 0 <= s.ra < 360 and -90 <= s.dec <= 90
    assert s.t_exp > 0
    assert s.name == p.stem
    e = s.arms[0].pixel_edges()
    assert np.all(e[:-1] < s.arms[0].wave) and np.all(s.arms[0].wave < e[1:])


@pytest.mark.parametrize("rel,z", sorted(DESI.items()))
def test_desi_reader_with_redrock_companion(rel, z):
    p = real(rel)
    r = find_reader(p)
    assert r.name == "desi"
    (s,) = r.read(p)
    assert [a.name for a in s.arms] == ["B", "R", "Z"]
    assert s.z_catalog == pytest.approx(z, abs=1e-5)
    tid = int(fits.getdata(p, "FIBERMAP")["TARGETID"][0])
    assert s.target_id == tid
    assert s.t_exp > 0 and np.isfinite(s.ra)
    # arms overlap (B/R, R/Z) and are in vacuum Angstrom
    assert s.arms[0].wave[-1] > s.arms[1].wave[0] and s.arms[1].wave[-1] > s.arms[2].wave[0]
    assert 3500 < s.arms[0].wave[0] < 3700


def test_desi_without_companion_has_no_z(tmp_path):
    p = real(next(iter(sorted(DESI))))
    q = tmp_path / p.name
    shutil.copy(p, q)
    (s,) = read_spectra(q)
    assert np.isnan(s.z_catalog)


def test_redrock_file_is_a_companion_not_a_spectrum():
    p = real("desi_fastspecfit_test/redrock-4-80613-thru20210324.fits")
    assert companion_of(p).name == "desi"
    with pytest.raises(ReaderError, match="companion"):
        find_reader(p)


def test_legac_air_to_vacuum_and_units():
    p = real(LEGAC)
    r = find_reader(p)
    assert r.name == "eso_phase3"
    (s,) = r.read(p)
    raw = fits.getdata(p, 1)
    w_air = raw["WAVE"][0].astype(float)
    np.testing.assert_allclose(s.arms[0].wave, air_to_vacuum(w_air))
    i = np.argmin(np.abs(w_air - 7500))
    assert s.arms[0].wave[i] - w_air[i] == pytest.approx(2.07, abs=0.03)
    # flux TUNIT is 1e-19 erg/s/cm2/A -> 0.01 in the store unit
    ok = np.isfinite(raw["FLUX"][0])
    np.testing.assert_allclose(s.arms[0].flux[ok], 0.01 * raw["FLUX"][0][ok])
    hdr = fits.getheader(p, 0)
    if any(k in hdr for k in ("Z", "REDSHIFT")):
        assert s.z_catalog == pytest.approx(0.6686, abs=1e-3)
    else:  # LEGA-C DR3 spectra do not carry the catalogue redshift
        assert np.isnan(s.z_catalog)
    assert s.target_id == 56670
    assert s.arms[0].mask is not None and (s.arms[0].mask != 0).any()


def test_jwst_msaexp_units():
    p = real(JWST)
    r = find_reader(p)
    assert r.name == "jwst_msaexp"
    (s,) = r.read(p)
    raw = fits.getdata(p, "SPEC1D")
    np.testing.assert_allclose(s.arms[0].wave, raw["wave"] * 1e4)
    i = np.flatnonzero(raw["err"] > 0)[50]
    lam = raw["wave"][i] * 1e4
    expect = raw["flux"][i] * 1e-29 * 2.99792458e18 / lam**2 / 1e-17
    assert s.arms[0].flux[i] == pytest.approx(expect, rel=1e-9)
    assert s.arms[0].ivar[raw["err"] <= 0].max() == 0
    assert s.target_id == 933 and s.t_exp > 0


def test_every_real_spectrum_file_reads():
    if not REAL.is_dir():
        pytest.skip("real spectra not available")
    n = 0
    for p in sorted(REAL.rglob("*.fits")):
        if companion_of(p) is not None:
            continue
        for s in read_spectra(p):
            assert all(np.all(np.diff(a.wave) > 0) for a in s.arms)
            assert any((a.ivar > 0).any() for a in s.arms)
            n += 1
    assert n >= 7


def test_sniffing_is_by_content_not_name(tmp_path):
    p = real(next(iter(sorted(SDSS))))
    odd = tmp_path / "something.dat"
    shutil.copy(p, odd)
    assert find_reader(odd).name == "sdss"
    # a generic table named like an SDSS file is still generic
    w = np.linspace(4000, 5000, 50)
    g = write_table_fits(tmp_path / "spec-0000-00000-0000.fits", w, np.ones(50), err=np.ones(50))
    assert find_reader(g).name == "generic"


# ------------------------------------------------------------------------------------------ corrupt files

def test_random_bytes_unknown_format(tmp_path):
    p = tmp_path / "noise.fits"
    p.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ReaderError, match="noise.fits.*unknown format"):
        find_reader(p)


def test_truncated_fits(tmp_path):
    w = np.linspace(4000, 5000, 2000)
    full = write_table_fits(tmp_path / "full.fits", w, np.ones_like(w), err=np.ones_like(w))
    p = tmp_path / "cut.fits"
    p.write_bytes(full.read_bytes()[:9000])
    with pytest.raises(ReaderError, match="cut.fits.*truncated"):
        read_spectra(p)


def test_truncated_real_sdss(tmp_path):
    src = real(next(iter(sorted(SDSS))))
    p = tmp_path / "spec-cut.fits"
    p.write_bytes(src.read_bytes()[:40000])
    with pytest.raises(ReaderError, match="spec-cut.fits.*(truncated|corrupt)"):
        read_spectra(p)


def test_fits_without_spectrum(tmp_path):
    p = tmp_path / "image.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((10, 10)))]).writeto(p)
    with pytest.raises(ReaderError, match="image.fits.*no spectrum"):
        read_spectra(p)


def test_empty_and_missing_files(tmp_path):
    e = tmp_path / "empty.fits"
    e.write_bytes(b"")
    with pytest.raises(ReaderError, match="empty.fits.*empty"):
        find_reader(e)
    with pytest.raises(ReaderError, match="nope.fits.*does not exist"):
        find_reader(tmp_path / "nope.fits")


# ------------------------------------------------------------------------------------------ FITS through astropy

def _add_cards(path: Path, marker: bytes, cards: dict) -> None:
    """Insert header cards before the END card of the header holding ``marker`` (room left in its block)."""
    raw = bytearray(path.read_bytes())
    end = raw.index(b"END" + b" " * 77, raw.index(marker))
    new = b"".join(f"{k:<8}= {v:>20}".ljust(80).encode() for k, v in cards.items())
    assert raw[end + 80:end + 80 + len(new)].strip() == b""  # blank cards after END in the same block
    raw[end:end + 80 + len(new)] = new + raw[end:end + 80]
    path.write_bytes(bytes(raw))


def test_fits_scaled_integers_and_null_markers(tmp_path):
    """BZERO/BSCALE/BLANK images and TZERO/TSCAL/TNULL columns as the FITS standard defines them (unsigned 16-bit
    images and signed-byte columns made the former hand-written reader fail with an OverflowError)."""
    from survey_infer.io.readers.base import fits_image, fits_table, probe_file

    scaled = fits.ImageHDU(np.array([10, -99, 30], np.int16), name="SCALED")
    scaled.header["BLANK"] = -99
    blank = fits.ImageHDU(np.array([1, -7, 3], np.int32), name="BLANKED")
    blank.header["BLANK"] = -7
    table = fits.BinTableHDU.from_columns([
        fits.Column(name="I8", format="B", bzero=-128, array=np.array([-5, 0, 7])),
        fits.Column(name="U32", format="J", bzero=2**31, array=np.array([0, 3_000_000_000, 7], np.uint32)),
        fits.Column(name="S", format="I", array=np.array([0, 50, 125], np.int16)),
        fits.Column(name="ID", format="K", null=-1, array=np.array([11, -1, 13])),
    ], name="T")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.array([1, 40000, 65535], np.uint16), name="U16"), scaled, blank,
                  table]).writeto(tmp_path / "s.fits")
    # scaling keywords on the stored integers (astropy would rescale data given with them): added in place
    _add_cards(tmp_path / "s.fits", b"SCALED", {"BSCALE": 0.5, "BZERO": 100.0})  # 0.5 * raw + 100
    _add_cards(tmp_path / "s.fits", b"TFORM3  = ", {"TSCAL3": 0.01, "TZERO3": 5.0})  # 0.01 * raw + 5
    assert fits.getdata(tmp_path / "s.fits", "SCALED")[0] == 105.0
    assert fits.getdata(tmp_path / "s.fits", "T")["S"].tolist() == pytest.approx([5.0, 5.5, 6.25])
    probe = probe_file(tmp_path / "s.fits")
    assert fits_image(tmp_path / "s.fits", probe.hdu("U16")).tolist() == [1, 40000, 65535]
    sc = fits_image(tmp_path / "s.fits", probe.hdu("SCALED"))
    assert sc[0] == 105.0 and np.isnan(sc[1]) and sc[2] == 115.0
    bl = fits_image(tmp_path / "s.fits", probe.hdu("BLANKED"))
    assert bl[0] == 1 and np.isnan(bl[1]) and bl[2] == 3
    cols = fits_table(tmp_path / "s.fits", probe.hdu("T"))
    assert cols["I8"].tolist() == [-5, 0, 7]
    assert cols["U32"].tolist() == [0, 3_000_000_000, 7]
    np.testing.assert_allclose(cols["S"], [5.0, 5.5, 6.25])
    assert np.ma.is_masked(cols["ID"][1]) and cols["ID"][0] == 11 and cols["ID"][2] == 13


def test_moons1d_unsigned_quality_image(tmp_path):
    """A moons1d file whose quality image is unsigned 16-bit (BZERO = 32768) reads; bad pixels stay flagged."""
    files = write_moons1d_like(tmp_path, "u", bands=("RI",))
    with fits.open(files[0]) as h:
        hdus = [hh.copy() for hh in h]
    q = hdus[3]
    hdus[3] = fits.ImageHDU(np.where(q.data > 0, 40000, 0).astype(np.uint16), header=q.header)
    fits.HDUList(hdus).writeto(files[0], overwrite=True)
    (s,) = Moons1dReader(apply_sky_mask=True).read_group(files)
    assert s.arms[0].mask is not None and s.arms[0].mask.any()


def test_gzipped_tile_compressed_images_with_blank_pixels_ingest(tmp_path):
    """A .fits.gz holding tile-compressed images (fpack, then gzip) and an integer IVAR image with BLANK pixels:
    read like the plain file, the BLANK pixels are invalid input (ivar NaN -> 0, counted), nothing else changes."""
    import gzip

    from survey_infer.io.ingest import ingest

    w = np.linspace(6500.0, 9000.0, 400)
    f = np.linspace(1.0, 2.0, 400)
    iv = np.full(400, 4, np.int16)
    iv[[10, 200, 201]] = -32768
    ivh = fits.ImageHDU(iv, name="IVAR")
    ivh.header["BLANK"] = -32768
    hdus = [fits.PrimaryHDU(), fits.CompImageHDU(w, name="WAVE", compression_type="GZIP_1", quantize_level=0.0),
            fits.CompImageHDU(f, name="FLUX", compression_type="GZIP_2", quantize_level=0.0), ivh]
    hdus[1].header["BUNIT"] = "Angstrom"
    hdus[2].header["BUNIT"] = "1e-17 erg/(s cm2 Angstrom)"
    fits.HDUList(hdus).writeto(tmp_path / "fz.fits")
    gz = tmp_path / "fz.fits.gz"
    gz.write_bytes(gzip.compress((tmp_path / "fz.fits").read_bytes()))
    a, b = read_spectra(tmp_path / "fz.fits")[0], read_spectra(gz)[0]
    np.testing.assert_array_equal(b.wave, w)
    np.testing.assert_array_equal(b.flux, f)
    np.testing.assert_array_equal(a.ivar, b.ivar)
    assert np.isnan(b.ivar[[10, 200, 201]]).all() and (b.ivar[~np.isnan(b.ivar)] == 4).all()
    rep = ingest([gz], tmp_path / "s.zarr", progress=False)
    assert rep.n_spectra == 1 and rep.source_counts["bad_ivar"] == 3


def test_fits_cut_in_a_header_or_padded_at_the_end(tmp_path):
    """A file cut inside an extension header is refused (astropy alone drops that HDU with a warning); zero
    padding after the last HDU is ignored."""
    w = np.linspace(4000, 5000, 200)
    full = write_table_fits(tmp_path / "full.fits", w, np.ones_like(w), err=np.ones_like(w)).read_bytes()
    (tmp_path / "cut.fits").write_bytes(full[:2880 + 800])
    with pytest.raises(ReaderError, match=r"cut\.fits: truncated FITS file: the header of HDU 1 is cut"):
        find_reader(tmp_path / "cut.fits")
    (tmp_path / "pad.fits").write_bytes(full + bytes(100))
    np.testing.assert_array_equal(read_spectra(tmp_path / "pad.fits")[0].wave, w)


# ------------------------------------------------------------------------------------------ generic + moons1d

def test_generic_fits_table_units_air_and_error(tmp_path):
    w_nm = np.linspace(700.0, 800.0, 500)  # nm, air
    flux = np.full(500, 2e-16)  # erg/s/cm2/A
    err = np.full(500, 1e-17)
    err[10] = np.nan
    p = write_table_fits(tmp_path / "t.fits", w_nm, flux, err=err, wunit="nm", funit="erg/s/cm2/A",
                         header={"AIRORVAC": "air", "Z": 0.5, "RA": 10.0, "DEC": -5.0, "OBJECT": "obj-1"})
    (s,) = read_spectra(p)
    np.testing.assert_allclose(s.arms[0].wave, air_to_vacuum(w_nm * 10))
    np.testing.assert_allclose(s.arms[0].flux, 20.0)
    assert s.arms[0].ivar[0] == pytest.approx(1.0)
    assert np.isnan(s.arms[0].ivar[10])  # NaN error -> NaN ivar (counted by ingest, excluded from resampling)
    assert (s.z_catalog, s.ra, s.dec, s.name) == (0.5, 10.0, -5.0, "obj-1")


def test_generic_fits_images_and_fnu(tmp_path):
    w = np.linspace(10000, 12000, 300)
    fnu_ujy = np.full((2, 300), 10.0)
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(w, name="WAVE"), fits.ImageHDU(fnu_ujy, name="FLUX"),
            fits.ImageHDU(np.ones((2, 300)), name="ERR")]
    hdus[1].header["BUNIT"] = "Angstrom"
    hdus[2].header["BUNIT"] = "uJy"
    hdus[3].header["BUNIT"] = "uJy"
    fits.HDUList(hdus).writeto(tmp_path / "img.fits")
    sp = read_spectra(tmp_path / "img.fits")
    assert len(sp) == 2
    expect = 10 * 1e-29 * 2.99792458e18 / w**2 / 1e-17
    np.testing.assert_allclose(sp[1].arms[0].flux, expect)
    np.testing.assert_allclose(sp[1].arms[0].ivar, 1 / (expect / 10) ** 2)


def test_generic_hdf5(tmp_path):
    h5py = pytest.importorskip("h5py")
    p = tmp_path / "s.h5"
    w = np.linspace(6500, 9000, 400)
    with h5py.File(p, "w") as f:
        g = f.create_group("spectra")
        g.create_dataset("wave", data=w).attrs["units"] = "Angstrom"
        g.create_dataset("flux", data=np.ones((3, 400))).attrs["units"] = "1e-17 erg/s/cm2/Angstrom"
        g.create_dataset("ivar", data=np.full((3, 400), 4.0))
        g.create_dataset("z", data=[0.1, 0.2, 0.3])
        g.create_dataset("target_id", data=[7, 8, 7])
        g.attrs["wave_medium"] = "vacuum"
    assert find_reader(p).name == "generic"
    sp = read_spectra(p)
    assert [s.z_catalog for s in sp] == [0.1, 0.2, 0.3]
    assert [s.target_id for s in sp] == [7, 8, 7]
    np.testing.assert_allclose(sp[0].arms[0].ivar, 4.0)


def test_moons1d_reader_groups_arms(tmp_path):
    files = write_moons1d_like(tmp_path, "obj7", z=1.234)
    r = find_reader(files[1])
    assert isinstance(r, Moons1dReader)
    assert len({r.group_key(f) for f in files}) == 1
    (s,) = r.read_group(files[::-1])
    assert [a.name for a in s.arms] == ["RI", "YJ", "H"]
    assert s.z_catalog == 1.234 and s.columns["z_true"] == 1.234 and s.t_exp == 8 * 1800
    assert s.arms[0].mask is None and s.meta["sky_mask"]["RI"] is not None
    assert np.median(s.arms[0].flux) == pytest.approx(0.1, rel=0.1)  # 1e-18 erg/s/cm2/A -> 0.1
    (s2,) = Moons1dReader(apply_sky_mask=True).read_group(files)
    assert s2.arms[0].mask is not None and s2.arms[0].mask.any()


# ------------------------------------------------------------------------------------------ units, air/vacuum

@pytest.mark.parametrize("text,factor", [
    ("10**(-19).erg.cm**(-2).s**(-1).angstrom**(-1)", 0.01), ("10**-17 erg/(s cm2 Angstrom)", 1.0),
    ("1E-17 erg/cm^2/s/Ang", 1.0), ("erg/s/cm2/A", 1e17), ("erg Angstrom-1 s-1 cm-2", 1e17),
])
def test_parse_flux_units(text, factor):
    import astropy.units as u

    assert parse_unit(text, "flux").to(1e-17 * u.erg / u.s / u.cm**2 / u.AA) == pytest.approx(factor)


def test_parse_bad_unit():
    with pytest.raises(ValueError, match="flux density"):
        parse_unit("km/s", "flux")


def test_air_to_vacuum_known_lines():
    # NIST: H-alpha 6562.80 air / 6564.61 vac, [OIII] 5006.843 / 5008.240, [SII] 6716.44 / 6718.29
    vac = air_to_vacuum([6562.80, 5006.843, 6716.44])
    np.testing.assert_allclose(vac, [6564.61, 5008.240, 6718.29], atol=0.01)
    assert (air_to_vacuum(7500.0) - 7500.0) == pytest.approx(2.07, abs=0.01)
    w = np.linspace(3000, 25000, 1000)
    np.testing.assert_allclose(vacuum_to_air(air_to_vacuum(w)), w, rtol=1e-13)
    assert air_to_vacuum(1500.0) == 1500.0  # IAU: below 2000 A wavelengths are vacuum


# ------------------------------------------------------------------------------------------ resampling

def test_overlap_matrix_rows_are_widths():
    se = np.sort(np.random.default_rng(1).uniform(0, 100, 60))
    de = np.linspace(10, 90, 33)
    A = overlap_matrix(se, de).toarray()
    np.testing.assert_allclose(A.sum(axis=1), np.diff(de))


def test_resample_conserves_flux_and_propagates_ivar():
    rng = np.random.default_rng(2)
    src_e = np.cumsum(np.r_[1000.0, rng.uniform(0.3, 1.7, 3000)])  # irregular source pixels
    f = rng.uniform(0, 10, 3000)
    iv = rng.uniform(0.5, 2.0, 3000)
    dst_e = np.arange(1200.0, 3900.0, 0.8)
    out_f, out_iv, bad = resample_flux(src_e, f, iv, dst_e)
    # integral over any set of whole destination channels equals the source integral over the same range
    cum = np.r_[0, np.cumsum(f * np.diff(src_e))]
    integ = lambda x: np.interp(x, src_e, cum)  # noqa: E731  exact for piecewise-constant f
    for a, b in [(0, len(dst_e) - 1), (100, 700), (5, 6)]:
        assert np.sum(out_f[a:b] * np.diff(dst_e)[a:b]) == pytest.approx(integ(dst_e[b]) - integ(dst_e[a]), rel=1e-10)
    # two equal-noise pixels into one channel: ivar doubles
    f2, iv2, _ = resample_flux(np.arange(0.0, 11.0), np.ones(10), np.full(10, 3.0), np.arange(0.0, 11.0, 2.0))
    np.testing.assert_allclose(iv2, 6.0)
    np.testing.assert_allclose(f2, 1.0)
    assert not bad.any()


def test_resample_coverage_gaps_and_masks():
    src_e = np.arange(100.0, 201.0)
    f = np.ones(100)
    iv = np.ones(100)
    mask = np.zeros(100, int)
    mask[40:50] = 1
    iv[60] = np.nan
    dst_e = np.arange(50.0, 251.0, 1.0)
    out_f, out_iv, bad = resample_flux(src_e, f, iv, dst_e, mask)
    c = 0.5 * (dst_e[1:] + dst_e[:-1])
    outside = (c < 100) | (c > 200)
    assert (out_iv[outside] == 0).all() and not bad[outside].any()
    masked = (c > 140) & (c < 150)
    assert (out_iv[masked] == 0).all() and bad[masked].all()
    assert out_iv[(c > 160) & (c < 161)][0] == 0
    ok = ~outside & ~masked & ~((c > 160) & (c < 161))
    np.testing.assert_allclose(out_f[ok], 1.0)
    assert (out_iv[ok] > 0).all()


def test_multi_arm_merge_by_ivar_and_exact_copy():
    inst = load_instrument("moons_lr")
    ri = inst.arms[0]
    a1 = SpectrumArm(wave=ri.wave, flux=np.full(ri.npix, 1.0), ivar=np.full(ri.npix, 1.0), name="RI")
    a2 = SpectrumArm(wave=ri.wave, flux=np.full(ri.npix, 4.0), ivar=np.full(ri.npix, 3.0), name="RI2")
    f, iv, m = resample_arms([a1, a2], inst)
    sl = inst.arm_slices()[0]
    np.testing.assert_allclose(f[sl], (1 * 1 + 4 * 3) / 4.0)
    np.testing.assert_allclose(iv[sl], 4.0)
    assert (iv[inst.arm_slices()[1]] == 0).all() and not m.any()
    # a source on the instrument grid (to 1e-3 px) is copied channel for channel
    rng = np.random.default_rng(3)
    vals = rng.normal(size=ri.npix)
    a3 = SpectrumArm(wave=ri.wave + 1e-4, flux=vals, ivar=np.full(ri.npix, 2.0))
    f3, iv3, _ = resample_arms([a3], inst)
    assert np.array_equal(f3[sl], vals.astype(np.float32))


def test_moons_instrument_edges_and_centres():
    inst = load_instrument("moons_lr")
    for e, a in zip(instrument_edges(inst), inst.arms):
        np.testing.assert_allclose(0.5 * (e[1:] + e[:-1]), a.wave)
    w = np.geomspace(3800, 9200, 1000)
    e = centres_to_edges(w)
    np.testing.assert_allclose(np.sqrt(e[1:] * e[:-1]), w, rtol=1e-12)


def test_default_reader_order():
    names = [r.name for r in default_readers()]
    assert names[-1] == "generic" and set(names) >= {"sdss", "desi", "jwst_msaexp", "moons1d", "eso_phase3"}
