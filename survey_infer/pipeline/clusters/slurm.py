"""Dask workers as Slurm jobs (``--cluster slurm``): the only module that knows about dask-jobqueue.

:func:`survey_infer.pipeline.clusters.start_client` calls :func:`make_slurm_cluster`; the options (their
defaults in ``dask.config`` under ``survey-infer.slurm``, their command-line flags) are listed once in
:mod:`survey_infer.pipeline.clusters.slurm_options`. dask-jobqueue is an optional dependency
(``pip install 'survey-infer[slurm]'``); without it :func:`make_slurm_cluster` raises :class:`SlurmError` with
that instruction instead of an ImportError traceback.
"""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import SlurmError
from .common import WORKER_ENV
from .slurm_options import OPTION_KEYS, SLURM_OPTIONS, resolve_options, slurm_config, slurm_device  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    from dask_jobqueue import SLURMCluster

log = logging.getLogger(__name__)


def require_dask_jobqueue():
    """Import and return ``dask_jobqueue``, or raise :class:`SlurmError` saying how to install it."""
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise SlurmError(
            "--cluster slurm needs dask-jobqueue, which is not installed "
            f"({exc}); install it with: pip install 'survey-infer[slurm]'  (or: pip install dask-jobqueue)"
        ) from None
    return dask_jobqueue


def slurm_available(timeout: float = 10.0) -> bool:
    """True when a Slurm controller answers ``sinfo`` from this machine (within ``timeout`` seconds)."""
    if shutil.which("sinfo") is None:
        return False
    try:
        res = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _directive(value: str) -> str:
    """``'--qos=x'`` or ``'#SBATCH --qos=x'`` -> ``'--qos=x'`` (dask-jobqueue adds the ``#SBATCH`` prefix)."""
    value = value.strip()
    if value.startswith("#SBATCH"):
        value = value[len("#SBATCH"):].strip()
    return value


def shell_path(value: str) -> str:
    """A path as it must appear in a job script's command line: absolute and quoted.

    A path holding ``$`` (``$TMPDIR/dask``: expanded on the compute node) is kept relative to that variable and
    double-quoted (so that the variable still expands but spaces do not split it); any other path is made
    absolute on the submitting node (a job starts in another directory) and single-quoted (:func:`shlex.quote`).
    """
    v = str(value)
    if "$" in v:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`") + '"'
    return shlex.quote(os.path.abspath(os.path.expanduser(v)))


#: a GPU worker job's cores and memory per GPU when --slurm-cores / --slurm-memory are not given (the pipeline's
#: read, CRC, write and flags run on the CPU beside each GPU: 8 threads per GPU worker)
GPU_JOB_CORES_PER_GPU = 8
GPU_JOB_MEMORY_GIB_PER_GPU = 32


def cluster_kwargs(jobs: int | None = None, /, **options: Any) -> tuple[int, dict[str, Any]]:
    """Translate survey-infer Slurm options into ``dask_jobqueue.SLURMCluster`` keyword arguments.

    Parameters
    ----------
    jobs : int, optional
        Number of worker jobs (positional only). ``options['jobs']`` (``--slurm-jobs``) wins over it; when
        neither is given, ``survey-infer.slurm.jobs``.
    **options
        See :func:`make_slurm_cluster`.

    Returns
    -------
    (jobs, kwargs) : tuple[int, dict]
        The number of jobs to submit and the ``SLURMCluster`` keyword arguments.

    Raises
    ------
    SlurmError
        Fewer than one job, fewer cores than processes, or several processes per GPU job.
    """
    threads_per_worker = options.pop("threads_per_worker", None)
    o = resolve_options(options)
    n_jobs = int(options["jobs"] if options.get("jobs") is not None else jobs if jobs is not None else o["jobs"])
    if n_jobs < 1:
        raise SlurmError(f"--slurm-jobs must be at least 1, got {n_jobs}")
    cores, processes, memory = _job_size(o, options, threads_per_worker)
    # anything that is not a survey-infer option goes straight to SLURMCluster (security=, protocol=, ...)
    kw: dict[str, Any] = {k: v for k, v in options.items() if k not in OPTION_KEYS}
    kw.update(cores=cores, processes=processes, memory=memory)
    for opt in SLURM_OPTIONS:  # the options a job script takes as they are
        if opt.jobqueue and o[opt.name] not in (None, ""):
            kw[opt.jobqueue] = opt.type(o[opt.name])
    kw["python"] = shell_path(str(o["python"] or sys.executable))
    if o["scheduler_interface"]:
        sched = dict(kw.get("scheduler_options") or {})
        sched.setdefault("interface", str(o["scheduler_interface"]))
        kw["scheduler_options"] = sched
    if o["local_directory"]:
        kw["local_directory"] = shell_path(str(o["local_directory"]))
    if o["log_directory"]:
        # #SBATCH -o/-e lines: absolute (sbatch resolves them against the submission directory otherwise)
        logdir = Path(os.path.expanduser(os.path.expandvars(str(o["log_directory"])))).absolute()
        logdir.mkdir(parents=True, exist_ok=True)
        kw["log_directory"] = str(logdir)
    if o["tls"] and "security" not in kw:
        kw["security"] = _security(str(o["tls"]))
        if o["shared_temp_directory"]:
            kw["shared_temp_directory"] = str(o["shared_temp_directory"])
    _add_job_script_lines(kw, o, processes)
    return n_jobs, kw


def _job_size(o: dict[str, Any], given: dict[str, Any], threads_per_worker: int | None) -> tuple[int, int, str]:
    """(cores, processes, memory) of one job: ``cores`` given, else threads per worker x processes, else the
    configured cores; a GPU job gets :data:`GPU_JOB_CORES_PER_GPU` cores and :data:`GPU_JOB_MEMORY_GIB_PER_GPU`
    GiB per GPU unless cores or memory were given (the CPU work that feeds a GPU, issue 15)."""
    processes = int(o["processes"] or 1)
    if given.get("cores") is None and threads_per_worker:
        cores = int(threads_per_worker) * processes
    else:
        cores = int(o["cores"] or 1)
    if cores < processes:
        raise SlurmError(f"--slurm-cores ({cores}) must be at least the number of processes per job ({processes})")
    memory = str(o["memory"])
    gpus = int(o["gpus_per_job"] or 0)
    if gpus > 0:
        if given.get("cores") is None:
            cores = max(cores, GPU_JOB_CORES_PER_GPU * gpus)
        if given.get("memory") is None:
            from dask.utils import parse_bytes

            per_gpu = GPU_JOB_MEMORY_GIB_PER_GPU * gpus
            if parse_bytes(memory) < per_gpu * 2 ** 30:
                memory = f"{per_gpu}GiB"
    return cores, processes, memory


def _add_job_script_lines(kw: dict[str, Any], o: dict[str, Any], processes: int) -> None:
    """The ``#SBATCH`` directives, the prologue (with :data:`WORKER_ENV` and, on GPU jobs, the lifetime) and the
    worker's extra arguments, into ``kw``."""
    gpus = int(o["gpus_per_job"] or 0)
    directives = [_directive(d) for d in _as_list(o["extra_directives"])]
    worker_args = list(kw.pop("worker_extra_args", []) or [])
    if gpus > 0:
        if processes != 1:
            raise SlurmError(
                f"--slurm-gpus-per-job {gpus} with --slurm-processes {processes}: a dask-cuda worker already "
                "starts one process per GPU; leave processes at 1")
        directives.insert(0, str(o["gpu_directive"] or "--gres=gpu:{n}").format(n=gpus))
        kw["worker_command"] = str(o["gpu_worker_command"] or "dask cuda worker")
    # the worker environment (glibc mmap threshold: 3-4x faster inference)
    prologue = _as_list(o["prologue"]) + [f"export {k}={shlex.quote(v)}" for k, v in WORKER_ENV.items()]
    if o["lifetime"] and gpus > 0:
        # `dask cuda worker` has no --lifetime option: its workers read the same setting from the dask config
        prologue.append(f"export DASK_DISTRIBUTED__WORKER__LIFETIME__DURATION={shlex.quote(str(o['lifetime']))}")
        if o["lifetime_stagger"]:
            prologue.append("export DASK_DISTRIBUTED__WORKER__LIFETIME__STAGGER="
                            f"{shlex.quote(str(o['lifetime_stagger']))}")
    elif o["lifetime"]:
        worker_args += ["--lifetime", str(o["lifetime"])]
        if o["lifetime_stagger"]:
            worker_args += ["--lifetime-stagger", str(o["lifetime_stagger"])]
    if directives:
        kw["job_extra_directives"] = directives
    if o["directives_skip"]:
        kw["job_directives_skip"] = _as_list(o["directives_skip"])
    if prologue:
        kw["job_script_prologue"] = prologue
    if worker_args:
        kw["worker_extra_args"] = worker_args


def _security(mode: str):
    """``distributed.Security`` for ``tls`` = ``temporary`` (self-signed, made now) or ``config`` (the site's
    certificates from ``distributed.comm.tls.*`` in dask.config)."""
    from distributed.security import Security

    if mode in ("temporary", "true", "True", "yes"):
        return Security.temporary()
    if mode == "config":
        sec = Security(require_encryption=True)
        if not (sec.tls_ca_file and sec.tls_scheduler_cert and sec.tls_worker_cert and sec.tls_client_cert):
            raise SlurmError("tls: config needs distributed.comm.tls.ca-file and the scheduler/worker/client "
                             "cert (and key) entries in the dask config; see docs/slurm.md")
        return sec
    raise SlurmError(f"unknown tls mode {mode!r}: use 'temporary' or 'config'")


def _check_submission(cluster: "SLURMCluster") -> None:
    """Validate the generated job script with ``sbatch --test-only``; raise :class:`SlurmError` on rejection."""
    script = cluster.job_script()
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="survey-infer-job-", delete=False) as fh:
        fh.write(script)
        path = fh.name
    try:
        res = subprocess.run(["sbatch", "--test-only", path], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise SlurmError("sbatch --test-only did not answer within 60 s: is the Slurm controller up?") from None
    finally:
        os.unlink(path)
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).strip().replace("\n", " ")
        raise SlurmError(f"Slurm rejected the worker job script: {msg}\n--- job script ---\n{script}")


def make_slurm_cluster(jobs: int | None = None, /, **options: Any) -> "SLURMCluster":
    """Start a dask-jobqueue ``SLURMCluster`` (scheduler here, workers as Slurm jobs) scaled to ``jobs`` jobs.

    Parameters
    ----------
    jobs : int, optional
        Number of worker jobs (positional only). ``jobs=`` among the options (``--slurm-jobs``) wins over it;
        with neither, ``survey-infer.slurm.jobs`` from ``dask.config``.
    cores : int, optional
        Cores per job (``--cpus-per-task``) = threads per worker x processes per job.
    threads_per_worker : int, optional
        Used for ``cores`` (x processes) when ``cores`` is not given.
    processes : int, optional
        Dask worker processes per job.
    memory : str, optional
        Memory per job, e.g. ``"8GiB"`` (``--mem``; each worker's memory limit is memory / processes).
    walltime : str, optional
        ``HH:MM:SS`` per job.
    partition, account : str, optional
        ``-p`` and ``-A``.
    gpus_per_job : int, optional
        GPUs per job: adds ``--gres=gpu:N`` (``gpu_directive``) and runs ``python -m dask cuda worker``
        (``gpu_worker_command``, needs dask-cuda on the nodes) instead of a CPU worker; ``lifetime`` then goes
        to the workers through ``DASK_DISTRIBUTED__WORKER__LIFETIME__*`` (dask-cuda has no ``--lifetime``).
    extra_directives, directives_skip, prologue : list of str, optional
        Extra ``#SBATCH`` lines; generated lines to drop (e.g. ``["--mem"]``); shell lines before the worker.
    lifetime, lifetime_stagger : str, optional
        Workers retire gracefully after ``lifetime`` (+- stagger), e.g. ``"55m"``, ``"5m"``: set it shorter than
        the walltime so tasks are moved off before Slurm kills the job.
    replace_lost_jobs : bool, optional
        Keep ``jobs`` jobs running: resubmit a job that ended (lifetime, ``scancel``, node failure). Implemented
        with ``cluster.adapt(minimum_jobs=jobs, maximum_jobs=jobs)``.
    interface, scheduler_interface : str, optional
        Network interface of the workers (and of the scheduler unless ``scheduler_interface`` is given).
    local_directory, log_directory : str, optional
        Node-local scratch for the workers; directory for the jobs' Slurm output files.
    job_name, python, death_timeout : optional
        ``-J``; the interpreter on the nodes (default ``sys.executable``); seconds a worker waits for the
        scheduler.
    tls, shared_temp_directory : str, optional
        ``"temporary"``: TLS with self-signed certificates made now (the workers' copies are written to
        ``shared_temp_directory``, default the working directory, which must be on a shared file system);
        ``"config"``: TLS with the site's certificates from ``distributed.comm.tls.*``.
    check_submission : bool, optional
        Validate the job script with ``sbatch --test-only`` first, so a wrong partition/account/directive is a
        clear error here instead of a silently pending cluster.
    **options
        Anything else goes to ``SLURMCluster`` unchanged (``security=``, ``protocol=``, ``scheduler_options=``...).

    Returns
    -------
    dask_jobqueue.SLURMCluster
        Scaled to ``jobs`` jobs (submitted; workers join as Slurm starts them).

    Raises
    ------
    SlurmError
        dask-jobqueue missing, ``sbatch`` not found, or the job script rejected by Slurm.
    """
    jq = require_dask_jobqueue()
    check = options.pop("check_submission", None)
    if check is None:
        check = slurm_config("check-submission", True)
    replace = options.pop("replace_lost_jobs", None)
    if replace is None:
        replace = slurm_config("replace-lost-jobs", True)
    n_jobs, kw = cluster_kwargs(jobs, **options)
    if shutil.which("sbatch") is None:
        raise SlurmError("--cluster slurm: 'sbatch' is not on PATH; run on a Slurm login node (or start the "
                         "local Slurm: deploy/local-slurm/start.sh)")
    log.info("Slurm cluster: %d job(s) of %d core(s), %s, walltime %s", n_jobs, kw["cores"], kw["memory"],
             kw.get("walltime"))
    try:
        cluster = jq.SLURMCluster(**kw)
    except ValueError as exc:
        raise SlurmError(f"invalid Slurm options: {exc}") from None
    try:
        if check:
            _check_submission(cluster)
        log.debug("worker job script:\n%s", cluster.job_script())
        cluster.scale(jobs=n_jobs)
        if replace:
            cluster.adapt(minimum_jobs=n_jobs, maximum_jobs=n_jobs)
    except BaseException:
        cluster.close()
        raise
    return cluster


def describe_job_script(jobs: int | None = None, /, **options: Any) -> str:
    """The worker job script :func:`make_slurm_cluster` would submit (no scheduler started, nothing submitted).

    Parameters
    ----------
    jobs, **options : as for :func:`make_slurm_cluster`.

    Returns
    -------
    str
        The job script's text (the scheduler address is a placeholder).

    Raises
    ------
    SlurmError
        dask-jobqueue missing or an invalid option.
    """
    jq = require_dask_jobqueue()
    options.pop("check_submission", None)
    options.pop("replace_lost_jobs", None)
    _, kw = cluster_kwargs(jobs, **options)
    job = jq.slurm.SLURMJob(scheduler="tcp://SCHEDULER:8786", name="NAME", **{
        k: v for k, v in kw.items() if k not in ("scheduler_options", "security", "shared_temp_directory")})
    return job.job_script()


