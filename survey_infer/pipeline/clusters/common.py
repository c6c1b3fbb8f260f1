"""What every kind of cluster shares: the worker-process environment, the Dask settings of a cluster this run
owns, the check of Dask's temporary directory, and Dask errors and log records as one line."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ...errors import ClusterError

log = logging.getLogger(__name__)

#: Environment for worker processes. distributed's nanny sets MALLOC_TRIM_THRESHOLD_, which also freezes glibc's
#: mmap threshold at 128 kB: every multi-MB tensor and array is then mmapped and unmapped per call (page
#: faults), measured here to make inference 3-4x slower in a worker than in a plain process. A high mmap
#: threshold restores heap reuse. Local and Slurm nannies get it from ``distributed.nanny.pre-spawn-environ``;
#: Slurm job scripts export it.
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(256 * 2**20), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def tune_worker_environment() -> None:
    """Merge :data:`WORKER_ENV` into ``distributed.nanny.pre-spawn-environ`` (local and Slurm nannies)."""
    import dask.config

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    env.update(WORKER_ENV)
    dask.config.set({"distributed.nanny.pre-spawn-environ": env})


def local_lifetime_config() -> dict:
    """Dask settings for a local cluster this process owns and that lives exactly as long as the run.

    A configured ``distributed.worker.lifetime.duration`` (site settings meant for job-queue workers, which a
    job queue replaces before the job's wall time ends) retires local workers with nothing to replace them
    (distributed#4752), and ``lifetime.restart`` fails in this distributed version; a local cluster ignores it
    (a notice says so).

    Returns
    -------
    dict
        Settings for ``dask.config.set`` (empty when no lifetime is configured).
    """
    import dask.config

    life = dask.config.get("distributed.worker.lifetime.duration", None)
    if life:
        log.warning("distributed.worker.lifetime.duration=%s is not applied to this run's local workers (it is for "
                    "job-queue workers; a retired local worker would not be replaced)", life)
        return {"distributed.worker.lifetime.duration": None, "distributed.worker.lifetime.restart": False}
    return {}


def check_temporary_directory() -> None:
    """Refuse, before any work, a Dask ``temporary-directory`` (dask config / ``DASK_TEMPORARY_DIRECTORY``) that
    the workers of a local cluster could not create or write into (distributed#1736, dask-cuda#930). Nothing is
    created here.

    Raises
    ------
    ClusterError
        Naming the directory and why it is unusable.
    """
    import dask.config

    d = dask.config.get("temporary-directory", None)
    if not d:
        return
    p = Path(os.path.expandvars(os.path.expanduser(str(d)))).absolute()
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    why = None
    if not probe.is_dir():
        why = f"{probe} is not a directory"
    elif not os.access(probe, os.W_OK | os.X_OK):
        why = f"{probe} is not writable"
    if why:
        raise ClusterError(f"Dask temporary-directory {d} is unusable ({why}); set temporary-directory in your dask "
                           f"config (or DASK_TEMPORARY_DIRECTORY) to a writable folder")


def describe_dask_error(exc: BaseException) -> str:
    """One line for a Dask error the driver sees (KilledWorker, CommClosedError, ClosedClientError, cancellations,
    time-outs), with the likely cause; never a traceback.

    Parameters
    ----------
    exc : the exception.

    Returns
    -------
    str
        ``"<ExceptionName>: <what happened and the likely cause>"`` on one line.
    """
    name = type(exc).__name__
    text = " ".join(str(exc).split())
    if name == "KilledWorker":
        m = re.search(r"on (\d+) different workers", text)
        last = re.search(r"attempt(?:ed)? to run the task was (\S+?)\.?(?: |$)", text)
        return (f"KilledWorker: the worker running it died {m.group(1) + ' times' if m else 'repeatedly'}"
                + (f" (last {last.group(1)})" if last else "")
                + "; the usual cause is memory (the nanny's memory limit / distributed.worker.memory.terminate, or the "
                  "OOM killer): see the worker log")
    if name in ("CommClosedError", "StreamClosedError"):
        return f"{name}: the connection to the Dask scheduler or a worker closed ({text[:160]})"
    if name == "ClosedClientError" or "ClosedClient" in name:
        return "ClosedClientError: the Dask client was closed (the scheduler connection was lost)"
    if name == "CancelledError" or name == "FutureCancelledError":
        return f"cancelled by Dask ({text[:160] or 'no reason given'})"
    if isinstance(exc, TimeoutError):
        return f"TimeoutError: {text[:200] or 'the Dask scheduler did not answer'}"
    return f"{name}: {text[:300]}"


class OneLineDaskLogs(logging.Filter):
    """A logging filter: records of distributed, tornado and asyncio become one line each (the exception's type
    and message instead of its traceback), so that a lost scheduler or worker never prints a traceback."""

    PREFIXES = ("distributed", "tornado", "asyncio", "dask_jobqueue", "dask_cuda")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] not in self.PREFIXES:
            return True
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001
            msg = str(record.msg)
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            msg = (msg.strip() + " " if msg.strip() else "") + f"({type(exc).__name__}: {exc})"
        record.msg, record.args = " ".join(msg.split())[:400], ()
        record.exc_info = record.exc_text = record.stack_info = None
        return True


def install_one_line_dask_logs() -> None:
    """Install :class:`OneLineDaskLogs` on the handlers of the root and ``distributed`` loggers."""
    f = OneLineDaskLogs()
    for name in ("", "distributed"):
        for h in logging.getLogger(name).handlers:
            if not any(isinstance(x, OneLineDaskLogs) for x in h.filters):
                h.addFilter(f)
