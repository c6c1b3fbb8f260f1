"""Ingest spectrum files (FITS / HDF5, many formats) into a survey store on one instrument grid (DESIGN §2).

``survey-infer ingest FILE... | --from-list FILE --out STORE [--instrument NAME|JSON] [--append] [--workers N]``

What happens, in order:

1. Inputs are collected from the command line and ``--from-list`` files (one path per line, ``#`` comments;
   relative paths are taken from the current directory, else from the list file's folder) and de-duplicated.
2. Files already recorded in the store (same absolute path, size and modification time) are skipped, so a re-run
   or an ``--append`` with an overlapping list only reads what is new. A file whose content (sha256) equals an
   ingested file, or an earlier file of the same run, is skipped as a duplicate copy.
3. Files are sniffed by content and read in parallel (a process pool; ``--workers``), each spectrum resampled onto
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

import argparse
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from ..instrument import Instrument, load_instrument
from ..provenance import file_sha256
from .readers import ReaderError, default_readers, find_reader, reader_by_name
from .readers.base import as_int_id, probe_file
from .resample import DEFAULT_MIN_COVERAGE, resample_arms
from .survey_store import (COLUMN_ATTRS, DEFAULT_CHUNK_OBJECTS, ROW_COLUMN_DTYPES, SurveyStoreError, append_survey,
                           create_survey, store_instrument, validate_survey)
from ..errors import IngestError  # noqa: F401  (defined in survey_infer.errors)

log = logging.getLogger("survey_infer.io.ingest")

__all__ = ["IngestError", "IngestReport", "ingest", "ingested_files", "read_file_list", "register",
           "FILES_GROUP", "LOW_COVERAGE_FRACTION"]

FILES_GROUP = "ingest_files"
FILES_CHUNK = 65536
LOW_COVERAGE_FRACTION = 0.05
#: per-row columns every ingested store gets (name -> dtype, as in the survey-store contract)
BASE_COLUMNS = {"target_id": "int64", "ra": "float64", "dec": "float64", "z_catalog": "float32", "t_exp": "float32"}
#: extra per-row values a reader may supply (Spectrum.columns); anything else is ignored
EXTRA_COLUMNS = ("z_true", "mag_h", "logmstar_true", "logsfr_true")
FILE_FIELDS = {"path": str, "size": "int64", "mtime_ns": "int64", "sha256": str, "reader": str,
               "row_start": "int64", "n_rows": "int64", "session": "int32"}


@dataclass
class IngestReport:
    """What an ingest did. ``ok`` is True when every input was ingested or deliberately skipped.

    Attributes
    ----------
    store : str
        Store path.
    instrument : str
        Instrument (grid) name.
    created : bool
        True when this run created the store.
    n_inputs : int
        Distinct input files.
    n_files_ingested : int
        Files whose spectra were written in this run.
    n_spectra : int
        Rows written in this run.
    rows : (int, int)
        Row range ``[start, end)`` written.
    object_ids : (int, int) or None
        First and last ``object_id`` assigned.
    n_skipped_ingested : int
        Inputs skipped because the store already holds them (``skipped_examples`` lists a few).
    duplicates : list of (path, duplicate_of)
        Inputs skipped because their content equals another ingested file.
    companions : list of str
        Companion files (e.g. DESI redrock) recognised and skipped.
    bad_files : list of (path, reason)
        Unreadable inputs (only with ``skip_bad``; otherwise the first one raises).
    low_coverage : list of (object_id, name, fraction)
        Spectra with data in fewer than 5% of the instrument channels (the first 1000; ``n_low_coverage`` counts
        them all).
    source_counts : dict
        Invalid source pixels before resampling: ``nonfinite_flux``, ``bad_ivar`` (NaN/inf/negative), ``masked``.
    sanitized : dict
        Store channels sanitized at write time (see :func:`survey_infer.io.survey_store.sanitize_spectra`).
    by_reader : dict
        Files ingested per reader.
    elapsed_s : float
    """

    store: str
    instrument: str = ""
    created: bool = False
    n_inputs: int = 0
    n_files_ingested: int = 0
    n_spectra: int = 0
    rows: tuple[int, int] = (0, 0)
    object_ids: tuple[int, int] | None = None
    n_skipped_ingested: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    n_duplicate_inputs: int = 0
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    changed_files: list[str] = field(default_factory=list)
    added_columns: list[str] = field(default_factory=list)
    unfilled_columns: list[str] = field(default_factory=list)
    companions: list[str] = field(default_factory=list)
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    low_coverage: list[tuple[int, str, float]] = field(default_factory=list)
    n_low_coverage: int = 0
    source_counts: dict = field(default_factory=lambda: {"nonfinite_flux": 0, "bad_ivar": 0, "masked": 0})
    sanitized: dict = field(default_factory=dict)
    by_reader: dict = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.bad_files

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"ingest -> {self.store} ({self.instrument}{', new store' if self.created else ''}): "
            f"{self.n_spectra} spectra from {self.n_files_ingested} files"
            + (f", rows {self.rows[0]}..{self.rows[1] - 1}, object_id {self.object_ids[0]}..{self.object_ids[1]}"
               if self.n_spectra else ""),
        ]
        if self.by_reader:
            lines.append("  formats: " + ", ".join(f"{k}={v}" for k, v in sorted(self.by_reader.items())))
        if self.n_skipped_ingested:
            lines.append(f"  skipped {self.n_skipped_ingested} files already in the store")
        if self.duplicates:
            lines.append(f"  skipped {len(self.duplicates)} duplicate files (same content as an ingested file)")
        if self.n_duplicate_inputs:
            lines.append(f"  ignored {self.n_duplicate_inputs} repeated input paths")
        if self.companions:
            lines.append(f"  skipped {len(self.companions)} companion files (no spectrum): "
                         + ", ".join(Path(p).name for p in self.companions[:5]))
        if self.changed_files:
            lines.append(f"  {len(self.changed_files)} files changed since a previous ingest were ingested again")
        if self.added_columns:
            lines.append(f"  new column(s) {', '.join(self.added_columns)} added to the store (fill value, NaN or -1, "
                         f"for the {self.rows[0]} earlier rows); catalogs made before keep their own columns")
        if self.unfilled_columns:
            lines.append(f"  column(s) {', '.join(self.unfilled_columns)} of the store are not given by the appended "
                         f"files: their fill value (NaN, -1, 0 or False) for the new rows")
        sc = self.source_counts
        if any(sc.values()):
            lines.append(f"  source pixels set to ivar=0: {sc['nonfinite_flux']} non-finite flux, {sc['bad_ivar']} "
                         f"NaN/inf/negative ivar, {sc['masked']} masked by the reduction")
        st = self.sanitized
        if st and any(st.values()):
            lines.append(f"  stored channels: {st.get('nonfinite_flux', 0)} non-finite flux and {st.get('bad_ivar', 0)} "
                         f"invalid ivar set to 0; {st.get('masked', 0)} flagged in mask (bad source pixels)")
        if self.n_low_coverage:
            lines.append(f"  {self.n_low_coverage} spectra have data in < {LOW_COVERAGE_FRACTION:.0%} of the "
                         f"{self.instrument} channels (e.g. {self.low_coverage[0][1]}: {self.low_coverage[0][2]:.1%})")
        if self.bad_files:
            lines.append(f"  {len(self.bad_files)} UNREADABLE files skipped:")
            lines += [f"    {p}: {r}" for p, r in self.bad_files[:20]]
        lines.append(f"  {self.elapsed_s:.1f} s")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- input lists

def read_file_list(list_path: str | os.PathLike) -> list[str]:
    """Paths listed in a text file: one per line, blank lines and ``#`` comments ignored.

    Relative paths are resolved against the current directory when they exist there, else against the list
    file's folder.
    """
    lp = Path(list_path)
    if not lp.is_file():
        raise IngestError(f"file list {lp} does not exist")
    out = []
    with open(lp, encoding="utf-8") as fh:
        for line in fh:
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            p = Path(s).expanduser()
            if not p.is_absolute() and not p.exists() and (lp.parent / p).exists():
                p = lp.parent / p
            out.append(str(p))
    return out


# --------------------------------------------------------------------------------------------- file records

def _empty_records() -> dict:
    return {k: [] for k in FILE_FIELDS}


def ingested_files(store: str | os.PathLike) -> dict[str, np.ndarray]:
    """The committed record of ingested files of ``store`` as a dict of equal-length arrays.

    Keys: ``path``, ``size``, ``mtime_ns``, ``sha256``, ``reader``, ``row_start``, ``n_rows``, ``session``.
    Empty arrays when the store was not made by ingest.
    """
    import zarr

    store = Path(store)
    g = zarr.open_group(str(store), mode="r")
    n = int(dict(g.attrs).get("ingest", {}).get("n_files", 0))
    if FILES_GROUP not in g or n == 0:
        return {k: np.array([], dtype=object if v is str else v) for k, v in FILE_FIELDS.items()}
    fg = g[FILES_GROUP]
    return {k: np.asarray(fg[k][:n]) for k in FILE_FIELDS}


# --------------------------------------------------------------------------------------------- worker side

_W: dict = {}


def _init_worker(inst_cfg: dict, min_coverage: float, moons1d_sky_mask: bool) -> None:
    _W["inst"] = load_instrument(inst_cfg)
    _W["min_coverage"] = float(min_coverage)
    _W["readers"] = default_readers(moons1d_sky_mask=moons1d_sky_mask)


def _source_counts(spec) -> dict:
    c = {"nonfinite_flux": 0, "bad_ivar": 0, "masked": 0}
    for a in spec.arms:
        c["nonfinite_flux"] += int((~np.isfinite(a.flux)).sum())
        c["bad_ivar"] += int((~np.isfinite(a.ivar) | (a.ivar < 0)).sum())
        if a.mask is not None:
            c["masked"] += int((a.mask != 0).sum())
    return c


def _process_unit(unit: tuple) -> dict:
    """Read + resample one unit ``(index, paths, reader_name_or_None)``; never raises (errors are returned)."""
    index, paths, reader_name = unit
    res: dict = {"index": index, "paths": list(paths), "status": "ok", "files": [], "reader": reader_name}
    inst: Instrument = _W["inst"]
    try:
        for p in paths:
            pp = Path(p)
            try:
                st = pp.stat()
            except OSError as exc:
                raise ReaderError(pp, "file does not exist" if isinstance(exc, FileNotFoundError) else str(exc))
            if pp.is_dir():
                raise ReaderError(pp, "is a directory, not a spectrum file (list the files, or use --from-list)")
            res["files"].append({"path": str(pp), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns),
                                 "sha256": file_sha256(pp)})
        readers = _W["readers"]
        if reader_name is None:
            path = paths[0]
            probe = probe_file(path)
            for r in readers:
                if r.is_companion(probe) and not r.can_read_probe(probe):
                    res.update(status="companion", reader=r.name)
                    return res
            reader = find_reader(path, readers)
            res["reader"] = reader.name
            if reader.grouped:
                res.update(status="deferred", group_key=reader.group_key(path))
                return res
            spectra = reader.read(path)
        else:
            reader = reader_by_name(reader_name, readers)
            spectra = reader.read_group(paths) if reader.grouped else reader.read(paths[0])
        if not spectra:
            raise ReaderError(paths[0] if len(paths) == 1 else list(paths),
                              f"{reader.name} reader found no spectrum: the file holds no data (empty)")
        W = inst.n_wave
        flux = np.zeros((len(spectra), W), np.float32)
        ivar = np.zeros((len(spectra), W), np.float32)
        mask = np.zeros((len(spectra), W), np.uint8)
        meta = []
        counts = {"nonfinite_flux": 0, "bad_ivar": 0, "masked": 0}
        for k, s in enumerate(spectra):
            flux[k], ivar[k], mask[k] = resample_arms(s.arms, inst, min_coverage=_W["min_coverage"])
            for key, v in _source_counts(s).items():
                counts[key] += v
            tid = as_int_id(s.target_id, paths[0] if len(paths) == 1 else list(paths), "target id")
            meta.append({
                "name": s.name,
                "target_id": -1 if tid is None else tid,
                "ra": float(s.ra), "dec": float(s.dec), "z_catalog": float(s.z_catalog), "t_exp": float(s.t_exp),
                "columns": {c: float(v) for c, v in s.columns.items() if c in EXTRA_COLUMNS},
                "coverage": float((ivar[k] > 0).mean()),
            })
        res.update(flux=flux, ivar=ivar, mask=mask, meta=meta, counts=counts)
    except ReaderError as exc:
        res.update(status="error", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - anything else is still "this file is bad"
        where = paths[0] if len(paths) == 1 else ", ".join(paths)
        res.update(status="error", error=f"{where}: {type(exc).__name__}: {exc}")
    return res


def _process_batch(batch: list) -> list[dict]:
    return [_process_unit(u) for u in batch]


def _iter_results(units: list, workers: int, init_args: tuple, progress) -> Iterator[dict]:
    """Results of :func:`_process_unit` for ``units``, in input order, with a bounded number in flight."""
    if not units:
        return
    if workers <= 1:
        _init_worker(*init_args)
        for u in units:
            r = _process_unit(u)
            if progress is not None:
                progress.update(1)
            yield r
        return
    bs = max(1, min(16, len(units) // (workers * 4) or 1))
    batches = iter([units[i:i + bs] for i in range(0, len(units), bs)])
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=_init_worker, initargs=init_args)
    try:
        pending = deque(ex.submit(_process_batch, b) for b in islice(batches, workers * 3))
        while pending:
            out = pending.popleft().result()
            nb = next(batches, None)
            if nb is not None:
                pending.append(ex.submit(_process_batch, nb))
            for r in out:
                if progress is not None:
                    progress.update(1)
                yield r
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------- writing

class _StoreSink:
    """Streams rows into a new store (temp name, renamed at commit) or an append session; grows capacity as
    needed, writes chunk-aligned blocks, records the ingested files, commits once."""

    def __init__(self, out: Path, inst: Instrument, *, new: bool, overwrite: bool, chunk_objects: int,
                 capacity_hint: int):
        self.out = out
        self.inst = inst
        self.new = new
        self.overwrite = overwrite
        self.chunk_objects = int(chunk_objects)
        self.capacity_hint = max(1, int(capacity_hint))
        self.writer = None
        self.g = None
        self.buf: list[dict] = []
        self.n_buf = 0
        self.n_written = 0
        self.next_id = 0
        self.first_id = None
        self.records = _empty_records()
        self.added_columns: list[str] = []
        self.written_columns: set[str] = set()
        self.session = 0
        self.counts = {"nonfinite_flux": 0, "bad_ivar": 0, "masked": 0}

    # -- lifecycle
    def _open(self) -> None:
        import zarr

        cap = max(self.capacity_hint, self.chunk_objects) if self.new else self.capacity_hint
        if self.new:
            self.writer = create_survey(self.out, cap, self.inst, chunk_objects=self.chunk_objects,
                                        columns=dict(BASE_COLUMNS), with_mask=True, overwrite=self.overwrite)
        else:
            self.writer = append_survey(self.out, cap)
        # bypass consolidated metadata: after append_survey's resize it still holds the old shapes, and writes
        # through such a handle past the old end are silently dropped
        self.g = zarr.open_group(str(self.writer.work_path), mode="r+", use_consolidated=False)
        n0 = self.writer.start
        if n0 > 0:
            ids = np.asarray(self.g["object_id"][:n0])
            self.next_id = int(ids.max()) + 1 if ids.size else 0
        self.chunk = int(self.g["flux"].chunks[0])
        attrs = dict(self.g.attrs)
        self.session = len(attrs.get("ingest", {}).get("sessions", []))
        self.with_mask = "mask" in self.g
        for name, dt in BASE_COLUMNS.items():
            self._ensure_column(name, dt)
        if not self.new:
            known = set(BASE_COLUMNS) | set(EXTRA_COLUMNS) | {"flux", "ivar", "mask", "object_id"}
            other = sorted(k for k in self.g.array_keys() if k not in known
                           and (self.g[k].metadata.dimension_names or ("",))[0] == "object")
            if other:
                log.warning("%s: the appended rows leave column(s) %s at their fill values (ingested files do not "
                            "carry them; e.g. kind=0, is_passive=False in a simulated store)", self.out, other)

    def _ensure_column(self, name: str, dtype: str) -> None:
        if name in self.g:
            return
        if not self.new and self.writer.start > 0:
            self.added_columns.append(name)
            log.warning("%s: the appended rows bring column %r, which the store's %d earlier rows lack (they get "
                        "its fill value)", self.out, name, self.writer.start)
        n = self.g["flux"].shape[0]
        fill = -1 if name in ("target_id",) else (float("nan") if np.dtype(dtype).kind == "f" else 0)
        self.g.create_array(name, shape=(n,), chunks=(self.chunk,), dtype=dtype, dimension_names=("object",),
                            fill_value=fill, attributes=COLUMN_ATTRS.get(name, {}))

    def _resize(self, n_rows: int) -> None:
        total = self.writer.start + n_rows
        for name in list(self.g.array_keys()):
            arr = self.g[name]
            dims = arr.metadata.dimension_names
            if dims and dims[0] == "object" and arr.shape[0] != total:
                arr.resize((total,) + arr.shape[1:])
        self.writer.n_rows = n_rows

    # -- rows
    def add(self, res: dict) -> tuple[int, int]:
        """Queue a unit's rows; returns (first row offset in this session, n rows)."""
        if self.writer is None:
            self._open()
        n = len(res["meta"])
        start = self.n_written + self.n_buf
        if start + n > self.writer.n_rows:
            self._resize(max(start + n, int(self.writer.n_rows * 1.5) + self.chunk))
        for c in {c for m in res["meta"] for c in m["columns"]}:
            self._ensure_column(c, ROW_COLUMN_DTYPES.get(c, "float32"))
        self.buf.append(res)
        self.n_buf += n
        for k, v in res["counts"].items():
            self.counts[k] += v
        if self.n_buf >= self.chunk:
            self._flush(final=False)
        return start, n

    def _flush(self, final: bool) -> None:
        if not self.n_buf:
            return
        abs0 = self.writer.start + self.n_written
        if final:
            n_out = self.n_buf
        else:
            first = (-abs0) % self.chunk  # rows up to the next chunk boundary
            n_out = first + ((self.n_buf - first) // self.chunk) * self.chunk if self.n_buf >= first else 0
            if n_out == 0:
                return
        flux = np.concatenate([r["flux"] for r in self.buf])
        ivar = np.concatenate([r["ivar"] for r in self.buf])
        mask = np.concatenate([r["mask"] for r in self.buf])
        metas = [m for r in self.buf for m in r["meta"]]
        cols = set(BASE_COLUMNS) | {c for m in metas for c in m["columns"]}
        self.written_columns |= cols
        ids = np.arange(self.next_id, self.next_id + n_out, dtype=np.int64)
        data = {"flux": flux[:n_out], "ivar": ivar[:n_out], "object_id": ids}
        if self.with_mask:
            data["mask"] = mask[:n_out]
        for c in cols:
            dt = np.dtype(ROW_COLUMN_DTYPES.get(c, "float32"))
            if c in BASE_COLUMNS:
                vals = [m[c] for m in metas[:n_out]]
            else:
                vals = [m["columns"].get(c, np.nan) for m in metas[:n_out]]
            data[c] = np.asarray(vals, dtype=dt)
        self.writer.write(self.n_written, data, group=self.g)
        if self.first_id is None:
            self.first_id = int(ids[0])
        self.next_id += n_out
        self.n_written += n_out
        # keep the rows not written yet
        rest_f, rest_i, rest_m, rest_meta = flux[n_out:], ivar[n_out:], mask[n_out:], metas[n_out:]
        self.buf = ([{"flux": rest_f, "ivar": rest_i, "mask": rest_m, "meta": rest_meta, "counts": {}}]
                    if len(rest_meta) else [])
        self.n_buf = len(rest_meta)

    def record(self, files: list[dict], reader: str, row_start: int, n_rows: int) -> None:
        for f in files:
            for k in ("path", "size", "mtime_ns", "sha256"):
                self.records[k].append(f[k])
            self.records["reader"].append(reader)
            self.records["row_start"].append((self.writer.start if self.writer else 0) + row_start)
            self.records["n_rows"].append(n_rows)
            self.records["session"].append(self.session)

    def _write_records(self) -> int:
        attrs = dict(self.g.attrs)
        n_old = int(attrs.get("ingest", {}).get("n_files", 0))
        n_new = len(self.records["path"])
        if FILES_GROUP in self.g:
            fg = self.g[FILES_GROUP]
        else:
            fg = self.g.create_group(FILES_GROUP, attributes={
                "description": "files ingested into this store; committed length is attrs['ingest']['n_files'] "
                               "of the root group"})
        for k, dt in FILE_FIELDS.items():
            if k not in fg:
                fg.create_array(k, shape=(0,), chunks=(FILES_CHUNK,), dtype=dt, dimension_names=("file",),
                                fill_value="" if dt is str else 0)
            arr = fg[k]
            arr.resize((n_old + n_new,))
            if n_new:
                vals = np.asarray(self.records[k], dtype=dt if dt is not str else object)
                arr[n_old:n_old + n_new] = vals.astype(str) if dt is str else vals
        return n_old + n_new

    def commit(self, report: IngestReport, by_reader: dict) -> None:
        self._flush(final=True)
        self._resize(self.n_written)
        n_files_total = self._write_records()
        attrs = dict(self.g.attrs)
        ing = dict(attrs.get("ingest", {}))
        readers_total = dict(ing.get("readers", {}))
        for k, v in by_reader.items():
            readers_total[k] = int(readers_total.get(k, 0)) + int(v)
        sessions = list(ing.get("sessions", []))
        from ..provenance import utc_now

        sessions.append({
            "session": self.session,
            "created": utc_now(),
            "n_files": len(self.records["path"]),
            "n_rows": self.n_written,
            "rows": [self.writer.start, self.writer.start + self.n_written],
            "object_ids": [self.first_id, self.next_id - 1] if self.n_written else None,
            "readers": dict(by_reader),
            "skipped_bad": [p for p, _ in report.bad_files[:100]],
            "n_skipped_bad": len(report.bad_files),
            "n_duplicates": len(report.duplicates),
            "source_counts": dict(self.counts),
        })
        ing.update({
            "n_files": n_files_total,
            "n_spectra": int(ing.get("n_spectra", 0)) + self.n_written,
            "readers": readers_total,
            "files_group": FILES_GROUP,
            "sessions": sessions,
        })
        wc = dict(self.writer.counts)
        merged = {k: int(wc.get(k, 0)) + int(self.counts.get(k, 0)) for k in set(wc) | set(self.counts)}
        report.sanitized = wc
        report.added_columns = list(self.added_columns)
        if not self.new:
            skip = {"flux", "ivar", "mask", "object_id"} | self.written_columns
            report.unfilled_columns = sorted(
                k for k in self.g.array_keys()
                if k not in skip and (self.g[k].metadata.dimension_names or ("",))[0] == "object")
            if report.unfilled_columns:
                sessions[-1]["unfilled_columns"] = list(report.unfilled_columns)
        if self.added_columns:
            sessions[-1]["added_columns"] = list(self.added_columns)
        self.writer.commit(extra_attrs={"ingest": ing}, counts=merged)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            if not self.writer.new:  # leave committed rows untouched; drop the uncommitted tail we added
                try:
                    self._resize(0)
                except Exception:  # noqa: BLE001 - best effort; readers ignore rows past n_objects anyway
                    pass


# --------------------------------------------------------------------------------------------- main entry

def _resolve_instrument(instrument) -> Instrument | None:
    if instrument is None or isinstance(instrument, Instrument):
        return instrument
    if isinstance(instrument, str) and instrument.strip().startswith("{"):
        try:
            return load_instrument(json.loads(instrument))
        except json.JSONDecodeError as exc:
            raise IngestError(f"--instrument is not valid JSON: {exc}") from exc
    try:
        return load_instrument(instrument)
    except ValueError as exc:
        raise IngestError(str(exc)) from exc


def ingest(
    files: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    instrument: Instrument | str | dict | None = None,
    append: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
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
    workers : int, optional
        Reader processes; default: all cores for >= 32 inputs, else 1 (in-process).
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
    if append and overwrite:
        raise IngestError("choose one of append and overwrite")
    paths: list[str] = [str(f) for f in files]
    lists = [from_list] if isinstance(from_list, (str, os.PathLike)) else list(from_list or [])
    for lp in lists:
        paths += read_file_list(lp)
    if not paths:
        raise IngestError("no input files given")
    # de-duplicate by absolute path, keep order
    seen: set[str] = set()
    inputs: list[Path] = []
    n_dup_inputs = 0
    for p in paths:
        ap = Path(os.path.abspath(os.path.expanduser(p)))
        if str(ap) in seen:
            n_dup_inputs += 1
            continue
        seen.add(str(ap))
        inputs.append(ap)

    inst = _resolve_instrument(instrument)
    exists = out.exists()
    known_by_path: dict[str, tuple[int, int, str]] = {}
    known_sha: dict[str, str] = {}
    if exists and not overwrite:
        try:
            validate_survey(out, inst)
        except SurveyStoreError as exc:
            raise IngestError(str(exc)) from exc
        inst = store_instrument(out)
        rec = ingested_files(out)
        for p, s, m, h in zip(rec["path"], rec["size"], rec["mtime_ns"], rec["sha256"]):
            known_by_path[str(p)] = (int(s), int(m), str(h))
            known_sha.setdefault(str(h), str(p))
    inst = inst or load_instrument(None)
    new = (not exists) or overwrite
    stale = sorted(out.parent.glob(f".{out.name}.tmp-*")) if out.parent.exists() else []
    if stale:
        log.warning("%s: temporary folders of interrupted writes found (%s); remove them once no other ingest is "
                    "running", out, ", ".join(p.name for p in stale[:3]))
    report = IngestReport(store=str(out), instrument=inst.name, created=new, n_inputs=len(inputs),
                          n_duplicate_inputs=n_dup_inputs)

    # skip files already ingested (same path, size and mtime)
    pending: list[Path] = []
    for p in inputs:
        k = known_by_path.get(str(p))
        if k is not None:
            try:
                st = p.stat()
            except OSError:
                st = None
            if st is not None and (st.st_size, st.st_mtime_ns) == k[:2]:
                report.n_skipped_ingested += 1
                if len(report.skipped_examples) < 20:
                    report.skipped_examples.append(str(p))
                continue
            report.changed_files.append(str(p))
        pending.append(p)
    if report.changed_files:
        log.warning("%d files changed since they were ingested (size/mtime); ingesting them again as new rows, "
                    "e.g. %s", len(report.changed_files), report.changed_files[0])
    if exists and not overwrite and not append:
        if pending:
            raise IngestError(f"{out} exists and {len(pending)} of the {len(inputs)} input files are not in it; "
                              "pass --append to add them or --overwrite to rebuild the store")
        log.info("%s: all %d input files are already ingested; nothing to do", out, len(inputs))
        report.elapsed_s = time.time() - t0
        return report
    if not pending:
        report.elapsed_s = time.time() - t0
        log.info("%s: nothing new to ingest (%d files already in the store)", out, report.n_skipped_ingested)
        return report

    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if len(pending) >= 32 else 1
    workers = max(1, int(workers))
    init_args = (inst.to_dict(), float(min_coverage), bool(moons1d_sky_mask))
    sink = _StoreSink(out, inst, new=new, overwrite=overwrite, chunk_objects=chunk_objects,
                      capacity_hint=len(pending))
    session_sha: dict[str, str] = {}
    by_reader: dict[str, int] = {}
    deferred: dict[str, dict] = {}  # group key -> {"index", "paths", "reader"}
    n_low_logged = 0
    bar = None
    if progress is None:
        progress = sys.stderr.isatty() and len(pending) >= 20
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pending), unit="file", desc="ingest", dynamic_ncols=True)

    def handle(res: dict) -> None:
        nonlocal n_low_logged
        status = res["status"]
        if status == "error":
            if not skip_bad:
                raise IngestError(res["error"])
            report.bad_files.append((", ".join(res["paths"]), res["error"]))
            log.error("skipping unreadable file: %s", res["error"])
            return
        if status == "companion":
            report.companions.append(res["paths"][0])
            log.info("%s: %s companion file (no spectrum), skipped", res["paths"][0], res["reader"])
            return
        # content duplicates (against the store and this session)
        dups = [(f["path"], known_sha.get(f["sha256"]) or session_sha.get(f["sha256"])) for f in res["files"]]
        if all(d[1] is not None and d[1] != d[0] for d in dups):
            for p, of in dups:
                report.duplicates.append((p, of))
                log.warning("%s: same content as already ingested %s; skipped", p, of)
            return
        if status == "deferred":
            key = res["group_key"]
            g = deferred.setdefault(key, {"index": res["index"], "paths": [], "reader": res["reader"]})
            g["paths"].append(res["paths"][0])
            return
        for f in res["files"]:
            session_sha.setdefault(f["sha256"], f["path"])
        start, n = sink.add(res)
        sink.record(res["files"], res["reader"], start, n)
        by_reader[res["reader"]] = by_reader.get(res["reader"], 0) + len(res["files"])
        report.n_files_ingested += len(res["files"])
        for k, m in enumerate(res["meta"]):
            if m["coverage"] < LOW_COVERAGE_FRACTION:
                report.n_low_coverage += 1
                if len(report.low_coverage) < 1000:
                    report.low_coverage.append((start + k, m["name"], m["coverage"]))
                if n_low_logged < 20:
                    log.warning("%s (%s): data in only %.1f%% of the %s channels", m["name"], res["paths"][0],
                                100 * m["coverage"], inst.name)
                    n_low_logged += 1

    try:
        units = [(i, (str(p),), None) for i, p in enumerate(pending)]
        for res in _iter_results(units, workers, init_args, bar):
            handle(res)
        if deferred:
            groups = sorted(deferred.values(), key=lambda g: g["index"])
            units2 = [(g["index"], tuple(g["paths"]), g["reader"]) for g in groups]
            if bar is not None:
                bar.total += len(units2)
                bar.refresh()
            for res in _iter_results(units2, workers, init_args, bar):
                handle(res)
        if sink.writer is None and new:
            raise IngestError(f"no spectrum read from the {len(pending)} input files ({len(report.companions)} "
                              f"companion files, {len(report.duplicates)} duplicates, {len(report.bad_files)} "
                              "unreadable)")
        if sink.writer is not None:
            sink.commit(report, by_reader)
            first_id = sink.first_id if sink.first_id is not None else 0
            report.rows = (sink.writer.start, sink.writer.start + sink.n_written)
            report.n_spectra = sink.n_written
            report.object_ids = (first_id, sink.next_id - 1) if sink.n_written else None
            # low-coverage rows: convert session offsets to object ids
            report.low_coverage = [(first_id + off, nm, cov) for off, nm, cov in report.low_coverage]
    except BaseException:
        sink.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    report.source_counts = dict(sink.counts)
    report.by_reader = by_reader
    report.elapsed_s = time.time() - t0
    return report


# --------------------------------------------------------------------------------------------- command line

def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``ingest`` subcommand."""
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
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="reader processes (default: all cores for >= 32 files, else 1)")
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
    p.set_defaults(func=_cli_main)
    return p


def _cli_main(args) -> int:
    from ..errors import UserError

    if args.append and args.overwrite:
        raise UserError("--append and --overwrite exclude each other")
    if not args.files and not args.from_list:
        raise UserError("give input FILEs and/or --from-list FILE")
    try:
        rep = ingest(
            args.files, args.out, instrument=args.instrument, append=args.append, overwrite=args.overwrite,
            workers=args.workers, chunk_objects=args.chunk_objects, from_list=args.from_list,
            skip_bad=args.skip_bad, min_coverage=args.min_coverage, moons1d_sky_mask=args.moons1d_sky_mask,
            progress=False if args.no_progress else None,
        )
    except (IngestError, ReaderError) as exc:
        raise UserError(str(exc)) from exc
    print(rep.summary())
    if args.report:
        Path(args.report).write_text(json.dumps(rep.to_dict(), indent=1, default=str))
    return 0 if rep.ok else 1
