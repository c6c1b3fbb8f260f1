"""Resume and partial reprocessing with real processes: SIGKILL the driver, torn catalog chunks, a reprocessing
job killed midway, and a different numerics fingerprint. Kills happen at named fault-injection points
(``SURVEY_INFER_FAULT``), so every test is deterministic. Every catalog is compared bit for bit with an
uninterrupted run (DESIGN §8). The counts and times each test measures are printed (``pytest -s``)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from conftest import assert_catalogs_identical, cli
from survey_infer.catalog.store import open_catalog, read_block
from survey_infer.pipeline.runner import run_catalog
from survey_infer.pipeline.status import catalog_status

from resume_helpers import BLOCK, N, N_BLOCKS, QUIET, T, markers, reference_run, run_args, summary_of


def run_with_fault(args: list[str], log: Path, fault: str) -> dict:
    """``survey-infer ARGS`` with ``SURVEY_INFER_FAULT=fault`` (a named point that SIGKILLs the driver: no
    timing, no race), to its end; then SIGKILL every process it had started that outlived it (by pid)."""
    import sys

    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "survey_infer", *args], stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "SURVEY_INFER_FAULT": fault})
    kids: dict[int, psutil.Process] = {}
    try:
        while proc.poll() is None:
            try:
                kids.update({k.pid: k for k in psutil.Process(proc.pid).children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    time.sleep(1.0)
    survivors = [k for k in kids.values() if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
    for k in survivors:
        try:
            k.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(survivors, timeout=10)
    return {"returncode": proc.returncode, "workers": len(kids), "outlived_driver": len(survivors)}


def timed_cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.time()
    r = cli(*args)
    return r, time.time() - t0


# ---- fixtures --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_survey, tiny_model) -> Path:
    """An uninterrupted run (in-process, blocks of 32, T = 4)."""
    out = tmp_path_factory.mktemp("resume-ref") / "ref.zarr"
    s = reference_run(small_survey, out, tiny_model)
    assert s.ok and s.blocks_computed == N_BLOCKS
    return out


@pytest.fixture(scope="module")
def reference_b(tmp_path_factory, small_survey, tiny_model_b) -> Path:
    """The whole survey run with the second model: what reprocessed rows must equal."""
    out = tmp_path_factory.mktemp("resume-refb") / "refb.zarr"
    s = reference_run(small_survey, out, tiny_model_b)
    assert s.ok
    return out


def copy_catalog(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---- tests -----------------------------------------------------------------------------------------------------
def test_driver_sigkill_resumes_only_unfinished_blocks(reference, small_survey, tiny_model, tmp_path):
    cat = tmp_path / "cat.zarr"
    args = run_args(small_survey, cat, tiny_model, "--workers", "2")
    # the driver SIGKILLs itself when it receives its 3rd block result (at most 4 more are in flight)
    info = run_with_fault(args, tmp_path / "killed.log", "block-done:kill:skip=2")
    done_at_kill = markers(cat)
    print((tmp_path / "killed.log").read_text()[-1500:])
    assert info["returncode"] == -signal.SIGKILL
    assert 3 <= done_at_kill < N_BLOCKS
    lock = json.loads((cat / "_lock.json").read_text())
    assert not lock["released"]  # a killed run cannot release its lock

    r, t_resume = timed_cli(*args, "--workers", "2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = summary_of(r.stdout)
    print(f"driver SIGKILL after {done_at_kill}/{N_BLOCKS} blocks ({info['outlived_driver']} of {info['workers']} "
          f"worker processes outlived it); resume recomputed {s['blocks_computed']} blocks in {t_resume:.1f} s")
    assert s["blocks_done_before"] == done_at_kill
    assert s["blocks_computed"] == N_BLOCKS - done_at_kill and not s["blocks_failed"]
    assert s["epoch"] == lock["epoch"] + 1 and "took over the catalog lock" in r.stdout  # dead holder: no wait
    assert_catalogs_identical(reference, cat)
    runs = open_catalog(cat).attrs["runs"]
    assert [a["blocks_computed"] for a in runs[0]["attempts"]] == [N_BLOCKS - done_at_kill]
    # a third run finds everything done
    r = cli(*args, "--cluster", "inprocess")
    assert r.returncode == 0 and summary_of(r.stdout)["blocks_computed"] == 0


def test_torn_missing_and_overwritten_chunks_are_rewritten(reference, small_survey, tiny_model, tmp_path):
    cat = copy_catalog(reference, tmp_path / "cat.zarr")
    z3 = cat / "z" / "c" / "3"
    z3.write_bytes(z3.read_bytes()[: len(z3.read_bytes()) // 2])  # torn write: truncated chunk file
    (cat / "logmstar" / "c" / "5").unlink()  # a chunk that never landed
    shutil.copyfile(cat / "pz" / "c" / "6" / "0", cat / "pz" / "c" / "7" / "0")  # valid bytes, wrong block
    r, t = timed_cli(*run_args(small_survey, cat, tiny_model, "--workers", "2"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "ZarrUserWarning" not in r.stderr  # workers list the catalog beside its _lock/_markers: no zarr noise
    s = summary_of(r.stdout)
    print(f"3 damaged chunks: {s['blocks_computed']} blocks recomputed in {t:.1f} s")
    assert s["blocks_computed"] == 3 and s["blocks_done_before"] == N_BLOCKS - 3
    for b in (3, 5, 7):
        assert f"block {b} is recomputed: stored block" in r.stdout
    assert "torn chunk" in r.stdout
    assert_catalogs_identical(reference, cat)


def test_different_fingerprint_refused_then_reprocessed(reference, small_survey, tiny_model, tmp_path):
    cat = copy_catalog(reference, tmp_path / "cat.zarr")
    before = sorted(p.read_bytes() for p in (cat / "_markers" / "main").glob("*.json"))
    r = cli(*run_args(small_survey, cat, tiny_model, "--cluster", "inprocess"), "--mc-samples", "6")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "mc_samples: catalog has 4, this run would use 6" in r.stderr and "--reprocess" in r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(p.read_bytes() for p in (cat / "_markers" / "main").glob("*.json")) == before
    assert_catalogs_identical(reference, cat)

    r, t = timed_cli(*run_args(small_survey, cat, tiny_model, "--workers", "2"), "--mc-samples", "6", "--reprocess")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = summary_of(r.stdout)
    assert s["job"].startswith("reprocess-") and s["blocks_computed"] == N_BLOCKS and s["run_id"] == 1
    new, old = open_catalog(cat), open_catalog(reference)
    assert (new["run_id"].values == 1).all()
    assert np.array_equal(new["object_id"].values, old["object_id"].values)
    assert not np.array_equal(new["z_mc_std"].values, old["z_mc_std"].values, equal_nan=True)
    runs = new.attrs["runs"]
    assert [r["run_id"] for r in runs] == [0, 1] and runs[1]["fingerprint"]["mc_samples"] == 6
    # resuming the same reprocessing job finds it done; the main job's command finds its blocks superseded, not torn
    s = run_catalog(small_survey, cat, model=tiny_model, cluster="inprocess", mc_samples=6, reprocess=True, **QUIET)
    assert s.job == runs[1]["job"] and s.blocks_computed == 0
    s = run_catalog(small_survey, cat, model=tiny_model, cluster="inprocess", mc_samples=T, **QUIET)
    assert s.job == "main" and s.blocks_computed == 0 and s.blocks_done_before == N_BLOCKS
    assert (open_catalog(cat)["run_id"].values == 1).all()


def test_reprocess_selection_killed_and_resumed(reference, reference_b, small_survey, tiny_model, tiny_model_b,
                                                 tmp_path):
    cat = copy_catalog(reference, tmp_path / "cat.zarr")
    where = "z_true > 2.0"
    sel = open_catalog(reference)["z_true"].values > 2.0
    assert 0.15 < sel.mean() < 0.5
    args = run_args(small_survey, cat, tiny_model_b, "--workers", "2", "--max-in-flight", "2") + [
        "--where", where, "--reprocess"]
    # the driver SIGKILLs itself when it receives its 2nd block result (at most 2 more are in flight)
    info = run_with_fault(args, tmp_path / "killed.log", "block-done:kill:skip=1")
    done_at_kill = markers(cat, "reprocess-*")
    n_sel_blocks = len(np.unique(np.flatnonzero(sel) // BLOCK))
    assert info["returncode"] == -signal.SIGKILL
    assert 2 <= done_at_kill <= 4 < n_sel_blocks

    # resume: the same command (in-process this time, to keep the test short; the runner logic is the same)
    r, t = timed_cli(*args, "--cluster", "inprocess")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = summary_of(r.stdout)
    job_name = s["job"]
    print(f"reprocessing ({sel.sum()} rows in {n_sel_blocks} blocks) SIGKILLed after {done_at_kill} blocks "
          f"({info['outlived_driver']} worker processes outlived the driver); resume recomputed "
          f"{s['blocks_computed']} blocks in {t:.1f} s")
    assert s["job"].startswith("reprocess-") and s["run_id"] == 1
    assert s["blocks_done_before"] == done_at_kill and s["blocks_computed"] == n_sel_blocks - done_at_kill

    new, old, b = open_catalog(cat), open_catalog(reference), open_catalog(reference_b)
    assert sorted(new.variables) == sorted(old.variables)
    for v in new.data_vars:
        x, y, z = new[v].values, old[v].values, b[v].values
        assert np.array_equal(x[~sel].view(np.uint8), y[~sel].view(np.uint8)), f"{v}: rows outside the selection changed"
        if v != "run_id":
            assert np.array_equal(x[sel].view(np.uint8), z[sel].view(np.uint8)), f"{v}: reprocessed rows differ"
    assert (new["run_id"].values[sel] == 1).all() and (new["run_id"].values[~sel] == 0).all()
    assert np.array_equal(new["z_grid"].values, old["z_grid"].values)

    # the same command again: nothing to do (the selection was frozen when the job started, even though the
    # expression is evaluated on a catalog that has changed); the main job's command changes nothing either
    s = run_catalog(small_survey, cat, model=tiny_model_b, cluster="inprocess", mc_samples=T, where=where,
                    reprocess=True, **QUIET)
    assert s.job == job_name and s.blocks_computed == 0 and s.blocks_done_before == n_sel_blocks
    s = run_catalog(small_survey, cat, model=tiny_model, cluster="inprocess", mc_samples=T, **QUIET)
    assert s.job == "main" and s.blocks_computed == 0
    assert np.array_equal(open_catalog(cat)["z"].values, new["z"].values, equal_nan=True)

    st = catalog_status(cat, verify=True)
    job = st["jobs"][job_name]
    assert job["blocks_done"] == n_sel_blocks and job["objects_done"] == int(sel.sum()) and not job["not_verified"]
    assert st["jobs"]["main"]["blocks_done"] == N_BLOCKS and not st["jobs"]["main"]["not_verified"]
    assert st["rows_by_run"] == {0: int((~sel).sum()), 1: int(sel.sum())}
    text = cli("status", cat).stdout
    assert "rows by run: run 0:" in text and "selection where=z_true > 2.0" in text


def _check_reprocessed(cat: Path, reference: Path, reference_b: Path, sel: np.ndarray, run_id: int | None) -> None:
    """Rows outside ``sel`` are bit-identical to ``reference``; rows in it to ``reference_b`` (but run_id)."""
    new, old, b = open_catalog(cat), open_catalog(reference), open_catalog(reference_b)
    for v in new.data_vars:
        x, y, z = new[v].values, old[v].values, b[v].values
        assert np.array_equal(x[~sel].view(np.uint8), y[~sel].view(np.uint8)), f"{v}: rows outside the selection changed"
        if v != "run_id":
            assert np.array_equal(x[sel].view(np.uint8), z[sel].view(np.uint8)), f"{v}: reprocessed rows differ"
    if run_id is not None:
        assert (new["run_id"].values[sel] == run_id).all()


def test_reprocess_refuses_a_block_damaged_outside_its_rows(reference, reference_b, small_survey, tiny_model,
                                                            tiny_model_b, tmp_path):
    """A reprocessing job cannot repair rows it does not own: it fails that block with what to do; the main job
    repairs it; the reprocessing job then resumes with just that block."""
    cat = copy_catalog(reference, tmp_path / "cat.zarr")
    z3 = cat / "z" / "c" / "3"
    z3.write_bytes(z3.read_bytes()[:20])
    where = "z_true > 2.0"
    sel = open_catalog(reference)["z_true"].values > 2.0
    n_sel_blocks = len(np.unique(np.flatnonzero(sel) // BLOCK))
    kw = dict(cluster="inprocess", mc_samples=T, **QUIET)
    s = run_catalog(small_survey, cat, model=tiny_model_b, where=where, reprocess=True, **kw)
    assert [f["block"] for f in s.blocks_failed] == [3] and s.blocks_computed == n_sel_blocks - 1
    assert "cannot be read" in s.blocks_failed[0]["reason"] and "run the main job" in s.blocks_failed[0]["reason"]
    s = run_catalog(small_survey, cat, model=tiny_model, **kw)  # repairs block 3 (and only it)
    assert s.job == "main" and s.blocks_computed == 1 and s.ok
    s = run_catalog(small_survey, cat, model=tiny_model_b, where=where, reprocess=True, **kw)
    assert s.ok and s.blocks_computed == 1 and s.blocks_done_before == n_sel_blocks - 1
    _check_reprocessed(cat, reference, reference_b, sel, s.run_id)


def test_reprocess_killed_inside_a_merge_resumes(reference, reference_b, small_survey, tiny_model_b, tmp_path):
    """SIGKILL while a reprocessing job is merging its rows into a block (its intent recorded and the block
    rewritten, its marker not yet: fault point ``after-write``): the resumed job recognises its own unfinished
    merge from the intent and completes it."""
    where = "z_true > 2.0"
    sel = open_catalog(reference)["z_true"].values > 2.0
    cat = copy_catalog(reference, tmp_path / "cat.zarr")
    args = run_args(small_survey, cat, tiny_model_b, "--cluster", "inprocess", "--where", where, "--reprocess")
    info = run_with_fault(args, tmp_path / "killed.log", "after-write:kill:skip=1")  # in the 2nd merged block
    assert info["returncode"] == -signal.SIGKILL
    torn = []
    for p in (cat / "_markers").glob("reprocess-*/intent-*.json"):
        b = int(p.stem.split("-")[1])
        lo, hi = b * BLOCK, min(N, (b + 1) * BLOCK)
        assert not p.with_name(f"block-{b:06d}.json").exists()
        changed = [k for k, v in read_block(cat, lo, hi).items()
                   if not np.array_equal(v.view(np.uint8), read_block(reference, lo, hi, [k])[k].view(np.uint8))]
        torn.append((b, len(changed)))
    assert len(torn) == 1 and torn[0][1] > 0, torn  # rows replaced, no marker: only the intent can vouch for them
    r, t = timed_cli(*args)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = summary_of(r.stdout)
    print(f"SIGKILL inside the merge of block {torn[0][0]} ({torn[0][1]} variables written): resume computed {s['blocks_computed']} blocks in {t:.1f} s")
    assert not s["blocks_failed"]
    _check_reprocessed(cat, reference, reference_b, sel, s["run_id"])
    assert not list((cat / "_markers").glob("reprocess-*/intent-*.json"))


def test_reprocess_objects_and_chunks(reference, reference_b, small_survey, tiny_model_b, tmp_path):
    """--objects (a job keyed by the file's content) and --chunks (whole blocks, written whole)."""
    cat = copy_catalog(reference, tmp_path / "cat.zarr")
    ids = open_catalog(reference)["object_id"].values
    pick = np.array([3, 4, 5, 40, 41, 299])
    (tmp_path / "ids.txt").write_text("# objects to redo\n" + "\n".join(str(i) for i in ids[pick]) + "\n")
    kw = dict(cluster="inprocess", mc_samples=T, reprocess=True, **QUIET)
    s = run_catalog(small_survey, cat, model=tiny_model_b, objects=str(tmp_path / "ids.txt"), **kw)
    assert s.ok and s.blocks_computed == 3 and s.run_id == 1
    sel = np.zeros(N, bool)
    sel[pick] = True
    _check_reprocessed(cat, reference, reference_b, sel, 1)
    # the same file again: done; a file with other content: a new job (run_id 2)
    s = run_catalog(small_survey, cat, model=tiny_model_b, objects=str(tmp_path / "ids.txt"), **kw)
    assert s.blocks_computed == 0 and s.run_id == 1
    s = run_catalog(small_survey, cat, model=tiny_model_b, chunks="2:4", **kw)
    assert s.ok and s.blocks_computed == 2 and s.run_id == 2
    sel[64:128] = True
    _check_reprocessed(cat, reference, reference_b, sel, None)
    rid = open_catalog(cat)["run_id"].values
    assert (rid[64:128] == 2).all() and (rid[pick[pick < 64]] == 1).all()
    m = json.loads((cat / "_markers" / s.job / "block-000002.json").read_text())
    assert m["whole"] and m["rows_hash"] is None  # a selection covering whole blocks is written whole


def test_appended_input_computes_only_new_and_changed_blocks(small_survey, tiny_model, tmp_path):
    """Appending rows to the input: the catalog grows; only the new block and the old last block (whose bounds
    changed) are computed; blocks whose input chunk files were rewritten but whose bytes did not change are kept."""
    import zarr

    from survey_infer.io.survey_store import append_survey

    store = tmp_path / "in.zarr"
    shutil.copytree(small_survey, store)
    cat = tmp_path / "cat.zarr"
    kw = dict(model=tiny_model, cluster="inprocess", mc_samples=T, block_objects=BLOCK, **QUIET)
    assert run_catalog(store, cat, **kw).blocks_computed == N_BLOCKS
    g = zarr.open_group(str(store), mode="r")
    names = [k for k in g.array_keys() if g[k].metadata.dimension_names[0] == "object"]
    extra = {k: g[k][0:40] for k in names}
    extra["object_id"] = extra["object_id"] + 10**9
    w = append_survey(store, 40)
    w.write(0, extra)
    w.commit()
    s = run_catalog(store, cat, **kw)
    assert s.ok and s.n_objects == N + 40 and s.blocks_computed == 2 and s.blocks_done_before == N_BLOCKS - 1
    fresh = tmp_path / "fresh.zarr"
    run_catalog(store, fresh, **kw)
    assert_catalogs_identical(fresh, cat)


def _open_plainly(cat: Path) -> subprocess.CompletedProcess:
    """A user's first contact: ``xarray.open_zarr(catalog)`` with default warning filters, in a fresh process."""
    import sys

    code = ("import sys, xarray as xr\nds = xr.open_zarr(sys.argv[1])\n"
            "print(ds.sizes['object'], ds.attrs['runs'][-1]['status'], len(ds.data_vars))")
    return subprocess.run([sys.executable, "-c", code, str(cat)], capture_output=True, text=True, timeout=120)


def test_plain_xarray_open_zarr_is_silent_and_old_catalogs_are_migrated(reference, small_survey, tiny_model,
                                                                        tmp_path):
    """Before: a consolidated-metadata warning and 'Object at _markers / _lock.json is not recognized' warnings.
    The catalog keeps its consolidated metadata current (every run-record update), so a plain open reads one
    document and never lists the bookkeeping; a catalog without it gains it on its next run."""
    r = _open_plainly(reference)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.split()[:2] == [str(N), "complete"]
    cat = copy_catalog(reference, tmp_path / "cat.zarr")
    meta = json.loads((cat / "zarr.json").read_text())
    meta.pop("consolidated_metadata")  # as an older version wrote it
    (cat / "zarr.json").write_text(json.dumps(meta))
    r = _open_plainly(cat)
    assert "not recognized as a component of a Zarr hierarchy" in r.stderr
    s = run_catalog(small_survey, cat, model=tiny_model, cluster="inprocess", mc_samples=T, **QUIET)
    assert s.ok and s.blocks_computed == 0
    r = _open_plainly(cat)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert_catalogs_identical(reference, cat)
