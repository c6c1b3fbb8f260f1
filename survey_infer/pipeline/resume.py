"""Resume protocol (DESIGN §8): numerics fingerprint, per-block done-markers, and the one-writer lease lock.

Done-markers
    ``CATALOG/_markers/<job>/block-<i>.json``, written atomically (temp + rename) after a block's region write.
    A marker holds the numerics fingerprint, the run epoch and run id, the block's input stamp (sizes and
    mtimes of the input chunk files it read), its input hash (CRC32 of the bytes it read), the names of the
    variables it wrote (``output_names``) and the output hash (CRC32 of those variables as read back from the
    store after the write). A block is done for a job only when

    * the job's marker exists, with the same block bounds, fingerprint and (for a selection) the same rows;
    * its input stamp still matches (or, if files were touched, its input hash does);
    * the stored block still hashes to the output hash of the *latest* marker of that block over all jobs (so
      a torn, truncated, deleted or overwritten chunk is detected, while a later reprocessing job that legitimately
      replaced some rows is not mistaken for damage);
    * no row of the job's selection was rewritten since by an older job (its ``run_id`` is not lower than the
      job's).

    Before a reprocessing job merges its rows into a block it records an *intent*
    (``_markers/<job>/intent-<i>.json``) with the hash of the rows it keeps, so that its own interrupted merge can
    be resumed while damage to the kept rows is refused.

Lease lock
    ``CATALOG/_lock.json``: owner (host, pid, boot id, process start time), epoch, heartbeat time, lease length.
    A run takes the lock if it is absent or released, if its holder is provably dead (same host and boot, the
    process is gone), or if its heartbeat is older than the lease (a dead run on another node, e.g. before a
    Slurm requeue: the catalog lives on a shared file system). A live holder on another node is recognised by its
    heartbeat advancing. Every acquisition increments the epoch. Changes to the lock file are serialised by a
    short-lived exclusive claim file (``_lock.json.claim``, ``O_CREAT | O_EXCL``). Tasks carry their run's epoch
    and refuse to write (data or marker) when the lock's epoch is newer.
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
CLAIM_STALE_S = 10.0
#: a heartbeat from another host older than its lease plus this is taken over without watching it (s)
CLOCK_SKEW_S = 30.0


class LockHeldError(RuntimeError):
    """Another live run holds the catalog's lock."""


class StaleEpochError(RuntimeError):
    """A task of an older run tried to write after a newer run took the catalog over."""


class FingerprintMismatch(RuntimeError):
    """The catalog was made with different numerics than this run would use."""


class DamagedBlockError(RuntimeError):
    """A catalog block a reprocessing job must merge into is damaged outside the job's rows."""


def atomic_write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, sort_keys=True, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when it is missing or unreadable (a torn marker is no marker)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None


# ---- fingerprint --------------------------------------------------------------------------------------------
def fingerprint_diff(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two numerics fingerprints."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: catalog has {old.get(k)!r}, this run would use {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


# ---- markers ----------------------------------------------------------------------------------------------------
def marker_path(catalog: Path, job: str, block: int) -> Path:
    return Path(catalog) / MARKERS / job / f"block-{block:06d}.json"


def intent_path(catalog: Path, job: str, block: int) -> Path:
    return Path(catalog) / MARKERS / job / f"intent-{block:06d}.json"


def failure_path(catalog: Path, job: str, block: int) -> Path:
    return Path(catalog) / FAILURES / job / f"block-{block:06d}.json"


def load_markers(catalog: Path) -> dict[str, dict[int, dict]]:
    """Every readable done-marker of a catalog: ``{job: {block: marker}}``."""
    out: dict[str, dict[int, dict]] = {}
    root = Path(catalog) / MARKERS
    if not root.is_dir():
        return out
    for jd in sorted(p for p in root.iterdir() if p.is_dir()):
        d = out.setdefault(jd.name, {})
        for f in jd.glob("block-*.json"):
            m = read_json(f)
            if m and "block" in m:
                d[int(m["block"])] = m
    return out


def marker_order(m: dict) -> tuple:
    """Sort key of markers by when their write happened: run epoch first (epochs only grow), then time."""
    return int(m.get("epoch", -1)), float(m.get("time", 0.0))


def latest_marker(catalog: Path, block: int, markers: dict[str, dict[int, dict]] | None = None) -> dict | None:
    """The most recent marker of ``block`` over all jobs: the one whose output hash the stored block must have."""
    if markers is None:  # read only this block's marker of every job
        root = Path(catalog) / MARKERS
        jobs = [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
        cands = [m for m in (read_json(marker_path(catalog, j, block)) for j in jobs) if m]
    else:
        cands = [j[block] for j in markers.values() if block in j]
    return max(cands, key=marker_order) if cands else None


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


def crc_update(crc: int, arrays: list[np.ndarray]) -> int:
    """Continue a CRC32 over the bytes of ``arrays`` (so a block's input is hashed as it streams, not held)."""
    for a in arrays:
        a = np.ascontiguousarray(a)
        crc = zlib.crc32(a.view(np.uint8).reshape(-1).data if a.size else b"", crc)
    return crc


def input_hash(arrays: list[np.ndarray]) -> str:
    """CRC32 of the bytes of the input arrays a block read."""
    return f"{crc_update(0, arrays):08x}"


def rows_hash(rows: np.ndarray | None) -> str | None:
    """Identity of a selection of rows inside a block (None = the whole block)."""
    if rows is None:
        return None
    return f"{zlib.crc32(np.ascontiguousarray(rows, dtype=np.int64).tobytes()):08x}:{len(rows)}"


def iter_input_rows(group, todo: np.ndarray, sub_rows: int):
    """Read the input for rows ``todo`` (sorted absolute indices) in groups of rows that share a window of
    ``sub_rows`` aligned rows (``row // sub_rows``), so that one read spans at most ``sub_rows`` rows whatever
    the selection (memory bounded for sparse selections too).

    Yields ``(rows, a, b, sel, arrays)``: ``[a, b)`` is the contiguous range read, ``arrays`` a dict with
    ``flux``, ``ivar``, ``object_id`` and ``mask`` (or None) for all rows ``[a, b)``, and ``sel`` the positions
    of ``rows`` in it. The same reader is used by the task (input hash at compute time) and the resume check.
    """
    has_mask = "mask" in group
    todo = np.asarray(todo, np.int64)
    win = todo // sub_rows
    cuts = np.flatnonzero(np.diff(win)) + 1
    for r in np.split(todo, cuts):
        if not len(r):
            continue
        a, b = int(r[0]), int(r[-1]) + 1
        arrs = {"flux": group["flux"][a:b], "ivar": group["ivar"][a:b],
                "mask": group["mask"][a:b] if has_mask else None, "object_id": group["object_id"][a:b]}
        yield r, a, b, r - a, arrs


def hash_parts(arrs: dict, sel: np.ndarray | None = None) -> list[np.ndarray]:
    """The arrays of one group of rows in input-hash order (only the rows ``sel`` when given)."""
    names = ("flux", "ivar", "object_id", "mask")
    out = [arrs[k] for k in names if arrs[k] is not None]
    if sel is not None and len(sel) != len(arrs["object_id"]):
        out = [a[sel] for a in out]
    return out


# ---- lease lock -------------------------------------------------------------------------------------------------
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_ns() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _proc_start(pid: int) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # noqa: BLE001 - no such process, or psutil missing
        return None


def holder_is_dead(rec: dict) -> bool:
    """True only when the lock's holder provably no longer exists: same host, same boot, same PID namespace,
    and its PID is gone or now belongs to a process started later. Holders elsewhere are judged by heartbeat."""
    ident = rec.get("identity") or {}
    if not ident or ident.get("host") != socket.gethostname() or ident.get("boot_id") != _boot_id() \
            or ident.get("pid_ns") != _pid_ns() or not ident.get("boot_id"):
        return False
    start = _proc_start(int(ident.get("pid", -1)))
    return start is None or abs(start - float(ident.get("start", 0.0))) > 1.0


class LeaseLock:
    """One writer per catalog: a lease with heartbeat and a monotonically increasing epoch.

    Parameters
    ----------
    catalog : path
        The catalog folder (created if missing: the lock is taken before the catalog is).
    lease_s : float
        Seconds without a heartbeat after which a holder is considered dead. The holder beats every
        ``lease_s / 4`` seconds.
    """

    def __init__(self, catalog: str | Path, lease_s: float = 60.0):
        self.path = Path(catalog) / LOCK
        self.claim = self.path.with_name(LOCK + ".claim")
        self.lease_s = float(lease_s)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.identity = {"host": socket.gethostname(), "pid": os.getpid(), "boot_id": _boot_id(),
                         "pid_ns": _pid_ns(), "start": _proc_start(os.getpid()) or 0.0}
        self.epoch = -1
        self.taken_over_from: dict | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- claim: serialises read-modify-write of the lock file between processes ----------------------------------
    def _take_claim(self, timeout: float = 5.0) -> bool:
        deadline = time.time() + timeout
        while True:
            try:
                fd = os.open(self.claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                os.write(fd, self.owner.encode())
                os.close(fd)
                return True
            except FileExistsError:
                try:
                    if time.time() - self.claim.stat().st_mtime > CLAIM_STALE_S:  # its taker died inside the claim
                        self.claim.unlink()
                        continue
                except FileNotFoundError:
                    continue
                if time.time() >= deadline:
                    return False
                time.sleep(0.05)

    def _drop_claim(self) -> None:
        try:
            if self.claim.read_text() == self.owner:
                self.claim.unlink()
        except FileNotFoundError:
            pass

    def acquire(self, wait_s: float | None = None, min_epoch: int = 0) -> int:
        """Take the lock; returns the new epoch.

        * absent or released: taken;
        * holder provably dead (same host, boot and PID namespace; its process is gone): taken over at once;
        * holder on this host, alive: refused (:class:`LockHeldError`), unless its heartbeat is older than the
          lease (a hung process): taken over;
        * holder on another host: its heartbeat is watched on this host's clock (so that clock skew between nodes
          does not matter): if it advances the holder is alive (refused); if it stays unchanged for a whole lease
          it is taken over. A heartbeat older than the lease plus :data:`CLOCK_SKEW_S` is taken over at once.

        ``wait_s`` additionally waits that long for a live holder to finish (default: refuse at once). The new
        epoch is above both the lock's and ``min_epoch`` (the highest epoch the catalog has recorded), so epochs
        never go back even if the lock file was lost.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        watched: tuple | None = None  # (heartbeat value, monotonic time first seen)
        while True:
            cur = read_json(self.path)
            now = time.time()
            if not cur or cur.get("released"):
                state = "free"
            elif holder_is_dead(cur):
                state = "dead"
            else:
                lease = float(cur.get("lease_s", self.lease_s))
                beat = float(cur.get("heartbeat", 0))
                age = now - beat
                same_host = (cur.get("identity") or {}).get("host") == socket.gethostname()
                if same_host:
                    state = "expired" if age >= lease else "alive"
                elif age >= lease + CLOCK_SKEW_S:
                    state = "expired"
                elif watched is None or watched[0] != beat:
                    state = "alive" if watched is not None else "watch"  # it beat while watched: alive
                    watched = (beat, time.monotonic())
                else:
                    state = "expired" if time.monotonic() - watched[1] >= lease else "watch"
                if state == "alive" and time.monotonic() - t0 >= float(wait_s or 0.0):
                    raise LockHeldError(
                        f"catalog {self.path.parent} is being written by another run ({cur.get('owner')}, epoch "
                        f"{cur.get('epoch')}, last heartbeat {max(0.0, age):.0f} s ago, lease {lease:g} s). Wait for "
                        f"it to finish; a run that died is taken over automatically once its lease expires.")
                if state in ("alive", "watch"):
                    time.sleep(min(1.0, max(0.05, lease / 8)))
                    continue
            if not self._take_claim():
                raise LockHeldError(f"catalog {self.path.parent}: cannot claim {self.claim} (another run is taking "
                                    f"the lock at this moment)")
            try:
                cur2 = read_json(self.path)
                if any((cur2 or {}).get(k) != (cur or {}).get(k) for k in ("owner", "epoch", "heartbeat", "released")):
                    continue  # changed under us (a beat, a release, another taker): decide again
                epoch = max(int(cur.get("epoch", 0)) if cur else 0, int(min_epoch)) + 1
                rec = {"owner": self.owner, "identity": self.identity, "epoch": epoch, "heartbeat": now,
                       "lease_s": self.lease_s, "acquired": now, "released": False,
                       "taken_over": state in ("dead", "expired"),
                       "previous": {k: cur.get(k) for k in ("owner", "epoch", "heartbeat")} if cur else None}
                atomic_write_json(self.path, rec)
                self.epoch = epoch
                self.taken_over_from = rec["previous"] if rec["taken_over"] else None
            finally:
                self._drop_claim()
            self._start_heartbeat()
            return epoch

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self.lost.clear()

        def beat():
            while not self._stop.wait(self.lease_s / 4.0):
                if not self._take_claim(timeout=self.lease_s / 8.0):
                    continue  # try again at the next beat
                try:
                    cur = read_json(self.path)
                    if not cur or cur.get("owner") != self.owner:
                        self.lost.set()  # taken over (we were silent too long): stop beating
                        return
                    cur["heartbeat"] = time.time()
                    atomic_write_json(self.path, cur)
                except OSError:
                    pass  # a transient file-system error: the next beat retries
                finally:
                    self._drop_claim()

        self._thread = threading.Thread(target=beat, name="survey-infer-lease", daemon=True)
        self._thread.start()

    def still_owner(self) -> bool:
        cur = read_json(self.path)
        ok = bool(cur and cur.get("owner") == self.owner and int(cur.get("epoch", -1)) == self.epoch)
        if not ok:
            self.lost.set()
        return ok

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if not self._take_claim():
            return  # the lease will expire by itself
        try:
            cur = read_json(self.path)
            if cur and cur.get("owner") == self.owner:
                cur["released"] = True
                cur["heartbeat"] = time.time()
                atomic_write_json(self.path, cur)
        finally:
            self._drop_claim()


def current_epoch(catalog: str | Path) -> int:
    cur = read_json(Path(catalog) / LOCK)
    return int(cur.get("epoch", 0)) if cur else 0


def check_epoch(catalog: str | Path, epoch: int) -> None:
    """Raise :class:`StaleEpochError` when a newer run has taken the catalog over."""
    cur = current_epoch(catalog)
    if cur > epoch:
        raise StaleEpochError(f"catalog {catalog}: this task belongs to run epoch {epoch} but epoch {cur} now owns "
                              f"the catalog; the write was refused")
