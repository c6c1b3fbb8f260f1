"""Resume protocol (DESIGN §8): numerics fingerprint, per-block done-markers, and the one-writer lease lock.

Done-markers
    ``CATALOG/_markers/<job>/block-<i>.json``, written atomically (temp + rename) after a block's region write.
    A marker holds the numerics fingerprint, the run epoch and run id, the block's input stamp (sizes and
    mtimes of the input chunk files it read) and input hash (CRC32 of the bytes it read), and the output hash
    (CRC32 of what it wrote). A block is done only when its marker exists, the fingerprint matches, its input
    stamp still matches (or, if not, its input hash does) and the stored output still hashes to the marker's
    output hash — so a torn chunk left by a kill, a chunk overwritten by an orphaned worker, or changed input is
    recomputed.

Lease lock
    ``CATALOG/_lock.json``: owner, epoch, heartbeat time, lease length. A run takes the lock if it is absent,
    released, or its heartbeat is older than the lease (a dead run, also on another node after a Slurm
    requeue: the catalog lives on a shared file system); every take-over increments the epoch. Tasks carry
    their run's epoch and refuse to write when the lock's epoch is newer.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
import zlib
from pathlib import Path

import numpy as np

MARKERS = "_markers"
LOCK = "_lock.json"
FAILURES = "_failures"


class LockHeldError(RuntimeError):
    """Another live run holds the catalog's lock."""


class StaleEpochError(RuntimeError):
    """A task of an older run tried to write after a newer run took the catalog over."""


class FingerprintMismatch(RuntimeError):
    """The catalog was made with different numerics than this run would use."""


def atomic_write_json(path: Path, obj: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# ---- fingerprint --------------------------------------------------------------------------------------------
def fingerprint_diff(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two numerics fingerprints."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: catalog has {old.get(k)!r}, this run would use {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


# ---- markers ----------------------------------------------------------------------------------------------------
def marker_path(catalog: Path, job: str, block: int) -> Path:
    return Path(catalog) / MARKERS / job / f"block-{block:06d}.json"


def failure_path(catalog: Path, job: str, block: int) -> Path:
    return Path(catalog) / FAILURES / job / f"block-{block:06d}.json"


def input_stamp(input_store: Path, lo: int, hi: int, chunk_rows: dict[str, int]) -> str:
    """Sizes and mtimes of the input chunk files rows ``[lo, hi)`` live in (cheap change detection)."""
    parts = []
    for name, rows in sorted(chunk_rows.items()):
        for c in range(lo // rows, (hi - 1) // rows + 1):
            d = Path(input_store) / name / "c" / str(c)
            p = d / "0" if d.is_dir() else d
            try:
                st = p.stat()
                parts.append(f"{name}/{c}:{st.st_size}:{st.st_mtime_ns}")
            except FileNotFoundError:
                parts.append(f"{name}/{c}:absent")
    return f"{zlib.crc32(';'.join(parts).encode()):08x}"


def input_hash(arrays: list[np.ndarray]) -> str:
    """CRC32 of the bytes of the input arrays a block read."""
    crc = 0
    for a in arrays:
        a = np.ascontiguousarray(a)
        crc = zlib.crc32(a.view(np.uint8).reshape(-1).data if a.size else b"", crc)
    return f"{crc:08x}"


# ---- lease lock -------------------------------------------------------------------------------------------------
class LeaseLock:
    """One writer per catalog: a lease with heartbeat and a monotonically increasing epoch.

    Parameters
    ----------
    catalog : path
    lease_s : float
        A holder whose heartbeat is older than this is considered dead.
    """

    def __init__(self, catalog: str | Path, lease_s: float = 60.0):
        self.path = Path(catalog) / LOCK
        self.lease_s = float(lease_s)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.epoch = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, wait_s: float = 0.0) -> int:
        """Take the lock; returns the new epoch. Raises :class:`LockHeldError` if a live run holds it."""
        deadline = time.time() + wait_s
        while True:
            cur = read_json(self.path)
            now = time.time()
            if cur and not cur.get("released") and now - float(cur.get("heartbeat", 0)) < float(cur.get("lease_s", self.lease_s)):
                if time.time() < deadline:
                    time.sleep(1.0)
                    continue
                age = now - float(cur.get("heartbeat", 0))
                raise LockHeldError(
                    f"catalog {self.path.parent} is being written by another run ({cur.get('owner')}, epoch "
                    f"{cur.get('epoch')}, last heartbeat {age:.0f} s ago; lease {cur.get('lease_s')} s). Wait for it "
                    f"to finish, or if it is dead, retry after the lease expires.")
            epoch = int(cur.get("epoch", 0)) + 1 if cur else 1
            rec = {"owner": self.owner, "epoch": epoch, "heartbeat": now, "lease_s": self.lease_s,
                   "taken_over": bool(cur and not cur.get("released")), "acquired": now}
            atomic_write_json(self.path, rec)
            time.sleep(0.2)  # let a concurrent taker's rename land, then see who won
            back = read_json(self.path)
            if back and back.get("owner") == self.owner:
                self.epoch = epoch
                self._start_heartbeat()
                return epoch
            if time.time() >= deadline:
                raise LockHeldError(f"catalog {self.path.parent}: another run took the lock at the same moment "
                                    f"({back.get('owner') if back else '?'})")

    def _start_heartbeat(self) -> None:
        self._stop.clear()

        def beat():
            while not self._stop.wait(self.lease_s / 4.0):
                cur = read_json(self.path)
                if not cur or cur.get("owner") != self.owner:
                    return  # lost the lock (taken over): stop beating
                cur["heartbeat"] = time.time()
                atomic_write_json(self.path, cur)

        self._thread = threading.Thread(target=beat, name="survey-infer-lease", daemon=True)
        self._thread.start()

    def still_owner(self) -> bool:
        cur = read_json(self.path)
        return bool(cur and cur.get("owner") == self.owner and int(cur.get("epoch", -1)) == self.epoch)

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        cur = read_json(self.path)
        if cur and cur.get("owner") == self.owner:
            cur["released"] = True
            cur["heartbeat"] = time.time()
            atomic_write_json(self.path, cur)


def current_epoch(catalog: str | Path) -> int:
    cur = read_json(Path(catalog) / LOCK)
    return int(cur.get("epoch", 0)) if cur else 0


def check_epoch(catalog: str | Path, epoch: int) -> None:
    """Raise :class:`StaleEpochError` when a newer run has taken the catalog over."""
    cur = current_epoch(catalog)
    if cur > epoch:
        raise StaleEpochError(f"catalog {catalog}: this task belongs to run epoch {epoch} but epoch {cur} now owns "
                              f"the catalog; the write was refused")
