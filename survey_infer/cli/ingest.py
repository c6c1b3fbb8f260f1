"""``survey-infer ingest``: its options and how they become a call of :func:`survey_infer.io.ingest.ingest`.

The reading runs on a Dask client started here with the same machinery as ``run``
(:func:`survey_infer.pipeline.clusters.start_client`: ``--cluster local | cuda | slurm | tcp://HOST:PORT |
SCHEDULER_FILE``), or in this process (``--cluster inprocess``). The library takes the client as an argument, so
the input room never imports the pipeline room.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

#: without --cluster and --workers, this many files or more are read on a local cluster
AUTO_CLUSTER_FILES = 32


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``ingest`` subcommand and its options to ``subparsers``."""
    from ..io.resample import DEFAULT_MIN_COVERAGE
    from ..io.survey_store import DEFAULT_CHUNK_OBJECTS
    from .run import add_slurm_arguments

    p = subparsers.add_parser(
        "ingest",
        help="read spectrum files (SDSS, DESI, ESO Phase-3, JWST msaexp, moons1d, generic FITS/HDF5) into a survey store",
        description="Read spectrum files into a survey store on one instrument grid (flux-conserving resampling, "
                    "air->vacuum, units to 1e-17 erg/s/cm2/A). Formats are detected by content. A re-run or "
                    "--append skips files already in the store. Exit status 0 only when every input was ingested "
                    "(or skipped as already ingested / duplicate / companion file).",
    )
    p.add_argument("files", nargs="*", metavar="FILE", help="spectrum files")
    p.add_argument("--from-list", action="append", metavar="FILE", default=[],
                   help="text file with one input path per line (# comments); may be repeated")
    p.add_argument("--out", required=True, metavar="STORE", help="survey store (Zarr directory)")
    p.add_argument("--instrument", metavar="NAME|JSON",
                   help="grid of a new store: shipped name (moons_lr, sdss_like), a JSON file or inline JSON "
                        "(default moons_lr; an existing store keeps its own)")
    p.add_argument("--append", action="store_true", help="add to an existing store (created if absent)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--cluster", default=None,
                   help="where the files are read: inprocess | local | cuda | slurm | tcp://HOST:PORT | SCHEDULER_FILE "
                        f"(default: a local cluster for >= {AUTO_CLUSTER_FILES} files to read or --workers > 1, "
                        "else in this process)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local worker processes or Slurm jobs (default: all cores, at most 8, for a local cluster)")
    p.add_argument("--cluster-wait", type=float, default=60.0, metavar="SECONDS",
                   help="wait up to this long for a --cluster scheduler file that is not written yet (default 60)")
    p.add_argument("--chunk-objects", type=int, default=DEFAULT_CHUNK_OBJECTS, metavar="N",
                   help=f"rows per chunk of a new store (default {DEFAULT_CHUNK_OBJECTS})")
    p.add_argument("--skip-bad", action="store_true",
                   help="continue past unreadable files and list them (exit status 1) instead of failing")
    p.add_argument("--min-coverage", type=float, default=DEFAULT_MIN_COVERAGE, metavar="F",
                   help="fraction of a channel good source pixels must cover to keep it (default 0.5)")
    p.add_argument("--moons1d-sky-mask", action="store_true",
                   help="treat moons1d's sky-line mask as bad pixels (default: keep those pixels)")
    p.add_argument("--report", metavar="JSON", help="also write the full report as JSON to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_slurm_arguments(p)
    p.set_defaults(func=main)
    return p


class ClientOnDemand:
    """The ``client`` argument of :func:`~survey_infer.io.ingest.ingest` for the command line: starts (or
    connects to) the Dask cluster chosen by ``--cluster`` / ``--workers`` only once ingest knows there are files
    to read, and closes what it started in :meth:`close`.

    Parameters
    ----------
    cluster : str or None
        ``--cluster``; None: a local cluster for >= :data:`AUTO_CLUSTER_FILES` files or ``workers > 1``, else
        in-process; ``"inprocess"``: always in this process.
    workers : int or None
        ``--workers`` (local processes or Slurm jobs); default all cores, at most 8.
    slurm_options : dict
        ``--slurm-*`` options (``--cluster slurm``).
    wait_s : float
        How long to wait for a scheduler file that is not written yet.
    """

    def __init__(self, cluster: str | None, workers: int | None, slurm_options: dict, wait_s: float = 60.0):
        self.cluster = cluster
        self.workers = workers
        self.slurm_options = slurm_options
        self.wait_s = wait_s
        self.client = None
        self.owned = None

    def kind_for(self, n_files: int) -> str | None:
        """Cluster kind to start for ``n_files`` files to read (None: read in this process)."""
        if self.cluster == "inprocess":
            return None
        if self.cluster is not None:
            return self.cluster
        if (self.workers or 1) > 1 or (self.workers is None and n_files >= AUTO_CLUSTER_FILES):
            return "local"
        return None

    def __call__(self, n_files: int):
        """A client for reading ``n_files`` files, or None for in-process reading.

        Raises
        ------
        ClusterError, SlurmError
            The cluster could not be started or reached (one line).
        """
        from ..pipeline.clusters import (
            looks_like_scheduler_file,
            start_client,
            wait_for_scheduler_file,
        )

        kind = self.kind_for(n_files)
        if kind is None:
            return None
        workers = self.workers or min(os.cpu_count() or 1, 8)
        if looks_like_scheduler_file(kind):  # a job script may start the scheduler beside this command
            kind = str(wait_for_scheduler_file(kind, self.wait_s))
        self.client, self.owned = start_client(kind, workers, slurm_options=self.slurm_options)
        return self.client

    def close(self) -> None:
        """Close the client and the cluster this object started (an external scheduler is left running)."""
        for obj in (self.client, self.owned):
            if obj is not None:
                try:
                    obj.close()
                except Exception:  # noqa: BLE001, S110 - shutting down: nothing left to protect
                    pass
        self.client = self.owned = None


def main(args: argparse.Namespace) -> int:
    """Run ``survey-infer ingest`` with parsed ``args``: print the report summary, write ``--report``.

    Returns
    -------
    int
        0 when every input was ingested or deliberately skipped, 1 when unreadable files were skipped
        (``--skip-bad``).

    Raises
    ------
    UserError
        Conflicting or missing options, an unreadable input, a refused store or cluster (one line, exit 2).
    """
    from ..atomic import atomic_write_json
    from ..errors import ClusterError, IngestError, ReaderError, SlurmError, UserError
    from ..io.ingest import ingest
    from .run import slurm_options_from_args

    if args.append and args.overwrite:
        raise UserError("--append and --overwrite exclude each other")
    if not args.files and not args.from_list:
        raise UserError("give input FILEs and/or --from-list FILE")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if args.cluster not in (None, "inprocess"):
        from ..pipeline.clusters import check_cluster_kind

        try:
            check_cluster_kind(args.cluster)  # refused before any file is read, even when nothing is new
        except ClusterError as exc:
            raise UserError(str(exc)) from exc
    on_demand = ClientOnDemand(args.cluster, args.workers,
                               slurm_options_from_args(args) if args.cluster == "slurm" else {}, args.cluster_wait)
    try:
        rep = ingest(
            args.files, args.out, instrument=args.instrument, append=args.append, overwrite=args.overwrite,
            client=on_demand, chunk_objects=args.chunk_objects, from_list=args.from_list,
            skip_bad=args.skip_bad, min_coverage=args.min_coverage, moons1d_sky_mask=args.moons1d_sky_mask,
            progress=False if args.no_progress else None,
        )
    except (IngestError, ReaderError, ClusterError, SlurmError) as exc:
        raise UserError(str(exc)) from exc
    finally:
        on_demand.close()
    print(rep.summary())
    if args.report:
        atomic_write_json(Path(args.report), rep.to_dict(), indent=1)
    return 0 if rep.ok else 1
