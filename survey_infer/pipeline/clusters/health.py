"""Is the driver's Dask cluster still there? :class:`ClusterHealth` (scheduler reachable, at least one worker,
judged at most once a second) and :class:`LastClusterMessage` (the last warning of distributed's nannies and
workers, to name a cause)."""
from __future__ import annotations

import logging
import time


class ClusterHealth:
    """Is the driver's Dask cluster still there? (scheduler reachable, at least one worker)."""

    def __init__(self, client, grace_s: float, wait_first_worker: bool = False):
        """Watch ``client``'s cluster; ``grace_s``: seconds of unreachable scheduler or no worker before
        :meth:`check` gives a reason to stop; ``wait_first_worker``: no bound on the wait for the first worker
        (Slurm jobs queue)."""
        self.client = client
        self.grace_s = float(grace_s)
        self.wait_first_worker = wait_first_worker
        self.address = getattr(getattr(client, "scheduler", None), "address", None) or "?"
        self.unreachable_since: float | None = None
        self.no_worker_since: float | None = None
        self.seen_worker = False
        self.last_error: str | None = None
        self.next_check = 0.0
        self.heard = LastClusterMessage()

    def close(self) -> None:
        """Stop listening to the cluster's log messages."""
        self.heard.detach()

    def client_ok(self) -> bool:
        """Whether the client is connected (``status == "running"``)."""
        return self.client.status == "running"

    @staticmethod
    def is_connection_error(exc: BaseException) -> bool:
        """Whether ``exc`` means a lost connection or a cancelled task (not a failure of the block itself)."""
        from distributed.client import FutureCancelledError

        name = type(exc).__name__
        return isinstance(exc, (OSError, FutureCancelledError)) or name in (
            "CommClosedError", "StreamClosedError", "ClosedClientError", "CancelledError")

    def note(self, what: str) -> None:
        """Remember the last connection problem seen (named in the reason to stop)."""
        self.last_error = what

    def check(self) -> str | None:
        """A reason to stop, or None; looks at the cluster at most once a second."""
        now = time.monotonic()
        if now < self.next_check:
            return None
        self.next_check = now + 1.0
        st = self.client.status
        if st in ("closed", "closing", "failed"):
            return (f"the Dask scheduler at {self.address} is gone: the client lost its connection and closed"
                    + (f" ({self.last_error})" if self.last_error else ""))
        if st != "running":
            self.unreachable_since = self.unreachable_since or now
        else:
            try:
                info = self.client.scheduler_info(n_workers=1)
                self.unreachable_since = None
                nw = int(info.get("n_workers", len(info.get("workers", {}))))
            except Exception as exc:  # noqa: BLE001
                self.unreachable_since = self.unreachable_since or now
                self.last_error = " ".join(str(exc).split())[:160] or type(exc).__name__
                nw = None
            if nw == 0:
                if self.seen_worker or not self.wait_first_worker:
                    self.no_worker_since = self.no_worker_since or now
            elif nw:
                self.seen_worker = True
                self.no_worker_since = None
        if self.unreachable_since is not None and now - self.unreachable_since >= self.grace_s:
            return f"the Dask scheduler at {self.address} has been unreachable for {self.grace_s:g} s"
        if self.no_worker_since is not None and now - self.no_worker_since >= self.grace_s:
            heard = self.heard.text()
            return (f"no Dask worker connected to the scheduler at {self.address} for {self.grace_s:g} s (workers "
                    f"that retired at their lifetime, were killed for memory, or whose jobs ended are not replaced)"
                    + (f"; last cluster message: {heard}" if heard else ""))
        return None


class LastClusterMessage(logging.Handler):
    """Keeps the last warning of distributed's nannies and workers in this process (a local cluster's nannies
    live in the driver), e.g. "Worker ... exceeded 95% memory budget. Restarting...", to name a cause."""

    NAMES = ("distributed.nanny", "distributed.worker")

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.last: str | None = None
        for name in self.NAMES:
            logging.getLogger(name).addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = " ".join(record.getMessage().split())
        except Exception:  # noqa: BLE001
            return
        if "Restarting worker" not in msg and "still alive" not in msg:
            self.last = msg[:200]

    def text(self) -> str | None:
        """The last message kept (None: none yet)."""
        return self.last

    def detach(self) -> None:
        """Remove this handler from the loggers."""
        for name in self.NAMES:
            logging.getLogger(name).removeHandler(self)
