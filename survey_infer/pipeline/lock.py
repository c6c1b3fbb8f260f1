"""One writer per catalog: a lease lock with epochs that can be taken over atomically (docs/resume.md, "The lock").

Layout
    ``CATALOG/_lock/epoch-NNNNNNNNN.json``, one *ticket* per acquisition: owner (a unique token), identity
    (host, pid, boot id, PID namespace, process start time), epoch, heartbeat time, lease length, released.
    ``CATALOG/_lock.json`` is a copy of the current holder's ticket for people and older tools; it decides
    nothing (except in a catalog locked by an older version, which has only this file).

Why it is safe
    A ticket is created with ``link(2)`` of a fully written temporary file to the ticket's name, which fails if
    the name exists (atomic on local file systems and on NFS, unlike ``O_EXCL`` on old NFS clients; the link
    count of the temporary file resolves a lost reply). So of any number of runs that judge the same holder
    dead and take over together, exactly one creates the next epoch's ticket; the others see a live holder.
    Nothing is ever deleted or rewritten to take a lock over, so a slow taker cannot remove a fresh claim (the
    race of the previous design, which deleted a stale ``_lock.json.claim`` by age). Only a ticket's holder
    rewrites it (heartbeat, release; temporary file + rename). The current holder is the highest-epoch ticket.

Liveness
    A holder is *dead* only when that is proven: same host, boot and PID namespace, and its PID is gone
    (``kill(pid, 0)`` fails with ``ESRCH``) or belongs to a process started later. When it cannot be seen
    (psutil missing, ``/proc`` hidden, another user's process) the holder counts as alive until its heartbeat
    is older than the lease (fail closed). Holders on other hosts are judged by their heartbeat, watched on this
    host's clock (clock skew does not matter); a heartbeat older than the lease plus :data:`CLOCK_SKEW_S` is
    taken over at once.

Tasks
    Every write of a task is preceded by :func:`check_epoch` with the run's epoch *and owner*: it is refused
    when a newer epoch exists, when its epoch's ticket belongs to another owner, or when the lock is gone or
    released.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from ..atomic import atomic_write_json, temporary_name
from .faults import fault_point, storage_message
from .liveness import boot_id, holder_liveness, pid_ns, proc_start
from ..errors import LockHeldError, StaleEpochError  # noqa: F401  (defined in survey_infer.errors)

LOCK = "_lock.json"
LOCK_DIR = "_lock"
#: a heartbeat from another host older than its lease plus this is taken over without watching it (s)
CLOCK_SKEW_S = 30.0
#: tickets of older epochs kept after an acquisition (for the record; the highest one decides)
KEEP_TICKETS = 4


# ---- small file helpers (resume.py imports this module; atomic writes: survey_infer.atomic) ------------------
def _read(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _write_tmp(tmp: Path, obj: dict) -> None:
    """Write ``obj`` as JSON to the temporary file ``tmp`` and flush it to disk (removed again on any error)."""
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave an empty or torn file behind (a full disk)
        raise


def create_exclusive(path: Path, obj: dict) -> bool:
    """Create ``path`` holding ``obj`` as JSON only if it does not exist; True when this call created it.

    The content is written and fsynced to a unique temporary file first, then hard-linked to ``path``: the file
    appears whole or not at all, and ``link(2)`` fails if the name exists, atomically also on NFS (where a
    retransmitted request can report failure for a link that was made: the temporary file's link count 2 then
    says it succeeded; the technique of ``open(2)``'s NFS notes).

    Raises
    ------
    OSError
        Any error other than "exists" (e.g. ENOSPC), after removing the temporary file.
    """
    path = Path(path)
    tmp = temporary_name(path)
    _write_tmp(tmp, obj)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        try:
            if os.stat(tmp).st_nlink == 2:
                return True
        except OSError:
            pass
        raise
    finally:
        tmp.unlink(missing_ok=True)


# ---- tickets ----------------------------------------------------------------------------------------------
def ticket_path(catalog: str | Path, epoch: int) -> Path:
    """The ticket file of ``epoch``: ``CATALOG/_lock/epoch-NNNNNNNNN.json`` (zero-padded: names sort by epoch)."""
    return Path(catalog) / LOCK_DIR / f"epoch-{int(epoch):09d}.json"


def _tickets(catalog: str | Path) -> list[tuple[int, Path]]:
    d = Path(catalog) / LOCK_DIR
    out = []
    try:
        names = os.listdir(d)
    except (FileNotFoundError, NotADirectoryError):
        return out
    for name in names:
        if name.startswith("epoch-") and name.endswith(".json"):
            try:
                out.append((int(name[6:-5]), d / name))
            except ValueError:
                continue
    return sorted(out)


def lock_record(catalog: str | Path) -> dict | None:
    """The current holder's record: the highest-epoch ticket (or, for a catalog locked by an older version,
    ``_lock.json`` when its epoch is higher). None when the catalog has never been locked."""
    tickets = _tickets(catalog)
    rec = None
    if tickets:
        epoch, p = tickets[-1]
        rec = _read(p)
        if rec is None or int(rec.get("epoch", -1)) != epoch:  # unreadable: a holder we cannot judge
            rec = {"epoch": epoch, "owner": None, "heartbeat": os.stat(p).st_mtime if p.exists() else 0.0,
                   "lease_s": 60.0, "released": False, "unreadable": True}
    legacy = _read(Path(catalog) / LOCK)
    if legacy and int(legacy.get("epoch", 0)) > (int(rec["epoch"]) if rec else 0):
        rec = {**legacy, "legacy": True}
    return rec


def current_epoch(catalog: str | Path) -> int:
    """Epoch of the catalog's current lock holder (0: never locked)."""
    rec = lock_record(catalog)
    return int(rec.get("epoch", 0)) if rec else 0


def check_epoch(catalog: str | Path, epoch: int, owner: str | None = None) -> None:
    """Refuse a task's write unless its run still holds the catalog.

    Parameters
    ----------
    catalog : the catalog folder.
    epoch : the run's epoch (from its :class:`LeaseLock`).
    owner : the run's lock owner token; when given, the epoch's ticket must be this owner's, and it must not
        be released (a task outliving its run writes nothing).

    Raises
    ------
    StaleEpochError
        A newer epoch exists, the epoch belongs to another owner, or (with ``owner``) the lock is gone or
        released.
    """
    rec = lock_record(catalog)
    cur = int(rec.get("epoch", 0)) if rec else 0
    if cur > epoch:
        raise StaleEpochError(f"catalog {catalog}: this task belongs to run epoch {epoch} but epoch {cur} now owns "
                              f"the catalog; the write was refused")
    if owner:
        if rec is None or cur < epoch:
            raise StaleEpochError(f"catalog {catalog}: the lock of run epoch {epoch} is gone; the write was refused")
        if rec.get("owner") != owner:
            raise StaleEpochError(f"catalog {catalog}: epoch {epoch} is held by {rec.get('owner')}, not by this "
                                  f"task's run {owner}; the write was refused")
        if rec.get("released"):
            raise StaleEpochError(f"catalog {catalog}: run epoch {epoch} has ended (its lock is released); the "
                                  f"write of this late task was refused")


class LeaseLock:
    """One writer per catalog: a lease with heartbeat and a strictly increasing epoch (see module doc).

    Parameters
    ----------
    catalog : path
        The catalog folder (created if missing: the lock is taken before the catalog is).
    lease_s : float
        Seconds without a heartbeat after which a holder whose death cannot be proven is taken over. The holder
        beats every ``lease_s / 4`` seconds.

    Attributes
    ----------
    epoch : int — the epoch taken (-1 before :meth:`acquire`). owner : str — this lock's unique owner token.
    lost : threading.Event — set when another run took the catalog over. release_error : str or None — why
    :meth:`release` could not mark the lock released (it is then left to be taken over).
    """

    def __init__(self, catalog: str | Path, lease_s: float = 60.0):
        self.catalog = Path(catalog)
        self.path = self.catalog / LOCK
        self.dir = self.catalog / LOCK_DIR
        self.lease_s = float(lease_s)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.identity = {"host": socket.gethostname(), "pid": os.getpid(), "boot_id": boot_id(),
                         "pid_ns": pid_ns(), "start": proc_start(os.getpid()) or 0.0}
        self.epoch = -1
        self.record: dict | None = None
        self.taken_over_from: dict | None = None
        self.release_error: str | None = None
        self.lost = threading.Event()
        #: set by the driver: a function that says whether the run is still making progress; while it returns
        #: False the heartbeat is not renewed (a hung driver loses the lock once its lease expires)
        self.alive_check = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    def _judge(self, cur: dict | None, watched: tuple | None) -> tuple[str, tuple | None]:
        """State of the current holder: free / dead / expired / alive / watch (another host: wait and see)."""
        if not cur or cur.get("released"):
            return "free", watched
        live = holder_liveness(cur) if not cur.get("unreadable") else "unknown"
        if live == "dead":
            return "dead", watched
        lease = float(cur.get("lease_s", self.lease_s))
        beat = float(cur.get("heartbeat", 0))
        age = time.time() - beat
        if live != "elsewhere":  # this host (alive or unknown): its heartbeat decides, on the same clock
            return ("expired" if age >= lease else "alive"), watched
        if age >= lease + CLOCK_SKEW_S:
            return "expired", watched
        if watched is None or watched[0] != beat:
            return ("alive" if watched is not None else "watch"), (beat, time.monotonic())
        return ("expired" if time.monotonic() - watched[1] >= lease else "watch"), watched

    def acquire(self, wait_s: float | None = None, min_epoch: int = 0) -> int:
        """Take the lock; returns the new epoch.

        * absent or released: taken;
        * holder provably dead (same host, boot and PID namespace; its process is gone): taken over at once;
        * holder on this host, alive or not visible: refused (:class:`LockHeldError`) until its heartbeat is
          older than the lease (a hung process), then taken over;
        * holder on another host: its heartbeat is watched on this host's clock: if it advances the holder is
          alive (refused); if it stays unchanged for a whole lease it is taken over. A heartbeat older than the
          lease plus :data:`CLOCK_SKEW_S` is taken over at once.

        Parameters
        ----------
        wait_s : wait up to this long for a live holder to finish (default: refuse at once).
        min_epoch : the highest epoch the catalog has recorded: the new epoch is above it and above the lock's,
            so epochs never go back even if the lock files were lost.

        Raises
        ------
        LockHeldError
            A live holder (after ``wait_s``), or the lock cannot be written (full, read-only or over-quota file
            system: the message names the path and what to do).
        """
        try:
            return self._acquire(wait_s, min_epoch)
        except OSError as exc:
            msg = storage_message(exc, "the catalog's lock", self.dir)
            if msg is None:
                raise
            raise LockHeldError(msg) from exc

    def _acquire(self, wait_s: float | None, min_epoch: int) -> int:
        self.dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        watched: tuple | None = None  # (heartbeat value, monotonic time first seen)
        while True:
            cur = lock_record(self.catalog)
            state, watched = self._judge(cur, watched)
            if state in ("alive", "watch"):
                lease = float(cur.get("lease_s", self.lease_s))
                if state == "alive" and time.monotonic() - t0 >= float(wait_s or 0.0):
                    age = max(0.0, time.time() - float(cur.get("heartbeat", 0)))
                    raise LockHeldError(
                        f"catalog {self.catalog} is being written by another run ({cur.get('owner')}, epoch "
                        f"{cur.get('epoch')}, last heartbeat {age:.0f} s ago, lease {lease:g} s). Wait for it to "
                        f"finish; a run that died is taken over automatically once its lease expires.")
                time.sleep(min(1.0, max(0.05, lease / 8)))
                continue
            # the epoch right after the holder judged: if another run took that holder over first, the ticket
            # exists and this run judges the new holder (never the next epoch on an old judgement)
            epoch = max(int(cur.get("epoch", 0)) if cur else 0, int(min_epoch)) + 1
            now = time.time()
            taken_over = state in ("dead", "expired")
            rec = {"owner": self.owner, "identity": self.identity, "epoch": epoch, "heartbeat": now,
                   "lease_s": self.lease_s, "acquired": now, "released": False, "taken_over": taken_over,
                   "previous": {k: cur.get(k) for k in ("owner", "epoch", "heartbeat")} if cur else None}
            fault_point("lock-ticket", ticket_path(self.catalog, epoch))
            if not create_exclusive(ticket_path(self.catalog, epoch), rec):
                continue  # another run took this epoch first: judge the new holder
            now_cur = lock_record(self.catalog)
            if not now_cur or now_cur.get("owner") != self.owner:
                continue  # a higher epoch exists already (we were slow): judge it
            self.epoch, self.record = epoch, rec
            self.taken_over_from = rec["previous"] if taken_over else None
            self._mirror(rec)
            self._prune()
            self._start_heartbeat()
            return epoch

    def _mirror(self, rec: dict) -> None:
        """Best-effort copy of the current record to ``_lock.json`` (for people; it decides nothing)."""
        try:
            old = _read(self.path)
            if old and int(old.get("epoch", 0)) > int(rec["epoch"]):
                return
            atomic_write_json(self.path, rec)
        except OSError:
            pass

    def _prune(self) -> None:
        for e, p in _tickets(self.catalog)[:-KEEP_TICKETS]:
            if e < self.epoch:
                p.unlink(missing_ok=True)

    def _rewrite(self, **changes) -> bool:
        """Rewrite our ticket with ``changes`` if we still hold the catalog; False (and ``lost`` set) if not."""
        with self._mutex:
            if not self.still_owner():
                return False
            self.record = {**self.record, **changes}
            atomic_write_json(ticket_path(self.catalog, self.epoch), self.record)
            self._mirror(self.record)
            return True

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self.lost.clear()

        def beat():
            while not self._stop.wait(self.lease_s / 4.0):
                check = self.alive_check
                if check is not None and not check():
                    continue  # the driver is stuck: let the lease run out
                try:
                    if not self._rewrite(heartbeat=time.time()):
                        return  # taken over (we were silent too long): stop beating
                except OSError:
                    pass  # a transient file-system error (or a full disk): the next beat retries

        self._thread = threading.Thread(target=beat, name="survey-infer-lease", daemon=True)
        self._thread.start()

    def still_owner(self) -> bool:
        """Whether this lock's epoch is still the catalog's current one (sets :attr:`lost` if not)."""
        cur = lock_record(self.catalog)
        ok = bool(cur and cur.get("owner") == self.owner and int(cur.get("epoch", -1)) == self.epoch)
        if not ok:
            self.lost.set()
        return ok

    def release(self) -> bool:
        """Mark the lock released; never raises. Returns False when it could not (lost, or the file system
        refused the write: :attr:`release_error` says why). An unreleased lock of a finished process is taken
        over at once by the next run on this host, and after the lease by a run on another host."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self.epoch < 0:
            return False
        try:
            fault_point("lock-release", ticket_path(self.catalog, self.epoch))
            return self._rewrite(released=True, heartbeat=time.time())
        except OSError as exc:
            self.release_error = (storage_message(exc, "releasing the catalog's lock", self.dir)
                                  or f"cannot release the lock of {self.catalog}: {type(exc).__name__}: {exc}")
            self.release_error += "; the lock is left to be taken over by the next run"
            return False
