"""``survey-infer run``: the main job (see :mod:`survey_infer.pipeline.runner`)."""
from __future__ import annotations

import argparse
import json
import shlex
import sys


def register(subparsers) -> None:
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
    try:
        from ..slurm import add_slurm_arguments

        add_slurm_arguments(p)
    except ImportError:  # pragma: no cover
        pass
    p.set_defaults(func=main)


def print_summary(s, out=sys.stdout) -> None:
    print(f"\ncatalog   {s.catalog}  (job {s.job}, run_id {s.run_id}, epoch {s.epoch})", file=out)
    print(f"objects   {s.n_objects:,}   blocks {s.n_blocks}: {s.blocks_done_before} already done, "
          f"{s.blocks_computed} computed, {len(s.blocks_failed)} failed", file=out)
    if s.blocks_computed == 0 and not s.blocks_failed and not s.stopped:
        print(f"time      {s.seconds:.1f} s   (nothing to compute: every block was already done)", file=out)
        return
    print(f"time      {s.seconds:.1f} s   ({s.spectra_per_s:,.0f} spectra/s end to end)", file=out)
    if s.timings:
        tot = sum(s.timings.values())
        print("stages    " + "  ".join(f"{k} {v / tot:.0%}" for k, v in sorted(s.timings.items(), key=lambda x: -x[1])),
              file=out)
    if s.worker_max_rss_mb:
        print(f"memory    peak worker RSS {s.worker_max_rss_mb:,.0f} MB", file=out)
    flags = ", ".join(f"{k}={v}" for k, v in s.flag_counts.items() if v)
    print(f"reliable  {s.n_reliable:,} computed objects have z_reliable; flags: {flags or 'none'}", file=out)
    for blocks, reason in group_failures(s.blocks_failed):
        print(f"FAILED    {blocks}: {reason}", file=out)
    if s.stopped:
        print(f"FAILED    the run stopped: {s.stopped}", file=out)
    if s.blocks_failed or s.stopped:
        print("Fix the cause and re-run the same command: only the failed/pending blocks are computed.", file=out)
        print(f"resume    {resume_command()}", file=out)


def group_failures(failed: list[dict]) -> list[tuple[str, str]]:
    """Failures as (``"block 3"`` / ``"blocks 0-12 (13)"``, reason): consecutive blocks with the same reason share
    one line (a lost cluster fails every block left with one reason)."""
    out: list[list] = []
    for f in sorted(failed, key=lambda f: f["block"]):
        if out and out[-1][2] == f["reason"] and out[-1][1] == f["block"] - 1:
            out[-1][1] = f["block"]
        else:
            out.append([f["block"], f["block"], f["reason"]])
    return [(f"block {a}" if a == b else f"blocks {a}-{b} ({b - a + 1})", r) for a, b, r in out]


def resume_command() -> str:
    """The command line that resumes this run (the same command)."""
    return "survey-infer " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "the same survey-infer run command"


class OneLineDaskLogs:
    """A logging filter: records of distributed, tornado and asyncio become one line each (the exception's type
    and message instead of its traceback), so that a lost scheduler or worker never prints a traceback."""

    PREFIXES = ("distributed", "tornado", "asyncio", "dask_jobqueue", "dask_cuda")

    def filter(self, record) -> bool:
        if record.name.split(".")[0] not in self.PREFIXES:
            return True
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001
            msg = str(record.msg)
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            msg = (msg.strip() + " " if msg.strip() else "") + f"({type(exc).__name__}: {exc})"
        record.msg, record.args = " ".join(msg.split())[:400], ()
        record.exc_info = record.exc_text = record.stack_info = None
        return True


def install_one_line_dask_logs() -> None:
    """Install :class:`OneLineDaskLogs` on the handlers of the root and ``distributed`` loggers."""
    import logging

    f = OneLineDaskLogs()
    for name in ("", "distributed"):
        for h in logging.getLogger(name).handlers:
            if not any(isinstance(x, OneLineDaskLogs) for x in h.filters):
                h.addFilter(f)


def main(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..cluster import ClusterError
    from ..model.checkpoint import CheckpointError
    from .resume import FingerprintMismatch, LockHeldError
    from .runner import RunError, run_catalog

    install_one_line_dask_logs()
    slurm_opts = {}
    if args.cluster == "slurm":
        from ..slurm import slurm_options_from_args

        slurm_opts = slurm_options_from_args(args)
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
        if not type(exc).__module__.split(".")[0] in ("distributed", "tornado", "dask_jobqueue", "dask_cuda"):
            raise
        from ..cluster import describe_dask_error

        print(f"survey-infer run: error: the Dask cluster failed: {describe_dask_error(exc)}", file=sys.stderr)
        print(f"survey-infer run: resume with: {resume_command()}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(s.__dict__, default=str, indent=1))
    else:
        print_summary(s)
    return 0 if s.ok else 1
