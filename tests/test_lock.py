"""The catalog lock with real processes: runs racing to take over a dead holder's lock, a holder whose liveness
cannot be seen (psutil missing), tasks checking (epoch, owner), epochs that never go back, and a full disk while
taking the lock."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from survey_infer.pipeline.liveness import boot_id, pid_ns, process_liveness
from survey_infer.pipeline.lock import (LOCK, LOCK_DIR, KEEP_TICKETS, LeaseLock, LockHeldError, StaleEpochError,
                                        check_epoch, lock_record)

# A contender: waits for a common start time, tries to take the lock once (no waiting), reports, holds the lock a
# moment (alive, beating) so that slower contenders see a live holder, then releases it.
CONTENDER = r"""
import json, sys, time
{prelude}
from survey_infer.pipeline.resume import LeaseLock, LockHeldError
cat, t_go, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
lock = LeaseLock(cat, lease_s=30)
while time.time() < t_go:
    pass
try:
    e = lock.acquire()
    res = {{"epoch": e, "owner": lock.owner}}
except LockHeldError as exc:
    res = {{"epoch": None, "error": str(exc)}}
open(out, "w").write(json.dumps(res))
if res["epoch"] is not None:
    time.sleep(float(sys.argv[4]))
    lock.release()
"""


def dead_pid() -> int:
    """The pid of a process of this host that has exited (reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_dead_holder(cat: Path, epoch: int = 5, claim_age_s: float | None = 60.0) -> None:
    """A lock left by a run of this host that was SIGKILLed: its process is gone, its heartbeat fresh (so only
    the proof of death lets it be taken over at once), and (``claim_age_s``) a stale claim file of the previous
    design, as a run killed while changing the lock left it."""
    cat.mkdir(parents=True, exist_ok=True)
    rec = {"owner": f"{socket.gethostname()}:1:deadbeef", "epoch": epoch, "heartbeat": time.time(), "lease_s": 600,
           "released": False, "identity": {"host": socket.gethostname(), "pid": dead_pid(), "boot_id": boot_id(),
                                           "pid_ns": pid_ns(), "start": time.time() - 100}}
    (cat / LOCK).write_text(json.dumps(rec))
    if claim_age_s is not None:
        claim = cat / (LOCK + ".claim")
        claim.write_text("someone:1:deadbeef")
        os.utime(claim, (time.time() - claim_age_s,) * 2)


def race(cat: Path, n: int, tmp: Path, hold_s: float = 3.0, prelude: str = "") -> list[dict]:
    """``n`` real processes try to take the lock of ``cat`` at the same instant; their reports."""
    code = CONTENDER.format(prelude=prelude)
    t_go = time.time() + 4.0  # every interpreter is up and has imported the package by then (2 loaded cores)
    outs = [tmp / f"res-{i}.json" for i in range(n)]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(cat), str(t_go), str(o), str(hold_s)])
             for o in outs]
    for p in procs:
        p.wait(timeout=120)
    late = time.time() - t_go
    assert late > 0, "the contenders finished before the start time"
    return [json.loads(o.read_text()) for o in outs]


@pytest.mark.parametrize("round_", range(3))
def test_processes_racing_on_a_dead_holders_lock_take_it_once(tmp_path, round_):
    """Several runs start together on a catalog whose lock holder was killed (with a stale claim file left):
    exactly one takes the catalog over, with a new epoch; the others are told a live run holds it. (The previous
    design let two of them delete each other's claim and both take the same epoch.)"""
    cat = tmp_path / "cat.zarr"
    write_dead_holder(cat, epoch=5)
    res = race(cat, 6, tmp_path)
    winners = [r for r in res if r["epoch"] is not None]
    print(f"round {round_}: {len(winners)} winner(s), epochs {[r['epoch'] for r in winners]}, "
          f"{len(res) - len(winners)} refused")
    assert len(winners) == 1, res
    assert winners[0]["epoch"] == 6
    for r in res:
        if r["epoch"] is None:
            assert "is being written by another run" in r["error"] and winners[0]["owner"] in r["error"], r
    rec = lock_record(cat)
    assert rec["epoch"] == 6 and rec["owner"] == winners[0]["owner"] and rec["released"]


def test_a_slow_taker_acting_on_an_old_judgement_does_not_take_the_catalog(tmp_path):
    """The interleaving behind the race, made deterministic with a fault-injection point: run X judges the dead
    holder and is held just before it takes the lock over; meanwhile run Y takes the catalog over; then X goes
    on. X must find Y's epoch taken and refuse (the previous design deleted Y's fresh claim by age)."""
    cat = tmp_path / "cat.zarr"
    write_dead_holder(cat, epoch=5)
    state = tmp_path / "state"
    code = CONTENDER.format(prelude="")
    env = {**os.environ, "SURVEY_INFER_FAULT": "lock-ticket:pause", "SURVEY_INFER_FAULT_STATE": str(state)}
    x = subprocess.Popen([sys.executable, "-c", code, str(cat), "0", str(tmp_path / "x.json"), "0"], env=env)
    y = None
    try:
        t0 = time.time()
        while not (state / "lock-ticket.hit-000000").exists():  # X has judged, and waits at the point
            assert x.poll() is None and time.time() - t0 < 60, "X did not reach the take-over"
            time.sleep(0.02)
        y = subprocess.Popen([sys.executable, "-c", code, str(cat), "0", str(tmp_path / "y.json"), "5"])
        while not (tmp_path / "y.json").exists():
            assert y.poll() is None and time.time() - t0 < 60, "Y did not report"
            time.sleep(0.02)
        (state / "lock-ticket.go").touch()
        x.wait(timeout=60)
        rx, ry = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "xy")
    finally:
        for p in (x, y):
            if p is not None and p.poll() is None:
                p.kill()
    print(f"Y took epoch {ry['epoch']}; X, resuming from its old judgement: {rx}")
    assert ry["epoch"] == 6
    assert rx["epoch"] is None and ry["owner"] in rx["error"], rx
    y.wait(timeout=60)
    assert lock_record(cat)["owner"] == ry["owner"] and lock_record(cat)["epoch"] == 6


def test_holder_whose_liveness_cannot_be_seen_is_not_taken_over(tmp_path):
    """A live holder on this host, judged by a run where psutil is missing (its process start time cannot be
    read): the run must not take the catalog over (fail closed); the lease still applies."""
    cat = tmp_path / "cat.zarr"
    holder = subprocess.Popen([sys.executable, "-c", CONTENDER.format(prelude=""), str(cat), "0",
                               str(tmp_path / "holder.json"), "60"])
    try:
        t0 = time.time()
        while not (tmp_path / "holder.json").exists():
            assert holder.poll() is None and time.time() - t0 < 60, "the holder did not start"
            time.sleep(0.05)
        assert json.loads((tmp_path / "holder.json").read_text())["epoch"] == 1
        no_psutil = "import sys; sys.modules['psutil'] = None"
        res = race(cat, 1, tmp_path, prelude=no_psutil)[0]
        assert res["epoch"] is None and "is being written by another run" in res["error"], res
        assert lock_record(cat)["epoch"] == 1
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # once the holder is really gone (kill(pid, 0) fails), its death is proven even without psutil
    res = race(cat, 1, tmp_path, prelude="import sys; sys.modules['psutil'] = None", hold_s=0)[0]
    assert res["epoch"] == 2, res


def test_liveness_is_proven_or_unknown():
    assert process_liveness(os.getpid(), LeaseLock(".").identity["start"]) == "alive"
    assert process_liveness(dead_pid(), time.time()) == "dead"
    assert process_liveness(os.getpid(), time.time() - 10_000) == "dead"  # the pid was reused by a later process
    assert process_liveness(os.getpid(), None) == "unknown"  # start time not recorded: cannot prove anything


def test_tasks_check_epoch_and_owner(tmp_path):
    cat = tmp_path / "cat.zarr"
    a = LeaseLock(cat, lease_s=30)
    e = a.acquire()
    check_epoch(cat, e, a.owner)
    with pytest.raises(StaleEpochError, match="not by this task's run"):
        check_epoch(cat, e, "node-b:42:feedface")  # same epoch number, another owner
    a.release()
    with pytest.raises(StaleEpochError, match="has ended"):
        check_epoch(cat, e, a.owner)  # a task outliving its run
    b = LeaseLock(cat, lease_s=30)
    assert b.acquire() == e + 1
    with pytest.raises(StaleEpochError, match=f"epoch {e + 1} now owns"):
        check_epoch(cat, e, a.owner)
    assert not a.still_owner() and a.lost.is_set()
    b.release()


def test_epochs_never_go_back(tmp_path):
    cat = tmp_path / "cat.zarr"
    epochs = []
    for _ in range(KEEP_TICKETS + 3):
        lk = LeaseLock(cat, lease_s=30)
        epochs.append(lk.acquire())
        assert lk.release()
    assert epochs == list(range(1, KEEP_TICKETS + 4))
    assert len(os.listdir(cat / LOCK_DIR)) == KEEP_TICKETS  # older tickets pruned; the highest decides
    # the lock files lost: the catalog's recorded epochs still rule
    for p in (cat / LOCK_DIR).iterdir():
        p.unlink()
    (cat / LOCK).unlink()
    lk = LeaseLock(cat, lease_s=30)
    assert lk.acquire(min_epoch=epochs[-1]) == epochs[-1] + 1
    lk.release()


def test_full_disk_while_taking_the_lock_leaves_nothing(tmp_path, monkeypatch):
    cat = tmp_path / "cat.zarr"
    monkeypatch.setenv("SURVEY_INFER_FAULT", "lock-ticket:enospc")
    with pytest.raises(LockHeldError) as ei:
        LeaseLock(cat, lease_s=30).acquire()
    msg = str(ei.value)
    print(msg)
    assert "\n" not in msg and "the file system is full" in msg and str(cat / LOCK_DIR) in msg
    assert "run the same command again" in msg
    assert sorted(os.listdir(cat / LOCK_DIR)) == [] and not (cat / LOCK).exists()
    assert not (cat / (LOCK + ".claim")).exists()
    monkeypatch.delenv("SURVEY_INFER_FAULT")
    lk = LeaseLock(cat, lease_s=30)
    assert lk.acquire() == 1
    lk.release()


def test_a_run_that_cannot_release_leaves_its_lock_to_be_taken_over(tmp_path, monkeypatch):
    cat = tmp_path / "cat.zarr"
    a = LeaseLock(cat, lease_s=30)
    a.acquire()
    monkeypatch.setenv("SURVEY_INFER_FAULT", "lock-release:enospc")
    assert not a.release()  # never raises
    assert "the file system is full" in a.release_error and "taken over" in a.release_error
    monkeypatch.delenv("SURVEY_INFER_FAULT")
    assert not lock_record(cat)["released"]
    assert [p for p in os.listdir(cat / LOCK_DIR) if p.endswith(".tmp")] == []
