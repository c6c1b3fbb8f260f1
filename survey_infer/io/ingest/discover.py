"""Ingest, step 1 of 3 (discover -> read -> write): which input files there are, which of them the store already
holds, and on which grid they will be written.

Inputs come from the command line and ``--from-list`` files (:func:`read_file_list`) and are de-duplicated by
absolute path. Files recorded in the store's ``ingest_files`` group (:func:`ingested_files`) with the same path,
size and modification time are skipped; changed ones are read again as new rows.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import IngestError, SurveyStoreError
from ...instrument import Instrument, load_instrument
from ..survey_store import store_instrument, validate_survey

log = logging.getLogger("survey_infer.io.ingest")

__all__ = ["FILES_GROUP", "FILE_FIELDS", "Discovery", "discover", "ingested_files", "read_file_list",
           "resolve_instrument"]

#: Zarr group of the store holding one entry per ingested file
FILES_GROUP = "ingest_files"
#: fields of that record (name -> dtype; ``str`` for variable-length strings)
FILE_FIELDS = {"path": str, "size": "int64", "mtime_ns": "int64", "sha256": str, "reader": str,
               "row_start": "int64", "n_rows": "int64", "session": "int32"}


def read_file_list(list_path: str | os.PathLike) -> list[str]:
    """Paths listed in a text file: one per line, blank lines and ``#`` comments ignored.

    Relative paths are resolved against the current directory when they exist there, else against the list
    file's folder.

    Raises
    ------
    IngestError
        If the list file does not exist.
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


def resolve_instrument(instrument: Instrument | str | dict | None) -> Instrument | None:
    """The instrument (wavelength grid) named by ``--instrument``.

    Parameters
    ----------
    instrument : Instrument, str, dict or None
        An :class:`~survey_infer.instrument.Instrument`, a shipped name (``moons_lr``), a JSON file path, inline
        JSON (a string starting with ``{``) or a dict; None keeps None (the store's own, or the default).

    Raises
    ------
    IngestError
        Invalid JSON or an unknown name / invalid definition.
    """
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


def collect_inputs(files: Iterable[str | os.PathLike],
                   from_list: str | os.PathLike | Sequence[str | os.PathLike] | None = None) -> tuple[list[Path], int]:
    """Input paths from ``files`` and the ``from_list`` files, made absolute and de-duplicated (order kept).

    Returns
    -------
    (list of Path, int)
        The distinct inputs and the number of repeated paths dropped.

    Raises
    ------
    IngestError
        No input at all, or a list file that does not exist.
    """
    paths: list[str] = [str(f) for f in files]
    lists = [from_list] if isinstance(from_list, (str, os.PathLike)) else list(from_list or [])
    for lp in lists:
        paths += read_file_list(lp)
    if not paths:
        raise IngestError("no input files given")
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
    return inputs, n_dup_inputs


@dataclass
class Discovery:
    """What :func:`discover` found.

    Attributes
    ----------
    inputs : list of Path
        Distinct input files (absolute).
    pending : list of Path
        Inputs to read (not in the store, or changed since).
    inst : Instrument
        Grid the rows are written on.
    new : bool
        True when the store is created (absent, or ``overwrite``).
    known_sha : dict
        sha256 -> path of every file already in the store (to skip copies).
    n_dup_inputs : int
        Repeated input paths dropped.
    skipped : list of Path
        Inputs already in the store (same path, size and mtime).
    changed_files : list of str
        Inputs in the store's record whose size or mtime changed: read again as new rows.
    """

    inputs: list[Path]
    pending: list[Path]
    inst: Instrument
    new: bool
    known_sha: dict[str, str] = field(default_factory=dict)
    n_dup_inputs: int = 0
    skipped: list[Path] = field(default_factory=list)
    changed_files: list[str] = field(default_factory=list)


def discover(files: Iterable[str | os.PathLike], out: str | os.PathLike, *,
             instrument: Instrument | str | dict | None = None, append: bool = False, overwrite: bool = False,
             from_list: str | os.PathLike | Sequence[str | os.PathLike] | None = None) -> Discovery:
    """Inputs, what the store at ``out`` already holds of them, and the grid (step 1 of ingest).

    Parameters
    ----------
    files, from_list
        As for :func:`survey_infer.io.ingest.ingest`.
    out : path
        The survey store.
    instrument, append, overwrite
        As for :func:`survey_infer.io.ingest.ingest`.

    Returns
    -------
    Discovery

    Raises
    ------
    IngestError
        No input, both ``append`` and ``overwrite``, a store whose grid differs from ``instrument`` or that is
        not a valid survey store, or an existing store with new inputs but neither ``append`` nor ``overwrite``.
    """
    out = Path(out)
    if append and overwrite:
        raise IngestError("choose one of append and overwrite")
    inputs, n_dup = collect_inputs(files, from_list)
    inst = resolve_instrument(instrument)
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
    found = Discovery(inputs=inputs, pending=[], inst=inst or load_instrument(None), new=(not exists) or overwrite,
                      known_sha=known_sha, n_dup_inputs=n_dup)
    stale = sorted(out.parent.glob(f".{out.name}.tmp-*")) if out.parent.exists() else []
    if stale:
        log.warning("%s: temporary folders of interrupted writes found (%s); remove them once no other ingest is "
                    "running", out, ", ".join(p.name for p in stale[:3]))
    for p in inputs:  # skip files already ingested (same path, size and mtime)
        k = known_by_path.get(str(p))
        if k is not None:
            try:
                st = p.stat()
            except OSError:
                st = None
            if st is not None and (st.st_size, st.st_mtime_ns) == k[:2]:
                found.skipped.append(p)
                continue
            found.changed_files.append(str(p))
        found.pending.append(p)
    if found.changed_files:
        log.warning("%d files changed since they were ingested (size/mtime); ingesting them again as new rows, "
                    "e.g. %s", len(found.changed_files), found.changed_files[0])
    if exists and not overwrite and not append and found.pending:
        raise IngestError(f"{out} exists and {len(found.pending)} of the {len(inputs)} input files are not in it; "
                          "pass --append to add them or --overwrite to rebuild the store")
    return found
