"""``--cluster local``: CPU worker processes on this machine (a ``distributed.LocalCluster`` this run owns)."""
from __future__ import annotations

import logging

from ...errors import ClusterError
from .common import describe_dask_error, local_lifetime_config


def start_local(workers: int, threads_per_worker: int = 1, *, memory_limit: str | None = None,
                dashboard: bool = True):
    """Start a local cluster of ``workers`` processes and a client on it.

    Parameters
    ----------
    workers : worker processes (>= 1).
    threads_per_worker : Dask threads per worker.
    memory_limit : each worker's memory limit (``"auto"`` when None: the machine's memory / workers).
    dashboard : serve the dashboard on a free port.

    Returns
    -------
    (distributed.Client, distributed.LocalCluster)

    Raises
    ------
    ClusterError
        ``workers`` < 1, or the workers could not start (one line with the Dask error).
    """
    import dask.config
    from distributed import Client, LocalCluster

    if int(workers) < 1:
        raise ClusterError(f"--workers must be at least 1 for --cluster local, got {workers}")
    cluster = None
    try:
        with dask.config.set(local_lifetime_config()):
            cluster = LocalCluster(n_workers=int(workers), threads_per_worker=int(threads_per_worker),
                                   processes=True, memory_limit=memory_limit or "auto",
                                   dashboard_address=":0" if dashboard else None, silence_logs=logging.ERROR)
            return Client(cluster), cluster
    except Exception as exc:  # noqa: BLE001 - any start-up failure becomes one line
        if cluster is not None:
            try:
                cluster.close()
            except Exception:  # noqa: BLE001
                pass
        raise ClusterError(f"--cluster local: the Dask workers could not start: {describe_dask_error(exc)}") from exc
