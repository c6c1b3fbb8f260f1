"""Simulator: store schema, determinism across runs and chunkings, truth ranges, physical sanity."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import xarray as xr

from survey_infer.cli import main as cli_main
from survey_infer.io.simulated import simulate_survey
from survey_infer.simulate import SimConfig, simulate_block
from survey_infer.simulate.simulator import (FAMILIES, KIND_GALAXY, KIND_HIGHZ, KIND_LOWZ, KIND_STAR, SFH_KINDS,
                                            SIM_VERSION, _simulate)

N = 80


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "s.zarr"
    rc = cli_main(["simulate", "--n", str(N), "--seed", "1", "--out", str(out), "--chunk-objects", "32",
                   "--no-progress"])
    assert rc == 0
    return out


def test_schema_via_xarray(store):
    ds = xr.open_zarr(store)
    assert ds.sizes["wave"] == 12217 and ds.sizes["object"] == N
    for v in ("flux", "ivar"):
        assert ds[v].dims == ("object", "wave") and ds[v].dtype == np.float32
    for v, dt in (("object_id", np.int64), ("ra", np.float64), ("dec", np.float64), ("t_exp", np.float32),
                  ("z_true", np.float32), ("logmstar_true", np.float32), ("logsfr_true", np.float32),
                  ("is_passive", np.bool_), ("mag_h", np.float32), ("kind", np.uint8),
                  ("template_family", np.uint8), ("sfh_kind", np.uint8), ("age_mw_true", np.float32),
                  ("ew_halpha_rest_true", np.float32)):
        assert ds[v].dims == ("object",) and ds[v].dtype == dt, v
    assert ds["sky_mask"].dims == ("wave",)
    assert 0.12 <= float(ds["sky_mask"].mean()) <= 0.18
    assert ds.attrs["simulation"]["seed"] == 1
    assert ds.attrs["simulation"]["config"]["z_range"] == [0.9, 2.6]
    assert ds.attrs["simulation"]["version"] == SIM_VERSION
    assert ds["template_family"].attrs["flag_meanings"].split()[:5] == list(FAMILIES)
    assert ds["sfh_kind"].attrs["flag_values"][:6] == [0, 1, 2, 3, 4, 5]
    assert ds.attrs["n_objects"] == N
    assert np.array_equal(ds.object_id.values, np.arange(N))
    assert np.isfinite(ds.flux.values).all() and (ds.ivar.values > 0).all()


def test_same_seed_identical_any_chunking(store, tmp_path):
    other = simulate_survey(N, 1, tmp_path / "b.zarr", chunk_objects=25, scheduler="processes", num_workers=2)
    a, b = xr.open_zarr(store), xr.open_zarr(other)
    for v in ("flux", "ivar", "z_true", "logmstar_true", "logsfr_true", "mag_h", "kind", "ra", "t_exp",
              "template_family", "sfh_kind", "age_mw_true", "ew_halpha_rest_true", "is_passive"):
        assert np.array_equal(a[v].values, b[v].values, equal_nan=True), v
    # a block in the middle equals the same rows of the store
    blk = simulate_block(37, 5, 1)
    assert np.array_equal(blk["flux"], a.flux.values[37:42])
    # another seed differs
    blk2 = simulate_block(37, 5, 2)
    assert not np.array_equal(blk2["flux"], blk["flux"])


def test_truth_ranges():
    cfg = replace(SimConfig(), interloper_fraction=0.3)
    d = simulate_block(0, 300, 7, cfg)
    kind, z = d["kind"], d["z_true"]
    assert set(np.unique(kind)) <= {KIND_GALAXY, KIND_STAR, KIND_LOWZ, KIND_HIGHZ}
    g = kind == KIND_GALAXY
    assert 0.55 < g.mean() < 0.85
    assert z[g].min() >= 0.9 and z[g].max() <= 2.6
    assert np.all(np.abs(z[kind == KIND_STAR]) < 0.002)
    assert np.all((z[kind == KIND_LOWZ] >= 0.05) & (z[kind == KIND_LOWZ] < 0.9))
    assert np.all((z[kind == KIND_HIGHZ] > 2.6) & (z[kind == KIND_HIGHZ] <= 4.0))
    assert np.all((d["mag_h"] >= 21) & (d["mag_h"] <= 25))
    assert set(np.unique(d["t_exp"]).tolist()) <= {7200.0, 14400.0, 28800.0}
    gal = kind != KIND_STAR
    assert np.isfinite(d["logmstar_true"][gal]).all() and np.isnan(d["logmstar_true"][~gal]).all()
    lm = d["logmstar_true"][g]
    assert 8.0 < np.median(lm) < 11.5
    ssfr = d["logsfr_true"][g] - lm
    p = d["is_passive"][g]
    assert 0.2 < p.mean() < 0.5
    assert np.median(ssfr[~p]) > np.median(ssfr[p]) + 0.8
    assert np.median(ssfr[~p]) > -9.8  # main sequence at z ~ 1-2.6
    assert np.all(np.abs(d["ra"] - 150.1) < 1) and np.all(np.abs(d["dec"] - 2.2) < 0.6)


def test_noise_and_magnitudes_are_physical():
    """Brighter/longer → higher continuum S/N in H; noise peaks at sky lines."""
    from survey_infer.instrument import load_instrument
    from survey_infer.skymask import instrument_sky_mask

    cfg = replace(SimConfig(), interloper_fraction=0.0, mag_h_range=(21.0, 21.0001), exposures_h=(8.0,))
    bright = simulate_block(0, 20, 3, cfg)
    faint = simulate_block(0, 20, 3, replace(cfg, mag_h_range=(24.0, 24.0001)))
    inst = load_instrument()
    h = inst.arm_index == 2
    sky = instrument_sky_mask().astype(bool)
    sel = h & ~sky

    def snr(d):
        return np.median(np.median(d["flux"][:, sel] * np.sqrt(d["ivar"][:, sel]), axis=1))

    s_b, s_f = snr(bright), snr(faint)
    assert s_b > 2.0 and s_f < s_b / 4, (s_b, s_f)
    sig = 1 / np.sqrt(faint["ivar"])
    assert np.median(sig[:, h & sky]) > 2 * np.median(sig[:, h & ~sky])


def test_bad_input_errors(tmp_path):
    with pytest.raises(ValueError):
        simulate_block(0, 2, 1, replace(SimConfig(), z_range=(2.0, 1.0)))
    assert cli_main(["simulate", "--n", "0", "--seed", "1", "--out", str(tmp_path / "x.zarr")]) == 2
    with pytest.raises(Exception, match="sky model"):
        simulate_block(0, 2, 1, instrument="sdss_like")
