"""The torch hot path (issue 15): device-made SplitMix64 masks, per-device micro-batch, numerics settings,
hardware record, the device-resident network window and the torch PDF statistics — all checked on the CPU
against the numpy reference path, bit for bit where the design promises bits."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_model

from survey_infer.instrument import load_instrument
from survey_infer.model import mc
from survey_infer.model import torch_masks as tm
from survey_infer.model.checkpoint import load_model
from survey_infer.model.device import (
    MICRO_BATCH_BY_DEVICE,
    aligned,
    check_resume_hardware,
    configure_numerics,
    fingerprint_fields,
    hardware_description,
    micro_batch_size,
    warm_up,
)
from survey_infer.model.hotpath import STAT_KEYS, pdf_moments_torch, run_network_device
from survey_infer.model.inference import MICRO_BATCH, make_masks, run_network
from survey_infer.preprocess import preprocess
from survey_infer.screening import pdf_statistics

INST = load_instrument()
EDGE_IDS = np.array([0, 1, -1, 2 ** 63 - 1, -2 ** 63, 123456789012345], np.int64)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(make_tiny_model(tmp_path_factory.mktemp("hp") / "tiny"))


def _pre(n=70, seed=0):
    rng = np.random.default_rng(seed)
    cont = 2.0 + np.sin(INST.wave / 900.0)
    flux = (cont[None, :] + rng.normal(0, 0.5, (n, INST.n_wave))).astype(np.float32)
    flux[:, np.abs(INST.wave - 6564.61 * 2.0) < 4] += 20.0
    ivar = np.full((n, INST.n_wave), 4.0, np.float32)
    ivar[3] = 0.0  # a row without data
    return preprocess(flux, ivar, INST, None)


@pytest.mark.parametrize("seed", [0, 3, -1, 2 ** 40 + 7, -12345, 2 ** 64 - 1])
@pytest.mark.parametrize("stream", [0, 1, 4])
def test_torch_splitmix64_uniforms_are_the_numpy_bits(seed, stream):
    rng = np.random.default_rng(abs(seed) % 1000)
    oid = np.r_[rng.integers(-2 ** 63, 2 ** 63 - 1, size=100, dtype=np.int64), EDGE_IDS]
    a = mc.uniform(seed, oid, 7, 13, stream)
    b = tm.uniform(seed, torch.from_numpy(oid), 7, 13, stream).numpy()
    assert a.dtype == b.dtype == np.float64
    assert np.array_equal(a, b)


@pytest.mark.parametrize("p", [0.2, 0.0, 0.5, 0.9999, 1e-17, 0.1])
def test_torch_keep_masks_are_the_numpy_bits(p):
    oid = np.r_[np.arange(-50, 50, dtype=np.int64) * 7919, EDGE_IDS]
    for seed, stream in ((0, 1), (9, 3), (-1, 2)):
        a = mc.keep_masks(seed, oid, 11, 17, p, stream)
        b = tm.keep_masks(seed, torch.from_numpy(oid), 11, 17, p, stream).numpy()
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
        assert np.array_equal(a, b), (seed, stream, p)


def test_torch_make_masks_match_inference_make_masks_with_padding(model):
    cfg = model.cfg
    oid = np.arange(500, 532, dtype=np.int64)
    valid = np.ones(32, bool)
    valid[[0, 5, 31]] = False
    for T, seed in ((6, 9), (1, -1), (1, 4)):
        ref = make_masks(model, oid, valid, T, seed)
        from survey_infer.model.inference import STREAMS

        got = tm.make_masks(cfg.mask_units(), STREAMS, cfg.p_drop, torch.from_numpy(oid), torch.from_numpy(valid),
                            T, seed)
        assert sorted(ref) == sorted(got)
        for k in ref:
            assert got[k].dtype == torch.float32
            assert torch.equal(ref[k], got[k]), (k, T, seed)


def test_micro_batch_per_device_and_validation(monkeypatch):
    monkeypatch.delenv("SURVEY_INFER_MICRO_BATCH", raising=False)
    assert micro_batch_size("cpu") == MICRO_BATCH == MICRO_BATCH_BY_DEVICE["cpu"] == 32
    assert micro_batch_size("cuda") == micro_batch_size("cuda:1") == 1024
    assert micro_batch_size("cpu", 64) == 64
    monkeypatch.setenv("SURVEY_INFER_MICRO_BATCH", "2048")
    assert micro_batch_size("cuda") == 2048
    monkeypatch.setenv("SURVEY_INFER_MICRO_BATCH", "100")
    with pytest.raises(ValueError, match="SURVEY_INFER_MICRO_BATCH=100: expected a positive multiple of 32"):
        micro_batch_size("cuda")
    with pytest.raises(ValueError, match="runs on cpu or cuda"):
        micro_batch_size("meta")
    assert aligned(256, 1024) == 1024 and aligned(2049, 1024) == 3072 and aligned(96, 32) == 96
    with pytest.raises(ValueError):
        aligned(0, 32)


def test_numerics_settings_and_fingerprint_on_cpu(monkeypatch):
    assert configure_numerics("cpu") == {"fp32_precision": "ieee", "deterministic": True}
    with pytest.raises(ValueError, match="needs a CUDA device"):
        configure_numerics("cpu", precision="tf32")
    with pytest.raises(ValueError, match="precision 'bf16'"):
        configure_numerics("cuda", precision="bf16")
    # the fp32_precision API this module sets on CUDA exists in this torch (names checked, values round-trip)
    for knob in (torch.backends.cudnn.conv, torch.backends.cuda.matmul):
        old = knob.fp32_precision
        try:
            knob.fp32_precision = "ieee"
            assert knob.fp32_precision == "ieee"
        finally:
            knob.fp32_precision = old
    hw = hardware_description("cpu")
    assert hw["device_class"] == "cpu" and hw["cpu_capability"] and hw["torch"] == torch.__version__.split("+")[0]
    fp = fingerprint_fields("cpu")
    assert fp["micro_batch"] == 32 and fp["fp32_precision"] == "ieee"
    check_resume_hardware(fp, fingerprint_fields("cpu"))  # same hardware: fine
    gpu = {**fp, "device_class": "cuda", "micro_batch": 1024, "gpu": "NVIDIA H200", "compute_capability": "9.0",
           "sm_count": 132, "cuda": "12.8", "cudnn": 91002}
    with pytest.raises(ValueError, match=r"^cat\.zarr was made with device_class=cpu, this run has "
                                         r"device_class=cuda: .*bit-identical"):
        check_resume_hardware(fp, gpu, "cat.zarr")
    with pytest.raises(ValueError, match="sm_count=132, this run has sm_count=114"):
        check_resume_hardware(gpu, {**gpu, "sm_count": 114})
    with pytest.raises(ValueError, match="fp32_precision=ieee, this run has fp32_precision=tf32"):
        check_resume_hardware(gpu, {**gpu, "fp32_precision": "tf32"})


def test_device_window_is_bit_identical_to_run_network_on_cpu(model):
    pp = _pre(70)
    oid = np.arange(7000, 7070, dtype=np.int64)
    rows = 5 + np.arange(70)  # not aligned to the micro-batch: partial first and last windows
    for T, seed in ((6, 9), (1, -1)):
        ref = run_network(model, pp.x, pp.scalars, oid, rows, T, seed, "cpu")
        got = run_network_device(model, pp.x, pp.scalars, oid, rows, T, seed, "cpu")
        assert sorted(ref) == sorted(got) == sorted(("pz",) + STAT_KEYS)
        for k in ref:
            assert ref[k].dtype == got[k].dtype and ref[k].shape == got[k].shape, k
            assert np.array_equal(ref[k], got[k], equal_nan=True), (k, T, seed)
    # rows in any order, a subset: still the same bits per row
    perm = np.random.default_rng(1).permutation(70)[:40]
    ref = run_network(model, pp.x[perm], pp.scalars[perm], oid[perm], rows[perm], 4, 2, "cpu")
    got = run_network_device(model, pp.x[perm], pp.scalars[perm], oid[perm], rows[perm], 4, 2, "cpu")
    for k in ref:
        assert np.array_equal(ref[k], got[k], equal_nan=True), k


def test_device_window_larger_micro_batch_is_close_and_self_consistent(model):
    pp = _pre(70, seed=4)
    oid = np.arange(70, dtype=np.int64)
    rows = np.arange(70)
    ref = run_network(model, pp.x, pp.scalars, oid, rows, 5, 1, "cpu")
    a = run_network_device(model, pp.x, pp.scalars, oid, rows, 5, 1, "cpu", micro_batch=128)
    b = run_network_device(model, pp.x[10:], pp.scalars[10:], oid[10:], rows[10:], 5, 1, "cpu", micro_batch=128)
    for k in ref:  # another B: same masks, float32-level differences only
        np.testing.assert_allclose(a[k], ref[k], rtol=1e-4, atol=1e-6, err_msg=k)
        assert np.array_equal(a[k][10:], b[k], equal_nan=True), k  # independent of neighbours at fixed B


def test_warm_up_runs_on_cpu(model):
    assert warm_up(model, "cpu", B=32, T=2) >= 0.0


def test_pdf_moments_torch_match_screening(model):
    rng = np.random.default_rng(3)
    Z = model.zgrid.n
    zc, dz = model.zgrid.centres, model.zgrid.dz
    pz = rng.random((60, Z)) ** 8
    pz[0] = 0.0
    pz[0, 0] = 1.0  # all mass in the first bin (edge mode)
    pz[1] = 1.0  # flat
    pz[2, :] = 1e-30
    pz[2, Z // 2] = 1.0  # a spike
    pz /= pz.sum(1, keepdims=True)
    ref = pdf_statistics(pz, zc, dz, {})
    got = pdf_moments_torch(torch.from_numpy(pz), torch.from_numpy(zc), dz)
    for k, v in got.items():
        v = v.numpy()
        if k == "pz_npeaks":
            assert v.dtype == ref[k].dtype and np.array_equal(v, ref[k])
        else:
            np.testing.assert_allclose(v, ref[k], rtol=1e-12, atol=1e-15, err_msg=k)


def test_torch_preprocessing_matches_numpy_within_stated_tolerance():
    """Issue 15 point 2: preprocessing in torch; float64 block sums in another order, same medians."""
    from survey_infer.model.torch_preprocess import nanmedian_rows, preprocess_torch
    from survey_infer.skymask import instrument_sky_mask

    rng = np.random.default_rng(5)
    n, W = 24, INST.n_wave
    cont = 2.0 + np.sin(INST.wave / 700.0)
    amp = rng.uniform(0.05, 30, n)[:, None]  # faint (noise-dominated) to bright
    flux = (amp * cont[None, :] + rng.normal(0, 1.0, (n, W))).astype(np.float32)
    flux[:, np.abs(INST.wave - 6564.61 * 1.7) < 5] += 80.0  # an emission line: clipped from the continuum
    ivar = rng.uniform(0.5, 2.0, (n, W)).astype(np.float32)
    ivar[1] = 0.0  # no data at all
    ivar[2, : W // 2] = 0.0  # a whole arm (and more) empty: blocks filled from the nearest usable one
    ivar[3, 4000:4300] = 0.0  # a few empty blocks inside an arm
    flux[4, 100:200] = np.nan  # non-finite input
    ivar[5, -500:] = -1.0  # invalid ivar
    mask = np.zeros((n, W), np.uint8)
    mask[6, ::7] = 1
    sky = instrument_sky_mask(INST)
    for m in (None, mask):
        a = preprocess(flux, ivar, INST, sky, m)
        b = preprocess_torch(flux, ivar, INST, sky, m)
        assert np.array_equal(a.n_good, b.n_good.numpy())
        assert np.array_equal(a.masked_fraction, b.masked_fraction.numpy())
        for k in ("x", "scalars", "snr"):
            ref, got = getattr(a, k), b[k].numpy()
            assert got.dtype == ref.dtype == np.float32 and got.shape == ref.shape, k
            assert np.array_equal(np.isnan(ref), np.isnan(got)), k
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, equal_nan=True, err_msg=k)
    # medians as numpy's: even counts average the two middle values, all-NaN rows give NaN
    t = torch.tensor([[1.0, np.nan, 3.0, 2.0, 10.0], [np.nan] * 5, [4.0, 1.0, np.nan, np.nan, np.nan]],
                     dtype=torch.float64)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = np.nanmedian(t.numpy(), axis=1)
    assert np.array_equal(nanmedian_rows(t).numpy(), ref, equal_nan=True)


def test_device_preprocessing_feeds_the_device_window_close_to_the_numpy_path(model):
    from survey_infer.model.hotpath import preprocess_device, window_rows

    rng = np.random.default_rng(8)
    W = INST.n_wave
    flux = (2.0 + np.sin(INST.wave / 900.0)[None, :] + rng.normal(0, 0.5, (40, W))).astype(np.float32)
    ivar = np.full((40, W), 4.0, np.float32)
    ivar[7] = 0.0
    oid, rows = np.arange(40, dtype=np.int64), np.arange(40)
    ref_pp = preprocess(flux, ivar, INST, model.sky_mask)
    pp = preprocess_device(flux, ivar, model, None, "cpu")
    assert isinstance(pp.x, torch.Tensor) and isinstance(pp.snr, np.ndarray)
    assert np.array_equal(pp.n_good, ref_pp.n_good) and np.array_equal(pp.snr, ref_pp.snr, equal_nan=True)
    ref = run_network(model, ref_pp.x, ref_pp.scalars, oid, rows, 4, 2, "cpu")
    got = run_network_device(model, pp.x, pp.scalars, oid, rows, 4, 2, "cpu")
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert window_rows("cpu") == 256 and window_rows("cuda") == 1024 and window_rows("cuda", 256, 2048) == 2048


def test_device_path_switch_and_pipeline_micro_batch(monkeypatch):
    from survey_infer.model.hotpath import pipeline_micro_batch, use_device_path

    monkeypatch.delenv("SURVEY_INFER_HOTPATH", raising=False)
    monkeypatch.setenv("SURVEY_INFER_MICRO_BATCH", "64")  # the CPU path is fixed at inference.MICRO_BATCH
    assert not use_device_path("cpu") and use_device_path("cuda") and not use_device_path("cuda", cache={})
    assert pipeline_micro_batch("cpu") == 32 and pipeline_micro_batch("cuda:0") == 64
    monkeypatch.setenv("SURVEY_INFER_HOTPATH", "1")
    assert use_device_path("cpu")


def test_infer_block_device_path_forced_on_cpu_is_close_and_default_unchanged(model, monkeypatch):
    """The GPU branch of ``infer_block`` (torch preprocessing + device window), forced on the CPU: the catalog
    columns stay within float32-level tolerance of the numpy path; without the switch the CPU path is the numpy
    one (bit for bit what ``run_network`` gives)."""
    from survey_infer.model.inference import infer_block

    rng = np.random.default_rng(12)
    W = INST.n_wave
    flux = (2.0 + np.sin(INST.wave / 900.0)[None, :] + rng.normal(0, 0.5, (40, W))).astype(np.float32)
    flux[:, np.abs(INST.wave - 6564.61 * 1.9) < 4] += 25.0
    ivar = np.full((40, W), 4.0, np.float32)
    ivar[5] = 0.0  # NODATA row
    oid = np.arange(300, 340, dtype=np.int64)
    monkeypatch.delenv("SURVEY_INFER_HOTPATH", raising=False)
    ref = infer_block(model, flux, ivar, oid, 7, mc_samples=4, seed=2)
    monkeypatch.setenv("SURVEY_INFER_HOTPATH", "1")
    got = infer_block(model, flux, ivar, oid, 7, mc_samples=4, seed=2)
    assert sorted(ref) == sorted(got)
    for k in ref:
        assert ref[k].dtype == got[k].dtype, k
        if ref[k].dtype.kind == "f":
            assert np.array_equal(np.isnan(ref[k]), np.isnan(got[k])), k
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-3, atol=1e-4, equal_nan=True, err_msg=k)
    assert np.array_equal(ref["zwarn"][5], got["zwarn"][5])


H200 = {"gpu": "NVIDIA H200", "compute_capability": "9.0", "sm_count": 132, "cuda": "12.8", "cudnn": 91002}


def test_gpu_fingerprint_cpu_empty_and_diff_names_the_gpu(monkeypatch):
    """The worker-side GPU fingerprint: nothing on the CPU (CPU catalogs keep their fingerprint); on a (fake)
    GPU description every GPU key, and a resume on another GPU is refused with a diff naming both GPUs."""
    from survey_infer.errors import ClusterError
    from survey_infer.model.device import (
        GPU_FINGERPRINT_KEYS,
        gpu_fingerprint,
        merge_worker_fingerprints,
    )
    from survey_infer.pipeline.resume import fingerprint_diff

    monkeypatch.delenv("SURVEY_INFER_MICRO_BATCH", raising=False)
    assert gpu_fingerprint("cpu") == {} and gpu_fingerprint("cpu", micro_batch=64) == {}
    assert merge_worker_fingerprints({"tcp://a:1": {}, "tcp://b:2": {}}) == {} == merge_worker_fingerprints({})
    h200 = gpu_fingerprint("cuda", description=H200)
    assert tuple(h200) == GPU_FINGERPRINT_KEYS
    assert h200 == {"micro_batch": 1024, "fp32_precision": "ieee", **H200}
    a100 = gpu_fingerprint("cuda:0", description={**H200, "gpu": "NVIDIA A100-SXM4-80GB",
                                                  "compute_capability": "8.0", "sm_count": 108})
    base = {"model_sha256": "x", "device_class": "cuda"}
    diff = fingerprint_diff({**base, **h200}, {**base, **a100})
    assert "gpu: catalog has 'NVIDIA H200', this run would use 'NVIDIA A100-SXM4-80GB'" in diff
    assert any(d.startswith("sm_count: catalog has 132") for d in diff) and len(diff) == 3
    assert fingerprint_diff({**base, **h200}, {**base, **gpu_fingerprint("cuda", "tf32", description=H200)}) == [
        "fp32_precision: catalog has 'ieee', this run would use 'tf32'"]
    # the driver merges the workers' records: equal ones give one record, a mixed cluster is refused
    assert merge_worker_fingerprints({"tcp://a:1": h200, "tcp://b:2": dict(h200)}) == h200
    with pytest.raises(ClusterError, match=r"^workers differ in compute_capability: tcp://a:1 has '9.0', "
                                           r"tcp://b:2 has '8.0'"):
        merge_worker_fingerprints({"tcp://b:2": a100, "tcp://a:1": h200})
    if not torch.cuda.is_available():  # a CUDA run on a worker without a GPU: one clear line
        with pytest.raises(ClusterError, match="sees no CUDA GPU on host"):
            gpu_fingerprint("cuda")


# ---------------------------------------------------------------------------------- screening on the device
def _screening_pdfs(Z: int, n: int = 300, seed: int = 3) -> np.ndarray:
    """Peaked to flat PDFs and the edge cases: a mode in the first/last bin, a spike, two equal bins, flat, a
    broad plateau (the bin-resolution fallback of the intervals), exact ties."""
    rng = np.random.default_rng(seed)
    pz = rng.random((n, Z)) ** rng.uniform(1, 400, (n, 1))
    for r, (a, b) in enumerate(((0, 1), (Z - 1, Z), (Z // 2, Z // 2 + 1), (10, 12), (0, Z), (100, 400))):
        pz[r] = 1e-30
        pz[r, a:b] = 1.0
    pz[6] = rng.integers(0, 3, Z) / 7.0  # many exact ties
    return pz / pz.sum(1, keepdims=True)


def test_numpy_order_sum_is_numpys_sum():
    from survey_infer.model.torch_screening import numpy_order_sum

    rng = np.random.default_rng(1)
    for shape in ((50, 567), (3, 129), (40, 33, 8), (9, 7), (5, 128), (2, 1000)):
        a = rng.random(shape) ** 8 * rng.choice([1.0, 1e-5, 1e5], shape)
        assert np.array_equal(numpy_order_sum(torch.from_numpy(a)).numpy(), a.sum(axis=-1)), shape


def test_torch_greedy_interval_is_the_loop_bit_for_bit():
    """The loop-free greedy growth (merge by running minima) takes the reference loop's cells, in its order."""
    from survey_infer import screening
    from survey_infer.model.torch_screening import greedy_interval

    rng = np.random.default_rng(0)
    for trial in range(120):
        n, M = 40, int(rng.integers(1, 40))
        cell = [rng.random((n, M)), rng.integers(0, 3, (n, M)) / 7.0,
                rng.random((n, M)) ** 8 * (rng.random((n, M)) < 0.5), np.eye(M)[rng.integers(0, M, n)]][trial % 4]
        cell = cell / max(cell.sum(1).max(), 1e-300) * rng.uniform(0.5, 1.5)
        start = rng.integers(0, M, n)
        level = float(rng.choice([0.68, 0.95, 0.3, 1.0, 2.0]))
        ref = screening._greedy_interval(cell, start, level)
        got = greedy_interval(torch.from_numpy(cell), torch.from_numpy(start), level)
        for name, a, b in zip(("lo", "hi", "mass", "reached"), ref, got):
            assert np.array_equal(a, b.numpy()), (trial, name)


def test_torch_screening_is_numpy_bit_for_bit_on_cpu(model):
    """Statistics, HPD intervals, zwarn and quality in torch = the numpy screening's bits on the CPU."""
    from survey_infer.model import torch_screening as ts
    from survey_infer.screening import set_flags

    zc, dz, Z = model.zgrid.centres, model.zgrid.dz, model.zgrid.n
    pz = _screening_pdfs(Z)
    ref = pdf_statistics(pz, zc, dz, {})
    got = ts.pdf_statistics(torch.from_numpy(pz), torch.from_numpy(zc), dz, {})
    assert list(ref) == list(got)
    for k in ref:
        assert got[k].numpy().dtype == ref[k].dtype and np.array_equal(got[k].numpy(), ref[k]), k
    assert (ref["z_hi95"] - ref["z_lo95"]).max() > 10 * dz  # the bin-resolution fallback was exercised
    rng = np.random.default_rng(7)
    n = len(pz)
    th = {**model.calibration.get("thresholds", {}), "quality": float(np.median(ref["pz_conf"]))}
    kw = {"p_outside": rng.uniform(0, 1, n), "z_mc_std": rng.uniform(0, 0.04, n),
          "snr": rng.uniform(0, 1, n).astype(np.float32), "usable_fraction": rng.uniform(0, 1, n).astype(np.float32),
          "bad_input_fraction": rng.uniform(0, 0.1, n), "n_good": rng.integers(0, 3, n) * 100}
    kw["snr"][:20] = 0.5  # exactly at the LOW_SNR threshold
    zw, q = set_flags(ref, z_range=(model.zgrid.z_min, model.zgrid.z_max), thresholds=th, **kw)
    tzw, tq = ts.set_flags(got, z_range=(model.zgrid.z_min, model.zgrid.z_max), thresholds=th,
                           **{k: torch.from_numpy(v) for k, v in kw.items()})
    assert tzw.dtype == torch.int32 and tq.dtype == torch.float32
    assert np.array_equal(tzw.numpy(), zw) and np.array_equal(tq.numpy(), q)
    assert len(np.unique(zw)) > 20  # many flag combinations were compared


def test_device_window_finishes_rows_on_the_device_in_one_copy(model, monkeypatch):
    """``infer_window_device``: the catalog columns of a window, screened on the device, one copy back — on the
    CPU the numpy screening's bits given the same preprocessing and network outputs (NODATA, masked and
    invalid-input rows included); ``infer_block`` takes this path when forced."""
    from survey_infer.io.survey_store import MASK_INVALID_INPUT
    from survey_infer.model import hotpath
    from survey_infer.model.inference import finish_rows, infer_block

    rng = np.random.default_rng(21)
    W, n = INST.n_wave, 45
    flux = (2.0 + np.sin(INST.wave / 900.0)[None, :] + rng.normal(0, 0.5, (n, W))).astype(np.float32)
    flux[:, np.abs(INST.wave - 6564.61 * 1.9) < 4] += 25.0
    ivar = np.full((n, W), 4.0, np.float32)
    ivar[5] = 0.0  # NODATA
    flux[8, :300] = np.nan
    mask = np.zeros((n, W), np.uint8)
    mask[9, 1000:1400] = MASK_INVALID_INPUT
    oid, rows = np.arange(900, 900 + n, dtype=np.int64), 3 + np.arange(n)
    th = model.calibration.get("thresholds", {})
    copies = []
    real = hotpath._one_copy_back
    monkeypatch.setattr(hotpath, "_one_copy_back", lambda buf: copies.append(buf.shape) or real(buf))
    got = hotpath.infer_window_device(model, flux, ivar, mask, oid, rows, 4, 2, "cpu", thresholds=th)
    assert len(copies) == 1 and copies[0][0] == n
    # reference: the same torch preprocessing and network, then the numpy screening
    pp = hotpath.preprocess_device(flux, ivar, model, mask, "cpu")
    net = run_network_device(model, pp.x, pp.scalars, oid, rows, 4, 2, "cpu")
    bad = (~np.isfinite(flux) | ~np.isfinite(ivar) | (ivar < 0) | ((mask & MASK_INVALID_INPUT) != 0)).mean(1)
    ref = finish_rows(model, net.pop("pz"), net, pp.snr, pp.masked_fraction, pp.n_good, bad, th)
    assert list(got) == list(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape, k
        assert np.array_equal(got[k], ref[k], equal_nan=True), k
    assert got["zwarn"][5] & 512 and np.isnan(got["z"][5]) and got["zwarn"][9] != 0
    monkeypatch.setenv("SURVEY_INFER_HOTPATH", "1")
    blk = infer_block(model, flux, ivar, oid, 3, mask=mask, mc_samples=4, seed=2)
    for k in ref:
        assert np.array_equal(blk[k], ref[k], equal_nan=True), k


def test_pack_rows_round_trip():
    from survey_infer.model.hotpath import pack_rows, unpack_rows

    cols = {"a": torch.arange(5, dtype=torch.float64) / 3, "b": torch.arange(5, dtype=torch.int16) - 2,
            "c": torch.rand(5, 7, dtype=torch.float32), "d": torch.arange(5, dtype=torch.int32) * 1000,
            "e": torch.tensor([True, False, True, True, False])}
    buf, layout = pack_rows(cols)
    assert buf.dtype == torch.uint8 and buf.shape == (5, 8 + 2 + 28 + 4 + 1)
    out = unpack_rows(buf.numpy(), layout)
    for k, v in cols.items():
        assert out[k].dtype == v.numpy().dtype and np.array_equal(out[k], v.numpy()), k


def test_running_sums_avoid_cumsum_off_the_cpu():
    """``torch.cumsum`` of floats raises on CUDA under deterministic algorithms (GPU workers set them): the device
    modules take running sums through ``running_sum`` (cumsum on the CPU = numpy's bits; a doubling scan of
    elementwise additions elsewhere, checked here against cumsum)."""
    import inspect
    import re

    from survey_infer.model import hotpath, torch_preprocess, torch_screening
    from survey_infer.model.torch_screening import running_sum, scan_sum

    rng = np.random.default_rng(2)
    for m in (1, 2, 7, 8, 264, 574):
        x = torch.from_numpy(rng.random((30, m)) ** 4)
        assert torch.equal(running_sum(x), torch.from_numpy(np.cumsum(x.numpy(), axis=1)))
        np.testing.assert_allclose(scan_sum(x).numpy(), np.cumsum(x.numpy(), axis=1), rtol=1e-14, atol=1e-15)
        assert torch.equal(scan_sum(x)[5:], scan_sum(x[5:]))  # row-independent
    for mod in (hotpath, torch_preprocess, torch_screening):
        src = inspect.getsource(mod).replace(inspect.getsource(running_sum), "")
        assert not re.search(r"torch\.cumsum\(|\.cumsum\(dim", src), mod.__name__  # np.cumsum on the host is fine
