"""GPU path: dask-cuda LocalCUDACluster workers (run where a CUDA GPU exists), and the clear error without one."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_catalogs_identical, cli


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


@pytest.mark.skipif(_has_cuda(), reason="this machine has a GPU: the error path does not apply")
def test_cuda_cluster_without_gpu_is_a_clear_error(small_survey, tiny_model, tmp_path):
    r = cli("run", "--input", small_survey, "--output", tmp_path / "c.zarr", "--model", tiny_model,
            "--cluster", "cuda", "--no-progress")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "cuda" in r.stderr.lower() and "Traceback" not in r.stderr


@pytest.mark.gpu
def test_cuda_cluster_matches_itself_and_is_close_to_cpu(small_survey, tiny_model, tmp_path):
    from survey_infer.io.catalog_store import open_catalog
    from survey_infer.pipeline.runner import run_catalog

    kw = dict(model=tiny_model, mc_samples=8, seed=3, progress=False, print_fn=lambda *a: None)
    a = run_catalog(small_survey, tmp_path / "gpu_a.zarr", cluster="cuda", **kw)
    b = run_catalog(small_survey, tmp_path / "gpu_b.zarr", cluster="cuda", block_objects=96, **kw)
    assert a.ok and b.ok
    assert_catalogs_identical(tmp_path / "gpu_a.zarr", tmp_path / "gpu_b.zarr")
    c = run_catalog(small_survey, tmp_path / "cpu.zarr", cluster="inprocess", **kw)
    assert c.ok
    g, cpu = open_catalog(tmp_path / "gpu_a.zarr"), open_catalog(tmp_path / "cpu.zarr")
    assert g.attrs["fingerprint"]["device_class"] == "cuda"
    # across platforms: same bins, float32-level differences (stated tolerance 1e-3 in z)
    assert np.nanmax(np.abs(g["z"].values - cpu["z"].values)) < 1e-3
