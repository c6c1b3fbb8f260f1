"""Where the workers come from: ``local`` (CPU processes), ``cuda`` (dask-cuda, one worker per GPU),
``slurm`` (dask-jobqueue jobs, see :mod:`survey_infer.slurm`) or an existing scheduler (``tcp://…`` address
or a scheduler-file path)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


#: Environment for worker processes. distributed's nanny sets MALLOC_TRIM_THRESHOLD_, which also freezes glibc's
#: mmap threshold at 128 kB: every multi-MB tensor and array is then mmapped and unmapped per call (page
#: faults), measured here to make inference 3-4x slower in a worker than in a plain process. A high mmap
#: threshold restores heap reuse.
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(256 * 2**20), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def tune_worker_environment() -> None:
    """Merge :data:`WORKER_ENV` into ``distributed.nanny.pre-spawn-environ`` (local and Slurm nannies)."""
    import dask.config

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    env.update(WORKER_ENV)
    dask.config.set({"distributed.nanny.pre-spawn-environ": env})


class ClusterError(RuntimeError):
    """The requested cluster cannot be started (missing package, no GPU, unreachable scheduler)."""


def make_cluster(kind: str = "local", workers: int = 2, threads_per_worker: int = 1, *, memory_limit: str | None = None,
                 dashboard: bool = True, **slurm_options):
    """Start or connect to a Dask cluster and return ``(client, cluster_or_None)``.

    Parameters
    ----------
    kind : str
        ``local`` | ``cuda`` | ``slurm`` | ``tcp://host:port`` | path to a scheduler file.
    workers : int
        Worker processes (local), Slurm jobs (slurm); ignored for cuda (one per visible GPU) and addresses.
    threads_per_worker : int
        Dask threads per worker; each task itself uses a fixed torch thread count (1 on CPU).
    """
    from distributed import Client, LocalCluster

    tune_worker_environment()
    if kind == "local":
        cluster = LocalCluster(n_workers=int(workers), threads_per_worker=int(threads_per_worker), processes=True,
                               memory_limit=memory_limit or "auto", dashboard_address=":0" if dashboard else None,
                               silence_logs=logging.ERROR)
        return Client(cluster), cluster
    if kind == "cuda":
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
            cluster = LocalCUDACluster(threads_per_worker=int(threads_per_worker), silence_logs=logging.ERROR,
                                       dashboard_address=":0" if dashboard else None)
        except ClusterError:
            raise
        except Exception as exc:  # noqa: BLE001 - NVML missing etc.
            raise ClusterError(f"--cluster cuda: could not start LocalCUDACluster: {exc}") from exc
        return Client(cluster), cluster
    if kind == "slurm":
        from .slurm import make_slurm_cluster

        cluster = make_slurm_cluster(int(workers), **slurm_options)
        return Client(cluster), cluster
    if kind.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
        try:
            return Client(kind, timeout="30s"), None
        except OSError as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {kind}: {exc}") from exc
    if Path(kind).is_file():
        try:
            return Client(scheduler_file=kind, timeout="30s"), None
        except OSError as exc:
            raise ClusterError(f"cannot reach the Dask scheduler in scheduler file {kind}: {exc}") from exc
    raise ClusterError(f"unknown --cluster {kind!r}: use local, cuda, slurm, a tcp:// address or a scheduler file")


def cluster_device(kind: str) -> str:
    """Device class the tasks run on for this cluster kind (recorded in the fingerprint)."""
    return "cuda" if kind == "cuda" or os.environ.get("SURVEY_INFER_DEVICE") == "cuda" else "cpu"
