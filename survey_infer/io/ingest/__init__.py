"""Ingest spectrum files (FITS / HDF5, many formats) into a survey store on one instrument grid (DESIGN §2).

``survey-infer ingest FILE... | --from-list FILE --out STORE [--instrument NAME|JSON] [--append]
[--cluster KIND] [--workers N]`` (options: :mod:`survey_infer.cli.ingest`)

Three steps, one module each: :mod:`.discover` (inputs, what the store already holds, the grid) ->
:mod:`.read` (readers + resampling, in this process or on Dask workers) -> :mod:`.write` (rows into the store,
one atomic commit). What happens, in order:

1. Inputs are collected from the command line and ``--from-list`` files (one path per line, ``#`` comments;
   relative paths are taken from the current directory, else from the list file's folder) and de-duplicated.
2. Files already recorded in the store (same absolute path, size and modification time) are skipped, so a re-run
   or an ``--append`` with an overlapping list only reads what is new. A file whose content (sha256) equals an
   ingested file, or an earlier file of the same run, is skipped as a duplicate copy.
3. Files are sniffed by content and read, in this process or on the workers of a Dask client (``--cluster``,
   ``--workers``; the same cluster machinery as ``run``), each spectrum resampled onto
   the instrument grid (:mod:`survey_infer.io.resample`: flux-conserving, ivar propagated, channels without data
   get ivar = 0). Companion files holding no spectrum (DESI ``redrock-*.fits``) are recognised and skipped; the
   per-arm files of one moons1d object are grouped into one spectrum.
4. Rows are written in input order, chunk-aligned, through :func:`create_survey` / :func:`append_survey`: a new
   store is built under a temporary name and renamed into place at the end; an append becomes visible only at its
   commit (``n_objects`` is raised in the same metadata write that records the ingested files). An interrupted
   ingest therefore leaves the previous store untouched.
5. Every row gets a new ``object_id`` (continuing after the store's largest id; one row per spectrum, repeat
   observations of a target stay separate rows and share ``target_id``) and the columns ``target_id``, ``ra``,
   ``dec``, ``z_catalog`` and ``t_exp`` (fill values -1 / NaN when a file does not say), plus ``z_true`` and
   ``mag_h`` for moons1d simulations. NaN/inf flux and NaN/negative ivar become ivar = 0 and are counted, both in
   the source pixels (before resampling) and in the stored channels (``attrs["sanitized"]``), and such channels
   carry :data:`~survey_infer.io.survey_store.MASK_INVALID_INPUT` in ``mask`` (the catalog's ``BAD_INPUT``).
   An append whose files bring new columns adds them (fill values for the earlier rows); store columns the
   appended files lack get fill values; both are listed in the report.

The record of ingested files lives inside the store, in the Zarr group ``ingest_files`` (one entry per file: path,
size, mtime, sha256, reader, first row and row count, session); its committed length is
``attrs["ingest"]["n_files"]``. It is columnar and chunked, so it scales to millions of files. Read it with
:func:`ingested_files`.

An unreadable file stops the ingest (nothing is committed) with an error naming the file and the reason, unless
``skip_bad=True`` (``--skip-bad``): then the bad files are listed in the report, the rest is committed, and the
command exits with status 1. Exit status 0 means every input was ingested or deliberately skipped.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from ...errors import IngestError
from ...instrument import Instrument
from ..resample import DEFAULT_MIN_COVERAGE
from ..survey_store import DEFAULT_CHUNK_OBJECTS
from .discover import FILES_GROUP, discover, ingested_files, read_file_list
from .read import ReadSettings, iter_results
from .report import LOW_COVERAGE_FRACTION, IngestReport
from .write import Collector, StoreSink

log = logging.getLogger("survey_infer.io.ingest")

__all__ = ["FILES_GROUP", "LOW_COVERAGE_FRACTION", "IngestError", "IngestReport", "ingest", "ingested_files",
           "read_file_list"]


def ingest(
    files: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    instrument: Instrument | str | dict | None = None,
    append: bool = False,
    overwrite: bool = False,
    client=None,
    chunk_objects: int = DEFAULT_CHUNK_OBJECTS,
    from_list: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    skip_bad: bool = False,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    moons1d_sky_mask: bool = False,
    progress: bool | None = None,
) -> IngestReport:
    """Ingest spectrum files into a survey store (see the module docstring for the full behaviour).

    Parameters
    ----------
    files : iterable of path
        Input files (any supported format; detected by content).
    out : path
        Survey store (Zarr directory).
    instrument : Instrument, name, JSON path or dict, optional
        Grid for a new store (default MOONS LR). For an existing store it must match the store's grid (default:
        the store's own instrument).
    append : bool
        Add to an existing store (created if absent). Files already ingested are skipped.
    overwrite : bool
        Replace an existing store.
    client : distributed.Client or callable, optional
        Read on this Dask client's workers. A callable is called once, with the number of files to read, only
        when there is something to read, and returns a client or None (the command line uses this to start a
        cluster only when needed). None (default): read in this process. The caller owns the client.
    chunk_objects : int
        Rows per Zarr chunk of a new store.
    from_list : path or list of paths, optional
        Text files listing more inputs (see :func:`read_file_list`).
    skip_bad : bool
        Continue past unreadable files (listed in the report) instead of failing.
    min_coverage : float
        Fraction of a channel that good source pixels must cover (see :mod:`survey_infer.io.resample`).
    moons1d_sky_mask : bool
        Treat moons1d's sky-line mask as bad pixels.
    progress : bool, optional
        Show a progress bar (default: when attached to a terminal and there are >= 20 inputs).

    Returns
    -------
    IngestReport

    Raises
    ------
    IngestError
        An unreadable input (without ``skip_bad``), an existing store without ``append``/``overwrite`` when new
        files are given, a grid mismatch, or no spectrum at all. Nothing is committed in that case.
    """
    t0 = time.time()
    out = Path(out)
    found = discover(files, out, instrument=instrument, append=append, overwrite=overwrite, from_list=from_list)
    inst = found.inst
    report = IngestReport(store=str(out), instrument=inst.name, created=found.new, n_inputs=len(found.inputs),
                          n_duplicate_inputs=found.n_dup_inputs, n_skipped_ingested=len(found.skipped),
                          skipped_examples=[str(p) for p in found.skipped[:20]],
                          changed_files=list(found.changed_files))
    if not found.pending:
        log.info("%s: nothing new to ingest (%d files already in the store)", out, report.n_skipped_ingested)
        report.elapsed_s = time.time() - t0
        return report
    if callable(client) and not hasattr(client, "submit"):
        client = client(len(found.pending))
    settings = ReadSettings.of(inst, min_coverage, moons1d_sky_mask)
    sink = StoreSink(out, inst, new=found.new, overwrite=overwrite, chunk_objects=chunk_objects,
                     capacity_hint=len(found.pending))
    collector = Collector(sink, report, found.known_sha, skip_bad=skip_bad, inst_name=inst.name)
    bar = _progress_bar(len(found.pending), progress)
    try:
        units = [(i, (str(p),), None) for i, p in enumerate(found.pending)]
        for res in iter_results(units, settings, client, bar):
            collector.accept(res)
        grouped = collector.grouped_units()  # the files of one object of a grouped format (moons1d arms)
        if grouped and bar is not None:
            bar.total += len(grouped)
            bar.refresh()
        for res in iter_results(grouped, settings, client, bar):
            collector.accept(res)
        if sink.writer is None and found.new:
            raise IngestError(f"no spectrum read from the {len(found.pending)} input files ({len(report.companions)} "
                              f"companion files, {len(report.duplicates)} duplicates, {len(report.bad_files)} "
                              "unreadable)")
        if sink.writer is not None:
            _commit(sink, report, collector.by_reader)
    except BaseException:
        sink.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    report.source_counts = dict(sink.counts)
    report.by_reader = collector.by_reader
    report.elapsed_s = time.time() - t0
    return report


def _progress_bar(n: int, progress: bool | None):
    if progress is None:
        progress = sys.stderr.isatty() and n >= 20
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=n, unit="file", desc="ingest", dynamic_ncols=True)


def _commit(sink: StoreSink, report: IngestReport, by_reader: dict) -> None:
    sink.commit(report, by_reader)
    first_id = sink.first_id if sink.first_id is not None else 0
    report.rows = (sink.writer.start, sink.writer.start + sink.n_written)
    report.n_spectra = sink.n_written
    report.object_ids = (first_id, sink.next_id - 1) if sink.n_written else None
    # low-coverage rows: session offsets -> object ids
    report.low_coverage = [(first_id + off, nm, cov) for off, nm, cov in report.low_coverage]
