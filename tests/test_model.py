"""Preprocessing, network shapes, seeded MC determinism, checkpoints, screening, training resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import TINY_ARCH, make_tiny_model
from survey_infer.instrument import load_instrument
from survey_infer.model import mc
from survey_infer.model.checkpoint import CheckpointError, load_model, model_sha256
from survey_infer.model.inference import MICRO_BATCH, infer_block
from survey_infer.model.network import NetConfig, SpectrumNet, gather_table, ones_masks
from survey_infer.model.zgrid import ZGrid
from survey_infer.preprocess import N_CHANNELS, n_scalars, preprocess
from survey_infer.screening import calibrate_thresholds, pdf_statistics

INST = load_instrument()


def _spectra(n=40, seed=0):
    rng = np.random.default_rng(seed)
    W = INST.n_wave
    cont = 2.0 + np.sin(INST.wave / 900.0)
    flux = (cont[None, :] + rng.normal(0, 0.5, (n, W))).astype(np.float32)
    lam = 6564.61 * 2.0  # an H-alpha line at z = 1.0 (YJ arm)
    flux[:, np.abs(INST.wave - lam) < 4] += 20.0
    ivar = np.full((n, W), 4.0, np.float32)
    return flux, ivar


def test_preprocess_shapes_and_invariants():
    flux, ivar = _spectra(6)
    ivar[1] = 0.0  # no data
    flux[2, :100] = np.nan  # invalid pixels
    sky = np.zeros(INST.n_wave, np.uint8)
    sky[::10] = 1
    pp = preprocess(flux, ivar, INST, sky)
    assert pp.x.shape == (6, N_CHANNELS, INST.n_wave) and pp.x.dtype == np.float32
    assert pp.scalars.shape == (6, n_scalars(INST))
    assert np.isfinite(pp.x).all() and np.isfinite(pp.scalars).all()
    assert (pp.x[:, 4, ::10] == 0).all()  # sky channels masked
    assert pp.n_good[1] == 0 and np.isnan(pp.snr[1]) and (pp.x[1] == 0).all()
    assert (pp.x[2, 4, :100] == 0).all()
    # the line stands out in the residual significance channel
    k = np.argmin(np.abs(INST.wave - 6564.61 * 2.0))
    assert pp.x[0, 0, k] > 10
    # continuum channel ~ cont/norm is smooth and positive
    assert np.median(pp.x[0, 2][pp.x[0, 4] > 0]) > 0.5
    # per-row: a row's preprocessing does not depend on its neighbours
    one = preprocess(flux[3:4], ivar[3:4], INST, sky)
    assert np.array_equal(one.x[0], pp.x[3]) and np.array_equal(one.scalars[0], pp.scalars[3])


def test_network_shapes_and_gather_table():
    cfg = NetConfig(**{"n_scalars": n_scalars(INST), **TINY_ARCH})
    zg = ZGrid()
    assert zg.n == 567 and abs(zg.centres[0] - 0.9015) < 1e-12
    net = SpectrumNet(cfg, INST, zg).eval()
    x = torch.randn(3, N_CHANNELS, INST.n_wave)
    s = torch.randn(3, cfg.n_scalars)
    out = net(x, s, ones_masks(cfg, 3, 5))
    assert out["logits_z"].shape == (3, 5, 567)
    assert out["logit_out"].shape == (3, 5) and out["mstar"].shape == (3, 5, 2) and out["sfr"].shape == (3, 5, 2)
    assert out["aux"].shape == (3, net.n_pos)
    idx, w = gather_table(INST, zg, cfg.lines, cfg.stride)
    # H-alpha at z=1.5 lands in YJ; at z=1.1 in the YJ arm too; at z=2.5 off the grid (22976 A)
    ha = [n for n, _ in cfg.lines].index("Halpha")
    zb = zg.index(np.array([2.5]))[0]
    assert idx[ha, zb] == net.n_pos  # padding column


def test_mc_masks_keyed_by_object_and_sample():
    a = mc.keep_masks(3, np.array([10, 11]), 4, 64, 0.2)
    b = mc.keep_masks(3, np.array([11, 10]), 4, 64, 0.2)
    assert np.array_equal(a[0], b[1]) and np.array_equal(a[1], b[0])  # keyed by id, not position
    assert not np.array_equal(a[0, 0], a[0, 1])  # samples differ
    assert not np.array_equal(a[0], a[1])  # objects differ
    assert abs((a == 0).mean() - 0.2) < 0.1
    c = mc.keep_masks(4, np.array([10]), 4, 64, 0.2)
    assert not np.array_equal(a[0], c[0])  # seeds differ


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(make_tiny_model(tmp_path_factory.mktemp("m") / "tiny"))


def test_outputs_independent_of_neighbours_slot_and_padding(model):
    flux, ivar = _spectra(40, seed=2)
    oid = np.arange(1000, 1040)
    full = infer_block(model, flux, ivar, oid, 0, mc_samples=6, seed=9)
    # same object, different neighbours (other rows replaced), same global row
    flux2 = flux.copy()
    flux2[:5] += 3.0
    alt = infer_block(model, flux2, ivar, oid, 0, mc_samples=6, seed=9)
    # alone, padded micro-batch
    one = infer_block(model, flux[17:18], ivar[17:18], oid[17:18], 17, mc_samples=6, seed=9)
    for k in ("z", "z_err", "z_lo68", "z_hi95", "logmstar", "logsfr_err", "pz_conf", "p_outside", "z_mc_std", "pz"):
        assert np.array_equal(full[k][17], alt[k][17], equal_nan=True), k
        assert np.array_equal(full[k][17], one[k][0], equal_nan=True), k
    assert MICRO_BATCH == 32


def test_mc_spread_settles_as_T_grows(model):
    flux, ivar = _spectra(8, seed=4)
    oid = np.arange(8)
    spreads = [infer_block(model, flux, ivar, oid, 0, mc_samples=T, seed=1)["logmstar_err_mc"] for T in (2, 16, 64)]
    assert (spreads[0] >= 0).all() and np.isfinite(spreads[2]).all()
    # the estimate of the epistemic spread stabilises: T=16 is closer to T=64 than T=2 is
    assert np.median(np.abs(spreads[1] - spreads[2])) <= np.median(np.abs(spreads[0] - spreads[2])) + 1e-6
    det = infer_block(model, flux, ivar, oid, 0, mc_samples=1, seed=-1)
    assert (det["z_mc_std"] == 0).all() and (det["logmstar_err_mc"] == 0).all()


def test_checkpoint_round_trip_and_tamper_detection(tmp_path):
    d = make_tiny_model(tmp_path / "m")
    m1 = load_model(d)
    m2 = load_model(d, expected_sha256=m1.sha256)
    for (k, v), (k2, v2) in zip(m1.net.state_dict().items(), m2.net.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    meta = json.loads((d / "model.json").read_text())
    for key in ("architecture", "z_grid", "instrument", "sky_mask_hash", "preprocessing_version", "calibration",
                "training", "weights_sha256"):
        assert key in meta
    assert m1.sky_mask.shape == (INST.n_wave,) and 0.1 < m1.sky_mask.mean() < 0.2
    with pytest.raises(CheckpointError, match="expects"):
        load_model(d, expected_sha256="0" * 64)
    raw = bytearray((d / "model.safetensors").read_bytes())
    raw[-10] ^= 0xFF
    (d / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(d)
    # calibration is part of the identity
    d2 = make_tiny_model(tmp_path / "m2")
    from survey_infer.model.checkpoint import update_meta

    before = model_sha256(d2)
    after = update_meta(d2, calibration={"temperature": 1.5})
    assert before != after


def test_pdf_statistics_and_intervals():
    zg = ZGrid()
    zc = zg.centres
    z0 = np.array([1.2345, 2.0, 0.95])
    s = np.array([0.004, 0.02, 0.005])
    pz = np.exp(-0.5 * ((zc[None] - z0[:, None]) / s[:, None]) ** 2)
    pz[1] += 0.6 * pz[1].max() * np.exp(-0.5 * ((zc - 1.5) / 0.01) ** 2)  # a second peak
    pz /= pz.sum(1, keepdims=True)
    st = pdf_statistics(pz, zc, zg.dz)
    assert np.allclose(st["z"][[0, 2]], z0[[0, 2]], atol=0.0015)
    assert (st["z_lo68"] <= st["z"]).all() and (st["z"] <= st["z_hi68"]).all()
    assert (st["z_lo95"] <= st["z_lo68"]).all() and (st["z_hi95"] >= st["z_hi68"]).all()
    assert st["pz_npeaks"][0] == 1 and st["pz_npeaks"][1] == 2
    assert st["pz_conf"][0] > 0.95 and st["pz_conf"][1] < 0.7


def test_intervals_resolve_below_the_bin_width():
    """Gaussian PDFs: HPD widths match ±1σ / ±1.96σ, also when σ is below the bin width (dz = 0.003)."""
    zg = ZGrid()
    zc = zg.centres
    sig = np.array([0.0015, 0.002, 0.004, 0.01])
    z0 = np.array([1.2012, 1.5, 1.8031, 2.2])
    pz = np.exp(-0.5 * ((zc[None] - z0[:, None]) / sig[:, None]) ** 2)
    pz /= pz.sum(1, keepdims=True)
    st = pdf_statistics(pz, zc, zg.dz)
    w68 = (st["z_hi68"] - st["z_lo68"]) / (2 * sig)
    w95 = (st["z_hi95"] - st["z_lo95"]) / (2 * 1.96 * sig)
    tol = np.array([0.2, 0.1, 0.1, 0.1])  # σ = half a bin is at the limit of the linear sub-bin density
    assert np.all(np.abs(w68 - 1) < tol), w68
    assert np.all(np.abs(w95 - 1) < tol), w95
    # a PDF in one bin: the 68% interval is narrower than the bin, the 95% one wider than the 68% one
    one = np.zeros((1, zg.n))
    one[0, 200] = 1.0
    s1 = pdf_statistics(one, zc, zg.dz)
    assert 0 < s1["z_hi68"][0] - s1["z_lo68"][0] < zg.dz
    assert s1["z_hi95"][0] - s1["z_lo95"][0] > s1["z_hi68"][0] - s1["z_lo68"][0]


def test_calibrate_thresholds_reaches_target_or_caps():
    rng = np.random.default_rng(0)
    q = rng.random(5000)
    correct = rng.random(5000) < (0.8 + 0.2 * q)  # better quality, more often right
    r = calibrate_thresholds(q, correct, target_accuracy=0.95, max_set_aside=0.9)
    kept = q >= r["quality"]
    assert r["target_met"] and correct[kept].mean() >= 0.95
    r2 = calibrate_thresholds(q, correct, target_accuracy=0.999, max_set_aside=0.12)
    assert not r2["target_met"] and abs(r2["val_set_aside"] - 0.12) < 0.01


def test_screening_threshold_is_raised_until_interlopers_are_caught():
    """Galaxies alone would allow a low threshold; interlopers the network places confidently in the grid (high
    quality, no other bit) are only caught by SCREENED, so the threshold rises until ≥ the aimed fraction of
    them is not reliable — unless that would set aside more galaxies than the cap."""
    from survey_infer.calibrate import _fit_threshold, _interloper_threshold
    from survey_infer.flags import ZWarn

    # the helper: 10 interlopers, 4 already flagged by another bit; keep at most 1 of 10 reliable
    q = np.array([0.99, 0.98, 0.97, 0.5, 0.4, 0.3, 0.2, 0.95, 0.96, 0.1], np.float32)
    other = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1], bool)
    t = _interloper_threshold(q, other, aim=0.9)
    assert np.float32(0.98) < t and (~other & (q >= t)).sum() == 1
    assert _interloper_threshold(q, np.ones(10, bool), aim=0.99) == 0.0

    rng = np.random.default_rng(1)
    n_gal, n_int = 4000, 600
    qg = rng.random(n_gal).astype(np.float32)
    zt = np.concatenate([rng.uniform(1, 2, n_gal), np.full(n_int, 3.0)])
    right = rng.random(n_gal) < 0.95 + 0.05 * qg  # galaxies: ≥ 0.95 right whatever the threshold
    z = np.concatenate([np.where(right, zt[:n_gal], zt[:n_gal] + 0.5), np.full(n_int, 1.5)])
    qi = rng.uniform(0.0, 0.8, n_int).astype(np.float32)  # many interlopers above the galaxies' threshold
    zwarn = np.zeros(n_gal + n_int, np.int32)
    zwarn[n_gal:n_gal + 300] = ZWarn.OUT_OF_RANGE  # half caught by their own bit
    cat = {"z": z, "quality": np.concatenate([qg, qi]), "zwarn": zwarn}
    inr = np.arange(n_gal + n_int) < n_gal
    base = _fit_threshold(cat, zt, inr, 0.95, 0.9, 2.0, interloper_target=0.0)
    thr = _fit_threshold(cat, zt, inr, 0.95, 0.9, 2.0, interloper_target=0.97)
    assert base["quality"] < 0.05  # the galaxies alone need (almost) no threshold
    reliable = (zwarn == 0) & (cat["quality"] >= thr["quality"])
    assert thr["interloper_target_met"] and 1 - reliable[~inr].mean() >= thr["interloper_aim"] > 0.97
    assert thr["val_interlopers_not_reliable"] == pytest.approx(1 - reliable[~inr].mean())
    assert thr["val_set_aside"] == pytest.approx(1 - reliable[inr].mean())
    # the set-aside cap wins over the interloper target (and the report says so)
    capped = _fit_threshold(cat, zt, inr, 0.95, 0.5, 2.0, interloper_target=0.99)
    assert capped["val_set_aside"] <= 0.5 and not capped["interloper_target_met"]


def test_training_resumes_exactly(small_survey, tmp_path):
    from safetensors.torch import load_file

    from survey_infer.io.survey_store import open_survey
    from survey_infer.train import STATE_DIR, train_model

    small_survey = open_survey(small_survey)  # the science layer takes data, not files
    kw = dict(epochs=1, batch_size=32, lr=1e-3, seed=5, threads=1, arch=TINY_ARCH, n_val=64, progress=False,
              group_rows=128)
    straight = train_model(small_survey, small_survey, tmp_path / "a", **kw)
    assert straight["finished"]
    leg1 = train_model(small_survey, small_survey, tmp_path / "b", max_groups=1, **kw)
    assert not leg1["finished"]
    leg2 = train_model(small_survey, small_survey, tmp_path / "b", resume=True, **kw)
    assert leg2["finished"]
    a = load_file(str(tmp_path / "a" / STATE_DIR / "state.safetensors"))
    b = load_file(str(tmp_path / "b" / STATE_DIR / "state.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    m = load_model(tmp_path / "a")
    assert "temperature" in m.calibration and "quality" in m.calibration["thresholds"]


def test_calibrate_command_rewrites_the_model(small_survey, tmp_path):
    """`survey-infer calibrate`: temperature, threshold and error scales land in model.json (new sha256);
    a store without truth columns is refused in one line."""
    import shutil

    from conftest import cli

    d = make_tiny_model(tmp_path / "m")
    before = model_sha256(d)
    r = cli("calibrate", d, "--val", small_survey, "--n", 128, "--mc-samples", 4)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    m = load_model(d)
    assert m.sha256 == report["model_sha256"] != before
    assert m.calibration["temperature"] == report["temperature"] > 0
    # the slope of the per-object temperature is fitted with the groups' coverage (this store has is_passive,
    # t_exp, mag_h) and reported per group
    assert m.calibration["temperature_entropy_slope"] == report["temperature_entropy_slope"] >= 0
    assert {"passive", "star-forming"} <= set(m.calibration["report"]["coverage_by_group"])
    assert report["interloper_target"] == 0.97 and "interloper_target_enforced" in report
    assert m.calibration["thresholds"]["quality"] == report["quality_threshold"]
    assert set(m.calibration["err_scale"]) == {"logmstar", "logsfr"}
    assert report["aimed_accuracy"] > report["target_accuracy"] == 0.99
    # calibrating again gives the same model: the error scales are fitted on the raw network, never compounded
    r2 = cli("calibrate", d, "--val", small_survey, "--n", 128, "--mc-samples", 4)
    assert r2.returncode == 0 and load_model(d).sha256 == m.sha256
    # no truth columns
    import zarr

    nt = tmp_path / "notruth.zarr"
    shutil.copytree(small_survey, nt)
    g = zarr.open_group(str(nt), mode="r+")
    del g["z_true"]
    r3 = cli("calibrate", d, "--val", nt)
    assert r3.returncode == 2 and "z_true" in r3.stderr and "Traceback" not in r3.stderr
    # no group columns: overall coverage alone cannot fix the entropy slope, so only b = 0 is fitted
    ng = tmp_path / "nogroups.zarr"
    shutil.copytree(small_survey, ng)
    g = zarr.open_group(str(ng), mode="r+")
    for k in ("is_passive", "t_exp", "mag_h"):
        del g[k]
    d2 = make_tiny_model(tmp_path / "m2")
    r5 = cli("calibrate", d2, "--val", ng, "--n", 128, "--mc-samples", 4)
    assert r5.returncode == 0, r5.stderr
    assert json.loads(r5.stdout)["temperature_entropy_slope"] == 0.0
    assert load_model(d2).calibration["report"]["coverage_by_group"] == {}
    # a damaged chunk of the validation store: one line naming the store, the variable and the rows
    bad = tmp_path / "damaged.zarr"
    shutil.copytree(small_survey, bad)
    chunk = next(p for p in sorted((bad / "flux").rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"garbage")
    r6 = cli("calibrate", d, "--val", bad, "--n", 128, "--mc-samples", 4)
    assert r6.returncode == 2 and "'flux'" in r6.stderr and "damaged.zarr" in r6.stderr, r6.stderr
    assert "Traceback" not in r6.stderr
    # settings that cannot give a calibration: one line each, exit 2, model untouched
    for bad, word in ((("--n", 0), "n = 0"), (("--mc-samples", 0), "mc_samples"),
                      (("--target-accuracy", 1.5), "target accuracy"), (("--max-set-aside", -1), "set-aside")):
        r4 = cli("calibrate", d, "--val", small_survey, *bad)
        assert r4.returncode == 2 and word in r4.stderr and "Traceback" not in r4.stderr, (bad, r4.stderr)
    assert load_model(d).sha256 == m.sha256


# ---- template chi2 scan (issue 12) -------------------------------------------------------------------------
def _template_spectra(z: np.ndarray, amp=(1.0, 0.5, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Noiseless spectra built from the kcorrect templates at redshifts ``z`` (linear mix ``amp``)."""
    from survey_infer.model.xcorr import default_template_spectra

    tf, tw = default_template_spectra()
    rest = np.asarray(amp) @ tf[: len(amp)]
    flux = np.stack([np.interp(INST.wave / (1 + zz), tw, rest) for zz in z]).astype(np.float32)
    flux /= np.median(flux, axis=1, keepdims=True)
    return flux, np.full_like(flux, 1e4)


def test_template_chi2_scan_finds_redshift_of_a_line_free_spectrum():
    from survey_infer.model.xcorr import TemplateChi2, default_template_spectra

    zg = ZGrid()
    zt = np.array([0.95, 1.31, 1.77, 2.42])
    flux, ivar = _template_spectra(zt)
    pp = preprocess(flux, ivar, INST, None)
    xc = TemplateChi2(INST, zg, 5, 5e-4)
    xc.fill(*default_template_spectra())
    x = torch.from_numpy(pp.x)
    with torch.no_grad():
        feats = xc(x)
        zb = xc.best_z(x, zg, "full")
    assert feats.shape == (4, 4, zg.n) and torch.isfinite(feats).all()
    assert np.all(np.abs(zb - zt) < 0.01), zb
    # the log-likelihood-ratio features peak at 0 (the best bin) and are <= 0 elsewhere
    assert (feats[:, [0, 2]].amax(dim=2) == 0).all() and (feats[:, [0, 2]] <= 0).all()
    # rows are independent: other neighbours in the same batch shape give the same bits
    x2 = x.clone()
    x2[[0, 1, 3]] = x2[[0, 1, 3]].flip(2)
    with torch.no_grad():
        alt = xc(x2)
    assert torch.equal(alt[2], feats[2])


def test_template_bank_refuses_short_templates():
    from survey_infer.model.xcorr import LogGrid, template_bank

    g = LogGrid(INST, ZGrid(), 5e-4)
    w = np.linspace(3000.0, 9000.0, 500)  # does not reach the ~1,790 A needed at z = 2.6
    with pytest.raises(ValueError, match="templates cover"):
        template_bank(np.ones((3, 500)), w, g, 2)


def _xc_arch():
    return {**TINY_ARCH, "xc_templates": 3}


def test_warm_start_adds_the_scan_without_changing_outputs(tmp_path):
    from survey_infer.train import warm_start

    old_dir = make_tiny_model(tmp_path / "old")
    old = load_model(old_dir)
    cfg = NetConfig(**{"n_scalars": n_scalars(INST), **_xc_arch()})
    net = SpectrumNet(cfg, INST, ZGrid()).eval()
    from survey_infer.model.xcorr import default_template_spectra

    net.xc.fill(*default_template_spectra())
    warm_start(net, old_dir)
    flux, ivar = _spectra(4, seed=5)
    pp = preprocess(flux, ivar, INST, None)
    x, s = torch.from_numpy(pp.x), torch.from_numpy(pp.scalars)
    with torch.no_grad():
        a = old.net(x, s, ones_masks(old.cfg, 4, 2))
        b = net(x, s, ones_masks(cfg, 4, 2))
    for k in ("logits_z", "logit_out", "mstar", "sfr"):
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    bad = NetConfig(**{"n_scalars": n_scalars(INST), **{**_xc_arch(), "width": 12}})
    with pytest.raises(ValueError, match="warm start"):
        warm_start(SpectrumNet(bad, INST, ZGrid()), old_dir)


def test_scan_model_round_trip_and_row_independence(tmp_path):
    d = make_tiny_model(tmp_path / "xc", arch=_xc_arch())
    m = load_model(d)
    assert m.net.xc.t_full.abs().sum() == 0  # templates are saved with the weights (here: unfilled zeros)
    from survey_infer.model.xcorr import default_template_spectra

    m.net.xc.fill(*default_template_spectra())
    flux, ivar = _template_spectra(np.linspace(1.0, 2.4, 40), amp=(1.0, 0.3, 0.2))
    flux += np.random.default_rng(0).normal(0, 0.05, flux.shape).astype(np.float32)
    oid = np.arange(500, 540)
    full = infer_block(m, flux, ivar, oid, 0, mc_samples=4, seed=3)
    one = infer_block(m, flux[21:22], ivar[21:22], oid[21:22], 21, mc_samples=4, seed=3)
    for k in ("z", "z_lo68", "pz", "logmstar", "p_outside"):
        assert np.array_equal(full[k][21], one[k][0], equal_nan=True), k


def test_raw_output_cache_gives_the_same_bits_without_rerunning_the_network(model, monkeypatch):
    flux, ivar = _spectra(40, seed=6)
    oid = np.arange(40)
    cache: dict = {}
    model.calibration["temperature"] = 0.5
    first = infer_block(model, flux, ivar, oid, 0, mc_samples=4, seed=2, cache=cache)
    assert sum(k[0] != "preprocess" for k in cache) == 2  # two micro-batches (and one preprocessed window)
    calls = []
    monkeypatch.setattr(model.net, "trunk", lambda *a, **k: calls.append(1))
    for temp in (0.5, 2.0):
        model.calibration["temperature"] = temp
        again = infer_block(model, flux, ivar, oid, 0, mc_samples=4, seed=2, cache=cache)
        monkeypatch.undo()
        fresh = infer_block(model, flux, ivar, oid, 0, mc_samples=4, seed=2)
        monkeypatch.setattr(model.net, "trunk", lambda *a, **k: calls.append(1))
        for k in ("z", "z_lo68", "pz", "quality", "logmstar_err"):
            assert np.array_equal(again[k], fresh[k], equal_nan=True), k
    assert not calls  # the cached calls never ran the network
    assert not np.array_equal(first["pz"], again["pz"])  # the temperature still acts on cached outputs
    import survey_infer.model.inference as inference

    monkeypatch.setattr(inference, "preprocess", lambda *a, **k: calls.append("preprocess"))
    model.calibration["temperature_entropy_slope"] = 3.0  # a per-object temperature acts on cached outputs too
    sloped = infer_block(model, flux, ivar, oid, 0, mc_samples=4, seed=2, cache=cache)
    assert not calls and not np.array_equal(sloped["pz"], again["pz"])  # neither preprocessing nor network ran
    model.calibration.pop("temperature_entropy_slope")
    model.calibration["temperature"] = 1.0


def test_object_temperature_follows_the_pdf_entropy(model):
    """T_i = T0 exp(b (H_i - 1/2)): a flat PDF (H = 1) is heated by exp(b/2), a one-bin PDF (H ~ 0) cooled by
    exp(-b/2); b = 0 (or absent) is the one temperature, a float, so the old numerics are kept bit for bit."""
    from survey_infer.model.microbatch import object_temperature

    Z = model.zgrid.n
    logits = torch.zeros(3, 4, Z)
    logits[1, :, 7] = 200.0  # one bin holds all the mass
    logits[2, :, :] = torch.linspace(0, 3, Z)  # in between
    model.calibration.update(temperature=0.25)
    assert object_temperature(model, logits) == 0.25
    model.calibration["temperature_entropy_slope"] = 2.0
    t = object_temperature(model, logits)
    assert t.shape == (3, 1, 1) and t.dtype == torch.float64
    assert float(t[0]) == pytest.approx(0.25 * np.exp(1.0)) and float(t[1]) == pytest.approx(0.25 * np.exp(-1.0))
    assert float(t[1]) < float(t[2]) < float(t[0])
    # per row: an object's temperature does not depend on the other rows of its micro-batch
    assert torch.equal(object_temperature(model, logits[2:3])[0], t[2])
    model.calibration.pop("temperature_entropy_slope")
    model.calibration["temperature"] = 1.0
