"""Ingest, step 3 of 3 (discover -> read -> write): accept read results in input order and write them into the
survey store.

:class:`Collector` decides what each result becomes (rows, a skipped duplicate or companion, one file of a
grouped object set aside, an unreadable file: error or listed); :class:`StoreSink` streams the rows chunk-aligned
into the store and commits once, atomically (see its docstring). Every row gets a new ``object_id`` continuing
after the store's largest, plus ``target_id``, ``ra``, ``dec``, ``z_catalog``, ``t_exp`` and any of
:data:`~survey_infer.io.ingest.read.EXTRA_COLUMNS` the readers give.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ...errors import IngestError
from ...instrument import Instrument
from ..survey_store import COLUMN_ATTRS, ROW_COLUMN_DTYPES, append_survey, create_survey
from .discover import FILE_FIELDS, FILES_GROUP
from .read import EXTRA_COLUMNS
from .report import LOW_COVERAGE_FRACTION, IngestReport

log = logging.getLogger("survey_infer.io.ingest")

__all__ = ["BASE_COLUMNS", "Collector", "StoreSink"]

FILES_CHUNK = 65536
#: per-row columns every ingested store gets (name -> dtype, as in the survey-store contract)
BASE_COLUMNS = {"target_id": "int64", "ra": "float64", "dec": "float64", "z_catalog": "float32", "t_exp": "float32"}


def _empty_records() -> dict:
    return {k: [] for k in FILE_FIELDS}


class StoreSink:
    """Streams rows into a new store (temp name, renamed at commit) or an append session; grows capacity as
    needed, writes chunk-aligned blocks, records the ingested files, commits once.

    Nothing is visible before :meth:`commit`: a new store is built under a temporary name
    (:func:`~survey_infer.io.survey_store.create_survey`), an append raises ``n_objects`` only in its commit
    (:func:`~survey_infer.io.survey_store.append_survey`); :meth:`abort` drops what was written.
    """

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
        """Queue the rows of one ``"ok"`` read result (see :func:`~survey_infer.io.ingest.read.read_unit`);
        full chunks are written at once.

        Returns
        -------
        (int, int)
            First row offset in this session and number of rows.
        """
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
        """Note ``files`` (path, size, mtime_ns, sha256) as ingested by ``reader`` into rows
        ``[row_start, row_start + n_rows)`` of this session (written to the store's record at commit)."""
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
        """Write the remaining rows and the file record, then make everything visible in one metadata write
        (the session is appended to ``attrs["ingest"]``); fills ``report.sanitized``, ``added_columns`` and
        ``unfilled_columns``."""
        self._flush(final=True)
        self._resize(self.n_written)
        n_files_total = self._write_records()
        attrs = dict(self.g.attrs)
        ing = dict(attrs.get("ingest", {}))
        readers_total = dict(ing.get("readers", {}))
        for k, v in by_reader.items():
            readers_total[k] = int(readers_total.get(k, 0)) + int(v)
        sessions = list(ing.get("sessions", []))
        from ...provenance import utc_now

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
        """Drop everything written in this session (the store keeps its committed state)."""
        if self.writer is not None:
            self.writer.abort()
            if not self.writer.new:  # leave committed rows untouched; drop the uncommitted tail we added
                try:
                    self._resize(0)
                except Exception:  # noqa: BLE001 - best effort; readers ignore rows past n_objects anyway
                    pass



class Collector:
    """Accepts read results in input order (:meth:`accept`) and turns them into rows of ``sink`` and entries of
    ``report``.

    Parameters
    ----------
    sink : StoreSink
    report : IngestReport
        Filled as results come: bad files, companions, duplicates, files per reader, low-coverage spectra.
    known_sha : dict
        sha256 -> path of the files the store already holds (a copy of one is skipped).
    skip_bad : bool
        List unreadable files in the report instead of raising.
    inst_name : str
        Grid name (for messages).
    """

    def __init__(self, sink: StoreSink, report: IngestReport, known_sha: dict[str, str], *, skip_bad: bool,
                 inst_name: str):
        self.sink = sink
        self.report = report
        self.known_sha = known_sha
        self.skip_bad = skip_bad
        self.inst_name = inst_name
        self.session_sha: dict[str, str] = {}
        self.by_reader: dict[str, int] = {}
        #: group key -> {"index", "paths", "reader"}: the files of one object of a grouped format
        self.deferred: dict[str, dict] = {}
        self.n_low_logged = 0

    def accept(self, res: dict) -> None:
        """Take one result of :func:`~survey_infer.io.ingest.read.read_unit`.

        Raises
        ------
        IngestError
            An ``"error"`` result without ``skip_bad`` (the message names the file and the reason).
        """
        status, report = res["status"], self.report
        if status == "error":
            if not self.skip_bad:
                raise IngestError(res["error"])
            report.bad_files.append((", ".join(res["paths"]), res["error"]))
            log.error("skipping unreadable file: %s", res["error"])
            return
        if status == "companion":
            report.companions.append(res["paths"][0])
            log.info("%s: %s companion file (no spectrum), skipped", res["paths"][0], res["reader"])
            return
        # content duplicates (against the store and this session)
        dups = [(f["path"], self.known_sha.get(f["sha256"]) or self.session_sha.get(f["sha256"])) for f in res["files"]]
        if all(d[1] is not None and d[1] != d[0] for d in dups):
            for p, of in dups:
                report.duplicates.append((p, of))
                log.warning("%s: same content as already ingested %s; skipped", p, of)
            return
        if status == "deferred":
            g = self.deferred.setdefault(res["group_key"], {"index": res["index"], "paths": [], "reader": res["reader"]})
            g["paths"].append(res["paths"][0])
            return
        for f in res["files"]:
            self.session_sha.setdefault(f["sha256"], f["path"])
        start, n = self.sink.add(res)
        self.sink.record(res["files"], res["reader"], start, n)
        self.by_reader[res["reader"]] = self.by_reader.get(res["reader"], 0) + len(res["files"])
        report.n_files_ingested += len(res["files"])
        for k, m in enumerate(res["meta"]):
            if m["coverage"] < LOW_COVERAGE_FRACTION:
                report.n_low_coverage += 1
                if len(report.low_coverage) < 1000:
                    report.low_coverage.append((start + k, m["name"], m["coverage"]))
                if self.n_low_logged < 20:
                    log.warning("%s (%s): data in only %.1f%% of the %s channels", m["name"], res["paths"][0],
                                100 * m["coverage"], self.inst_name)
                    self.n_low_logged += 1

    def grouped_units(self) -> list[tuple]:
        """The objects of grouped formats set aside by :meth:`accept`, as read units (in input order)."""
        groups = sorted(self.deferred.values(), key=lambda g: g["index"])
        return [(g["index"], tuple(g["paths"]), g["reader"]) for g in groups]
