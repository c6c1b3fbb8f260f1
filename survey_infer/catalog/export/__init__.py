"""Export a catalog (Zarr, DESIGN §7) to FITS or Parquet for astropy, TOPCAT and pandas.

Both writers stream: rows are read from the Zarr catalog a block at a time (whole Zarr chunks, about
:data:`TARGET_CHUNK_BYTES` per block, ``pz`` included) and appended to the output, so memory stays bounded however
large the catalog. The output is written under a temporary name in the destination folder and renamed into place
only when complete (:func:`survey_infer.atomic.atomic_path`); an existing file is replaced only with
``overwrite=True`` (``--overwrite``).

Modules, one job each: :mod:`.columns` (which variables, units, descriptions; the row blocks), :mod:`.metadata`
(provenance, z grid and zwarn bit-table keywords), :mod:`.fits` (FITS via astropy), :mod:`.parquet` (Parquet via
pyarrow), :mod:`.docs` (the tables of docs/catalog.md: ``python -m survey_infer.catalog.export --markdown
zwarn|columns``). The command line is :mod:`survey_infer.cli.export`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ...atomic import atomic_path
from ...errors import UserError
from ..store import open_catalog
from .columns import TARGET_CHUNK_BYTES, Column, catalog_columns, default_chunk_rows, fits_unit
from .docs import columns_markdown, zwarn_markdown
from .metadata import bit_table_of, provenance_cards, to_json, zwarn_header_cards

__all__ = [
    "export_catalog",
    "infer_format",
    "catalog_columns",
    "Column",
    "fits_unit",
    "zwarn_header_cards",
    "bit_table_of",
    "zwarn_markdown",
    "columns_markdown",
    "provenance_cards",
    "OutputExistsError",
    "FORMATS",
    "TARGET_CHUNK_BYTES",
]

log = logging.getLogger(__name__)

FORMATS = ("fits", "parquet")


class OutputExistsError(FileExistsError):
    """The export's output file exists and ``overwrite`` is False (``path``: that file)."""

    def __init__(self, path: Path, what: str = "exists") -> None:
        self.path, self.what = Path(path), what
        super().__init__(f"{path} {what}; pass overwrite=True to replace it")


def infer_format(out: str | Path) -> str | None:
    """The format a file name implies.

    Parameters
    ----------
    out : str or Path
        The output file.

    Returns
    -------
    str or None
        ``"fits"`` for ``.fits``/``.fit``/``.fts``, ``"parquet"`` for ``.parquet``/``.pq``, else None.
    """
    name = Path(out).name.lower()
    if name.endswith((".fits", ".fit", ".fts")):
        return "fits"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return None


def export_catalog(catalog: str | Path, out: str | Path, fmt: str | None = None, with_pz: bool = False,
                   overwrite: bool = False, chunk_rows: int | None = None) -> Path:
    """Export a catalog to FITS or Parquet, streaming it in row blocks.

    Parameters
    ----------
    catalog : str or Path
        The Zarr catalog written by ``survey-infer run``.
    out : str or Path
        Output file. Written under a temporary name in the same folder, then renamed into place.
    fmt : {"fits", "parquet"} or None
        Output format; None infers it from the suffix of ``out`` (``.parquet``/``.pq`` -> Parquet, anything
        else -> FITS).
    with_pz : bool
        Also export ``pz(object, zbin)`` as a fixed-length float32 vector column of ``nzbin`` values.
    overwrite : bool
        Replace an existing ``out``; otherwise an existing file is an error.
    chunk_rows : int, optional
        Rows per streamed block; default: whole Zarr chunks, about 32 MiB of data per block.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    OutputExistsError
        ``out`` exists (or appeared while exporting) and ``overwrite`` is False (a ``FileExistsError``).
    CatalogError
        ``catalog`` does not exist or is not a readable catalog.
    UserError
        Unknown format, compressed or directory output, ``chunk_rows < 1``, no per-object variables, ``with_pz``
        without a stored ``pz``, a block that cannot be read.
    """
    from .fits import write_fits
    from .parquet import write_parquet

    out = Path(out)
    fmt = (fmt or infer_format(out) or "fits").lower()
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r} for {out}; use one of {', '.join(FORMATS)}")
    if out.name.lower().endswith((".gz", ".bz2", ".fz")):
        raise UserError(f"{out}: compressed output is not supported (streaming writer); write {out.stem} "
                        "and compress it afterwards")
    if out.is_dir():
        raise UserError(f"{out} is a directory; give a file name")
    if out.exists() and not overwrite:
        raise OutputExistsError(out)
    ds = open_catalog(catalog, dask=False)
    cols = catalog_columns(ds, with_pz=with_pz)
    if not cols:
        raise UserError(f"catalog {catalog} has no per-object variables to export")
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(ds, cols)
    if chunk_rows < 1:
        raise UserError(f"chunk_rows must be >= 1, got {chunk_rows}")
    attrs = json.loads(to_json(dict(ds.attrs)))
    write = write_fits if fmt == "fits" else write_parquet
    with atomic_path(out) as tmp:
        write(ds, cols, tmp, chunk_rows, attrs)
        if out.exists() and not overwrite:  # appeared while we were writing
            raise OutputExistsError(out, "appeared while exporting")
    log.debug("export: wrote %s (%s, %d rows, %d columns)", out, fmt, int(ds.sizes["object"]), len(cols))
    return out
