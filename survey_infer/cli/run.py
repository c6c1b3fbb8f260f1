"""``survey-infer run``: its options (``--slurm-*`` built from the one list of Slurm options) and how they become a
call of :func:`survey_infer.pipeline.runner.run_catalog`."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers) -> None:
    """Add the ``run`` subcommand and its options to ``subparsers``."""
    p = subparsers.add_parser(
        "run", help="run the model over a survey store and write (or resume) a catalog",
        description="Map sky-masking -> preprocessing -> MC-dropout inference -> PDF screening over the blocks of a "
                    "survey store on a Dask cluster and write an xarray/Zarr catalog. Re-running the same command "
                    "resumes: only blocks without a valid done-marker are computed. Exit code 0 only when every "
                    "block of the job has a done-marker that validates at the end of the run; 1 when blocks failed "
                    "or the cluster was lost (each listed with its reason; re-run the same command to resume); 2 for "
                    "a refused option, input or cluster.")
    p.add_argument("--input", required=True, help="survey store (Zarr)")
    p.add_argument("--output", required=True, help="catalog (Zarr): created, or resumed if it exists")
    p.add_argument("--model", default="default", help="'default' (shipped) or a model directory")
    p.add_argument("--cluster", default="local",
                   help="local | cuda | slurm | tcp://HOST:PORT | SCHEDULER_FILE | inprocess (default local)")
    p.add_argument("--workers", type=int, default=2, help="local worker processes or Slurm jobs (>= 1, default 2)")
    p.add_argument("--mc-samples", type=int, default=50, help="MC-dropout samples T (default 50)")
    p.add_argument("--seed", type=int, default=0, help="MC seed (default 0)")
    p.add_argument("--no-pz", action="store_true", help="do not store the PDFs (pz)")
    p.add_argument("--pz-dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--block-objects", type=int, default=None,
                   help="objects per task / catalog chunk (default: >=4 blocks per worker, <= 32768)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--chunks", help="reprocess catalog blocks A:B only")
    sel.add_argument("--objects", help="reprocess the object ids listed in FILE only")
    sel.add_argument("--where", help="reprocess rows selected by an expression on catalog columns, e.g. 'zwarn != 0'")
    p.add_argument("--reprocess", action="store_true",
                   help="allow numerics different from the catalog's (new model, T or seed): a new job/run_id")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda for --cluster cuda, else cpu)")
    p.add_argument("--max-in-flight", type=int, default=None, help="tasks in flight (>= 1, default 2 x workers)")
    p.add_argument("--cluster-grace", type=float, default=60.0, metavar="SECONDS",
                   help="stop (exit 1, blocks left recorded, lock released) once the Dask scheduler has been "
                        "unreachable or no worker connected for this long (default 60; with --cluster slurm the wait "
                        "for the first worker job is not bounded)")
    p.add_argument("--cluster-wait", type=float, default=60.0, metavar="SECONDS",
                   help="wait up to this long for a --cluster scheduler file that is not written yet (default 60)")
    p.add_argument("--lease-seconds", type=float, default=60.0, help="lock lease: a silent holder is dead after this")
    p.add_argument("--lock-wait", type=float, default=0.0,
                   help="seconds to wait for another live run on the same catalog to finish (default: refuse at once)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_slurm_arguments(p)
    p.set_defaults(func=main)


def add_slurm_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the ``--slurm-*`` options (used with ``--cluster slurm``) to ``parser`` as one argument group, one per
    command-line entry of :data:`survey_infer.pipeline.clusters.slurm_options.SLURM_OPTIONS`.

    Every option defaults to None, meaning "use ``survey-infer.slurm.*`` from dask.config"
    (``survey_infer/slurm.yaml`` overridden by site/user YAML).

    Returns
    -------
    argparse._ArgumentGroup
        The group added.
    """
    from ..pipeline.clusters.slurm_options import SLURM_OPTIONS, slurm_config

    g = parser.add_argument_group(
        "Slurm (--cluster slurm)",
        "workers run as Slurm jobs (dask-jobqueue). Unset options come from the 'survey-infer.slurm' dask "
        "config (site YAML, e.g. ~/.config/dask/survey-infer.yaml); see docs/slurm.md.",
    )
    for opt in SLURM_OPTIONS:
        if opt.help is None:
            continue
        kw: dict[str, Any] = {"dest": opt.dest, "help": opt.help.replace("{default}", str(slurm_config(opt.key)))}
        if opt.choices:
            kw["choices"] = list(opt.choices)
        else:
            kw["metavar"] = opt.metavar
        if opt.repeat:
            kw["action"] = "append"
        elif opt.type is not str:
            kw["type"] = opt.type
        g.add_argument(f"--slurm-{opt.flag or opt.key}", **kw)
    return g


def slurm_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword options for ``make_slurm_cluster`` from parsed ``--slurm-*`` arguments.

    Returns
    -------
    dict
        Only the options given on the command line (the rest come from dask.config); ``jobs`` is included when
        ``--slurm-jobs`` was given.
    """
    from ..pipeline.clusters.slurm_options import SLURM_OPTIONS

    return {o.name: getattr(args, o.dest) for o in SLURM_OPTIONS
            if o.help is not None and getattr(args, o.dest, None) is not None}


def main(args: argparse.Namespace) -> int:
    """``survey-infer run``: run (or resume) the catalog job and print its summary.

    Returns
    -------
    int
        0 when every block of the job is done, 1 when blocks failed or the cluster was lost.

    Raises
    ------
    UserError
        A refused option, input, model, cluster, fingerprint or lock (printed as one line, exit 2).
    """
    from ..errors import CheckpointError, ClusterError, FingerprintMismatch, LockHeldError, RunError, UserError
    from ..pipeline.clusters import describe_dask_error, install_one_line_dask_logs
    from ..pipeline.runner import run_catalog
    from ..pipeline.summary import print_summary, resume_command

    install_one_line_dask_logs()
    slurm_opts = slurm_options_from_args(args) if args.cluster == "slurm" else {}
    try:
        s = run_catalog(args.input, args.output, model=args.model, cluster=args.cluster, workers=args.workers,
                        mc_samples=args.mc_samples, seed=args.seed, keep_pz=not args.no_pz, pz_dtype=args.pz_dtype,
                        block_objects=args.block_objects, chunks=args.chunks, objects=args.objects, where=args.where,
                        reprocess=args.reprocess, progress=not args.no_progress, max_in_flight=args.max_in_flight,
                        device=args.device, lease_s=args.lease_seconds, slurm_options=slurm_opts,
                        lock_wait_s=args.lock_wait, cluster_grace_s=args.cluster_grace,
                        cluster_wait_s=args.cluster_wait)
    except (RunError, ClusterError, CheckpointError, FingerprintMismatch, LockHeldError) as exc:
        raise UserError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - a Dask error that escaped the run loop: one line, never a traceback
        if type(exc).__module__.split(".")[0] not in ("distributed", "tornado", "dask_jobqueue", "dask_cuda"):
            raise
        print(f"survey-infer run: error: the Dask cluster failed: {describe_dask_error(exc)}", file=sys.stderr)
        print(f"survey-infer run: resume with: {resume_command()}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(s.__dict__, default=str, indent=1))
    else:
        print_summary(s)
    return 0 if s.ok else 1
