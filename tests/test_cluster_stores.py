"""Stores as Zarr defines them (issue 16, point 4): an input store with the "." chunk-key separator or chunked
along the wavelength axis, and a catalog whose metadata the user consolidated before the input grew. Real Zarr
stores on disk, the real tiny model, in-process runs (the kinds are in the store handling, not the cluster)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import assert_catalogs_identical
from resume_helpers import QUIET
from survey_infer.pipeline.resume import input_stamp
from survey_infer.pipeline.runner import run_catalog
from survey_infer.io.simulated import simulate_survey

T, BLOCK = 4, 64


def run(store: Path, cat: Path, model: Path, **kw):
    lines: list[str] = []
    s = run_catalog(store, cat, model=model, cluster="inprocess", mc_samples=T, seed=0, block_objects=BLOCK,
                    progress=False, print_fn=lambda *a: lines.append(" ".join(map(str, a))), **kw)
    return s, "\n".join(lines)


def recopy(src: Path, dst: Path, separator: str = "/") -> Path:
    """Copy a survey store array by array with another chunk-key separator (same dtypes, chunks, codecs)."""
    g = zarr.open_group(str(src), mode="r", zarr_format=3)
    h = zarr.open_group(str(dst), mode="w", zarr_format=3)
    for name in g.array_keys():
        a = g[name]
        b = h.create_array(name, shape=a.shape, chunks=a.chunks, dtype=a.dtype, fill_value=a.fill_value,
                           dimension_names=a.metadata.dimension_names, attributes=dict(a.attrs),
                           compressors=a.compressors, filters=a.filters,
                           chunk_key_encoding={"name": "default", "configuration": {"separator": separator}})
        b[...] = a[...]
    h.attrs.update(dict(g.attrs))
    return dst


def test_input_stamp_follows_the_chunk_key_encoding(tmp_path):
    """The stamp is built from Zarr's own chunk keys: with separator "." (files c.0.0) a change in the rows'
    chunk changes it (before: every file was 'absent', whatever its content), and every chunk along the other
    axis counts."""
    for sep in (".", "/"):
        g = zarr.open_group(str(tmp_path / f"s{ord(sep)}"), mode="w", zarr_format=3)
        a = g.create_array("flux", shape=(100, 30), chunks=(10, 16), dtype="f4",
                           chunk_key_encoding={"name": "default", "configuration": {"separator": sep}})
        a[...] = 1.0
        store = tmp_path / f"s{ord(sep)}"
        before = input_stamp(store, 0, 20, {"flux": 10})
        other = input_stamp(store, 20, 40, {"flux": 10})
        time.sleep(0.01)
        a[5, 25] = 2.0  # second chunk along the wavelength axis, rows 0..9
        assert input_stamp(store, 0, 20, {"flux": 10}) != before, sep
        assert input_stamp(store, 20, 40, {"flux": 10}) == other, sep


def test_dot_separator_input_change_is_recomputed(small_survey, tiny_model, tmp_path):
    dot = recopy(small_survey, tmp_path / "dot.zarr", separator=".")
    assert (dot / "flux" / "c.0.0").exists()
    cat = tmp_path / "cat.zarr"
    s, _ = run(dot, cat, tiny_model)
    assert s.ok and s.blocks_computed == 5
    g = zarr.open_group(str(dot), mode="r+", zarr_format=3)
    g["flux"][0:64] = g["flux"][0:64] * 3.0 + 1.0
    s, out = run(dot, cat, tiny_model)
    assert s.ok and s.blocks_computed == 1 and s.blocks_done_before == 4, out
    assert "block 0 is recomputed: input changed" in out
    ref = tmp_path / "ref.zarr"
    assert run(dot, ref, tiny_model)[0].ok
    assert_catalogs_identical(ref, cat)


def test_consolidated_catalog_grows_and_completes(tiny_model, tmp_path):
    """The user consolidates the catalog (xarray's warning suggests it), then the input grows: the catalog is
    grown and completed, identical to a clean run, and the consolidated copy holds the new shapes (before: a
    done-marker for rows never written, then an IndexError on every re-run)."""
    s200 = simulate_survey(200, 41, tmp_path / "s200.zarr", chunk_objects=64)
    s300 = simulate_survey(300, 41, tmp_path / "s300.zarr", chunk_objects=64)
    cat = tmp_path / "cat.zarr"
    assert run(s200, cat, tiny_model)[0].ok
    zarr.consolidate_metadata(str(cat))
    assert json.loads((cat / "zarr.json").read_text()).get("consolidated_metadata")
    s, out = run(s300, cat, tiny_model)
    assert s.ok, s.blocks_failed
    assert "catalog grown from 200 to 300 rows" in out
    s2, _ = run(s300, cat, tiny_model)
    assert s2.ok and s2.blocks_computed == 0
    ref = tmp_path / "ref.zarr"
    assert run(s300, ref, tiny_model)[0].ok
    assert_catalogs_identical(ref, cat)
    # a reader that trusts consolidated metadata (zarr's default) sees the grown shapes
    g = zarr.open_group(str(cat), mode="r", zarr_format=3)
    assert g["z"].shape == (300,) and np.isfinite(g["z"][250:]).any()


def test_job_script_paths_are_absolute_and_quoted(tmp_path, monkeypatch):
    """Every path that reaches a worker job script is absolute and quoted (a folder with a space, a relative
    path, a node-side $VARIABLE); before, they were pasted in as given."""
    import shlex

    pytest.importorskip("dask_jobqueue")
    from survey_infer.pipeline.clusters import slurm as si_slurm

    monkeypatch.chdir(tmp_path)
    weird = tmp_path / "my env" / "bin"
    weird.mkdir(parents=True)
    py = weird / "python3"
    py.write_text("")
    script = si_slurm.describe_job_script(1, memory="1GiB", python=str(py), local_directory="scratch dir",
                                          log_directory="logs")
    cmd = script.splitlines()[-1]
    assert shlex.split(cmd)[0] == str(py)  # one word, absolute
    assert f"--local-directory {shlex.quote(str(tmp_path / 'scratch dir'))}" in cmd
    assert f"#SBATCH -o {tmp_path / 'logs'}/" in script
    script = si_slurm.describe_job_script(1, memory="1GiB", local_directory="$TMPDIR/da sk")
    assert '--local-directory "$TMPDIR/da sk"' in script
