"""Where the workers come from: ``local`` (CPU processes), ``cuda`` (dask-cuda, one worker per GPU),
``slurm`` (dask-jobqueue jobs, see :mod:`survey_infer.slurm`) or an existing scheduler (``tcp://…`` address
or a scheduler-file path)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from .errors import ClusterError  # noqa: F401  (defined in survey_infer.errors)

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

    Returns
    -------
    Path : the absolute path of the scheduler file.

    Raises
    ------
    ClusterError
        The file did not appear (or never held an ``address``) within ``wait_s`` seconds, or its folder does not
        exist.
    """
    import json
    import time

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
    time-outs), with the likely cause; never a traceback."""
    name = type(exc).__name__
    text = " ".join(str(exc).split())
    if name == "KilledWorker":
        import re

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


def _local_lifetime_config() -> dict:
    """Dask settings for a local cluster this process owns and that lives exactly as long as the run.

    A configured ``distributed.worker.lifetime.duration`` (site settings meant for job-queue workers, which a
    job queue replaces before the job's wall time ends) retires local workers with nothing to replace them
    (distributed#4752), and ``lifetime.restart`` fails in this distributed version; a local cluster ignores it
    (a notice says so)."""
    import dask.config

    life = dask.config.get("distributed.worker.lifetime.duration", None)
    if life:
        log.warning("distributed.worker.lifetime.duration=%s is not applied to this run's local workers (it is for "
                    "job-queue workers; a retired local worker would not be replaced)", life)
        return {"distributed.worker.lifetime.duration": None, "distributed.worker.lifetime.restart": False}
    return {}


def make_cluster(kind: str = "local", workers: int = 2, threads_per_worker: int = 1, *, memory_limit: str | None = None,
                 dashboard: bool = True, connect_timeout_s: float = 30.0, **slurm_options):
    """Start or connect to a Dask cluster and return ``(client, cluster_or_None)``.

    Parameters
    ----------
    kind : str
        ``local`` | ``cuda`` | ``slurm`` | ``tcp://host:port`` | path to a scheduler file.
    workers : int
        Worker processes (local), Slurm jobs (slurm); ignored for cuda (one per visible GPU) and addresses.
    threads_per_worker : int
        Dask threads per worker; each task itself uses a fixed torch thread count (1 on CPU).
    connect_timeout_s : float
        Seconds to reach an external scheduler (address or scheduler file).

    Raises
    ------
    ClusterError
        One line: the cluster could not be started or reached (workers failing to start, missing packages,
        an unreachable scheduler, an unknown kind).
    """
    import dask.config
    from distributed import Client, LocalCluster

    tune_worker_environment()
    if kind == "local":
        if int(workers) < 1:
            raise ClusterError(f"--workers must be at least 1 for --cluster local, got {workers}")
        cluster = None
        try:
            with dask.config.set(_local_lifetime_config()):
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
            raise ClusterError(f"--cluster local: the Dask workers could not start: {describe_dask_error(exc)}") \
                from exc
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
            with dask.config.set(_local_lifetime_config()):
                # the CPU work beside each GPU (read, CRC, flags, write) gets the machine's cores (issue 15)
                gpu_threads = max(1, (os.cpu_count() or 1) // max(1, torch.cuda.device_count()))
                cluster = LocalCUDACluster(threads_per_worker=max(int(threads_per_worker), gpu_threads),
                                           silence_logs=logging.ERROR,
                                           dashboard_address=":0" if dashboard else None)
        except ClusterError:
            raise
        except Exception as exc:  # noqa: BLE001 - NVML missing etc.
            raise ClusterError(f"--cluster cuda: could not start LocalCUDACluster: {describe_dask_error(exc)}") from exc
        return Client(cluster), cluster
    if kind == "slurm":
        from .slurm import make_slurm_cluster

        cluster = make_slurm_cluster(int(workers), **slurm_options)
        try:
            return Client(cluster), cluster
        except Exception as exc:  # noqa: BLE001
            cluster.close()
            raise ClusterError(f"--cluster slurm: cannot connect to the cluster's scheduler: "
                               f"{describe_dask_error(exc)}") from exc
    if is_address(kind):
        try:
            return Client(kind, timeout=f"{connect_timeout_s}s"), None
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {kind}: {describe_dask_error(exc)}") from exc
    if Path(kind).is_file():
        try:
            return Client(scheduler_file=str(Path(kind).absolute()), timeout=f"{connect_timeout_s}s"), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler in scheduler file {kind}: "
                               f"{describe_dask_error(exc)}") from exc
    if looks_like_scheduler_file(kind):
        raise ClusterError(f"--cluster {kind}: the scheduler file does not exist")
    raise ClusterError(f"unknown --cluster {kind!r}: use local, cuda, slurm, a tcp:// address or a scheduler file")


def cluster_device(kind: str) -> str:
    """Device class the tasks run on for this cluster kind (recorded in the fingerprint)."""
    return "cuda" if kind == "cuda" or os.environ.get("SURVEY_INFER_DEVICE") == "cuda" else "cpu"
