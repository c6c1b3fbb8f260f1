"""Catalog export to FITS and Parquet: round trips, checksums, NODATA rows, overwrite, pz, streaming."""
from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from survey_infer import flags
from survey_infer.cli import UserError, main as cli_main
from survey_infer.catalog.schema import PASSTHROUGH, PER_OBJECT
from survey_infer.catalog.store import block_bounds, create_catalog, open_catalog, write_block
from survey_infer.catalog.export import catalog_columns, columns_markdown, export_catalog, fits_unit, zwarn_markdown

ROOT = Path(__file__).resolve().parents[1]


def write_catalog(path: Path, n: int = 40, nz: int = 50, chunk: int = 16, pz_dtype: str = "float16",
                  with_pz: bool = True, nodata: tuple[int, ...] = (3, 7), seed: int = 1,
                  input_store: str | None = None, z_true: np.ndarray | None = None,
                  skip_last_block: bool = False) -> Path:
    """Write a small catalog with the pipeline's own writer (catalog.store), with NODATA rows and, with
    ``skip_last_block``, a block never computed (fill values: NaN, -1, False)."""
    rng = np.random.default_rng(seed)
    z_grid = np.linspace(0.0, 3.0, nz)
    z_true = (rng.uniform(0.2, 2.5, n) if z_true is None else np.asarray(z_true)).astype(np.float32)
    dz = z_grid[1] - z_grid[0]
    pz = np.exp(-0.5 * ((z_grid[None, :] - z_true[:, None]) / (3 * dz)) ** 2)
    pz /= pz.sum(1, keepdims=True)
    data = {}
    for name, (dtype, units, desc) in PER_OBJECT.items():
        dt = np.dtype(dtype)
        if dt.kind == "f":
            v = rng.normal(1.0, 0.3, n).astype(dt)
        elif dt.kind == "b":
            v = rng.random(n) > 0.3
        else:
            v = rng.integers(0, 5, n).astype(dt)
        data[name] = v
    data["object_id"] = np.arange(1000, 1000 + n, dtype=np.int64)
    data["ra"] = rng.uniform(0, 360, n)
    data["dec"] = rng.uniform(-60, 20, n)
    data["z"] = (z_true + rng.normal(0, 0.002, n)).astype(np.float32)
    data["z_lo68"], data["z_hi68"] = data["z"] - 0.01, data["z"] + 0.01
    data["z_lo95"], data["z_hi95"] = data["z"] - 0.03, data["z"] + 0.03
    zwarn = np.zeros(n, np.int32)
    zwarn[::5] |= flags.ZWarn.MULTI_PEAK
    zwarn[1::9] |= flags.ZWarn.LOW_CONFIDENCE
    for i in nodata:
        zwarn[i] = flags.ZWarn.NODATA
        for name, (dtype, _, _) in PER_OBJECT.items():
            if np.dtype(dtype).kind == "f" and name not in ("ra", "dec"):
                data[name][i] = np.nan
        pz[i] = np.nan
    data["zwarn"] = zwarn
    data["z_reliable"] = flags.z_reliable(zwarn)
    data["run_id"] = np.zeros(n, np.int32)
    data["z_true"] = z_true
    data["t_exp"] = np.full(n, 3600.0, np.float32)
    data["logmstar_true"] = rng.normal(10, 1, n).astype(np.float32)
    data["logsfr_true"] = rng.normal(0.5, 1, n).astype(np.float32)
    data["mag_h"] = rng.normal(21, 1, n).astype(np.float32)
    data["kind"] = np.zeros(n, np.uint8)
    passthrough = {"z_true": np.float32, "t_exp": np.float32, "logmstar_true": np.float32,
                   "logsfr_true": np.float32, "mag_h": np.float32, "kind": np.uint8}
    if with_pz:
        data["pz"] = pz.astype(pz_dtype)
    fp = {"model_sha256": "ab" * 32, "preprocessing_version": 1, "sky_mask_hash": "deadbeef", "mc_samples": 8,
          "seed": 42, "z_grid": "cafe", "dtypes": {"pz": pz_dtype if with_pz else None, "estimates": "float32"},
          "torch": "2.13", "device_class": "cpu", "micro_batch": 64}
    attrs = {"software_version": "0.1.0", "model_sha256": "ab" * 32, "fingerprint": fp, "mc_samples": 8,
             "seed": 42, "created": "2026-01-01T00:00:00+00:00", "zwarn_bits": flags.bit_table(),
             "runs": [{"run_id": 0, "created": "2026-01-01T00:00:00+00:00", "rows": n}],
             "provenance": {"software": "survey-infer", "version": "0.1.0", "python": "3.11.7",
                            "dependencies": {"numpy": "2.0", "torch": "2.13", "zarr": "3.1.6"}}}
    if input_store:
        attrs["input_store"] = str(input_store)
    # the lead's real catalog writer: template, then one aligned block at a time
    create_catalog(path, n, z_grid, chunk, passthrough=passthrough, keep_pz=with_pz, pz_dtype=pz_dtype, attrs=attrs)
    bounds = block_bounds(n, chunk)
    for lo, hi in bounds[: len(bounds) - 1 if skip_last_block else len(bounds)]:
        write_block(path, lo, hi, {k: v[lo:hi] for k, v in data.items()})
    return Path(path)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    return write_catalog(tmp_path_factory.mktemp("cat") / "catalog.zarr")


def _cat(path):
    return xr.open_zarr(str(path), chunks=None, consolidated=False)


def _assert_equal(got, want, name):
    got, want = np.asarray(got), np.asarray(want)
    if want.dtype.kind == "f":
        np.testing.assert_array_equal(got.astype(np.float64), want.astype(np.float64), err_msg=name)
    else:
        np.testing.assert_array_equal(got, want, err_msg=name)


# ------------------------------------------------------------------------------------------------------------
def test_fits_round_trip_units_values_descriptions_checksums(catalog, tmp_path):
    from astropy.io import fits
    from astropy.table import Table
    import astropy.units as u

    out = export_catalog(catalog, tmp_path / "cat.fits", fmt="fits")
    assert out.exists() and not list(tmp_path.glob(".cat.fits.*"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checksum / verification warning fails the test
        with fits.open(out, checksum=True) as hdul:
            hdul.verify("exception")
            assert [h.name for h in hdul] == ["PRIMARY", "CATALOG", "Z_GRID"]
            for h in hdul:
                assert "CHECKSUM" in h.header and "DATASUM" in h.header
                assert h._checksum_valid and h._datasum_valid
            hdr = hdul["CATALOG"].header
            zg = hdul["Z_GRID"].data
        # dex(...) / mag(AB) are not FITS-standard units: astropy keeps them as UnrecognizedUnit (silently here)
        t = Table.read(out, hdu="CATALOG", unit_parse_strict="silent")
    cat = _cat(catalog)
    np.testing.assert_array_equal(zg, cat["z_grid"].values)
    assert hdr["NZBIN"] == 50 and hdr["ZMIN"] == 0.0 and hdr["ZMAX"] == 3.0 and hdr["DZ"] == pytest.approx(3 / 49)
    assert hdr["MODELSHA"] == "ab" * 32 and hdr["MC_T"] == 8 and hdr["SEED"] == 42
    assert json.loads(hdr["FINGERPR"])["sky_mask_hash"] == "deadbeef"
    assert hdr["V_TORCH"] == "2.13" and hdr["SWVERS"] == "0.1.0"
    assert hdr["ZWBIT09"] == "NODATA" and hdr["ZWBIT00"] == "SKY" and hdr["ZWBIT11"] == "POORDATA"
    assert hdr["ZWBADMSK"] == flags.BAD_MASK
    names = [c for c in t.colnames]
    assert names[: len(PER_OBJECT)] == list(PER_OBJECT)
    assert {"z_true", "t_exp", "logmstar_true", "kind"} <= set(names) and "pz" not in names
    expected = {c.name: c for c in catalog_columns(open_catalog(catalog))}
    assert names == list(expected)
    for i, name in enumerate(names, start=1):
        _assert_equal(t[name], cat[name].values, name)
        units, desc = expected[name].units, expected[name].description
        assert units == cat[name].attrs.get("units", units)  # the catalog's own units when it has them
        if name in PER_OBJECT:
            assert desc == cat[name].attrs["description"] and units == PER_OBJECT[name][1]
        fu = fits_unit(units)
        if fu:
            assert u.Unit(str(t[name].unit)) == u.Unit(units), name
            assert hdr[f"TUNIT{i}"] == fu and u.Unit(hdr[f"TUNIT{i}"]) == u.Unit(units), name
        else:
            assert t[name].unit is None and f"TUNIT{i}" not in hdr, name
        assert t[name].description.startswith(desc), name
        assert hdr[f"TCOMM{i}"].startswith(desc)
        assert t[name].description.startswith(hdr.comments[f"TTYPE{i}"].rstrip("."))
    assert t["ra"].unit == u.deg and t["z"].unit is None
    # passthrough columns: units and meaning from the survey store's column contract
    assert t["t_exp"].unit == u.s and t["t_exp"].description.startswith("exposure time")
    # every unit has a TUNIT astropy.units parses, spelled as in the store and the catalog
    tunit = {hdr[f"TTYPE{i}"]: hdr.get(f"TUNIT{i}") for i in range(1, hdr["TFIELDS"] + 1)}
    assert tunit["logmstar"] == tunit["logmstar_true"] == "dex(solMass)"
    assert tunit["logsfr"] == tunit["logsfr_true"] == "dex(solMass / yr)"
    assert tunit["logmstar_err"] == tunit["logsfr_err_mc"] == "dex" and tunit["mag_h"] == "mag(AB)"
    assert u.Unit(tunit["logsfr"]) == u.dex(u.solMass / u.yr) and u.Unit(tunit["mag_h"]) == u.ABmag
    assert "[unit:" not in t["logmstar"].description
    assert t["z_reliable"].dtype == bool
    assert t["zwarn"].dtype.newbyteorder("=") == np.int32 and t["pz_npeaks"].dtype.newbyteorder("=") == np.int16


def test_fits_nodata_rows_are_nan_and_flagged(catalog, tmp_path):
    from astropy.table import Table

    out = export_catalog(catalog, tmp_path / "cat.fits")
    t = Table.read(out, hdu=1, mask_invalid=False)
    nod = (t["zwarn"] & flags.ZWarn.NODATA) != 0
    assert nod.sum() == 2
    assert Table.read(out, hdu=1)["z"].mask.tolist() == nod.tolist()  # astropy masks NaN by default
    assert np.isnan(t["z"][nod]).all() and np.isfinite(t["z"][~nod]).all()
    assert not t["z_reliable"][nod].any()
    np.testing.assert_array_equal(t["z_reliable"], flags.z_reliable(t["zwarn"]))


def test_uncomputed_rows_export_cleanly(tmp_path):
    """A catalog whose last block was never computed (fill values) exports to both formats."""
    import pandas as pd
    from astropy.io import fits
    from astropy.table import Table

    cat = write_catalog(tmp_path / "partial.zarr", n=20, nz=10, chunk=8, skip_last_block=True, nodata=(1,))
    f = export_catalog(cat, tmp_path / "p.fits", with_pz=True)
    p = export_catalog(cat, tmp_path / "p.parquet", with_pz=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fits.open(f, checksum=True) as hdul:
            hdul.verify("exception")
    t, df = Table.read(f, hdu=1, mask_invalid=False), pd.read_parquet(p)
    ref = _cat(cat)
    for tab in (t, df):
        for name in ("object_id", "run_id", "zwarn", "pz_npeaks", "z_reliable"):  # integer fills as stored
            _assert_equal(np.asarray(tab[name]), ref[name].values, name)
        z = np.asarray(tab["z"])
        assert np.isnan(z[16:]).all() and np.isnan(z[1]) and np.isfinite(np.delete(z[:16], 1)).all()
        assert np.asarray(tab["zwarn"])[1] == flags.ZWarn.NODATA and not np.asarray(tab["z_reliable"])[16:].any()
    assert np.isnan(t["pz"][16:]).all() and np.isnan(np.stack(df["pz"].to_numpy())[16:]).all()


def test_fits_with_pz_shapes(catalog, tmp_path):
    from astropy.io import fits
    from astropy.table import Table

    out = export_catalog(catalog, tmp_path / "pz.fits", with_pz=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fits.open(out, checksum=True) as hdul:
            assert hdul["CATALOG"].columns["pz"].format == "50E"
    t = Table.read(out, hdu="CATALOG")
    cat = _cat(catalog)
    assert t["pz"].shape == (40, 50) and t["pz"].dtype.newbyteorder("=") == np.float32
    np.testing.assert_array_equal(t["pz"], cat["pz"].values.astype(np.float32))
    ok = np.isfinite(t["pz"]).all(1)
    np.testing.assert_allclose(t["pz"][ok].sum(1), 1.0, atol=2e-3)


def test_streaming_many_blocks_gives_identical_files(tmp_path):
    """A catalog larger than one block (and than one Zarr chunk) exports the same values in any blocking."""
    from astropy.table import Table
    import pandas as pd

    cat = write_catalog(tmp_path / "big.zarr", n=203, nz=30, chunk=16, pz_dtype="float32", nodata=(0, 100, 202))
    f1 = export_catalog(cat, tmp_path / "a.fits", with_pz=True, chunk_rows=7)  # blocks across chunk edges
    f2 = export_catalog(cat, tmp_path / "b.fits", with_pz=True, chunk_rows=10_000)  # one block
    t1, t2 = Table.read(f1, hdu=1), Table.read(f2, hdu=1)
    ref = _cat(cat)
    for name in t1.colnames:
        _assert_equal(t1[name], t2[name], name)
        _assert_equal(t1[name], ref[name].values, name)
    p1 = export_catalog(cat, tmp_path / "a.parquet", fmt="parquet", with_pz=True, chunk_rows=16)
    import pyarrow.parquet as pq

    assert pq.ParquetFile(p1).metadata.num_row_groups == 13
    df = pd.read_parquet(p1)
    np.testing.assert_array_equal(np.stack(df["pz"].to_numpy()), ref["pz"].values)
    np.testing.assert_array_equal(df["object_id"].to_numpy(), ref["object_id"].values)


def test_parquet_round_trip_metadata(catalog, tmp_path):
    import pandas as pd
    import pyarrow.parquet as pq
    from astropy.table import Table
    import astropy.units as u

    out = export_catalog(catalog, tmp_path / "cat.parquet", fmt="parquet", with_pz=True)
    df = pd.read_parquet(out)
    cat = _cat(catalog)
    assert len(df) == 40 and list(df.columns)[: len(PER_OBJECT)] == list(PER_OBJECT)
    for name in df.columns:
        if name == "pz":
            np.testing.assert_array_equal(np.stack(df[name].to_numpy()), cat[name].values.astype(np.float32))
        else:
            _assert_equal(df[name].to_numpy(), cat[name].values, name)
    schema = pq.read_schema(out)
    expected = {c.name: c for c in catalog_columns(open_catalog(catalog), with_pz=True)}
    for name in df.columns:
        md = schema.field(name).metadata
        assert md[b"units"].decode() == expected[name].units
        assert md[b"description"].decode() == expected[name].description
        if name in PER_OBJECT or name == "pz":
            assert expected[name].description == cat[name].attrs["description"]
    assert schema.field("t_exp").metadata[b"units"] == b"s"
    info = json.loads(schema.metadata[b"survey_infer"])
    assert info["attrs"]["model_sha256"] == "ab" * 32 and info["attrs"]["fingerprint"]["mc_samples"] == 8
    assert len(info["z_grid"]) == 50 and info["columns"]["logsfr"]["units"] == "dex(solMass / yr)"
    assert json.loads(schema.metadata[b"zwarn_bits"]) == flags.bit_table()
    # astropy reads units and descriptions back from the same file
    t = Table.read(out)
    assert t["ra"].unit == u.deg and t["logmstar"].unit == u.Unit("dex(solMass)")
    assert t["z"].description == PER_OBJECT["z"][2]
    assert t.meta["model_sha256"] == "ab" * 32
    nod = (df["zwarn"].to_numpy() & flags.ZWarn.NODATA) != 0
    assert np.isnan(df["z"].to_numpy()[nod]).all()


def test_refuses_overwrite_unless_asked(catalog, tmp_path):
    out = tmp_path / "cat.fits"
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="pass overwrite=True to replace it"):  # the Python argument
        export_catalog(catalog, out)
    assert out.read_bytes() == b"precious"
    export_catalog(catalog, out, overwrite=True)
    assert out.read_bytes()[:6] == b"SIMPLE"
    assert not list(tmp_path.glob(".cat.fits.*"))


def test_cli_export(catalog, tmp_path, capsys):
    out = tmp_path / "cli.parquet"
    assert cli_main(["export", str(catalog), "--format", "parquet", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and out.exists()
    assert cli_main(["export", str(catalog), "--format", "parquet", "--out", str(out)]) == 2
    err = capsys.readouterr().err  # the CLI flag only, never the Python argument
    assert "pass --overwrite to replace it" in err and "overwrite=True" not in err and len(err.splitlines()) == 1
    assert cli_main(["export", str(catalog), "--out", str(tmp_path / "c.fits"), "--chunk-rows", "0"]) == 2
    assert "--chunk-rows must be >= 1" in capsys.readouterr().err
    assert cli_main(["export", str(catalog), "--format", "fits", "--out", str(tmp_path / "c.fits"),
                     "--with-pz", "--overwrite"]) == 0
    assert cli_main(["export", str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "x.fits")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_with_pz_requires_stored_pz(tmp_path):
    cat = write_catalog(tmp_path / "nopz.zarr", n=5, with_pz=False, nodata=())
    with pytest.raises(UserError, match="no 'pz'"):
        export_catalog(cat, tmp_path / "x.fits", with_pz=True)
    export_catalog(cat, tmp_path / "x.fits")  # without pz is fine


def test_docs_embed_generated_tables():
    doc = (ROOT / "docs" / "catalog.md").read_text()
    assert zwarn_markdown() in doc, "regenerate with: python -m survey_infer.catalog.export --markdown zwarn"
    # the README shows the same bit table (with the shipped model's threshold): it must not go stale either
    assert zwarn_markdown() in (ROOT / "README.md").read_text(), "README: regenerate its zwarn table"
    assert columns_markdown() in doc, "regenerate with: python -m survey_infer.catalog.export --markdown columns"
    for b in flags.ZWARN_BITS:
        assert f"`{b.name}`" in doc
    for name in list(PER_OBJECT) + list(PASSTHROUGH):
        assert f"`{name}`" in doc


def test_unusual_dtypes_and_format_from_suffix(tmp_path):
    """Extra per-object columns of other dtypes survive both formats (unsigned via TZERO, int8, float64)."""
    import pandas as pd
    from astropy.table import Table

    cat = write_catalog(tmp_path / "c.zarr", n=9, nz=5, chunk=4, nodata=(1,))
    extra = xr.Dataset({
        "flag_u16": ("object", np.array([0, 1, 65535, 2, 3, 4, 5, 6, 7], np.uint16)),
        "count_u32": ("object", np.arange(9, dtype=np.uint32) * 400_000_000),
        "small_i8": ("object", np.arange(-4, 5, dtype=np.int8)),
        "weight_f64": ("object", np.linspace(0, 1, 9)),
        "name": ("object", np.array(["a", "bé", "ccc", "", "z±1", "x", "y", "w", "v"], dtype="<U4")),
        "tag": ("object", np.array([b"ab", b"c", b"", b"d", b"e", b"f", b"g", b"h", b"i"], dtype="S2")),
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extra.to_zarr(str(cat), mode="a", zarr_format=3, consolidated=False)
    f = export_catalog(cat, tmp_path / "c.fits", chunk_rows=4)
    p = export_catalog(cat, tmp_path / "c.parquet", chunk_rows=4)  # format from the suffix
    assert f.read_bytes()[:6] == b"SIMPLE" and p.read_bytes()[:4] == b"PAR1"
    t, df = Table.read(f, hdu=1), pd.read_parquet(p)
    for name in ("flag_u16", "count_u32", "small_i8", "weight_f64"):
        _assert_equal(t[name], extra[name].values, name)
        _assert_equal(df[name].to_numpy(), extra[name].values, name)
    # text: FITS "A" columns hold ASCII (symbols spelled out, others "?"), Parquet keeps UTF-8
    assert t["name"].tolist() == ["a", "b?", "ccc", "", "z+-1", "x", "y", "w", "v"]
    assert df["name"].tolist() == extra["name"].values.tolist()
    assert t["tag"].tolist() == df["tag"].tolist() == ["ab", "c", "", "d", "e", "f", "g", "h", "i"]
    assert t["flag_u16"].dtype.kind == "u" and t["count_u32"].dtype.kind == "u"


def test_docs_tables_from_the_new_module_path(capsys):
    """``python -m survey_infer.catalog.export --markdown zwarn|columns`` prints the tables docs/catalog.md embeds."""
    from survey_infer.catalog.export.__main__ import main

    assert main(["--markdown", "zwarn"]) == 0
    assert capsys.readouterr().out == zwarn_markdown()
    assert main(["--markdown", "columns"]) == 0
    assert capsys.readouterr().out == columns_markdown()


def test_one_open_catalog_refuses_what_is_not_a_catalog(tmp_path, capsys):
    """The one ``open_catalog`` (catalog.store) names the path in one line for a missing folder or a Zarr group
    without an ``object`` dimension; the export command says the same with exit status 2."""
    from survey_infer.errors import CatalogError

    with pytest.raises(CatalogError, match="does not exist"):
        open_catalog(tmp_path / "missing.zarr")
    not_cat = tmp_path / "other.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xr.Dataset({"flux": (("spectrum",), np.zeros(3))}).to_zarr(str(not_cat), zarr_format=3, consolidated=False)
    with pytest.raises(CatalogError, match=r"other\.zarr has no 'object' dimension"):
        open_catalog(not_cat)
    assert cli_main(["export", str(not_cat), "--out", str(tmp_path / "x.fits")]) == 2
    err = capsys.readouterr().err
    assert "has no 'object' dimension" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("*.fits")) and not list(tmp_path.glob(".x.fits*"))


@pytest.mark.skipif(shutil.which("fitsverify") is None, reason="HEASARC fitsverify is not installed")
def test_fitsverify_passes_the_file_clean(catalog, tmp_path):
    """fitsverify (HEASARC) finds no error and no warning: checksums, BINTABLE keywords, and the OGIP long-string
    convention declared (LONGSTRN) for the JSON provenance values."""
    out = export_catalog(catalog, tmp_path / "v.fits", with_pz=True)
    res = subprocess.run(["fitsverify", "-q", str(out)], capture_output=True, text=True, check=False)
    assert res.stdout.startswith("verification OK"), res.stdout + res.stderr  # a warning reads "FAILED"


def test_fits_export_memory_follows_the_block_not_the_catalog(tmp_path):
    """The FITS writer streams: the peak of Python-traced memory (numpy arrays included) with 100-row blocks is
    a fraction of the peak with the whole catalog in one block (a writer that gathered the rows before writing
    would peak the same in both)."""
    import tracemalloc

    cat = write_catalog(tmp_path / "m.zarr", n=600, nz=1000, chunk=100, pz_dtype="float32", nodata=(1,))
    export_catalog(cat, tmp_path / "warm.fits", with_pz=True, chunk_rows=600)  # imports and caches first
    peaks = {}
    for rows in (100, 600):
        tracemalloc.start()
        try:
            export_catalog(cat, tmp_path / f"m{rows}.fits", with_pz=True, chunk_rows=rows)
            peaks[rows] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peaks[100] < peaks[600] / 3, peaks


def test_export_refuses_a_survey_store(small_survey, tmp_path, capsys):
    """A survey store has an ``object`` dimension too; given to export it was written out as if it were a catalog.
    Now: one line naming the store and what to run first, exit 2, no file."""
    assert cli_main(["export", str(small_survey), "--out", str(tmp_path / "x.fits")]) == 2
    err = capsys.readouterr().err
    assert "is a survey store (input spectra), not a catalog" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("*.fits")) and not list(tmp_path.glob(".x.fits*"))
