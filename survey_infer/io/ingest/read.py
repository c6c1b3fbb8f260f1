"""Ingest, step 2 of 3 (discover -> read -> write): read each input with the reader its content calls for and
resample its spectra onto the instrument grid (:func:`survey_infer.io.resample.resample_arms`).

The reading runs in this process, or on the workers of a Dask client handed in by the caller (the command line
starts it from ``--cluster``, with the same machinery as ``run``: local processes, an address, a scheduler file,
Slurm). Results come back in input order with a bounded number of tasks in flight. A unit that fails, on a worker
or with its worker (a worker that dies), comes back as an error naming its file(s): nothing is lost silently.
"""
from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from pathlib import Path

import numpy as np

from ...errors import ReaderError
from ...instrument import Instrument, load_instrument
from ...provenance import file_sha256
from ..readers import default_readers, find_reader, reader_by_name
from ..readers.base import as_int_id, probe_file
from ..resample import resample_arms

__all__ = ["EXTRA_COLUMNS", "ReadSettings", "read_unit", "read_batch", "iter_results"]

#: extra per-row values a reader may supply (Spectrum.columns); anything else is ignored
EXTRA_COLUMNS = ("z_true", "mag_h", "logmstar_true", "logsfr_true")


@dataclass(frozen=True)
class ReadSettings:
    """What every read needs besides the file: sent once per task to the workers (small and picklable).

    Attributes
    ----------
    instrument : str
        The grid as JSON (:meth:`Instrument.to_dict`).
    min_coverage : float
        Fraction of a channel good source pixels must cover (:mod:`survey_infer.io.resample`).
    moons1d_sky_mask : bool
        Treat moons1d's sky-line mask as bad pixels.
    """

    instrument: str
    min_coverage: float
    moons1d_sky_mask: bool = False

    @classmethod
    def of(cls, inst: Instrument, min_coverage: float, moons1d_sky_mask: bool = False) -> "ReadSettings":
        """Settings for ``inst`` (see the attributes)."""
        return cls(json.dumps(inst.to_dict(), sort_keys=True), float(min_coverage), bool(moons1d_sky_mask))


@lru_cache(maxsize=4)
def _context(settings: ReadSettings) -> tuple[Instrument, list]:
    """The instrument and readers of ``settings``, built once per process."""
    return load_instrument(json.loads(settings.instrument)), default_readers(moons1d_sky_mask=settings.moons1d_sky_mask)


def _source_counts(spec) -> dict:
    c = {"nonfinite_flux": 0, "bad_ivar": 0, "masked": 0}
    for a in spec.arms:
        c["nonfinite_flux"] += int((~np.isfinite(a.flux)).sum())
        c["bad_ivar"] += int((~np.isfinite(a.ivar) | (a.ivar < 0)).sum())
        if a.mask is not None:
            c["masked"] += int((a.mask != 0).sum())
    return c



def read_unit(unit: tuple, settings: ReadSettings) -> dict:
    """Read and resample one unit of work; never raises (a failure is returned, naming the file).

    Parameters
    ----------
    unit : (int, tuple of str, str or None)
        ``(index, paths, reader_name)``: the input's position (keeps the input order), its file(s) (several for
        one object of a grouped format), and the reader to use (None: sniff the first file).
    settings : ReadSettings
        Grid and reading options.

    Returns
    -------
    dict
        ``status`` is ``"ok"`` (with ``flux``, ``ivar``, ``mask`` of shape ``(n_spectra, n_wave)`` float32 /
        uint8, per-spectrum ``meta`` and source-pixel ``counts``), ``"companion"`` (a file holding no spectrum),
        ``"deferred"`` (one file of a grouped format, with its ``group_key``) or ``"error"`` (``error``: one line
        naming the file and the reason). Always: ``index``, ``paths``, ``reader`` and ``files`` (path, size,
        mtime_ns, sha256 of each file read).
    """
    index, paths, reader_name = unit
    res: dict = {"index": index, "paths": list(paths), "status": "ok", "files": [], "reader": reader_name}
    inst, readers = _context(settings)
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
            flux[k], ivar[k], mask[k] = resample_arms(s.arms, inst, min_coverage=settings.min_coverage)
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


def read_batch(batch: list, settings: ReadSettings) -> list[dict]:
    """:func:`read_unit` over a list of units (one Dask task)."""
    return [read_unit(u, settings) for u in batch]


def _failed(unit: tuple, exc: BaseException) -> dict:
    """The result of a unit whose task failed outside :func:`read_unit` (its worker died, the client closed)."""
    index, paths, reader_name = unit
    where = ", ".join(paths)
    return {"index": index, "paths": list(paths), "status": "error", "files": [], "reader": reader_name,
            "error": f"{where}: not read: the Dask task reading it failed ({type(exc).__name__}: {exc})"}


def _total_threads(client) -> int:
    try:
        return max(1, sum(int(w.get("nthreads", 1)) for w in client.scheduler_info(n_workers=-1)["workers"].values()))
    except Exception:  # noqa: BLE001 - a scheduler without workers yet: one in flight, more as they come
        return 1


def iter_results(units: list, settings: ReadSettings, client=None, progress=None) -> Iterator[dict]:
    """Results of :func:`read_unit` for ``units``, in input order.

    Parameters
    ----------
    units : list of (int, tuple of str, str or None)
        See :func:`read_unit`.
    settings : ReadSettings
    client : distributed.Client, optional
        Read on its workers (batches of up to 16 units per task, three tasks in flight per worker thread);
        None reads in this process.
    progress : tqdm-like, optional
        Advanced by one per unit.

    Yields
    ------
    dict
        One result per unit (see :func:`read_unit`); a task that fails as a whole (worker lost) yields an
        ``"error"`` result for each of its units.
    """
    if not units:
        return
    if client is None:
        for u in units:
            r = read_unit(u, settings)
            if progress is not None:
                progress.update(1)
            yield r
        return
    threads = _total_threads(client)
    bs = max(1, min(16, len(units) // (threads * 4) or 1))
    batches = iter([units[i:i + bs] for i in range(0, len(units), bs)])
    pending = deque((b, client.submit(read_batch, b, settings, pure=False)) for b in islice(batches, threads * 3))
    try:
        while pending:
            batch, fut = pending.popleft()
            try:
                out = fut.result()
            except Exception as exc:  # noqa: BLE001 - KilledWorker, CommClosedError...: the units are reported
                out = [_failed(u, exc) for u in batch]
            nb = next(batches, None)
            if nb is not None:
                pending.append((nb, client.submit(read_batch, nb, settings, pure=False)))
            for r in out:
                if progress is not None:
                    progress.update(1)
                yield r
    finally:
        for _, f in pending:
            f.cancel()
