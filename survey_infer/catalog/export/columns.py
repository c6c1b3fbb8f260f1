"""Which catalog variables are exported, with which units and descriptions, and the row blocks they stream in.

Shared by the FITS and the Parquet writer (and the documentation tables): one :class:`Column` per exported
variable, in contract order (:mod:`survey_infer.catalog.schema`), and :func:`iter_blocks`, which reads whole Zarr
chunks, about :data:`TARGET_CHUNK_BYTES` per block, so memory stays bounded however large the catalog.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ...errors import UserError
from ..schema import PASSTHROUGH, PER_OBJECT, PZ_DESCRIPTION, PZ_NAME, ZGRID_NAME

__all__ = ["Column", "fits_unit", "catalog_columns", "default_chunk_rows", "iter_blocks", "z_grid",
           "TARGET_CHUNK_BYTES"]

log = logging.getLogger(__name__)

#: Bytes of row data per streamed block (rounded to whole Zarr chunks).
TARGET_CHUNK_BYTES = 32 * 2**20
_SUPPORTED_KINDS = "biufSU"
_GENERIC_PASSTHROUGH = "passed through from the input store"


@dataclass(frozen=True)
class Column:
    """One exported column.

    Attributes
    ----------
    name : str
        Column name (the catalog variable name).
    dtype : numpy.dtype
        Dtype as read from the catalog.
    shape : tuple
        Per-row shape: ``()``, or ``(nzbin,)`` for ``pz``.
    units : str
        Catalog units string (``""`` = dimensionless).
    description : str
        Column description.
    """

    name: str
    dtype: np.dtype
    shape: tuple
    units: str
    description: str

    @property
    def fits_unit(self) -> str | None:
        """The column's ``TUNITn`` (:func:`fits_unit` of :attr:`units`)."""
        return fits_unit(self.units)

    @property
    def fits_description(self) -> str:
        """The description (with the unit appended in the rare case that it cannot go in TUNIT)."""
        desc = self.description
        if self.name == PZ_NAME:
            desc += "; bin centres in the Z_GRID HDU"
        if self.units and self.fits_unit is None:
            desc += f" [unit: {self.units}]"
        return desc


def fits_unit(units: str | None) -> str | None:
    """The ``TUNITn`` string of ``units``.

    Parameters
    ----------
    units : str or None
        A catalog units string (``deg``, ``s``, ``dex(solMass)``, ``mag(AB)``, ...).

    Returns
    -------
    str or None
        The FITS-standard spelling when astropy writes one that parses back to the same unit (``deg``, ``s``);
        else, for function units the FITS standard lacks (``dex(solMass)``, ``dex(solMass / yr)``, ``dex``,
        ``mag(AB)``), astropy's generic spelling, which ``astropy.units.Unit`` parses back; None when
        dimensionless or not a unit astropy parses (the unit then goes into the description).
    """
    if not units:
        return None
    import astropy.units as u

    try:
        unit = u.Unit(units)
    except Exception:  # noqa: BLE001 - not a unit astropy knows: left to the description
        return None
    if unit == u.dimensionless_unscaled:
        return None
    try:
        s = unit.to_string("fits")
        if s and u.Unit(s, format="fits") == unit:
            return s
    except Exception:  # noqa: BLE001 - function units have no FITS spelling
        pass
    s = unit.to_string()
    return s if s and u.Unit(s) == unit else None


def catalog_columns(ds, with_pz: bool = False) -> list[Column]:
    """The columns to export, in contract order.

    Parameters
    ----------
    ds : xarray.Dataset
        The catalog (:func:`survey_infer.catalog.store.open_catalog`).
    with_pz : bool
        Also export ``pz(object, zbin)``.

    Returns
    -------
    list of Column
        The schema's per-object variables, passthrough truth, any other per-object variables (in the catalog's
        order), then ``pz`` (shape ``(nzbin,)``) when ``with_pz``. Variables of dtypes neither format holds are
        skipped with a warning.

    Raises
    ------
    UserError
        ``with_pz`` is asked but the catalog has no ``pz`` (the run left it out), or ``pz`` is not
        ``(object, zbin)``.
    """
    names = [n for n in ds.variables if ds[n].dims == ("object",)]
    order = {n: i for i, n in enumerate(list(PER_OBJECT) + list(PASSTHROUGH))}
    names.sort(key=lambda n: (order.get(n, len(order)), list(ds.variables).index(n)))
    cols = []
    for n in names:
        var = ds[n]
        if var.dtype.kind not in _SUPPORTED_KINDS:
            log.warning("export: column %r has dtype %s, which cannot be exported; skipped", n, var.dtype)
            continue
        cols.append(Column(n, np.dtype(var.dtype), (), _units(var, n), _description(var, n)))
    if with_pz:
        if PZ_NAME not in ds.variables:
            raise UserError("the catalog has no 'pz' variable (the run was made without storing PDFs); "
                            "export without --with-pz")
        var = ds[PZ_NAME]
        if var.dims != ("object", "zbin"):
            raise UserError(f"catalog variable 'pz' has dims {var.dims}, expected ('object', 'zbin')")
        desc = var.attrs.get("description") or PZ_DESCRIPTION
        cols.append(Column(PZ_NAME, np.dtype(var.dtype), (int(ds.sizes["zbin"]),), _units(var, PZ_NAME), desc))
    return cols


def _store_column_attrs(name: str) -> dict:
    from ...columns import COLUMN_ATTRS

    return dict(COLUMN_ATTRS.get(name, {}))


def _units(var, name: str) -> str:
    """The variable's ``units`` attr; else the contract's (catalog schema, then the survey store's columns)."""
    u = var.attrs.get("units", var.attrs.get("unit"))
    if u is None:
        u = PER_OBJECT[name][1] if name in PER_OBJECT else _store_column_attrs(name).get("units", "")
    return str(u or "")


def _description(var, name: str) -> str:
    """The variable's description; passthrough columns also get the survey store's description of the column."""
    d = str(var.attrs.get("description") or var.attrs.get("long_name") or "")
    if name in PER_OBJECT:
        return d or PER_OBJECT[name][2]
    store_desc = _store_column_attrs(name).get("description")
    if store_desc and store_desc not in d:
        if not d:
            d = store_desc
        elif d.startswith(_GENERIC_PASSTHROUGH):
            d = f"{store_desc} ({_GENERIC_PASSTHROUGH})"
        else:
            d = f"{store_desc}; {d}"
    return d


def default_chunk_rows(ds, cols: list[Column]) -> int:
    """Rows per streamed block: whole Zarr chunks, about :data:`TARGET_CHUNK_BYTES` of data per block.

    Parameters
    ----------
    ds : xarray.Dataset
        The catalog (its variables' ``encoding["chunks"]`` give the Zarr chunk rows).
    cols : list of Column
        The exported columns (their row bytes set the budget).

    Returns
    -------
    int
        A multiple of the Zarr chunk rows when a chunk fits the budget, else an even fraction of a chunk.
    """
    row_bytes = sum(max(c.dtype.itemsize, 4) * int(np.prod(c.shape, dtype=np.int64)) for c in cols) or 1
    budget = max(1, TARGET_CHUNK_BYTES // row_bytes)
    zc = None
    for c in cols:
        enc = ds[c.name].encoding.get("chunks") or ds[c.name].encoding.get("preferred_chunks", {}).get("object")
        if enc:
            zc = int(enc[0] if isinstance(enc, (tuple, list)) else enc)
            break
    if zc and budget >= zc:
        return int(budget // zc * zc)
    if zc:  # a fraction of a Zarr chunk, so that blocks rarely straddle two chunks
        return int(max(1, zc // -(-zc // budget)))
    return int(budget)


def iter_blocks(ds, cols: list[Column], chunk_rows: int) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """Read the catalog ``chunk_rows`` rows at a time.

    Parameters
    ----------
    ds : xarray.Dataset
        The catalog, opened without dask (``open_catalog(path, dask=False)``).
    cols : list of Column
        The columns to read.
    chunk_rows : int
        Rows per block (>= 1).

    Yields
    ------
    (int, int, dict of str to ndarray)
        ``(a, b, data)``: rows ``[a, b)``; ``data[name]`` has shape ``(b - a,) + column.shape``, the stored dtype.

    Raises
    ------
    UserError
        A block cannot be read (names its rows).
    """
    n = int(ds.sizes["object"])
    for a in range(0, n, chunk_rows):
        b = min(n, a + chunk_rows)
        try:
            data = {c.name: np.asarray(ds[c.name].variable[a:b].values) for c in cols}
        except Exception as exc:  # noqa: BLE001 - name the block that failed
            raise UserError(f"cannot read catalog rows {a}..{b}: {exc}") from exc
        yield a, b, data


def z_grid(ds) -> np.ndarray | None:
    """The catalog's redshift bin centres (float64, shape ``(nzbin,)``), or None when it has no ``z_grid``."""
    if ZGRID_NAME in ds.variables:
        return np.asarray(ds[ZGRID_NAME].values, dtype=np.float64)
    return None
