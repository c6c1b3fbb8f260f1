"""Session-scoped synthetic fixtures (pangeo-forge style): a small simulated survey and a tiny real model.

The tiny model is a real :class:`SpectrumNet` (untrained, seeded weights, narrow trunk) saved as safetensors +
JSON exactly like the shipped one, so pipeline tests exercise the real loading, inference and screening code in
seconds on 2 cores.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TINY_ARCH = {"width": 8, "dilations": (1, 2), "n_gather": 2, "head_h1": 8, "head_h2": 4, "pool_width": 8,
             "feat_dim": 8, "mlp_hidden": 8}


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


def make_tiny_model(out: Path, seed: int = 0, arch: dict | None = None) -> Path:
    """Save a tiny, seeded, untrained model to ``out``; returns the directory."""
    import torch

    from survey_infer.instrument import load_instrument
    from survey_infer.model.checkpoint import save_model
    from survey_infer.model.network import NetConfig, SpectrumNet
    from survey_infer.model.zgrid import ZGrid
    from survey_infer.preprocess import PREPROCESSING_VERSION, n_scalars
    from survey_infer.skymask import instrument_sky_mask

    inst = load_instrument()
    torch.manual_seed(seed)
    cfg = NetConfig(**{"n_scalars": n_scalars(inst), **(arch or TINY_ARCH)})
    net = SpectrumNet(cfg, inst, ZGrid()).eval()
    save_model(out, net, inst, instrument_sky_mask(inst), PREPROCESSING_VERSION,
               {"temperature": 1.0, "target_norm": {"logmstar": [10.0, 0.6], "logsfr": [1.0, 0.6]},
                "thresholds": {"quality": 0.3}}, {"note": "tiny untrained test model"})
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="session")
def tiny_model_b(tmp_path_factory) -> Path:
    """A second tiny model with different weights (reprocessing tests)."""
    return make_tiny_model(tmp_path_factory.mktemp("modelb") / "tinyb", seed=1)


@pytest.fixture(scope="session")
def small_survey(tmp_path_factory) -> Path:
    """300 simulated MOONS spectra, chunks of 64 (a few interlopers), written once per session."""
    from survey_infer.io.simulated import simulate_survey

    out = tmp_path_factory.mktemp("survey") / "small.zarr"
    simulate_survey(300, 7, out, chunk_objects=64)
    return out


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``survey-infer ARGS`` in a subprocess (the real console entry point)."""
    return subprocess.run([sys.executable, "-m", "survey_infer", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def assert_catalogs_identical(a: Path, b: Path, exclude: tuple[str, ...] = ()) -> None:
    """Every data variable and coordinate equal bit for bit (attrs excluded)."""
    from survey_infer.catalog.store import open_catalog

    da, db = open_catalog(a), open_catalog(b)
    assert sorted(da.variables) == sorted(db.variables)
    for v in da.variables:
        if v in exclude:
            continue
        x, y = da[v].values, db[v].values
        assert x.dtype == y.dtype, v
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), f"variable {v} differs"
