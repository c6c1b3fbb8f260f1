"""Named fault-injection points (deterministic fault tests) and the classification of OS errors.

Fault injection
    ``SURVEY_INFER_FAULT="POINT:ACTION[:skip=K][:times=N]"`` (several separated by ``;``) makes the process act
    when execution reaches :func:`fault_point` ``(POINT)``: on hits ``K .. K+N-1`` of that point (defaults: skip
    0, times 1). Hits are counted per process, or across processes (Dask workers, retried tasks) when
    ``SURVEY_INFER_FAULT_STATE`` names a folder: one file per hit is created there (``O_EXCL``), so a test can
    also see how often a point was reached. ``POINT@B`` acts only in block ``B`` (task points; counted apart).
    Actions:

    ``kill``
        SIGKILL this process (a preemption, an OOM kill: nothing after it runs, no ``finally``).
    ``exit``
        ``os._exit(FAULT_EXIT_CODE)`` (as abrupt as ``kill``, with a recognisable exit code).
    ``pause``
        wait until the file ``$SURVEY_INFER_FAULT_STATE/POINT.go`` exists (at most 300 s): a test holds a run at
        a known point instead of racing it.
    ``enospc`` / ``erofs`` / ``edquot``
        raise the :class:`OSError` a full, read-only or over-quota file system raises (named after the path the
        point is about to write).
    ``eio`` / ``estale`` / ``etimedout``
        raise a transient :class:`OSError` (an NFS hiccup).
    ``corrupt``
        raise :class:`ValueError` (bad data: never retried).

    The points are listed in :data:`POINTS`. Without the variable :func:`fault_point` costs one dictionary
    look-up.

OS errors
    :func:`transient_oserror` finds an error that is worth retrying (an I/O error, a stale NFS handle, a time-out)
    anywhere in an exception's cause chain; :func:`storage_message` turns out-of-space, read-only and over-quota
    errors into one line naming the path and what to do.
"""
from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

FAULT_ENV = "SURVEY_INFER_FAULT"
FAULT_STATE_ENV = "SURVEY_INFER_FAULT_STATE"
FAULT_EXIT_CODE = 86

#: where :func:`fault_point` is called: name -> what has happened when it is reached
POINTS = {
    "lock-ticket": "driver: about to create the lock ticket of a new epoch",
    "lock-acquired": "driver: the lock is taken, the catalog not yet opened",
    "read": "task: about to read a sub-block of input rows",
    "write": "task: about to write the block's region of the catalog",
    "after-intent": "task (reprocessing): the merge intent is recorded, the merged block not yet written",
    "after-write": "task: the block is written, its done-marker not yet",
    "marker": "task: about to write the done-marker",
    "after-marker": "task: the done-marker is written, the result not yet returned",
    "block-done": "driver: a block's result was received",
    "run-record": "driver: about to write the final run record into the catalog's attributes",
    "lock-release": "driver: about to release the lock",
}

_ERRORS = {"enospc": errno.ENOSPC, "erofs": errno.EROFS, "edquot": errno.EDQUOT, "eio": errno.EIO,
           "estale": errno.ESTALE, "etimedout": errno.ETIMEDOUT}
_LOCAL_HITS: dict[str, int] = {}

#: errno values of errors that may go away by themselves (retried, with a bound)
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.EAGAIN, errno.EINTR, errno.EBUSY,
                              errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED, errno.EHOSTDOWN,
                              errno.EHOSTUNREACH, errno.ENETDOWN, errno.ENETUNREACH, errno.ENETRESET,
                              errno.ENOLCK, errno.EREMOTEIO})
#: errno values of a file system that cannot take more writes: not retried, one clear line
STORAGE_ERRNOS = {errno.ENOSPC: "the file system is full", errno.EDQUOT: "your disk quota is exceeded",
                  errno.EROFS: "the file system is read-only"}


class TransientIOError(RuntimeError):
    """A block failed on an OS error that may go away by itself: raised from the task so that Dask retries the
    task (``retries=``); not an :class:`OSError` so that it is not mistaken for a lost connection to Dask."""


def _parse(spec: str) -> list[tuple[str, str, int, int]]:
    out = []
    for item in spec.split(";"):
        parts = [p.strip() for p in item.strip().split(":") if p.strip()]
        if not parts:
            continue
        opts = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
        out.append((parts[0], parts[1] if len(parts) > 1 else "exit", int(opts.get("skip", 0)),
                    int(opts.get("times", 1))))
    return out


def _hit(point: str) -> int:
    """Index of this hit of ``point`` (0, 1, ...), counted across processes when a state folder is set."""
    state = os.environ.get(FAULT_STATE_ENV)
    if not state:
        k = _LOCAL_HITS.get(point, 0)
        _LOCAL_HITS[point] = k + 1
        return k
    d = Path(state)
    d.mkdir(parents=True, exist_ok=True)
    k = 0
    while True:
        try:
            os.close(os.open(d / f"{point}.hit-{k:06d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return k
        except FileExistsError:
            k += 1


def fault_hits(point: str, state: str | Path | None = None) -> int:
    """How many times ``point`` was reached (counted in the ``SURVEY_INFER_FAULT_STATE`` folder ``state``)."""
    d = Path(state or os.environ.get(FAULT_STATE_ENV, ""))
    return len(list(d.glob(f"{point}.hit-*"))) if str(d) and d.is_dir() else 0


def fault_point(name: str, path: str | Path | None = None, block: int | None = None) -> None:
    """Act as ``SURVEY_INFER_FAULT`` says when execution reaches the point ``name`` (see module doc).

    Parameters
    ----------
    name : one of :data:`POINTS`.
    path : the file or folder the code is about to write (named in injected :class:`OSError` s).
    block : the block a task point is in (``POINT@B`` in the variable acts only there).

    Raises
    ------
    OSError, ValueError
        When the variable asks for an injected error at this hit of this point.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    keys = {name} if block is None else {name, f"{name}@{int(block)}"}
    faults = [f for f in _parse(spec) if f[0] in keys]
    hits = {key: _hit(key) for key in sorted({f[0] for f in faults})}
    for point, action, skip, times in faults:
        if not skip <= hits[point] < skip + times:
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)  # the signal is delivered before this returns
        if action == "exit":
            os._exit(FAULT_EXIT_CODE)
        if action == "pause":
            go = Path(os.environ.get(FAULT_STATE_ENV, ".")) / f"{name}.go"
            t0 = time.monotonic()
            while not go.exists() and time.monotonic() - t0 < 300:
                time.sleep(0.02)
            return
        if action in _ERRORS:
            code = _ERRORS[action]
            raise OSError(code, os.strerror(code), str(path) if path is not None else name)
        if action == "corrupt":
            raise ValueError(f"injected data error at fault point {name}")
        raise ValueError(f"{FAULT_ENV}: unknown action {action!r} at point {name!r}")


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def find_oserror(exc: BaseException) -> OSError | None:
    """The first :class:`OSError` with an ``errno`` in ``exc``'s cause/context chain (itself included)."""
    return next((e for e in _chain(exc) if isinstance(e, OSError) and e.errno is not None), None)


def transient_oserror(exc: BaseException) -> OSError | None:
    """The transient :class:`OSError` (:data:`TRANSIENT_ERRNOS`) behind ``exc``, or None (a data error, a
    missing file, a full disk: retrying would not help)."""
    e = find_oserror(exc)
    return e if e is not None and e.errno in TRANSIENT_ERRNOS else None


def storage_message(exc: BaseException, what: str = "", path: str | Path | None = None) -> str | None:
    """One line for an out-of-space, over-quota or read-only error behind ``exc`` (None for other errors).

    Parameters
    ----------
    exc : the exception (its cause chain is searched for the :class:`OSError`).
    what : what was being written, e.g. ``"the run record"``.
    path : the file or folder being written, named when the error does not carry a file name (a failed
        ``write`` or ``flush`` does not).

    Returns
    -------
    str or None
        ``"cannot write PATH (WHAT): the file system is full [Errno 28]. Free space on it (or ...) and run the
        same command again: the run resumes where it stopped"``.
    """
    e = find_oserror(exc)
    if e is None or e.errno not in STORAGE_ERRNOS:
        return None
    path = e.filename or path or "?"
    todo = {errno.ENOSPC: "free space on it", errno.EDQUOT: "free space or ask for a larger quota",
            errno.EROFS: "make it writable (or choose an output on a writable file system)"}[e.errno]
    return (f"cannot write {path}{f' ({what})' if what else ''}: {STORAGE_ERRNOS[e.errno]} "
            f"[{errno.errorcode[e.errno]}]. {todo[0].upper()}{todo[1:]} and run the same command again: the run "
            f"resumes where it stopped")
