"""The distributed run on real LocalCluster processes: catalog contract, determinism, bad input."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import assert_catalogs_identical, cli
from survey_infer.flags import BAD_MASK, ZWarn
from survey_infer.catalog.schema import PER_OBJECT
from survey_infer.catalog.store import open_catalog
from survey_infer.pipeline.runner import RunError, run_catalog


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_survey, tiny_model) -> Path:
    """The reference catalog: in-process, one block per 64 objects."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    s = run_catalog(small_survey, out, model=tiny_model, cluster="inprocess", mc_samples=8, seed=3,
                    block_objects=64, progress=False, print_fn=lambda *a: None)
    assert s.ok and s.blocks_computed == 5
    return out


def test_catalog_contract(reference, small_survey):
    cat = open_catalog(reference)
    for name in PER_OBJECT:
        assert name in cat, name
        assert "description" in cat[name].attrs
    for name in ("z_true", "logmstar_true", "kind", "t_exp", "mag_h"):
        assert name in cat  # truth passthrough
    assert cat.sizes["zbin"] == 567 and cat["z_grid"].shape == (567,)
    has_data = (cat["zwarn"].values & ZWarn.NODATA) == 0
    z = cat["z"].values
    assert np.isfinite(z[has_data]).all()
    for v in ("z_lo68", "z_hi68", "z_lo95", "z_hi95", "z_err", "logmstar", "logsfr", "pz_conf", "quality"):
        assert np.isfinite(cat[v].values[has_data]).all(), v
    assert (cat["z_lo68"].values[has_data] <= z[has_data]).all() and (z[has_data] <= cat["z_hi68"].values[has_data]).all()
    assert (cat["z_lo95"].values[has_data] <= cat["z_lo68"].values[has_data] + 1e-6).all()
    pz = cat["pz"].values.astype(np.float64)
    assert np.allclose(pz[has_data].sum(axis=1), 1.0, atol=2e-3)
    rel = cat["z_reliable"].values
    assert np.array_equal(rel, (cat["zwarn"].values & BAD_MASK) == 0)
    src = zarr.open_group(str(small_survey), mode="r")
    assert np.array_equal(cat["object_id"].values, src["object_id"][:])
    attrs = cat.attrs
    for key in ("model_sha256", "fingerprint", "mc_samples", "seed", "zwarn_bits", "runs", "software_version"):
        assert key in attrs, key
    assert attrs["fingerprint"]["sky_mask_hash"] and attrs["fingerprint"]["mc_samples"] == 8
    assert (cat["run_id"].values == 0).all()


def test_identical_across_workers_chunking_and_in_process(reference, small_survey, tiny_model, tmp_path):
    # 2 real worker processes, default block size (different from the reference's 64)
    two = tmp_path / "two.zarr"
    s = run_catalog(small_survey, two, model=tiny_model, cluster="local", workers=2, mc_samples=8, seed=3,
                    progress=False, print_fn=lambda *a: None)
    assert s.ok
    assert_catalogs_identical(reference, two)
    # 1 worker, input re-chunked to 37 rows (not a multiple of anything), blocks of 96
    from survey_infer.io.simulated import simulate_survey

    rechunked = simulate_survey(300, 7, tmp_path / "rechunked.zarr", chunk_objects=37)
    one = tmp_path / "one.zarr"
    s = run_catalog(rechunked, one, model=tiny_model, cluster="local", workers=1, mc_samples=8, seed=3,
                    block_objects=96, progress=False, print_fn=lambda *a: None)
    assert s.ok
    assert_catalogs_identical(reference, one)


def test_object_by_object_in_process_matches(reference, small_survey, tiny_model):
    from survey_infer.model.checkpoint import load_model
    from survey_infer.model.inference import infer_block

    m = load_model(tiny_model)
    g = zarr.open_group(str(small_survey), mode="r")
    cat = open_catalog(reference)
    for row in (0, 31, 32, 150, 299):
        r = infer_block(m, g["flux"][row:row + 1], g["ivar"][row:row + 1], g["object_id"][row:row + 1], row,
                        mc_samples=8, seed=3)
        for k in ("z", "z_err", "z_lo68", "logmstar", "logsfr_err", "pz_conf", "zwarn"):
            assert np.array_equal(np.asarray(r[k][0], cat[k].dtype), cat[k].values[row], equal_nan=True), (row, k)
        assert np.array_equal(r["pz"][0].astype(np.float16), cat["pz"].values[row])


def test_mc_spread_and_masks_depend_on_seed(small_survey, tiny_model, tmp_path):
    a = run_catalog(small_survey, tmp_path / "a.zarr", model=tiny_model, cluster="inprocess", mc_samples=8, seed=3,
                    block_objects=64, progress=False, print_fn=lambda *a: None)
    b = run_catalog(small_survey, tmp_path / "b.zarr", model=tiny_model, cluster="inprocess", mc_samples=8, seed=4,
                    block_objects=64, progress=False, print_fn=lambda *a: None)
    assert a.ok and b.ok
    za, zb = open_catalog(tmp_path / "a.zarr")["z_mean"].values, open_catalog(tmp_path / "b.zarr")["z_mean"].values
    assert not np.array_equal(za, zb)  # different seeds, different dropout masks


def _survey_with(tmp_path: Path, src: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def test_nodata_object_gets_flag_not_crash(small_survey, tiny_model, tmp_path):
    s = _survey_with(tmp_path, small_survey, "nodata.zarr")
    g = zarr.open_group(str(s), mode="r+")
    iv = g["ivar"][0:64]
    iv[5] = 0.0
    g["ivar"][0:64] = iv
    out = tmp_path / "c.zarr"
    summ = run_catalog(s, out, model=tiny_model, cluster="inprocess", mc_samples=4, block_objects=64, progress=False,
                       print_fn=lambda *a: None)
    assert summ.ok
    cat = open_catalog(out)
    assert cat["zwarn"].values[5] & ZWarn.NODATA
    assert not cat["z_reliable"].values[5]
    assert np.isnan(cat["z"].values[5]) and np.isnan(cat["logmstar"].values[5])
    assert np.isfinite(cat["z"].values[6])


def test_grid_mismatch_refused_before_any_work(tmp_path, tiny_model):
    from survey_infer.io.survey_store import create_survey

    w = create_survey(tmp_path / "sdss.zarr", 4, "sdss_like")
    w.write(0, {"flux": np.ones((4, 6401), np.float32), "ivar": np.ones((4, 6401), np.float32),
                "object_id": np.arange(4)})
    w.commit()
    with pytest.raises(RunError, match="SDSS-like.*MOONS-LR|MOONS-LR.*SDSS-like"):
        run_catalog(tmp_path / "sdss.zarr", tmp_path / "c.zarr", model=tiny_model, cluster="inprocess", progress=False)
    assert not (tmp_path / "c.zarr").exists()


def test_missing_variable_named(small_survey, tiny_model, tmp_path):
    s = _survey_with(tmp_path, small_survey, "noivar.zarr")
    shutil.rmtree(s / "ivar")
    r = cli("run", "--input", s, "--output", tmp_path / "c.zarr", "--model", tiny_model, "--cluster", "inprocess")
    assert r.returncode == 2
    assert "ivar" in r.stderr and "Traceback" not in r.stderr


def test_corrupt_chunk_fails_only_its_block(small_survey, tiny_model, tmp_path):
    s = _survey_with(tmp_path, small_survey, "corrupt.zarr")
    chunk = s / "flux" / "c" / "2" / "0"
    chunk.write_bytes(b"this is not a blosc chunk" * 10)
    out = tmp_path / "c.zarr"
    r = cli("run", "--input", s, "--output", out, "--model", tiny_model, "--workers", "2", "--mc-samples", "4",
            "--block-objects", "64", "--no-progress")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "block 2" in r.stdout and "rows 128..192" in r.stdout
    cat = open_catalog(out)
    z = cat["z"].values
    assert np.isfinite(z[:128]).all() and np.isfinite(z[192:]).all()
    assert np.isnan(z[128:192]).all()


#: the keys of a CPU catalog's fingerprint (issue 15 adds GPU keys on cuda runs only: CPU catalogs must resume)
CPU_FINGERPRINT_KEYS = {"model_sha256", "preprocessing_version", "screening_version", "sky_mask_hash", "mc_samples",
                        "seed", "z_grid", "dtypes", "torch", "device_class", "micro_batch"}


def test_cpu_fingerprint_keeps_its_keys(reference):
    fp = open_catalog(reference).attrs["fingerprint"]
    assert set(fp) == CPU_FINGERPRINT_KEYS and fp["device_class"] == "cpu"


def test_status_shows_the_gpu_of_a_gpu_catalog(reference, tmp_path):
    """A GPU catalog's fingerprint holds its workers' GPU (issue 15): ``status`` names it on a line of its own."""
    from survey_infer.pipeline.status import catalog_status, format_status

    cat = tmp_path / "gpu.zarr"
    shutil.copytree(reference, cat)
    g = zarr.open_group(str(cat), mode="r+")
    gpu = {"micro_batch": 1024, "fp32_precision": "ieee", "gpu": "NVIDIA H200", "compute_capability": "9.0",
           "sm_count": 132, "cuda": "12.8", "cudnn": 91002}
    g.attrs["fingerprint"] = {**dict(g.attrs["fingerprint"]), "device_class": "cuda", **gpu}
    text = format_status(catalog_status(cat))
    assert ("GPU: NVIDIA H200 (compute capability 9.0, 132 SMs), CUDA 12.8, cuDNN 91002, micro-batch 1024, fp32 ieee"
            in text), text
    assert "GPU:" not in format_status(catalog_status(reference))  # a CPU catalog has none
    res = cli("status", str(cat))
    assert res.returncode == 0 and "GPU: NVIDIA H200" in res.stdout


@pytest.mark.gpu
def test_gpu_run_takes_the_fingerprint_from_its_workers(small_survey, tiny_model, tmp_path):
    """--cluster cuda: the GPU fields of the fingerprint come from the workers (model.device.gpu_fingerprint on
    each) and are stored in the catalog; status shows them."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("dask_cuda")
    from survey_infer.pipeline.status import catalog_status, format_status

    cat = tmp_path / "gpu.zarr"
    s = run_catalog(small_survey, cat, model=tiny_model, cluster="cuda", mc_samples=8, seed=3, progress=False,
                    print_fn=lambda *a: None)
    assert s.ok
    fp = open_catalog(cat).attrs["fingerprint"]
    assert fp["device_class"] == "cuda" and fp["gpu"] == torch.cuda.get_device_name(0)
    for key in ("compute_capability", "sm_count", "cuda", "cudnn", "micro_batch", "fp32_precision"):
        assert fp.get(key) is not None, key
    assert f"GPU: {fp['gpu']}" in format_status(catalog_status(cat))
