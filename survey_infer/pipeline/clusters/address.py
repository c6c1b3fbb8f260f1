"""An existing scheduler: ``--cluster tcp://host:port`` (or ``tls://``, ``ucx://``, ``inproc://``) or a scheduler
file that ``dask scheduler --scheduler-file F`` writes (possibly a moment after this process starts)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ...errors import ClusterError
from .common import describe_dask_error

#: cluster kinds that are not a scheduler address or file
KINDS = ("local", "cuda", "slurm", "inprocess")


def is_address(kind: str) -> bool:
    """Whether ``--cluster`` names a scheduler address (``tcp://``, ``tls://``, ``ucx://``, ``inproc://``)."""
    return str(kind).startswith(("tcp://", "tls://", "ucx://", "inproc://"))


def looks_like_scheduler_file(kind: str) -> bool:
    """Whether ``--cluster`` names a scheduler file (an existing file, or a path: it holds a ``/`` or ends in
    ``.json``), as opposed to a misspelt cluster kind."""
    k = str(kind)
    return k not in KINDS and not is_address(k) and (Path(k).is_file() or os.sep in k or k.endswith(".json"))


def wait_for_scheduler_file(path: str | Path, wait_s: float, print_fn=print, poll_s: float = 0.25) -> Path:
    """Wait up to ``wait_s`` seconds for a scheduler file to exist and hold a scheduler address.

    A job script that starts ``dask scheduler --scheduler-file F`` and the client side by side races with the
    scheduler writing ``F`` (distributed#9292); this wait is bounded and says so.

    Parameters
    ----------
    path : the scheduler file (made absolute here).
    wait_s : seconds to wait for it (0: do not wait).
    print_fn : where the one-line "waiting" notice goes.
    poll_s : seconds between looks at the file.

    Returns
    -------
    Path : the absolute path of the scheduler file.

    Raises
    ------
    ClusterError
        The file did not appear (or never held an ``address``) within ``wait_s`` seconds, or its folder does not
        exist.
    """
    p = Path(os.path.expanduser(str(path))).absolute()
    if not p.parent.is_dir():
        raise ClusterError(f"--cluster {path}: scheduler file folder {p.parent} does not exist")

    def ready() -> bool:
        try:
            return bool(json.loads(p.read_text()).get("address"))
        except (OSError, ValueError, AttributeError):
            return False

    if ready():
        return p
    print_fn(f"waiting up to {wait_s:g} s for the scheduler file {p} (not written yet)")
    deadline = time.monotonic() + max(0.0, float(wait_s))
    while time.monotonic() < deadline:
        time.sleep(poll_s)
        if ready():
            return p
    what = "does not exist" if not p.exists() else "holds no scheduler address"
    raise ClusterError(f"--cluster {path}: the scheduler file {what} after waiting {wait_s:g} s: start the scheduler "
                       f"(dask scheduler --scheduler-file {p}) or raise --cluster-wait")


def connect(kind: str, timeout_s: float = 30.0):
    """A client on an existing scheduler (an address or a scheduler file).

    Parameters
    ----------
    kind : ``tcp://host:port`` (any :func:`is_address`) or the path of a scheduler file.
    timeout_s : seconds to reach the scheduler.

    Returns
    -------
    distributed.Client

    Raises
    ------
    ClusterError
        The scheduler could not be reached, the scheduler file does not exist, or ``kind`` is neither an address
        nor a path (an unknown cluster kind).
    """
    from distributed import Client

    if is_address(kind):
        try:
            return Client(kind, timeout=f"{timeout_s}s")
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {kind}: {describe_dask_error(exc)}") from exc
    if Path(kind).is_file():
        try:
            return Client(scheduler_file=str(Path(kind).absolute()), timeout=f"{timeout_s}s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler in scheduler file {kind}: "
                               f"{describe_dask_error(exc)}") from exc
    if looks_like_scheduler_file(kind):
        raise ClusterError(f"--cluster {kind}: the scheduler file does not exist")
    raise ClusterError(f"unknown --cluster {kind!r}: use local, cuda, slurm, a tcp:// address or a scheduler file")
