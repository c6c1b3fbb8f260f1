"""Shared and dying clusters (issue 16): real ``dask scheduler`` / ``dask worker`` processes started here (stopped
by PID), the ``survey-infer`` CLI in subprocesses, the tiny real model, small simulated surveys.

Kinds: task keys that collide across runs on a shared scheduler; a block counted done without its own marker; a
driver that waits forever when its scheduler or its workers are gone (and keeps renewing the lock); failures the
driver sees never recorded; options without range checks; start-up errors as tracebacks; a scheduler file not
written yet.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_catalogs_identical, cli
from resume_helpers import QUIET
from survey_infer.pipeline.runner import RunError, run_catalog
from survey_infer.io.simulated import simulate_survey

T, BLOCK = 4, 16
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def args(store: Path, cat: Path, model: Path, *extra) -> list[str]:
    return ["run", "--input", str(store), "--output", str(cat), "--model", str(model), "--mc-samples", str(T),
            "--block-objects", str(BLOCK), "--no-progress", *map(str, extra)]


def reference(store: Path, out: Path, model: Path) -> Path:
    s = run_catalog(store, out, model=model, cluster="inprocess", mc_samples=T, seed=0, block_objects=BLOCK, **QUIET)
    assert s.ok
    return out


def n_markers(cat: Path) -> int:
    return len(list((cat / "_markers" / "main").glob("block-*.json")))


class Cluster:
    """An external Dask scheduler (scheduler file) and workers: processes of this test, stopped by PID."""

    def __init__(self, folder: Path, scheduler_env: dict | None = None, start: bool = True):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.file = folder / "scheduler.json"
        self.procs: list[subprocess.Popen] = []
        self.scheduler: subprocess.Popen | None = None
        self.scheduler_env = scheduler_env or {}
        if start:
            self.start_scheduler()

    def start_scheduler(self) -> None:
        log = open(self.folder / "scheduler.log", "w")
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file", str(self.file), "--port", "0",
             "--dashboard-address", ":0"], stdout=log, stderr=subprocess.STDOUT, env={**ENV, **self.scheduler_env})
        self.procs.append(self.scheduler)
        wait_for(lambda: self.file.exists() and "address" in self.file.read_text(), 60, "the scheduler file")

    def add_worker(self, name: str = "w") -> subprocess.Popen:
        log = self.folder / f"{name}.log"
        p = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(self.file),
                              "--nthreads", "1", "--no-nanny", "--memory-limit", "2GiB"],
                             stdout=open(log, "w"), stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
        self.procs.append(p)
        wait_for(lambda: "Registered to" in log.read_text(), 90, "a worker to register")
        return p

    @staticmethod
    def kill_worker(p: subprocess.Popen) -> None:
        """SIGKILL a worker with the helper processes it started (its process group: none may keep its
        connection to the scheduler open), as the OOM killer or a node failure would."""
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=30)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGCONT)
                except ProcessLookupError:
                    pass
                p.kill()
                p.wait(timeout=30)


def wait_for(pred, timeout: float, what: str, poll: float = 0.02) -> float:
    t0 = time.time()
    while not pred():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)
    return time.time() - t0


def start_run(argv: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "survey_infer", *argv], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env=ENV)


def finish(p: subprocess.Popen, timeout: float) -> int | None:
    """Exit code, or None (then the driver is killed) if it did not exit within ``timeout`` s."""
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=30)
        return None


@pytest.fixture(scope="module")
def survey_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("pair")
    return [simulate_survey(128, seed, d / f"s{seed}.zarr", chunk_objects=64) for seed in (11, 12)]


def test_two_runs_on_one_shared_scheduler_both_complete(survey_pair, tiny_model, tmp_path):
    """Two new catalogs at the same time on one external scheduler and worker: both complete, each identical to
    a clean run of its own input (before: both said "N computed, 0 failed" and exited 0 while the task keys of
    the two runs, block-main-<i>-e1, collided and some rows were never written)."""
    refs = [reference(s, tmp_path / f"ref{i}.zarr", tiny_model) for i, s in enumerate(survey_pair)]
    cl = Cluster(tmp_path / "cluster")
    try:
        cl.add_worker()
        runs = []
        for i, s in enumerate(survey_pair):
            runs.append(start_run(args(s, tmp_path / f"c{i}.zarr", tiny_model, "--cluster", cl.file),
                                  tmp_path / f"run{i}.log"))
        rcs = [finish(p, 240) for p in runs]
    finally:
        cl.stop()
    logs = [(tmp_path / f"run{i}.log").read_text() for i in range(2)]
    assert rcs == [0, 0], logs
    for i in range(2):
        assert n_markers(tmp_path / f"c{i}.zarr") == 8
        assert_catalogs_identical(refs[i], tmp_path / f"c{i}.zarr")
    assert "run_spec" not in (tmp_path / "cluster" / "scheduler.log").read_text()


def test_success_without_its_own_marker_is_not_done(small_survey, tiny_model, tmp_path, monkeypatch):
    """A task result alone proves nothing: a block whose task says ok but whose marker is not in the catalog is a
    failure naming the block, and the run is not ok (before: counted computed, exit 0, status complete)."""
    import survey_infer.pipeline.execute as runner

    real = runner.process_block

    def lying(b, lo, hi, ctx, r=None):
        rec = real(b, lo, hi, ctx, r)
        if b == 2:
            (Path(ctx.catalog) / "_markers" / ctx.job / f"block-{b:06d}.json").unlink()
        return rec

    monkeypatch.setattr(runner, "process_block", lying)
    cat = tmp_path / "cat.zarr"
    s = run_catalog(small_survey, cat, model=tiny_model, cluster="inprocess", mc_samples=T, block_objects=64, **QUIET)
    assert not s.ok
    assert [f["block"] for f in s.blocks_failed] == [2]
    assert "end-of-run check" in s.blocks_failed[0]["reason"] and "no marker" in s.blocks_failed[0]["reason"]
    from survey_infer.pipeline.status import catalog_status

    job = catalog_status(cat)["jobs"]["main"]
    assert job["status"] == "incomplete" and job["failures"][0]["block"] == 2


def test_scheduler_killed_mid_run_driver_stops_and_rerun_resumes(small_survey, tiny_model, tmp_path):
    """The external scheduler dies mid-run (its worker frozen, so no more progress is possible): the driver exits
    1 by itself within the grace period, without a traceback, with its summary, the blocks left recorded with the
    reason (shown by ``status``) and the lock released; a re-run on a fresh cluster resumes to the clean catalog
    (before: the driver hung, or died with a ClosedClientError traceback)."""
    ref = reference(small_survey, tmp_path / "ref.zarr", tiny_model)
    cat = tmp_path / "cat.zarr"
    cl = Cluster(tmp_path / "a")
    try:
        w = cl.add_worker()
        p = start_run(args(small_survey, cat, tiny_model, "--cluster", cl.file, "--max-in-flight", 1,
                           "--cluster-grace", 5), tmp_path / "run.log")
        wait_for(lambda: n_markers(cat) >= 2 or p.poll() is not None, 180, "2 done blocks")
        w.send_signal(signal.SIGSTOP)
        cl.scheduler.kill()
        t0 = time.time()
        rc = finish(p, 120)
        took = time.time() - t0
    finally:
        cl.stop()
    log = (tmp_path / "run.log").read_text()
    print(f"driver exit {rc} {took:.1f} s after the scheduler was killed")
    assert rc == 1, log[-3000:]
    assert "Traceback" not in log
    assert "blocks 19:" in log and "the run stopped: the Dask scheduler" in log and "resume    survey-infer run" in log
    lock = json.loads((cat / "_lock.json").read_text())
    assert lock["released"]
    st = cli("status", cat)
    assert st.returncode == 0 and "FAILED block" in st.stdout and "scheduler" in st.stdout, st.stdout
    cl2 = Cluster(tmp_path / "b")
    try:
        cl2.add_worker()
        r = cli(*args(small_survey, cat, tiny_model, "--cluster", cl2.file), timeout=240)
    finally:
        cl2.stop()
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert_catalogs_identical(ref, cat)


def test_worker_gone_mid_run_is_recorded_and_the_driver_stops(small_survey, tiny_model, tmp_path):
    """The only worker is killed (as by the OOM killer) mid-run: the driver sees it (KilledWorker for the task it
    was running, then no worker for the grace period), stops with exit 1, and every block not done is recorded
    with its reason, so ``status`` shows them as failed, not merely pending (before: the driver waited forever)."""
    cat = tmp_path / "cat.zarr"
    cl = Cluster(tmp_path / "a", scheduler_env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"})
    try:
        w = cl.add_worker()
        p = start_run(args(small_survey, cat, tiny_model, "--cluster", cl.file, "--max-in-flight", 1,
                           "--cluster-grace", 4), tmp_path / "run.log")
        wait_for(lambda: n_markers(cat) >= 1 or p.poll() is not None, 180, "a done block")
        cl.kill_worker(w)
        rc = finish(p, 90)
    finally:
        cl.stop()
    log = (tmp_path / "run.log").read_text()
    assert rc == 1, log[-3000:]
    assert "Traceback" not in log and "no Dask worker connected" in log
    st = cli("status", cat)
    out = st.stdout
    assert "FAILED block" in out and "pending (" in out, out
    job = [ln for ln in out.splitlines() if ln.strip().startswith("job main")][0]
    assert " 0 pending" in job, job  # every block not done has a recorded reason
    assert json.loads((cat / "_lock.json").read_text())["released"]


def test_worker_lifetime_setting_does_not_hang_a_local_run(small_survey, tiny_model, tmp_path):
    """A site's distributed.worker.lifetime (meant for job-queue workers) retires local workers that nothing
    replaces: the run must still complete (before: it waited forever)."""
    ref = reference(small_survey, tmp_path / "ref.zarr", tiny_model)
    cat = tmp_path / "cat.zarr"
    r = cli(*args(small_survey, cat, tiny_model, "--workers", 1, "--cluster-grace", 20), timeout=180,
            env={"DASK_DISTRIBUTED__WORKER__LIFETIME__DURATION": "1s", "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "lifetime" in r.stderr
    assert_catalogs_identical(ref, cat)


def test_scheduler_file_written_after_the_run_starts(small_survey, tiny_model, tmp_path):
    """``--cluster F`` where a job script's scheduler writes F a moment later: the run waits (bounded, saying so)
    and completes; a file that never appears is one line, exit 2 (before: "unknown --cluster")."""
    ref = reference(small_survey, tmp_path / "ref.zarr", tiny_model)
    cl = Cluster(tmp_path / "sched", start=False)
    cat = tmp_path / "cat.zarr"
    try:
        p = start_run(args(small_survey, cat, tiny_model, "--cluster", cl.file), tmp_path / "run.log")
        wait_for(lambda: "waiting up to 60 s for the scheduler file" in (tmp_path / "run.log").read_text()
                 or p.poll() is not None, 120, "the driver to wait for the scheduler file", poll=0.1)
        assert p.poll() is None, (tmp_path / "run.log").read_text()
        cl.start_scheduler()
        cl.add_worker()
        rc = finish(p, 180)
    finally:
        cl.stop()
    log = (tmp_path / "run.log").read_text()
    assert rc == 0, log[-3000:]
    assert "waiting up to 60 s for the scheduler file" in log
    assert_catalogs_identical(ref, cat)
    t0 = time.time()
    r = cli(*args(small_survey, tmp_path / "never.zarr", tiny_model, "--cluster", tmp_path / "none" / "s.json"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = cli(*args(small_survey, tmp_path / "never.zarr", tiny_model, "--cluster", tmp_path / "s.json",
                  "--cluster-wait", 1))
    assert r.returncode == 2 and "does not exist after waiting 1 s" in r.stderr, r.stderr
    assert time.time() - t0 < 60 and not (tmp_path / "never.zarr").exists()


@pytest.mark.parametrize("option,value,name", [
    ("workers", 0, "--workers"), ("max_in_flight", -1, "--max-in-flight"), ("max_in_flight", 0, "--max-in-flight"),
    ("block_objects", 0, "--block-objects"), ("mc_samples", 0, "--mc-samples"), ("lease_s", 0.0, "--lease-seconds"),
    ("lock_wait_s", -1.0, "--lock-wait"), ("cluster_grace_s", float("nan"), "--cluster-grace"),
    ("cluster_wait_s", -5.0, "--cluster-wait")])
def test_options_are_checked_before_any_file(small_survey, tiny_model, tmp_path, option, value, name):
    out = tmp_path / "cat.zarr"
    with pytest.raises(RunError, match=name):
        run_catalog(small_survey, out, model=tiny_model, cluster="local", **{option: value}, **QUIET)
    assert not out.exists()


def test_bad_options_and_unusable_dask_directory_are_one_line_exit_2(small_survey, tiny_model, tmp_path):
    """--workers 0 and --max-in-flight -1 (before: a hang, and exit 0 with nothing computed and a job that
    status called complete); a Dask temporary-directory under a regular file (before: a traceback after the
    catalog template was created)."""
    out = tmp_path / "cat.zarr"
    for extra, word in ((["--workers", 0], "--workers"), (["--max-in-flight", -1], "--max-in-flight")):
        r = cli(*args(small_survey, out, tiny_model, *extra))
        assert r.returncode == 2 and word in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    (tmp_path / "afile").write_text("not a folder")
    r = cli(*args(small_survey, out, tiny_model, "--workers", 1),
            env={"DASK_TEMPORARY_DIRECTORY": str(tmp_path / "afile" / "scratch")})
    assert r.returncode == 2 and "afile/scratch" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_hung_driver_stops_renewing_its_lock(tmp_path):
    """A driver whose run loop makes no progress (alive_check False) stops renewing its lease, so another run can
    take the catalog over once the lease expires (before: the heartbeat thread renewed it forever)."""
    from survey_infer.pipeline.resume import LeaseLock, LockHeldError

    a = LeaseLock(tmp_path / "cat", lease_s=1.0)
    a.acquire()
    a.alive_check = lambda: True
    time.sleep(1.6)
    with pytest.raises(LockHeldError):
        LeaseLock(tmp_path / "cat", lease_s=1.0).acquire()
    a.alive_check = lambda: False
    time.sleep(1.6)
    b = LeaseLock(tmp_path / "cat", lease_s=1.0)
    assert b.acquire() == 2
    b.release()
    a.release()


def test_dask_errors_are_one_line():
    from distributed.scheduler import KilledWorker

    from survey_infer.pipeline.clusters import describe_dask_error
    from survey_infer.pipeline.summary import group_failures

    from types import SimpleNamespace

    exc = KilledWorker("block-main-3-e1-abc", SimpleNamespace(address="tcp://127.0.0.1:4000"), 3)
    line = describe_dask_error(exc)
    assert "\n" not in line and "memory" in line
    assert line.startswith("KilledWorker: the worker running it died 4 times (last tcp://127.0.0.1:4000)"), line
    g = group_failures([{"block": b, "reason": "not run: x"} for b in (0, 1, 2, 5)] + [{"block": 3, "reason": "y"}])
    assert g == [("blocks 0-2 (3)", "not run: x"), ("block 3", "y"), ("block 5", "not run: x")]
