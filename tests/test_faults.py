"""Faults with real processes: a worker process SIGKILLed mid-run, a corrupt input chunk, two runs on one
catalog, a stale lock on "another node", and a late write from an orphaned task of an older run epoch."""
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
import zarr

from conftest import assert_catalogs_identical, cli, copy_store
from survey_infer.catalog.store import open_catalog
from survey_infer.pipeline.resume import input_chunk_rows
from survey_infer.pipeline.runner import run_catalog
from survey_infer.pipeline.status import catalog_status
from survey_infer.pipeline.worker import RunContext, process_block

from resume_helpers import (N_BLOCKS, QUIET, T, markers, reference_run, run_args, start, summary_of,
                            wait_for)


def stop(proc: subprocess.Popen) -> None:
    """Make sure a background run and the processes it started are gone (by pid)."""
    if proc.poll() is None:
        kids = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        proc.wait(timeout=30)
        for k in kids:
            try:
                k.kill()
            except psutil.Error:
                pass


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_survey, tiny_model) -> Path:
    out = tmp_path_factory.mktemp("faults-ref") / "ref.zarr"
    s = reference_run(small_survey, out, tiny_model)
    assert s.ok
    return out


def write_lock(cat: Path, **rec) -> None:
    (cat / "_lock.json").write_text(json.dumps(rec))


# ---- tests -----------------------------------------------------------------------------------------------------
def test_worker_sigkill_mid_run_gives_identical_catalog(reference, small_survey, tiny_model, tmp_path, monkeypatch):
    cat = tmp_path / "cat.zarr"
    # the worker running block 1 SIGKILLs itself once, after the block's marker and before returning its result
    state = tmp_path / "fault-state"
    monkeypatch.setenv("SURVEY_INFER_FAULT", "after-marker@1:kill")
    monkeypatch.setenv("SURVEY_INFER_FAULT_STATE", str(state))
    proc = start(run_args(small_survey, cat, tiny_model, "--workers", "2"), tmp_path / "run.log")
    try:
        proc.wait(timeout=300)
    finally:
        stop(proc)
    out = (tmp_path / "run.log").read_text()
    assert proc.returncode == 0, out[-4000:]
    assert len(list(state.glob("after-marker@1.hit-*"))) == 2  # killed once, then Dask ran the task again
    s = summary_of(out)
    print(f"the worker of block 1 SIGKILLed itself; run completed {s['blocks_computed']} blocks in "
          f"{s['seconds']:.1f} s, no failure")
    assert s["blocks_computed"] == N_BLOCKS and not s["blocks_failed"]
    assert_catalogs_identical(reference, cat)


def test_corrupt_input_chunk_fails_its_block_then_only_it_is_recomputed(reference, small_survey, tiny_model,
                                                                         tmp_path):
    store = copy_store(small_survey, tmp_path / "in.zarr")
    chunk = store / "flux" / "c" / "2" / "0"  # input rows 128..192 = block 2 of 64
    good = chunk.read_bytes()
    chunk.write_bytes(b"this is not a compressed chunk" * 8)
    cat = tmp_path / "cat.zarr"
    args = run_args(store, cat, tiny_model, "--workers", "2", "--block-objects", "64")
    r = cli(*args)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    s = summary_of(r.stdout)
    assert s["blocks_computed"] == 4 and [f["block"] for f in s["blocks_failed"]] == [2]
    assert "rows 128..192" in s["blocks_failed"][0]["reason"]
    st = catalog_status(cat)["jobs"]["main"]
    assert st["blocks_done"] == 4 and st["blocks_failed"] == 1 and st["objects_left"] == 64
    assert "rows 128..192" in st["failures"][0]["reason"]
    text = cli("status", cat).stdout
    assert "FAILED block 2: RuntimeError: cannot read input rows 128..192" in text and "time left" in text

    chunk.write_bytes(good)  # the input is fixed (the file is new: its stamp changed)
    t0 = time.time()
    r = cli(*args, "--cluster", "inprocess")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = summary_of(r.stdout)
    print(f"after fixing the input: {s['blocks_computed']} block recomputed in {time.time() - t0:.1f} s")
    assert s["blocks_done_before"] == 4 and s["blocks_computed"] == 1 and not s["blocks_failed"]
    assert_catalogs_identical(reference, cat)
    assert not list((cat / "_failures").glob("main/*.json"))


def test_second_concurrent_run_is_refused(reference, small_survey, tiny_model, tmp_path, monkeypatch):
    cat = tmp_path / "cat.zarr"
    args = run_args(small_survey, cat, tiny_model, "--workers", "2")
    # the first run holds at its first block result (fault point), lock taken and catalog created
    state = tmp_path / "fault-state"
    monkeypatch.setenv("SURVEY_INFER_FAULT", "block-done:pause")
    monkeypatch.setenv("SURVEY_INFER_FAULT_STATE", str(state))
    proc = start(args, tmp_path / "first.log")
    monkeypatch.delenv("SURVEY_INFER_FAULT")
    try:
        wait_for(lambda: (state / "block-done.hit-000000").exists(), 180, "the first run's first result", proc)
        st = catalog_status(cat)
        r = cli(*run_args(small_survey, cat, tiny_model, "--cluster", "inprocess"))
        first_still_running = proc.poll() is None
        (state / "block-done.go").touch()
        proc.wait(timeout=300)
    finally:
        stop(proc)
    assert first_still_running
    assert r.returncode == 2, r.stdout + r.stderr
    assert "is being written by another run" in r.stderr and f":{proc.pid}:" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert st["lock"]["state"] == "held by a live run"
    assert proc.returncode == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert_catalogs_identical(reference, cat)


def test_stale_lock_of_another_node_is_taken_over(reference, small_survey, tiny_model, tmp_path):
    cat = tmp_path / "cat.zarr"
    shutil.copytree(reference, cat)
    other = {"owner": "node-b:4242:0badf00d", "identity": {"host": "node-b", "pid": 4242, "boot_id": "x",
                                                           "pid_ns": "pid:[1]", "start": 1.0}, "released": False}
    # a holder on another node whose heartbeat is older than its lease: dead, taken over at once
    write_lock(cat, **other, epoch=7, heartbeat=time.time() - 10, lease_s=3)
    r = cli(*run_args(small_survey, cat, tiny_model, "--cluster", "inprocess", "--lease-seconds", "3"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert summary_of(r.stdout)["epoch"] == 8 and "took over the catalog lock from node-b:4242" in r.stdout
    lock = json.loads((cat / "_lock.json").read_text())
    assert lock["epoch"] == 8 and lock["released"] and lock["taken_over"]
    # a holder whose last heartbeat is fresh but which never beats again (killed just after beating): the run
    # watches the heartbeat, and takes over when the lease expires
    write_lock(cat, **other, epoch=9, heartbeat=time.time(), lease_s=3)
    t0 = time.time()
    r = cli(*run_args(small_survey, cat, tiny_model, "--cluster", "inprocess", "--lease-seconds", "3"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert summary_of(r.stdout)["epoch"] == 10
    assert time.time() - t0 > 2.5  # it waited for the lease
    assert_catalogs_identical(reference, cat)


def test_orphaned_task_of_an_older_epoch_cannot_write(reference, small_survey, tiny_model, tiny_model_b, tmp_path):
    cat = tmp_path / "cat.zarr"
    shutil.copytree(reference, cat)
    g = zarr.open_group(str(cat), mode="r")
    attrs = dict(g.attrs)
    old_epoch = json.loads((cat / "_lock.json").read_text())["epoch"]
    # a newer run takes the catalog over (nothing left to compute)
    s = run_catalog(small_survey, cat, model=tiny_model, cluster="inprocess", mc_samples=T, **QUIET)
    assert s.epoch == old_epoch + 1 and s.blocks_computed == 0
    marker = cat / "_markers" / "main" / "block-000003.json"
    before = marker.read_bytes()
    # an orphan of the older run (here computing with other weights, so that a write would show) wakes up
    from survey_infer.model.checkpoint import load_model

    mb = load_model(tiny_model_b)
    passthrough = tuple(k for k in ("t_exp", "z_true", "logmstar_true", "logsfr_true", "is_passive", "mag_h", "kind")
                        if k in zarr.open_group(str(small_survey), mode="r"))
    ctx = RunContext(catalog=str(cat), input_store=str(small_survey), job="main", epoch=old_epoch, run_id=0,
                     fingerprint=attrs["fingerprint"], model_dir=str(tiny_model_b), model_sha256=mb.sha256,
                     mc_samples=T, seed=0, keep_pz=True, passthrough=passthrough,
                     chunk_rows=input_chunk_rows(small_survey))
    rec = process_block(3, 96, 128, ctx)
    assert not rec["ok"] and rec["stale"], rec
    assert "StaleEpochError" in rec["reason"] and f"epoch {old_epoch + 1} now owns" in rec["reason"]
    assert marker.read_bytes() == before
    assert not (cat / "_failures").exists() or not list((cat / "_failures").rglob("*.json"))
    assert_catalogs_identical(reference, cat)
    # the same task with the current epoch does write (the refusal above was the epoch, nothing else)
    ctx_now = RunContext(**{**ctx.__dict__, "epoch": old_epoch + 1})
    rec = process_block(3, 96, 128, ctx_now)
    assert rec["ok"], rec
    assert not np.array_equal(open_catalog(cat)["z_mean"].values[96:128], open_catalog(reference)["z_mean"].values[96:128])


def test_output_that_is_not_a_catalog_is_refused(small_survey, tiny_model, tmp_path):
    out = tmp_path / "mydata"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    from survey_infer.pipeline.runner import RunError

    with pytest.raises(RunError, match="not a survey-infer catalog"):
        run_catalog(small_survey, out, model=tiny_model, cluster="inprocess", mc_samples=T, **QUIET)
    assert (out / "notes.txt").read_text() == "precious" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_hung_driver_loses_its_lock_to_a_new_run(reference, small_survey, tiny_model, tmp_path):
    """A driver that stops beating (SIGSTOP: a hung node) is taken over once its lease expires; when it wakes
    up it finds the lock gone, stops submitting and exits non-zero; the catalog is the uninterrupted one."""
    cat = tmp_path / "cat.zarr"
    a = start(run_args(small_survey, cat, tiny_model, "--workers", "2", "--lease-seconds", "3",
                       "--max-in-flight", "2"), tmp_path / "a.log")
    try:
        wait_for(lambda: markers(cat) >= 2, 180, "2 done blocks", a)
        os.kill(a.pid, signal.SIGSTOP)
        done_at_stop = markers(cat)
        wait_for(lambda: time.time() - json.loads((cat / "_lock.json").read_text())["heartbeat"] > 3.5, 30,
                 "the lease to expire", poll=0.1)
        r = cli(*run_args(small_survey, cat, tiny_model, "--cluster", "inprocess", "--lease-seconds", "3"))
        os.kill(a.pid, signal.SIGCONT)
        a.wait(timeout=120)
    finally:
        if a.poll() is None:
            os.kill(a.pid, signal.SIGCONT)
        stop(a)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = summary_of(r.stdout)
    assert "took over the catalog lock" in r.stdout and s["epoch"] == 2
    log = (tmp_path / "a.log").read_text()
    print(f"driver stopped after {done_at_stop}/{N_BLOCKS} blocks; the new run found {s['blocks_done_before']} done "
          f"and computed {s['blocks_computed']}; the woken driver exited {a.returncode}")
    assert a.returncode == 1, log[-3000:]
    assert "lost the catalog lock" in log
    assert_catalogs_identical(reference, cat)
    lock = json.loads((cat / "_lock.json").read_text())
    assert lock["epoch"] == 2 and lock["released"]
