"""Resume protocol (DESIGN §8): numerics fingerprint, per-block done-markers, and the one-writer lease lock.

Done-markers
    ``CATALOG/_markers/<job>/block-<i>.json``, written atomically (temp + rename) after a block's region write.
    A marker holds the numerics fingerprint, the run epoch and run id, the block's input stamp (sizes and
    mtimes of the input chunk files it read), its input hash (CRC32 of the bytes it read), the names of the
    variables it wrote (``output_names``) and the output hash (CRC32 of those variables as read back from the
    store after the write). A block is done for a job only when

    * the job's marker exists, with the same block bounds, fingerprint and (for a selection) the same rows;
    * its input stamp still matches (or, if files were touched, its input hash does);
    * the stored block still hashes to the output hash of the *latest* marker of that block over all jobs (so
      a torn, truncated, deleted or overwritten chunk is detected, while a later reprocessing job that legitimately
      replaced some rows is not mistaken for damage);
    * no row of the job's selection was rewritten since by an older job (its ``run_id`` is not lower than the
      job's).

    Before a reprocessing job merges its rows into a block it records an *intent*
    (``_markers/<job>/intent-<i>.json``) with the hash of the rows it keeps, so that its own interrupted merge can
    be resumed while damage to the kept rows is refused.

Lease lock
    One writer per catalog: see :mod:`survey_infer.pipeline.lock` (tickets created atomically per epoch,
    liveness proven or judged by heartbeat, tasks checking epoch and owner). Its names are re-exported here.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from ..catalog.store import output_hash, read_block

from .liveness import holder_is_dead  # noqa: F401 - re-exported (status)
from .lock import (CLOCK_SKEW_S, LOCK, LOCK_DIR, LeaseLock, LockHeldError, StaleEpochError,  # noqa: F401 - re-exported
                   check_epoch, current_epoch, lock_record)
from ..atomic import atomic_write_json  # noqa: F401  (used by the runner and the worker)
from ..errors import FingerprintMismatch, DamagedBlockError  # noqa: F401  (defined in survey_infer.errors)

MARKERS = "_markers"
FAILURES = "_failures"
SUB_ROWS = 1024  # rows read and processed at once inside a block (the input hash is taken in these groups)


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when it is missing or unreadable (a torn marker is no marker)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None


# ---- fingerprint --------------------------------------------------------------------------------------------
def fingerprint_diff(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two numerics fingerprints."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: catalog has {old.get(k)!r}, this run would use {new.get(k)!r}" for k in keys
            if old.get(k) != new.get(k)]


# ---- markers ----------------------------------------------------------------------------------------------------
def marker_path(catalog: Path, job: str, block: int) -> Path:
    """The done-marker of ``job``'s ``block``: ``CATALOG/_markers/<job>/block-NNNNNN.json``."""
    return Path(catalog) / MARKERS / job / f"block-{block:06d}.json"


def intent_path(catalog: Path, job: str, block: int) -> Path:
    """The merge intent of a reprocessing ``job``'s ``block``: ``CATALOG/_markers/<job>/intent-NNNNNN.json``."""
    return Path(catalog) / MARKERS / job / f"intent-{block:06d}.json"


def failure_path(catalog: Path, job: str, block: int) -> Path:
    """The failure record of ``job``'s ``block``: ``CATALOG/_failures/<job>/block-NNNNNN.json``."""
    return Path(catalog) / FAILURES / job / f"block-{block:06d}.json"


def load_markers(catalog: Path) -> dict[str, dict[int, dict]]:
    """Every readable done-marker of a catalog: ``{job: {block: marker}}``."""
    out: dict[str, dict[int, dict]] = {}
    root = Path(catalog) / MARKERS
    if not root.is_dir():
        return out
    for jd in sorted(p for p in root.iterdir() if p.is_dir()):
        d = out.setdefault(jd.name, {})
        for f in jd.glob("block-*.json"):
            m = read_json(f)
            if m and "block" in m:
                d[int(m["block"])] = m
    return out


def marker_order(m: dict) -> tuple:
    """Sort key of markers by when their write happened: run epoch first (epochs only grow), then time."""
    return int(m.get("epoch", -1)), float(m.get("time", 0.0))


def latest_marker(catalog: Path, block: int, markers: dict[str, dict[int, dict]] | None = None) -> dict | None:
    """The most recent marker of ``block`` over all jobs: the one whose output hash the stored block must have."""
    if markers is None:  # read only this block's marker of every job
        root = Path(catalog) / MARKERS
        jobs = [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
        cands = [m for m in (read_json(marker_path(catalog, j, block)) for j in jobs) if m]
    else:
        cands = [j[block] for j in markers.values() if block in j]
    return max(cands, key=marker_order) if cands else None


def _file_layout(store: str, name: str, meta_mtime_ns: int) -> tuple:
    """(rows per chunk file along axis 0, chunk-file coordinates along the other axes, chunk-key encoding) of
    array ``name``, read through Zarr's metadata (cached per metadata version)."""
    import itertools
    import math

    import zarr

    a = zarr.open_array(str(Path(store) / name), mode="r", zarr_format=3)
    grid = a.shards or a.chunks  # one file per shard when sharded
    rest = tuple(itertools.product(*[range(max(1, math.ceil(s / c))) for s, c in zip(a.shape[1:], grid[1:])]))
    return int(grid[0]), rest, a.metadata.chunk_key_encoding


_LAYOUTS: dict[tuple, tuple] = {}


def input_stamp(input_store: Path, lo: int, hi: int, chunk_rows: dict[str, int]) -> str:
    """Sizes and mtimes of the input chunk files rows ``[lo, hi)`` live in (cheap change detection).

    Chunk keys come from each array's own chunk-key encoding (Zarr v3 ``default`` with ``/`` or ``.``
    separator, ``v2``; one file per shard when sharded) and cover every chunk along the other axes, so a change
    anywhere in those rows changes the stamp. ``chunk_rows`` names the arrays (its values are the rows per chunk
    of the driver's view; the files' own layout is read from the metadata).
    """
    parts = []
    for name in sorted(chunk_rows):
        try:
            meta = Path(input_store) / name / "zarr.json"
            key = (str(input_store), name, meta.stat().st_mtime_ns)
            if key not in _LAYOUTS:
                _LAYOUTS[key] = _file_layout(*key)
            rows, rest, enc = _LAYOUTS[key]
        except Exception:  # noqa: BLE001 - unreadable metadata: the input hash decides
            parts.append(f"{name}:unreadable")
            continue
        for c in range(lo // rows, (hi - 1) // rows + 1):
            for r in rest:
                p = Path(input_store) / name / enc.encode_chunk_key((c, *r))
                tag = f"{name}/{c}" if not any(r) else f"{name}/{c}." + ".".join(map(str, r))
                try:
                    st = p.stat()
                    parts.append(f"{tag}:{st.st_size}:{st.st_mtime_ns}")
                except FileNotFoundError:
                    parts.append(f"{tag}:absent")
    return f"{zlib.crc32(';'.join(parts).encode()):08x}"


def crc_update(crc: int, arrays: list[np.ndarray]) -> int:
    """Continue a CRC32 over the bytes of ``arrays`` (so a block's input is hashed as it streams, not held)."""
    for a in arrays:
        a = np.ascontiguousarray(a)
        crc = zlib.crc32(a.view(np.uint8).reshape(-1).data if a.size else b"", crc)
    return crc


def input_hash(arrays: list[np.ndarray]) -> str:
    """CRC32 of the bytes of the input arrays a block read."""
    return f"{crc_update(0, arrays):08x}"


def rows_hash(rows: np.ndarray | None) -> str | None:
    """Identity of a selection of rows inside a block (None = the whole block)."""
    if rows is None:
        return None
    return f"{zlib.crc32(np.ascontiguousarray(rows, dtype=np.int64).tobytes()):08x}:{len(rows)}"


def iter_input_rows(group, todo: np.ndarray, sub_rows: int):
    """Read the input for rows ``todo`` (sorted absolute indices) in groups of rows that share a window of
    ``sub_rows`` aligned rows (``row // sub_rows``), so that one read spans at most ``sub_rows`` rows whatever
    the selection (memory bounded for sparse selections too).

    Yields ``(rows, a, b, sel, arrays)``: ``[a, b)`` is the contiguous range read, ``arrays`` a dict with
    ``flux``, ``ivar``, ``object_id`` and ``mask`` (or None) for all rows ``[a, b)``, and ``sel`` the positions
    of ``rows`` in it. The same reader is used by the task (input hash at compute time) and the resume check.
    """
    has_mask = "mask" in group
    todo = np.asarray(todo, np.int64)
    win = todo // sub_rows
    cuts = np.flatnonzero(np.diff(win)) + 1
    for r in np.split(todo, cuts):
        if not len(r):
            continue
        a, b = int(r[0]), int(r[-1]) + 1
        arrs = {"flux": group["flux"][a:b], "ivar": group["ivar"][a:b],
                "mask": group["mask"][a:b] if has_mask else None, "object_id": group["object_id"][a:b]}
        yield r, a, b, r - a, arrs


def hash_parts(arrs: dict, sel: np.ndarray | None = None) -> list[np.ndarray]:
    """The arrays of one group of rows in input-hash order (only the rows ``sel`` when given)."""
    names = ("flux", "ivar", "object_id", "mask")
    out = [arrs[k] for k in names if arrs[k] is not None]
    if sel is not None and len(sel) != len(arrs["object_id"]):
        out = [a[sel] for a in out]
    return out


# ---- is a block done? --------------------------------------------------------------------------------------------
def block_is_done(cat_path: Path, job: str, block: int, lo: int, hi: int, fingerprint: dict, input_store: Path,
                  chunk_rows: dict, verify_output: bool = True, *, rows: np.ndarray | None = None,
                  run_id: int | None = None, markers: dict | None = None,
                  run_ids: np.ndarray | None = None) -> tuple[bool, str]:
    """Whether ``job``'s marker proves block ``block`` complete (see :mod:`survey_infer.pipeline.resume`).

    Parameters
    ----------
    rows : the job's rows in this block (a reprocessing selection); None = the whole block.
    run_id : the job's run id; rows carrying an older run id were rewritten since (by an older job's later run).
    markers : :func:`~survey_infer.pipeline.resume.load_markers` of the catalog (read here when None).
    run_ids : the catalog's ``run_id`` column (read here when None and needed).

    Returns
    -------
    (done, reason) — the reason says why a block must be (re)computed.
    """
    markers = load_markers(cat_path) if markers is None else markers
    m = markers.get(job, {}).get(block)
    if not m:
        return False, "no marker"
    if m.get("lo") != lo or m.get("hi") != hi:
        return False, "block bounds changed (input appended)"
    if m.get("fingerprint") != fingerprint:
        return False, "fingerprint differs"
    if rows_hash(rows) != m.get("rows_hash") and not (rows is None and "rows_hash" not in m):
        return False, "selection differs"
    todo = np.arange(lo, hi) if rows is None else np.asarray(rows, np.int64)
    if m.get("input_stamp") != input_stamp(input_store, lo, hi, chunk_rows):
        # files touched (copied, restored, appended to): compare the content hash before recomputing
        import zarr

        try:
            g = zarr.open_group(str(input_store), mode="r", zarr_format=3, use_consolidated=False)
            parts = []
            for _r, _a, _b, sel, arrs in iter_input_rows(g, todo, SUB_ROWS):
                parts += hash_parts(arrs, sel)
            same = input_hash(parts) == m.get("input_hash")
        except Exception:  # noqa: BLE001 - unreadable input: recompute (and fail there with the reason)
            same = False
        if not same:
            return False, "input changed"
    if verify_output:
        latest = latest_marker(cat_path, block, markers) or m
        names = latest.get("output_names")
        try:
            stored = read_block(cat_path, lo, hi, sorted(names) if names else None)
        except Exception as exc:  # noqa: BLE001 - truncated or corrupt chunk
            return False, f"stored block unreadable ({type(exc).__name__}): torn chunk"
        stored.pop("z_grid", None)
        if output_hash(stored) != latest.get("output_hash"):
            return False, (f"stored block does not match its latest marker (job {latest.get('job')}, epoch "
                           f"{latest.get('epoch')}): torn, missing or overwritten chunk")
    if run_id is not None:
        if run_ids is None:
            import zarr

            rid = zarr.open_group(str(cat_path), mode="r", zarr_format=3,
                                  use_consolidated=False)["run_id"][lo:hi][todo - lo]
        else:
            rid = run_ids[todo]
        if (rid < run_id).any():
            return False, "rows were rewritten since by an older job"
    return True, "done"


def input_chunk_rows(input_store: Path) -> dict[str, int]:
    """Rows per chunk file (shard when sharded) of the input arrays a block reads (``flux``, ``ivar``, ``mask``,
    ``object_id``): the arrays and granularity of :func:`input_stamp`."""
    import zarr

    g = zarr.open_group(str(input_store), mode="r", zarr_format=3, use_consolidated=False)
    return {k: int((g[k].shards or g[k].chunks)[0]) for k in ("flux", "ivar", "mask", "object_id") if k in g}
