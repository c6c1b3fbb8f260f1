"""``--cluster cuda``: one dask-cuda worker per visible GPU on this machine (a ``LocalCUDACluster`` this run
owns); each worker gets the machine's cores / GPUs threads for the CPU work beside its GPU (issue 15)."""
from __future__ import annotations

import logging
import os

from ...errors import ClusterError
from .common import describe_dask_error, local_lifetime_config


def start_cuda(threads_per_worker: int = 1, *, dashboard: bool = True):
    """Start a ``dask_cuda.LocalCUDACluster`` and a client on it.

    Parameters
    ----------
    threads_per_worker : lower bound on the threads of each worker (the default is cores // GPUs).
    dashboard : serve the dashboard on a free port.

    Returns
    -------
    (distributed.Client, dask_cuda.LocalCUDACluster)

    Raises
    ------
    ClusterError
        dask-cuda missing or unusable, torch sees no GPU, or the cluster could not start (one line).
    """
    import dask.config
    from distributed import Client

    try:
        from dask_cuda import LocalCUDACluster
    except Exception as exc:  # noqa: BLE001 - ImportError or CUDA binding errors
        raise ClusterError(f"--cluster cuda needs dask-cuda with working CUDA bindings "
                           f"(pip install 'survey-infer[gpu]'): {exc}") from exc
    try:
        import torch

        if not torch.cuda.is_available():
            raise ClusterError("--cluster cuda: torch sees no CUDA GPU on this machine "
                               "(install a CUDA build of torch, or use --cluster local)")
        with dask.config.set(local_lifetime_config()):
            gpu_threads = max(1, (os.cpu_count() or 1) // max(1, torch.cuda.device_count()))
            cluster = LocalCUDACluster(threads_per_worker=max(int(threads_per_worker), gpu_threads),
                                       silence_logs=logging.ERROR, dashboard_address=":0" if dashboard else None)
    except ClusterError:
        raise
    except Exception as exc:  # noqa: BLE001 - NVML missing etc.
        raise ClusterError(f"--cluster cuda: could not start LocalCUDACluster: {describe_dask_error(exc)}") from exc
    return Client(cluster), cluster
