"""Where the workers come from: ``local`` (CPU processes), ``cuda`` (dask-cuda, one worker per GPU), ``slurm``
(dask-jobqueue jobs) or an existing scheduler (``tcp://…`` address or a scheduler-file path).

:func:`start_client` is the one entry point: every part of survey-infer that needs Dask workers (``run``,
``ingest``, the benchmarks) gets its client from it. One module per kind: :mod:`.local`, :mod:`.cuda`,
:mod:`.slurm` (its options listed once in :mod:`.slurm_options`), :mod:`.address`; :mod:`.common` holds what
they share (worker environment, one-line Dask errors and logs).
"""
from __future__ import annotations

import os
from typing import Any

from ...errors import ClusterError
from .address import KINDS, is_address, looks_like_scheduler_file, wait_for_scheduler_file
from .common import (WORKER_ENV, check_temporary_directory, describe_dask_error, install_one_line_dask_logs,
                     tune_worker_environment)

__all__ = ["start_client", "cluster_device", "check_cluster_kind", "KINDS", "WORKER_ENV", "is_address",
           "looks_like_scheduler_file", "wait_for_scheduler_file", "check_temporary_directory", "describe_dask_error",
           "install_one_line_dask_logs", "ClusterError"]


def start_client(kind: str = "local", workers: int = 2, threads_per_worker: int = 1, *,
                 memory_limit: str | None = None, dashboard: bool = True, connect_timeout_s: float = 30.0,
                 slurm_options: dict[str, Any] | None = None):
    """Start or connect to a Dask cluster and return a client on it.

    Parameters
    ----------
    kind : str
        ``local`` | ``cuda`` | ``slurm`` | ``tcp://host:port`` | path to a scheduler file.
    workers : int
        Worker processes (local), Slurm jobs (slurm, unless ``slurm_options["jobs"]``); ignored for cuda (one
        per visible GPU) and for an existing scheduler.
    threads_per_worker : int
        Dask threads per worker; each task itself uses a fixed torch thread count (1 on CPU).
    memory_limit : str, optional
        Memory limit of each local worker (default ``"auto"``).
    dashboard : bool
        Serve the dashboard (local and cuda clusters) on a free port.
    connect_timeout_s : float
        Seconds to reach an existing scheduler (address or scheduler file).
    slurm_options : dict, optional
        Keyword options of :func:`survey_infer.pipeline.clusters.slurm.make_slurm_cluster` (``--slurm-*``).

    Returns
    -------
    (client, owned)
        The ``distributed.Client`` and the cluster object this call started (the caller closes it after the
        client), or None when ``kind`` names an existing scheduler.

    Raises
    ------
    ClusterError
        One line: the cluster could not be started or reached (workers failing to start, missing packages,
        an unreachable scheduler, an unknown kind).
    SlurmError
        ``kind="slurm"``: dask-jobqueue missing, ``sbatch`` not found, or the job script rejected.
    """
    tune_worker_environment()
    if kind == "local":
        from .local import start_local

        return start_local(workers, threads_per_worker, memory_limit=memory_limit, dashboard=dashboard)
    if kind == "cuda":
        from .cuda import start_cuda

        return start_cuda(threads_per_worker, dashboard=dashboard)
    if kind == "slurm":
        from distributed import Client

        from .slurm import make_slurm_cluster

        cluster = make_slurm_cluster(int(workers), **(slurm_options or {}))
        try:
            return Client(cluster), cluster
        except Exception as exc:  # noqa: BLE001
            cluster.close()
            raise ClusterError(f"--cluster slurm: cannot connect to the cluster's scheduler: "
                               f"{describe_dask_error(exc)}") from exc
    from .address import connect

    return connect(kind, connect_timeout_s), None


def check_cluster_kind(kind: str) -> None:
    """Refuse, before any work, an unknown ``--cluster`` and (local and cuda clusters) an unusable Dask
    temporary directory.

    Raises
    ------
    ClusterError
        One line naming the option.
    """
    c = str(kind)
    if c not in KINDS and not is_address(c) and not looks_like_scheduler_file(c):
        raise ClusterError(f"unknown --cluster {c!r}: use local, cuda, slurm, a tcp:// address or a scheduler file")
    if c in ("local", "cuda"):
        check_temporary_directory()


def cluster_device(kind: str, slurm_options: dict[str, Any] | None = None) -> str:
    """Device class the tasks run on for this cluster kind (recorded in the fingerprint).

    Parameters
    ----------
    kind : the ``--cluster`` value.
    slurm_options : for ``kind="slurm"``: GPU jobs (``gpus_per_job`` > 0, given or configured) run on cuda.

    Returns
    -------
    str
        ``"cuda"`` for ``--cluster cuda``, Slurm GPU jobs, or (local, address, scheduler file)
        ``SURVEY_INFER_DEVICE=cuda`` (the one-allocation script's GPU workers); else ``"cpu"``.
    """
    if kind == "slurm":
        from .slurm_options import slurm_device

        return slurm_device(slurm_options)
    return "cuda" if kind == "cuda" or os.environ.get("SURVEY_INFER_DEVICE") == "cuda" else "cpu"
