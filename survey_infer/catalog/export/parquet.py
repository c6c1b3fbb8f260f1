"""Write a catalog as a Parquet file with pyarrow, one row group per streamed block.

Layout: the same columns as FITS (``pz`` as a fixed-size list of float32). Each field's metadata has ``units``
and ``description``; the schema metadata has ``survey_infer`` (JSON: catalog attrs, z grid, per-column units and
descriptions, export provenance), ``zwarn_bits`` (JSON bit table) and ``table_meta_yaml`` (astropy's table
header, so ``astropy.table.Table.read(path)`` restores units and descriptions).
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np

from ...provenance import provenance
from .columns import Column, iter_blocks, z_grid
from .metadata import bit_table_of, to_json

__all__ = ["write_parquet"]

log = logging.getLogger(__name__)


def _is_half(c: Column) -> bool:
    return c.dtype.kind == "f" and c.dtype.itemsize < 4  # float16: Parquet readers want float32


def _arrow_type(c: Column):
    import pyarrow as pa

    base = pa.float32() if _is_half(c) else pa.string() if c.dtype.kind in "SU" else pa.from_numpy_dtype(c.dtype)
    return pa.list_(base, int(np.prod(c.shape))) if c.shape else base


def _arrow_array(c: Column, v: np.ndarray, typ):
    import pyarrow as pa

    if _is_half(c):
        v = v.astype(np.float32)
    if c.shape:
        flat = np.ascontiguousarray(v).reshape(-1)
        return pa.FixedSizeListArray.from_arrays(pa.array(flat, type=typ.value_type), int(np.prod(c.shape)))
    if c.dtype.kind == "S":
        v = np.char.decode(v, "utf-8", "replace")
    return pa.array(v, type=typ)


def _astropy_yaml(cols: list[Column], meta: dict) -> str:
    """astropy's ``table_meta_yaml`` for these columns (empty when astropy cannot write it)."""
    import astropy.units as u
    from astropy.table import Column as ACol, Table, meta as ameta

    t = Table(meta=meta)
    for c in cols:
        dt = np.dtype(np.float32) if _is_half(c) else c.dtype
        try:
            unit = u.Unit(c.units) if c.units else None
        except Exception:  # noqa: BLE001 - unparseable units stay in the field metadata only
            unit = None
        t.add_column(ACol(name=c.name, dtype=dt if dt.kind not in "SU" else np.dtype("U1"), shape=c.shape,
                          length=0, unit=unit, description=c.description))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return "\n".join(ameta.get_yaml_from_table(t))
    except Exception as exc:  # noqa: BLE001 - units/descriptions remain in the field metadata
        log.warning("export: cannot write astropy's table_meta_yaml (%s); field metadata still has units", exc)
        return ""


def _schema(cols: list[Column], zg: np.ndarray | None, attrs: dict):
    import pyarrow as pa

    fields = [pa.field(c.name, _arrow_type(c), nullable=False,
                       metadata={b"units": c.units.encode(), b"description": c.description.encode()})
              for c in cols]
    bits = bit_table_of(attrs)
    bad_mask = int(sum(int(r["value"]) for r in bits if r["bad"] and isinstance(r["bit"], int)))
    info = {
        "format": "survey-infer catalog export",
        "attrs": attrs,
        "z_grid": None if zg is None else zg.tolist(),
        "columns": {c.name: {"units": c.units, "description": c.description} for c in cols},
        "bad_mask": bad_mask,
        "exported_by": provenance(),
    }
    small_meta = {k: attrs[k] for k in ("software_version", "model_sha256", "mc_samples", "seed", "created")
                  if k in attrs}
    small_meta["zwarn_bad_mask"] = bad_mask
    metadata = {b"survey_infer": to_json(info).encode(), b"zwarn_bits": to_json(bits).encode()}
    if yaml_meta := _astropy_yaml(cols, json.loads(to_json(small_meta))):
        metadata[b"table_meta_yaml"] = yaml_meta.encode()
    return pa.schema(fields, metadata=metadata)


def write_parquet(ds, cols: list[Column], path: Path, chunk_rows: int, attrs: dict) -> None:
    """Write the Parquet file (layout in the module docstring), zstd-compressed, one row group per block.

    Parameters
    ----------
    ds : xarray.Dataset
        The catalog, opened without dask.
    cols : list of Column
        The columns to write (:func:`.columns.catalog_columns`).
    path : Path
        The file to write (a new, temporary file; the caller renames it into place).
    chunk_rows : int
        Rows per block and row group.
    attrs : dict
        The catalog's attributes, JSON-like.

    Raises
    ------
    UserError
        A block of the catalog cannot be read.
    OSError
        The file cannot be written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(cols, z_grid(ds), attrs)
    # dictionary encoding is useless for float PDFs and costs memory: only for the scalar columns
    dict_cols = [c.name for c in cols if not c.shape]
    with pq.ParquetWriter(str(path), schema, compression="zstd", use_dictionary=dict_cols) as writer:
        for a, b, data in iter_blocks(ds, cols, chunk_rows):
            arrays = [_arrow_array(c, data[c.name], f.type) for c, f in zip(cols, schema)]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema), row_group_size=max(1, b - a))
            log.debug("export: Parquet rows %d..%d written", a, b)
