"""``survey-infer ingest``: real spectra into real Zarr stores, file lists, append / re-run, duplicates, bad files.

Real spectra from ../shared/data/real_spectra are used when present (skipped cleanly otherwise); the rest runs on
small synthetic files.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from astropy.io import fits

from survey_infer.cli import main as cli_main
from survey_infer.instrument import load_instrument
from survey_infer.io.ingest import IngestError, ingest, ingested_files, read_file_list
from survey_infer.io.survey_store import open_survey, validate_survey

REAL = Path(os.environ.get("SURVEY_INFER_REAL_SPECTRA",
                           Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_spectra"))
Z_EXPECTED = {  # catalog redshifts carried by the files (or their companion redrock files)
    "spec-0295-51585-0596": 0.1379, "spec-0280-51612-0117": 0.2446, "spec-1599-53089-0469": 0.1849,
    "coadd-4-80613-thru20210324": 0.36874, "coadd-special-dark-27247": 0.00727,
}


def real_files() -> list[Path]:
    if not REAL.is_dir():
        pytest.skip(f"real spectra not available ({REAL})")
    return sorted(REAL.rglob("*.fits"))


def generic_fits(path: Path, *, lo=4000.0, hi=9000.0, n=800, flux=5.0, ivar=1.0, meta=None, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    w = np.linspace(lo, hi, n)
    f = flux + rng.normal(0, 0.1, n)
    cols = [fits.Column(name="wave", format="D", array=w, unit="Angstrom"),
            fits.Column(name="flux", format="D", array=f, unit="1e-17 erg/(s cm2 Angstrom)"),
            fits.Column(name="ivar", format="D", array=np.broadcast_to(ivar, (n,)).astype(float))]
    h0 = fits.PrimaryHDU()
    for k, v in (meta or {}).items():
        h0.header[k] = v
    fits.HDUList([h0, fits.BinTableHDU.from_columns(cols)]).writeto(path, overwrite=True)
    return path


def moons1d_like(folder: Path, name: str, *, z=1.5, seed=0, bands=("RI", "YJ", "H")) -> list[Path]:
    """Files in moons1d 1.0.3's SavetoFits layout on the exact LR grids (header CDELT1 unrounded)."""
    rng = np.random.default_rng(seed)
    grids = {"RI": (6470.0, 0.6970899470899469, 4117), "YJ": (9340.0, 0.9836347975882856, 4229),
             "H": (14520.0, 0.8988391376451075, 3871)}
    out = []
    for band in bands:
        w0, dw, n = grids[band]
        h0 = fits.PrimaryHDU()
        h0.header.update({"INST": "MOONS_SIM", "R_MODE": "LR", "BAND": band, "OBNAME": "TestOB", "NDIT": 4.0,
                          "DIT": 1800.0, "Z": z, "MAG": 22.5, "WAVE": "H", "MAG_H": 22.5})
        hdus = [h0]
        for data in (1e-18 + rng.normal(0, 2e-19, n), np.full(n, 2e-19), (rng.random(n) < 0.15).astype(int), np.ones(n)):
            h = fits.ImageHDU(data)
            h.header.update({"CRVAL1": w0, "CDELT1": dw, "CRPIX1": 1.0, "TUNIT1": "AA", "TUNIT2": "erg Angstrom-1 s-1 cm-2"})
            hdus.append(h)
        p = folder / f"{name}_{band}.fits"
        fits.HDUList(hdus).writeto(p, overwrite=True)
        out.append(p)
    return out


def n_objects(store: Path) -> int:
    return int(zarr.open_group(str(store), mode="r").attrs["n_objects"])


def no_temp_dirs(folder: Path) -> bool:
    return not any(".tmp-" in p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------ real spectra

def test_ingest_all_real_spectra(tmp_path):
    files = real_files()
    store = tmp_path / "real.zarr"
    rep = ingest(files, store, instrument="sdss_like")
    assert rep.ok and rep.created
    assert len(rep.companions) == 2  # the two redrock files
    assert rep.n_spectra == len(files) - 2
    validate_survey(store, "sdss_like")
    ds = open_survey(store).load()
    assert ds.sizes["wave"] == load_instrument("sdss_like").n_wave
    assert len(np.unique(ds.object_id)) == ds.sizes["object"]
    rec = ingested_files(store)
    names = {Path(p).stem: int(r) for p, r in zip(rec["path"], rec["row_start"])}
    for stem, z in Z_EXPECTED.items():
        assert float(ds.z_catalog[names[stem]]) == pytest.approx(z, abs=2e-4), stem
    legac = names["legac_M19_56670_v3.0"]
    assert np.isnan(float(ds.z_catalog[legac])) or float(ds.z_catalog[legac]) == pytest.approx(0.6686, abs=1e-3)
    # SDSS flux in 1e-17 units, of order 1-100
    sdss = names["spec-0295-51585-0596"]
    good = ds.ivar[sdss] > 0
    assert 1 < float(np.median(ds.flux[sdss].values[good.values])) < 100
    # the JWST prism spectrum starts at 1.44 micron: no data on the optical grid -> low-coverage warning
    jw = names["static-test-driz-center-bkg_933.spec"]
    assert float((ds.ivar[jw] > 0).mean()) == 0
    assert any(oid == int(ds.object_id[jw]) for oid, _, _ in rep.low_coverage)
    attrs = dict(zarr.open_group(str(store), mode="r").attrs)
    assert attrs["ingest"]["n_files"] == rep.n_files_ingested
    assert set(attrs["ingest"]["readers"]) == {"sdss", "desi", "eso_phase3", "jwst_msaexp", "generic"}
    assert attrs["flux_unit"].startswith("1e-17")
    assert rep.source_counts["nonfinite_flux"] > 0  # LEGA-C has NaN flux in its bad pixels


def test_ingest_real_default_moons_grid_via_cli(tmp_path, capsys):
    files = [f for f in real_files() if "redrock" not in f.name]
    store = tmp_path / "m.zarr"
    rc = cli_main(["ingest", *map(str, files), "--out", str(store), "--no-progress"])
    assert rc == 0
    ds = open_survey(store)
    assert ds.sizes["wave"] == 12217
    assert "spectra from" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ lists, re-runs, append

def test_from_list_rerun_and_append(tmp_path, monkeypatch):
    d = tmp_path / "data"
    d.mkdir()
    files = [generic_fits(d / f"s{i}.fits", seed=i, meta={"TARGETID": 100 + i, "Z": 0.1 * i}) for i in range(4)]
    lst = tmp_path / "list.txt"
    lst.write_text("# two files\n" + "data/s0.fits\n\n" + f"{files[1]}\n")
    monkeypatch.chdir(tmp_path)
    assert read_file_list(lst) == ["data/s0.fits", str(files[1])]
    store = tmp_path / "s.zarr"
    rep = ingest([], store, from_list=lst, instrument="sdss_like")
    assert rep.n_spectra == 2 and rep.object_ids == (0, 1)
    # re-run of the same command: nothing to do, store untouched
    rep2 = ingest([], store, from_list=lst)
    assert rep2.n_spectra == 0 and rep2.n_skipped_ingested == 2 and rep2.ok
    # new files without --append: refused, naming the store
    with pytest.raises(IngestError, match="--append"):
        ingest(files, store)
    # --append with an overlapping list: only the new files are read; ids continue
    rep3 = ingest(files, store, append=True)
    assert rep3.n_skipped_ingested == 2 and rep3.n_spectra == 2 and rep3.object_ids == (2, 3)
    assert rep3.rows == (2, 4)
    ds = open_survey(store).load()
    assert ds.object_id.values.tolist() == [0, 1, 2, 3]
    assert ds.target_id.values.tolist() == [100, 101, 102, 103]
    np.testing.assert_allclose(ds.z_catalog.values, [0.0, 0.1, 0.2, 0.3], atol=1e-6)
    rec = ingested_files(store)
    assert len(rec["path"]) == 4 and all(len(h) == 64 for h in rec["sha256"])
    assert rec["session"].tolist() == [0, 0, 1, 1]
    assert len(dict(zarr.open_group(str(store)).attrs)["ingest"]["sessions"]) == 2
    # CLI --append re-run: exit 0, nothing added
    assert cli_main(["ingest", *map(str, files), "--out", str(store), "--append", "--no-progress"]) == 0
    assert n_objects(store) == 4


def test_repeat_observations_stay_separate_rows(tmp_path):
    a = generic_fits(tmp_path / "a.fits", seed=1, meta={"TARGETID": 42})
    b = generic_fits(tmp_path / "b.fits", seed=2, meta={"TARGETID": 42})
    store = tmp_path / "r.zarr"
    ingest([a, b], store, instrument="sdss_like")
    ds = open_survey(store).load()
    assert ds.sizes["object"] == 2
    assert ds.target_id.values.tolist() == [42, 42]
    assert len(set(ds.object_id.values.tolist())) == 2


def test_duplicates_same_path_and_same_content(tmp_path):
    a = generic_fits(tmp_path / "a.fits", seed=1)
    copy = tmp_path / "copy_of_a.fits"
    shutil.copy(a, copy)
    b = generic_fits(tmp_path / "b.fits", seed=2)
    store = tmp_path / "d.zarr"
    rep = ingest([a, a, copy, b], store, instrument="sdss_like")
    assert rep.n_duplicate_inputs == 1
    assert rep.duplicates == [(str(copy), str(a))]
    assert rep.n_spectra == 2 and rep.ok
    # a later copy elsewhere is recognised by content against the store record
    copy2 = tmp_path / "sub" / "again.fits"
    copy2.parent.mkdir()
    shutil.copy(b, copy2)
    rep2 = ingest([copy2], store, append=True)
    assert rep2.n_spectra == 0 and rep2.duplicates == [(str(copy2), str(b))]
    assert n_objects(store) == 2


# ------------------------------------------------------------------------------------------ bad files

def test_bad_file_fails_whole_ingest_naming_it(tmp_path):
    good = generic_fits(tmp_path / "good.fits")
    bad = tmp_path / "bad.fits"
    bad.write_bytes(np.random.default_rng(1).bytes(3000))
    store = tmp_path / "b.zarr"
    with pytest.raises(IngestError, match="bad.fits.*unknown format"):
        ingest([good, bad], store, instrument="sdss_like")
    assert not store.exists() and no_temp_dirs(tmp_path)
    # the CLI exits 2 with the file named
    assert cli_main(["ingest", str(good), str(bad), "--out", str(store), "--instrument", "sdss_like"]) == 2
    assert not store.exists()


def test_bad_file_during_append_leaves_store_unchanged(tmp_path):
    store = tmp_path / "a.zarr"
    ingest([generic_fits(tmp_path / "g0.fits", seed=0)], store, instrument="sdss_like")
    before = open_survey(store).load()
    trunc = tmp_path / "trunc.fits"
    trunc.write_bytes(generic_fits(tmp_path / "full.fits", n=3000).read_bytes()[:8000])
    noimg = tmp_path / "nospec.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((4, 4)))]).writeto(noimg)
    with pytest.raises(IngestError, match="trunc.fits.*truncated"):
        ingest([generic_fits(tmp_path / "g1.fits", seed=1), trunc], store, append=True)
    after = open_survey(store).load()
    assert after.sizes["object"] == 1 and after.identical(before)
    assert len(ingested_files(store)["path"]) == 1
    with pytest.raises(IngestError, match="nospec.fits.*no spectrum"):
        ingest([noimg], store, append=True)
    # --skip-bad: good files are committed, bad ones listed, exit status 1
    rc = cli_main(["ingest", str(tmp_path / "g1.fits"), str(trunc), str(noimg), "--out", str(store), "--append",
                   "--skip-bad", "--no-progress"])
    assert rc == 1
    assert n_objects(store) == 2
    rep = ingest([trunc, noimg, tmp_path / "missing.fits"], store, append=True, skip_bad=True)
    assert {Path(p).name for p, _ in rep.bad_files} == {"trunc.fits", "nospec.fits", "missing.fits"}
    assert not rep.ok and n_objects(store) == 2


def test_invalid_pixels_counted(tmp_path):
    p = tmp_path / "nan.fits"
    w = np.linspace(4000, 6000, 500)
    f = np.ones(500)
    iv = np.ones(500)
    f[:5] = np.nan
    iv[10:13] = np.inf
    iv[20:27] = -1.0
    cols = [fits.Column(name="wave", format="D", array=w), fits.Column(name="flux", format="D", array=f),
            fits.Column(name="ivar", format="D", array=iv)]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(p)
    store = tmp_path / "n.zarr"
    rep = ingest([p], store, instrument="sdss_like")
    assert rep.source_counts["nonfinite_flux"] == 5 and rep.source_counts["bad_ivar"] == 10
    ds = open_survey(store).load()
    assert np.isfinite(ds.flux).all() and (ds.ivar >= 0).all()
    assert dict(zarr.open_group(str(store)).attrs)["sanitized"]["bad_ivar"] >= 10


def test_grid_mismatch_and_flags(tmp_path):
    store = tmp_path / "g.zarr"
    ingest([generic_fits(tmp_path / "x.fits")], store, instrument="sdss_like")
    with pytest.raises(IngestError, match="grid|channels"):
        ingest([generic_fits(tmp_path / "y.fits", seed=3)], store, append=True, instrument="moons_lr")
    with pytest.raises(IngestError, match="no input"):
        ingest([], tmp_path / "none.zarr")
    assert cli_main(["ingest", "--out", str(tmp_path / "z.zarr")]) == 2


# ------------------------------------------------------------------------------------------ moons1d, parallel

def test_moons1d_outputs_land_exactly_on_the_moons_grid(tmp_path):
    d = tmp_path / "m1d"
    d.mkdir()
    files = moons1d_like(d, "g0", z=1.1, seed=0) + moons1d_like(d, "g1", z=2.2, seed=1)
    store = tmp_path / "m.zarr"
    rep = ingest(sorted(files), store)  # default instrument: MOONS LR
    assert rep.n_spectra == 2 and rep.n_files_ingested == 6 and rep.by_reader == {"moons1d": 6}
    ds = open_survey(store).load()
    assert ds.attrs["instrument"] == "MOONS-LR"
    np.testing.assert_allclose(ds.z_true.values, [1.1, 2.2], rtol=1e-6)
    np.testing.assert_allclose(ds.t_exp.values, 4 * 1800)
    for k, name in enumerate(["g0", "g1"]):
        raw = np.concatenate([fits.getdata(d / f"{name}_{b}.fits", 1) for b in ("RI", "YJ", "H")]) * 1e17
        assert np.array_equal(ds.flux.values[k], raw.astype(np.float32))
        np.testing.assert_allclose(ds.ivar.values[k], 1 / (2e-19 * 1e17) ** 2, rtol=1e-6)
    rec = ingested_files(store)
    assert rec["row_start"].tolist() == [0, 0, 0, 1, 1, 1]


@pytest.fixture(scope="module")
def dask_client():
    """A real two-process local cluster, started like ``run`` starts one."""
    from survey_infer.pipeline.clusters import start_client

    client, owned = start_client("local", 2, dashboard=False)
    yield client
    client.close()
    owned.close()


def _mixed_inputs(tmp_path: Path) -> list[Path]:
    files = [generic_fits(tmp_path / f"p{i}.fits", seed=i, lo=6000, hi=17000, n=3000) for i in range(6)]
    return files[:3] + moons1d_like(tmp_path, "g0", z=1.1, seed=1) + files[3:]


def test_dask_client_equals_in_process(tmp_path, dask_client):
    """Reading on a Dask client's workers (the machinery of ``run``) writes the same store as reading in
    process: same rows in the same order, moons1d arms grouped, same file record."""
    files = _mixed_inputs(tmp_path)
    s1, s2 = tmp_path / "serial.zarr", tmp_path / "dask.zarr"
    r1 = ingest(files, s1, chunk_objects=4)
    r2 = ingest(files, s2, chunk_objects=4, client=dask_client)
    assert r1.n_spectra == r2.n_spectra == 7 and r2.by_reader == {"generic": 6, "moons1d": 3}
    a, b = open_survey(s1).load(), open_survey(s2).load()
    for v in ("flux", "ivar", "mask", "object_id", "target_id", "z_true"):
        assert np.array_equal(a[v].values, b[v].values, equal_nan=True), v
    assert ingested_files(s1)["path"].tolist() == ingested_files(s2)["path"].tolist()


def test_dask_client_bad_file_named_and_nothing_committed(tmp_path, dask_client):
    files = _mixed_inputs(tmp_path)
    bad = tmp_path / "bad.fits"
    bad.write_bytes(files[0].read_bytes()[:4000])
    store = tmp_path / "s.zarr"
    with pytest.raises(IngestError, match=r"bad\.fits: truncated FITS file"):
        ingest([*files, bad], store, client=dask_client)
    assert not store.exists() and no_temp_dirs(tmp_path)
    rep = ingest([*files, bad], store, client=dask_client, skip_bad=True)
    assert [p for p, _ in rep.bad_files] == [str(bad)] and rep.n_spectra == 7 and not rep.ok


def test_dask_task_failing_as_a_whole_reports_each_file(tmp_path, dask_client):
    """A task that fails outside the per-file guard (here: settings a worker cannot use; in production a worker
    that dies) yields one error per file, each naming its file: nothing is dropped."""
    from survey_infer.io.ingest.read import ReadSettings, iter_results

    files = [str(generic_fits(tmp_path / f"w{i}.fits", seed=i)) for i in range(3)]
    units = [(i, (f,), None) for i, f in enumerate(files)]
    res = list(iter_results(units, ReadSettings("{not json", 0.5), dask_client))
    assert [r["status"] for r in res] == ["error"] * 3
    assert [r["error"].split(": not read: the Dask task reading it failed")[0] for r in res] == files


def test_cli_cluster_address_and_scheduler_file(tmp_path, dask_client, capsys):
    """``ingest --cluster`` takes what ``run --cluster`` takes: a scheduler address or a scheduler file."""
    import json

    files = [generic_fits(tmp_path / f"c{i}.fits", seed=i) for i in range(3)]
    addr = dask_client.scheduler.address
    assert cli_main(["ingest", *map(str, files), "--out", str(tmp_path / "a.zarr"), "--cluster", addr,
                     "--no-progress", "--report", str(tmp_path / "a.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["n_spectra"] == 3
    sched = tmp_path / "scheduler.json"
    sched.write_text(json.dumps({"type": "Scheduler", "address": addr}))  # as `dask scheduler --scheduler-file`
    assert cli_main(["ingest", *map(str, files), "--out", str(tmp_path / "f.zarr"), "--cluster", str(sched),
                     "--no-progress"]) == 0
    assert n_objects(tmp_path / "a.zarr") == n_objects(tmp_path / "f.zarr") == 3
    assert dask_client.status == "running"  # an external scheduler is left running
    assert cli_main(["ingest", str(files[0]), "--out", str(tmp_path / "x.zarr"), "--cluster",
                     str(tmp_path / "none.json"), "--cluster-wait", "0", "--no-progress"]) == 2
    assert "none.json: the scheduler file does not exist" in capsys.readouterr().err
    assert cli_main(["ingest", str(files[0]), "--out", str(tmp_path / "a.zarr"), "--cluster", "bogus"]) == 2
    assert "unknown --cluster 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()


def test_cli_default_cluster_choice():
    from survey_infer.cli.ingest import AUTO_CLUSTER_FILES, ClientOnDemand

    assert ClientOnDemand(None, None, {}).kind_for(AUTO_CLUSTER_FILES - 1) is None
    assert ClientOnDemand(None, None, {}).kind_for(AUTO_CLUSTER_FILES) == "local"
    assert ClientOnDemand(None, 1, {}).kind_for(10_000) is None
    assert ClientOnDemand(None, 3, {}).kind_for(2) == "local"
    assert ClientOnDemand("inprocess", 4, {}).kind_for(10_000) is None
    assert ClientOnDemand("slurm", 4, {}).kind_for(1) == "slurm"


# ------------------------------------------------------------------------------------------ tools/make_moons1d_set.py

def _tool():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tools" / "make_moons1d_set.py"
    spec = importlib.util.spec_from_file_location("make_moons1d_set", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("family", ["sf", "passive", "flat"])
def test_moons1d_tool_templates_are_normalised(family):
    m = _tool()
    w, f = m.observed_template(family, 1.7, 22.5)
    assert m.ab_mag_h(w, f) == pytest.approx(22.5, abs=1e-9)
    assert w[0] <= 5500 and w[-1] >= 19500


@pytest.mark.slow
def test_moons1d_tool_end_to_end(tmp_path):
    pytest.importorskip("moons1d")
    m = _tool()
    tab = tmp_path / "gal.csv"
    m.example_table(tab, 1, seed=3)
    assert m.main([str(tab), "--out", str(tmp_path / "out"), "--seed", "3"]) == 0
    files = sorted((tmp_path / "out").glob("*.fits"))
    assert len(files) == 3
    rep = ingest(files, tmp_path / "m.zarr")
    ds = open_survey(tmp_path / "m.zarr").load()
    raw = np.concatenate([fits.getdata(tmp_path / "out" / f"g00000_{b}.fits", 1) for b in ("RI", "YJ", "H")]) * 1e17
    ok = ds.ivar.values[0] > 0
    assert rep.n_spectra == 1 and ok.mean() > 0.99
    assert np.array_equal(ds.flux.values[0][ok], raw[ok].astype(np.float32))
