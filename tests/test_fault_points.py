"""Faults injected at named points (``SURVEY_INFER_FAULT``, :mod:`survey_infer.pipeline.faults`): transient I/O
errors retried by Dask with a bound while data errors fail their block with the reason, a late worker with other
software refused in the task, a full disk (ENOSPC) giving one clear line with the lock left recoverable, and the
hardware class recorded per marker with mixed hardware flagged by ``status``."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zarr

from conftest import assert_catalogs_identical, cli
from survey_infer.pipeline import worker as worker_mod
from survey_infer.pipeline.faults import FAULT_ENV, FAULT_STATE_ENV, fault_hits, fault_point
from survey_infer.pipeline.lock import LOCK, LOCK_DIR, lock_record
from survey_infer.pipeline.resume import input_chunk_rows
from survey_infer.pipeline.runner import TRANSIENT_RETRIES, run_catalog
from survey_infer.provenance import software_versions
from survey_infer.pipeline.status import catalog_status
from survey_infer.pipeline.worker import RunContext, process_block
from survey_infer.provenance import hardware, hardware_label

from resume_helpers import BLOCK, N_BLOCKS, QUIET, T, reference_run, run_args, summary_of


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_survey, tiny_model) -> Path:
    out = tmp_path_factory.mktemp("fp-ref") / "ref.zarr"
    assert reference_run(small_survey, out, tiny_model).ok
    return out


@pytest.fixture(scope="module")
def client():
    """A real Dask scheduler and one worker (threads, so that the test's environment and patches reach it)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
            Client(lc) as c:
        yield c


@pytest.fixture
def faults(monkeypatch, tmp_path):
    """Set ``SURVEY_INFER_FAULT`` (hits counted in a state folder); short retry back-off."""
    state = tmp_path / "fault-state"
    monkeypatch.setenv(FAULT_STATE_ENV, str(state))
    monkeypatch.setattr(worker_mod, "TRANSIENT_BACKOFF_S", 0.05)

    def set_(spec: str) -> Path:
        monkeypatch.setenv(FAULT_ENV, spec)
        return state

    return set_


def test_fault_point_hits_are_counted_across_processes(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_STATE_ENV, str(tmp_path))
    monkeypatch.setenv(FAULT_ENV, "write:enospc:skip=1:times=2;read:corrupt")
    fault_point("write", "/x")  # hit 0: skipped
    code = ("from survey_infer.pipeline.faults import fault_point\ntry:\n    fault_point('write', '/data/c/0')\n"
            "except OSError as e:\n    print(e.errno, e.filename)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["28", "/data/c/0"]  # hit 1, in another process
    with pytest.raises(OSError):
        fault_point("write", "/x")  # hit 2
    fault_point("write", "/x")  # hit 3: past `times`
    with pytest.raises(ValueError, match="injected data error"):
        fault_point("read")
    fault_point("marker")  # a point not named: nothing
    assert fault_hits("write", tmp_path) == 4 and fault_hits("read", tmp_path) == 1
    assert fault_hits("marker", tmp_path) == 0


def test_transient_error_reaches_dask_retries_and_the_block_completes(reference, small_survey, tiny_model, client,
                                                                       faults, tmp_path):
    """An NFS hiccup (EIO) on one block's input read: the task raises it to Dask, which retries the task; the
    run completes with no failure and the catalog is the uninterrupted one. (Before: the block failed for good.)"""
    state = faults("read:eio:skip=3:times=1")
    cat = tmp_path / "cat.zarr"
    s = run_catalog(small_survey, cat, model=tiny_model, client=client, mc_samples=T, block_objects=BLOCK, **QUIET)
    print(f"read reached {fault_hits('read', state)} times for {N_BLOCKS} blocks; failed: {s.blocks_failed}")
    assert s.ok and s.blocks_computed == N_BLOCKS, s.blocks_failed
    assert fault_hits("read", state) == N_BLOCKS + 1  # the failing attempt and its retry
    assert not list((cat / "_failures").rglob("*.json")) if (cat / "_failures").exists() else True
    assert_catalogs_identical(reference, cat)


def test_persistent_transient_error_is_bounded_and_data_errors_are_not_retried(small_survey, tiny_model, client,
                                                                                faults, tmp_path):
    cat = tmp_path / "cat.zarr"
    kw = dict(model=tiny_model, mc_samples=T, block_objects=BLOCK, **QUIET)
    # block 0 fails on every attempt: retried TRANSIENT_RETRIES times, then failed with its reason
    state = faults(f"read@0:estale:times={TRANSIENT_RETRIES + 1}")
    s = run_catalog(small_survey, cat, client=client, **kw)
    assert [f["block"] for f in s.blocks_failed] == [0] and s.blocks_computed == N_BLOCKS - 1
    reason = s.blocks_failed[0]["reason"]
    print(reason)
    assert "transient I/O error" in reason and f"still failing after {TRANSIENT_RETRIES} retries" in reason
    assert str(small_survey) in reason
    assert fault_hits("read@0", state) == TRANSIENT_RETRIES + 1  # bounded: the first attempt and 3 retries
    # the same in-process (no Dask): the same bound
    shutil.rmtree(state)
    s = run_catalog(small_survey, cat, cluster="inprocess", chunks="0:1", reprocess=True, **kw)
    assert not s.ok and fault_hits("read@0", state) == TRANSIENT_RETRIES + 1
    assert f"still failing after {TRANSIENT_RETRIES} retries" in s.blocks_failed[0]["reason"]
    # bad data: failed at once, with its reason, never retried
    state = faults("read@0:corrupt")
    shutil.rmtree(state, ignore_errors=True)
    s = run_catalog(small_survey, cat, client=client, **kw)
    assert [f["block"] for f in s.blocks_failed] == [0] and "injected data error" in s.blocks_failed[0]["reason"]
    assert fault_hits("read@0", state) == 1
    st = catalog_status(cat)["jobs"]["main"]
    assert st["blocks_failed"] == 1 and "injected data error" in st["failures"][0]["reason"]


def _ctx(cat: Path, store: Path, model: Path, **kw) -> RunContext:
    from survey_infer.model.checkpoint import load_model

    m = load_model(model)
    attrs = dict(zarr.open_group(str(cat), mode="r").attrs)
    passthrough = tuple(k for k in ("t_exp", "z_true", "logmstar_true", "logsfr_true", "is_passive", "mag_h", "kind")
                        if k in zarr.open_group(str(store), mode="r"))
    return RunContext(catalog=str(cat), input_store=str(store), job="main", epoch=kw.pop("epoch"), run_id=0,
                      fingerprint=attrs["fingerprint"], model_dir=str(model), model_sha256=m.sha256, mc_samples=T,
                      seed=0, keep_pz=True, passthrough=passthrough, chunk_rows=input_chunk_rows(store), **kw)


def test_late_worker_with_other_software_writes_nothing(reference, small_survey, tiny_model, tmp_path):
    """A worker that joins after the model plugin was registered, running other software: Dask only logs the
    plugin's setup error there, so the task itself must refuse (before: it loaded the model with no versions
    to check and wrote the block under the driver's fingerprint)."""
    from distributed import Client, LocalCluster

    from survey_infer.pipeline.lock import LeaseLock
    from survey_infer.pipeline.worker import ModelPlugin

    cat = tmp_path / "cat.zarr"
    shutil.copytree(reference, cat)
    lock = LeaseLock(cat, lease_s=30)
    epoch = lock.acquire()
    driver = {**software_versions(), "torch": "0.0.0-driver"}  # the driver's torch differs from this worker's
    ctx = _ctx(cat, small_survey, tiny_model, epoch=epoch, lock_owner=lock.owner, versions=driver)
    marker = cat / "_markers" / "main" / "block-000003.json"
    before = marker.read_bytes()
    z_before = (cat / "z" / "c" / "3").read_bytes()
    worker_mod._LOCAL_MODELS.clear()
    try:
        with LocalCluster(n_workers=0, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
                Client(lc) as c:
            c.register_plugin(ModelPlugin(ctx.model_dir, ctx.model_sha256, driver), name="late-test")
            lc.scale(1)  # the late worker
            c.wait_for_workers(1, timeout=60)
            rec = c.submit(process_block, 3, 96, 128, ctx, pure=False).result()
    finally:
        lock.release()
    print(rec["reason"])
    assert not rec["ok"] and "runs different software than the driver" in rec["reason"]
    assert "torch driver=0.0.0-driver" in rec["reason"]
    assert marker.read_bytes() == before and (cat / "z" / "c" / "3").read_bytes() == z_before
    assert_catalogs_identical(reference, cat)


def test_task_of_another_owner_with_the_same_epoch_writes_nothing(reference, small_survey, tiny_model, tmp_path):
    cat = tmp_path / "cat.zarr"
    shutil.copytree(reference, cat)
    from survey_infer.pipeline.lock import LeaseLock

    lock = LeaseLock(cat, lease_s=30)
    epoch = lock.acquire()
    marker = cat / "_markers" / "main" / "block-000003.json"
    before = marker.read_bytes()
    try:
        rec = process_block(3, 96, 128, _ctx(cat, small_survey, tiny_model, epoch=epoch, lock_owner="node-b:1:cafe"))
        assert not rec["ok"] and rec["stale"] and "not by this task's run" in rec["reason"]
        assert marker.read_bytes() == before
        rec = process_block(3, 96, 128, _ctx(cat, small_survey, tiny_model, epoch=epoch, lock_owner=lock.owner))
        assert rec["ok"], rec
    finally:
        lock.release()


def test_full_disk_gives_one_line_and_the_run_resumes(reference, small_survey, tiny_model, tmp_path):
    """ENOSPC injected (1) on block writes after two blocks, (2) on the final run record and on the lock
    release. Each gives one clear line naming the path and what to do, no traceback; the lock is released or
    left to be taken over at once (no empty claim or temporary file); the same command then completes the
    catalog bit-identically."""
    cat = tmp_path / "cat.zarr"
    args = run_args(small_survey, cat, tiny_model, "--cluster", "inprocess")
    r = cli(*args, env={FAULT_ENV: "write:enospc:skip=2:times=1000"})
    print(r.stdout[-1500:], r.stderr[-1500:])
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    s = summary_of(r.stdout)
    assert s["blocks_computed"] == 2 and len(s["blocks_failed"]) == N_BLOCKS - 2
    reason = s["blocks_failed"][0]["reason"]
    assert "\n" not in reason and f"cannot write {cat}" in reason and "the file system is full [ENOSPC]" in reason
    assert "Free space on it and run the same command again" in reason
    assert lock_record(cat)["released"] and not (cat / (LOCK + ".claim")).exists()

    r = cli(*args, env={FAULT_ENV: "run-record:enospc;lock-release:enospc"})
    print(r.stdout[-800:], r.stderr[-800:])
    assert r.returncode == 2 and "Traceback" not in r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and f"cannot write {cat / 'zarr.json'}" in err[0] and "run the same command again" in err[0]
    assert "the lock is left to be taken over by the next run" in r.stdout
    assert not lock_record(cat)["released"]  # left, but its holder's death is provable: taken over at once
    assert not (cat / (LOCK + ".claim")).exists() and not [p for p in (cat / LOCK_DIR).iterdir()
                                                             if p.name.startswith(".")]
    t0 = time.time()
    r = cli(*args)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    s = summary_of(r.stdout)
    assert "took over the catalog lock" in r.stdout and time.time() - t0 < 60
    assert s["blocks_done_before"] == N_BLOCKS and s["blocks_computed"] == 0
    assert_catalogs_identical(reference, cat)
    assert lock_record(cat)["released"]


def test_markers_record_the_hardware_and_status_flags_a_mix(reference, tmp_path):
    cat = tmp_path / "cat.zarr"
    shutil.copytree(reference, cat)
    here = hardware("cpu")
    for p in (cat / "_markers" / "main").glob("block-*.json"):
        assert json.loads(p.read_text())["hardware"] == here
    st = catalog_status(cat)
    assert st["hardware"] == {hardware_label(here): list(range(N_BLOCKS))}
    assert "MIXED HARDWARE" not in cli("status", cat).stdout
    # block 3 as a requeue onto an older partition would have written it
    p = cat / "_markers" / "main" / "block-000003.json"
    m = json.loads(p.read_text())
    other = "AVX2" if here["cpu_capability"] != "AVX2" else "DEFAULT"
    m["hardware"] = {**here, "cpu_capability": other}
    p.write_text(json.dumps(m))
    st = catalog_status(cat)
    assert st["hardware"][f"{here['machine']} {other}"] == [3] and len(st["hardware"]) == 2
    text = cli("status", cat).stdout
    print(text)
    assert "MIXED HARDWARE" in text and f"1 block(s) on {here['machine']} {other} (e.g. block 3)" in text


@pytest.mark.gpu
def test_hardware_names_the_gpu():
    import torch

    hw = hardware("cuda")
    assert hw["gpu"] == torch.cuda.get_device_name(0) and hw["cuda"] == torch.version.cuda
    assert hw["cudnn"] == torch.backends.cudnn.version() and "." in hw["compute_capability"]
    assert hw["gpu"] in hardware_label(hw) and "CUDA" in hardware_label(hw)


def _mount_tmpfs(where: Path, size_kb: int, remount: bool = False) -> bool:
    opts = f"{'remount,' if remount else ''}size={size_kb}k"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0


def test_a_real_full_file_system_mid_run(reference, small_survey, tiny_model, tmp_path):
    """The catalog on a tmpfs of 60% of the catalog's size (needs permission to mount; skipped otherwise): the
    run ends with one-line messages and no traceback, nothing half-made of the lock; once the file system is
    larger the same command completes the catalog bit-identically."""
    fs = tmp_path / "fs"
    fs.mkdir()
    size_kb = sum(4 * -(-p.stat().st_size // 4096) for p in reference.rglob("*") if p.is_file()) * 6 // 10
    if not _mount_tmpfs(fs, size_kb):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        cat = fs / "cat.zarr"
        args = run_args(small_survey, cat, tiny_model, "--cluster", "inprocess")
        r = cli(*args)
        print(f"tmpfs of {size_kb} kB: exit {r.returncode}\n{r.stdout[-1200:]}\n{r.stderr[-600:]}")
        assert r.returncode in (1, 2) and "Traceback" not in r.stdout + r.stderr
        assert "the file system is full [ENOSPC]" in r.stdout + r.stderr
        for line in (r.stdout + r.stderr).splitlines():
            if "ENOSPC" in line:
                assert "cannot write /" in line and "Free space on it and run the same command again" in line, line
        if (cat / LOCK_DIR).exists():
            assert not [p for p in (cat / LOCK_DIR).iterdir() if p.name.startswith(".")]  # no temp files
            rec = lock_record(cat)
            assert rec is None or rec.get("owner")  # a whole ticket or none
        assert not (cat / (LOCK + ".claim")).exists()
        assert _mount_tmpfs(fs, 16 * size_kb, remount=True)  # space freed
        r = cli(*args)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert_catalogs_identical(reference, cat)
        assert lock_record(cat)["released"]
    finally:
        subprocess.run(["umount", str(fs)], capture_output=True)
