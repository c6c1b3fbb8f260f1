"""The Slurm options of ``--cluster slurm``, written once.

:data:`SLURM_OPTIONS` names every option a single time: its keyword (``make_slurm_cluster(cores=...)``), its key in
``dask.config`` under ``survey-infer.slurm`` (the keyword with dashes), its ``--slurm-*`` command-line flag and
help (``survey_infer.cli.run`` builds the argument group from it), and, for the options that pass straight
into a job script, the ``dask_jobqueue.SLURMCluster`` keyword it becomes
(:func:`survey_infer.pipeline.clusters.slurm.cluster_kwargs`).

Defaults live in ``survey_infer/slurm.yaml`` and are merged into ``dask.config`` under ``survey-infer.slurm``
(the dask-jobqueue convention), so that a site configures them once in a YAML file that dask reads (for example
``~/.config/dask/survey-infer.yaml``; see ``deploy/site-example.yaml``). Precedence, highest first: keyword
options (``--slurm-*`` on the command line), ``survey-infer.slurm.*``, then dask-jobqueue's own
``jobqueue.slurm.*`` for keys left null.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import dask.config
import yaml

CONFIG_KEY = "survey-infer.slurm"
_DEFAULTS_FILE = Path(__file__).resolve().parents[2] / "slurm.yaml"


@dataclass(frozen=True)
class SlurmOption:
    """One Slurm option.

    Attributes
    ----------
    name : keyword of :func:`~survey_infer.pipeline.clusters.slurm.make_slurm_cluster`; its ``dask.config`` key
        under ``survey-infer.slurm`` is the same with dashes (:attr:`key`).
    help : command-line help (``{default}`` is replaced by the configured default); None: not on the command line.
    flag : command-line flag after ``--slurm-`` (default: the key).
    type : the value's type on the command line.
    metavar, choices : argparse's.
    repeat : the flag may be given several times (a list).
    jobqueue : the ``SLURMCluster`` keyword the value passes to unchanged (as ``type``); None: translated by hand.
    """

    name: str
    help: str | None = None
    flag: str | None = None
    type: Callable = str
    metavar: str | None = None
    choices: tuple | None = None
    repeat: bool = False
    jobqueue: str | None = None

    @property
    def key(self) -> str:
        """The ``dask.config`` key under ``survey-infer.slurm`` (the name with dashes)."""
        return self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        """The argparse destination (``slurm_<name>``)."""
        return f"slurm_{self.name}"


SLURM_OPTIONS: tuple[SlurmOption, ...] = (
    SlurmOption("jobs", "number of worker jobs (default: --workers, else {default})", type=int, metavar="N"),
    SlurmOption("cores", "cores per job (default: {default})", type=int, metavar="N"),
    SlurmOption("processes", "Dask worker processes per job (default: {default})", type=int, metavar="N"),
    SlurmOption("memory", "memory per job, e.g. 8GiB (default: {default})", metavar="SIZE"),
    SlurmOption("walltime", "walltime per job (default: {default})", metavar="HH:MM:SS", jobqueue="walltime"),
    SlurmOption("partition", "partition (-p) (default: {default})", metavar="NAME", jobqueue="queue"),
    SlurmOption("account", "account (-A) (default: {default})", metavar="NAME", jobqueue="account"),
    SlurmOption("gpus_per_job", "GPUs per job: --gres=gpu:N and a dask-cuda worker (default: {default})", type=int,
                metavar="N"),
    SlurmOption("gpu_directive"),
    SlurmOption("gpu_worker_command"),
    SlurmOption("extra_directives", "extra #SBATCH directive, e.g. --slurm-extra-directive=--qos=long (repeatable)",
                flag="extra-directive", metavar="DIRECTIVE", repeat=True),
    SlurmOption("directives_skip", "drop generated #SBATCH lines containing TEXT, e.g. --slurm-skip-directive=--mem "
                "(repeatable)", flag="skip-directive", metavar="TEXT", repeat=True),
    SlurmOption("prologue", "shell line run in the job before the worker, e.g. 'module load cuda' (repeatable)",
                metavar="SHELL", repeat=True),
    SlurmOption("lifetime", "workers retire after this time, e.g. 55m (keep it below the walltime) (default: "
                "{default})", metavar="DURATION"),
    SlurmOption("lifetime_stagger", "random spread of --slurm-lifetime (default: {default})", metavar="DURATION"),
    SlurmOption("replace_lost_jobs"),
    SlurmOption("interface", "network interface of the workers, e.g. ib0", metavar="IFACE", jobqueue="interface"),
    SlurmOption("scheduler_interface", "network interface of the scheduler (on this node)", metavar="IFACE"),
    SlurmOption("local_directory", "node-local scratch directory for the workers, e.g. '$TMPDIR'", metavar="DIR"),
    SlurmOption("log_directory", "directory for the jobs' Slurm output files", metavar="DIR"),
    SlurmOption("job_name", jobqueue="job_name"),
    SlurmOption("python"),
    SlurmOption("death_timeout", type=float, jobqueue="death_timeout"),
    SlurmOption("check_submission"),
    SlurmOption("tls", "encrypt scheduler/worker/client traffic: 'temporary' self-signed certificates (written to "
                "the shared temp directory), or the site's from distributed.comm.tls.* config",
                choices=("temporary", "config")),
    SlurmOption("shared_temp_directory"),
)

#: keyword option -> dask.config key under ``survey-infer.slurm``
OPTION_KEYS: dict[str, str] = {o.name: o.key for o in SLURM_OPTIONS}


def _load_defaults() -> None:
    """Merge ``slurm.yaml`` into ``dask.config`` underneath anything the user or site already set."""
    with open(_DEFAULTS_FILE, encoding="utf-8") as fh:
        defaults = yaml.safe_load(fh)
    dask.config.update_defaults(defaults)


_load_defaults()


def slurm_config(key: str, default: Any = None) -> Any:
    """Value of ``survey-infer.slurm.<key>`` in ``dask.config`` (dashes, as in the YAML)."""
    return dask.config.get(f"{CONFIG_KEY}.{key}", default=default)


def resolve_options(options: dict[str, Any]) -> dict[str, Any]:
    """Fill every option not given (or None) from ``survey-infer.slurm`` in ``dask.config``.

    Parameters
    ----------
    options : dict
        Keyword options as accepted by ``make_slurm_cluster`` (unknown keys are kept untouched and passed on to
        ``SLURMCluster``).

    Returns
    -------
    dict
        A new dict with every key of :data:`OPTION_KEYS` present (None where neither the options nor the config
        set it).
    """
    out = dict(options)
    for opt, key in OPTION_KEYS.items():
        if out.get(opt) is None:
            out[opt] = slurm_config(key)
    return out


def slurm_device(options: dict[str, Any] | None = None) -> str:
    """The device the model runs on for ``--cluster slurm`` with these options: ``"cuda"`` when the jobs get
    GPUs (``--slurm-gpus-per-job`` or the site's ``gpus-per-job`` > 0), else ``"cpu"``."""
    o = resolve_options(dict(options or {}))
    return "cuda" if int(o["gpus_per_job"] or 0) > 0 else "cpu"
