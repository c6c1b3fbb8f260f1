"""The catalog store: an xarray Dataset in Zarr v3, written block by block (DESIGN §7–8).

* Created once as a template (``Dataset.to_zarr(compute=False)``: metadata only, no data written).
* Dims ``object`` (N, the input's rows) and ``zbin``. Every per-object variable is chunked by ``block_objects``
  and ``pz`` by ``(block_objects, Z)``, so one block = one chunk of every variable = exactly one writer.
* :func:`write_block` asserts alignment before writing; the block task (``pipeline.worker.process_block``) checks
  the run epoch against the lock before and after it, so a late write from an orphaned worker of a dead run is
  refused.
* Not-yet-computed rows read as the fill value (NaN / −1 / False): a chunk file is never proof of completion —
  the done-markers in ``_markers/`` are (see :mod:`survey_infer.pipeline.resume`).

Data safety: region writes of one block are not atomic; a block whose marker is missing is rewritten whole.
"""
from __future__ import annotations

import warnings
import zlib
from pathlib import Path

import numpy as np
import zarr

from .schema import PASSTHROUGH, PER_OBJECT, PZ_DESCRIPTION, fill_value
from ..errors import CatalogError  # noqa: F401  (defined in survey_infer.errors)

__all__ = ["create_catalog", "write_block", "read_block", "block_bounds", "output_hash", "CatalogError",
           "open_catalog"]


def block_bounds(n_objects: int, block_objects: int) -> list[tuple[int, int]]:
    """The row bounds of every block.

    Parameters
    ----------
    n_objects : int
        Rows of the catalog (N).
    block_objects : int
        Rows per block (the catalog's chunk rows).

    Returns
    -------
    list of (int, int)
        ``[(lo, hi), ...]``, half-open, covering ``[0, N)``; the last block may be short.
    """
    return [(lo, min(n_objects, lo + block_objects)) for lo in range(0, n_objects, block_objects)]


def create_catalog(path: str | Path, n_objects: int, z_centres: np.ndarray, block_objects: int, *,
                   passthrough: dict[str, np.dtype] | None = None, keep_pz: bool = True, pz_dtype: str = "float16",
                   attrs: dict | None = None) -> None:
    """Write the catalog template (metadata only, no chunk written) with xarray ``to_zarr(compute=False)``.

    Parameters
    ----------
    path : str or Path
        The catalog folder (replaced if it exists).
    n_objects : int
        Rows N (the input store's rows).
    z_centres : ndarray of float, shape (Z,)
        Redshift bin centres, stored as the ``z_grid(zbin)`` coordinate.
    block_objects : int
        Rows per chunk of every variable (one block = one chunk = one writer).
    passthrough : dict of str to dtype, optional
        Input columns copied per row (truth, identifiers), with the survey store's units and descriptions.
    keep_pz : bool
        Store ``pz(object, zbin)`` of dtype ``pz_dtype`` (chunks ``(block_objects, Z)``).
    pz_dtype : str
        ``"float16"`` (default) or ``"float32"``.
    attrs : dict, optional
        Catalog attributes (fingerprint, provenance, runs, zwarn bit table).

    Notes
    -----
    Every variable's Zarr fill value is :func:`~survey_infer.catalog.schema.fill_value` of its dtype, so rows not
    yet computed read as NaN / -1 / False (never 0: ``zwarn = 0`` means "good").
    """
    import dask.array as da
    import xarray as xr

    N, Z = int(n_objects), len(z_centres)
    data_vars = {}
    for name, (dt, units, desc) in PER_OBJECT.items():
        a = {"description": desc}
        if units:
            a["units"] = units
        if name == "zwarn":
            from ..flags import cf_flag_attrs

            a.update(cf_flag_attrs())  # CF 1.11 §3.5 flags
        data_vars[name] = (("object",), da.full((N,), fill_value(dt), dtype=dt, chunks=block_objects), a)
    from ..columns import COLUMN_ATTRS

    for name, dt in (passthrough or {}).items():
        dt = np.dtype(dt)
        fv = fill_value(dt.name if dt.kind != "b" else "bool")
        a = dict(COLUMN_ATTRS.get(name, {}))
        a["description"] = a.get("description", name) + " (passed through from the input store)"
        data_vars[name] = (("object",), da.full((N,), fv, dtype=dt, chunks=block_objects), a)
    if keep_pz:
        data_vars["pz"] = (("object", "zbin"), da.full((N, Z), np.nan, dtype=pz_dtype, chunks=(block_objects, Z)),
                           {"description": PZ_DESCRIPTION})
    ds = xr.Dataset(data_vars, coords={"z_grid": (("zbin",), np.asarray(z_centres, np.float64),
                                                  {"description": "redshift bin centres"})})
    ds.attrs.update(attrs or {})
    enc = {v: {"chunks": ds[v].data.chunksize} for v in ds.data_vars}
    for v in ds.data_vars:
        # rows not yet computed read as NaN / -1 / False (never 0: zwarn = 0 means "good")
        enc[v]["fill_value"] = fill_value("bool" if ds[v].dtype.kind == "b" else ds[v].dtype.name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(str(path), mode="w", compute=False, zarr_format=3, encoding=enc, consolidated=False)


def open_catalog(path: str | Path, *, dask: bool = True):
    """Open a catalog lazily as an :class:`xarray.Dataset` (nothing is loaded).

    The one way to open a catalog (the runner, evaluation, export, inspection and users' scripts).

    Parameters
    ----------
    path : str or Path
        The catalog's Zarr v3 folder.
    dask : bool
        True (default): variables are dask arrays chunked as stored (``xr.open_zarr``'s default). False: lazy
        backend arrays without dask (``chunks=None``), for callers that read row slices themselves (export,
        inspect).

    Returns
    -------
    xarray.Dataset
        Dims ``object`` (N rows) and ``zbin`` (Z bins); variables as :mod:`survey_infer.catalog.schema` lists.

    Raises
    ------
    CatalogError
        ``path`` does not exist, is not a readable Zarr v3 catalog, has no ``object`` dimension, or is a survey store
        (its ``survey_schema`` attribute).
    """
    import xarray as xr

    path = Path(path)
    if not path.exists():
        raise CatalogError(f"catalog {path} does not exist")
    kwargs = {} if dask else {"chunks": None}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = xr.open_zarr(str(path), consolidated=False, zarr_format=3, **kwargs)
    except Exception as exc:  # noqa: BLE001 - report any zarr/xarray failure with the path
        raise CatalogError(f"{path} is not a readable Zarr catalog: {exc}") from exc
    if "object" not in ds.dims:
        raise CatalogError(f"{path} has no 'object' dimension; is it a survey-infer catalog (not a survey store)?")
    if "survey_schema" in ds.attrs:  # a survey store has an object dimension too: refuse it by its own mark
        raise CatalogError(f"{path} is a survey store (input spectra), not a catalog: make the catalog first with "
                           f"survey-infer run --input {path} --output CATALOG")
    return ds


def output_hash(values: dict[str, np.ndarray]) -> str:
    """CRC32 over a block's arrays in name order (detects torn or overwritten chunks on resume).

    Parameters
    ----------
    values : dict of str to ndarray
        The block's variables as stored (dtype and byte order matter).

    Returns
    -------
    str
        8 hexadecimal digits.
    """
    crc = 0
    for k in sorted(values):
        a = np.ascontiguousarray(values[k])
        crc = zlib.crc32(k.encode(), crc)
        crc = zlib.crc32(a.view(np.uint8).reshape(-1).data if a.size else b"", crc)
    return f"{crc:08x}"


def write_block(path: str | Path, lo: int, hi: int, values: dict[str, np.ndarray]) -> str:
    """Write rows ``[lo, hi)`` of every variable in ``values`` (one whole block: one writer per chunk).

    Parameters
    ----------
    path : str or Path
        The catalog (created by :func:`create_catalog`).
    lo, hi : int
        Row bounds of the block; ``lo`` and ``hi`` must lie on the variables' chunk edges (``hi`` may be N).
    values : dict of str to ndarray
        Variable name to its rows, shape ``(hi - lo, ...)``; cast to the stored dtype.

    Returns
    -------
    str
        :func:`output_hash` of what was stored.

    Raises
    ------
    CatalogError
        A name is not a variable of the catalog (nothing written), the block is not chunk-aligned, or an array
        has the wrong number of rows.
    """
    g = zarr.open_group(str(path), mode="r+", zarr_format=3, use_consolidated=False)  # never stale shapes
    if missing := sorted(set(values) - set(array_names(g))):  # refuse before writing anything (never half-written)
        raise CatalogError(f"{path}: no variable(s) {', '.join(missing)} in the catalog; block [{lo}, {hi}) not written")
    stored = {}
    for name, v in values.items():
        arr = g[name]
        chunk = arr.chunks[0]
        if lo % chunk != 0 or (hi % chunk != 0 and hi != arr.shape[0]):
            raise CatalogError(f"{path}: block [{lo}, {hi}) of {name} is not aligned with its chunks of {chunk} "
                               f"(one writer per chunk would be violated)")
        v = np.asarray(v)
        if v.shape[0] != hi - lo:
            raise CatalogError(f"{path}: {name} has {v.shape[0]} rows for block [{lo}, {hi})")
        v = v.astype(arr.dtype, copy=False)
        arr[lo:hi] = v
        stored[name] = v
    return output_hash(stored)


def array_names(group) -> list[str]:
    """The names of the arrays in a catalog's Zarr group, listed without zarr's warnings.

    A catalog keeps its own files beside its arrays (``_lock.json``, ``_lock/``, ``_markers/``, ``_jobs/``,
    ``_failures/``); zarr 3 warns once per such entry ("Object at … is not recognized as a component of a Zarr
    hierarchy") whenever the group is listed, on every worker and every block. They are the catalog's by design.

    Parameters
    ----------
    group : zarr.Group
        The catalog's root group.

    Returns
    -------
    list of str
        Array names, in zarr's order.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy.*")
        return list(group.array_keys())


def read_block(path: str | Path, lo: int, hi: int, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Read rows ``[lo, hi)`` of the named variables straight from Zarr (no xarray, no dask).

    Parameters
    ----------
    path : str or Path
        The catalog.
    lo, hi : int
        Row bounds.
    names : list of str, optional
        Variables to read (default: every array but ``z_grid``).

    Returns
    -------
    dict of str to ndarray
        Shape ``(hi - lo, ...)`` each, stored dtypes.
    """
    g = zarr.open_group(str(path), mode="r", zarr_format=3, use_consolidated=False)
    names = names or [k for k in array_names(g) if k != "z_grid"]
    return {k: g[k][lo:hi] for k in names}


def consolidate_catalog(store) -> None:
    """Rewrite the catalog root's consolidated metadata (``zarr.consolidate_metadata``) from its current arrays
    and attributes.

    Why: a plain ``xarray.open_zarr(catalog)`` (a user's first contact) then reads one metadata document and
    never lists the catalog folder, so it prints neither xarray's "no consolidated metadata" warning nor Zarr's
    "Object at _markers / _lock.json is not recognized" warnings about the project's bookkeeping. survey-infer
    itself never trusts this copy (every open uses ``use_consolidated=False``). Updating a group's attributes
    drops it, so the driver calls this after every catalog metadata change (a catalog of an older version gains
    it on its next run).

    Parameters
    ----------
    store : str, Path or zarr store
        The catalog path or the ``zarr.Group.store`` of the open catalog.
    """
    with warnings.catch_warnings():  # "consolidated metadata is not part of the Zarr v3 specification"
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(store) if isinstance(store, (str, Path)) else store, zarr_format=3)


def passthrough_columns(input_group: zarr.Group) -> dict[str, np.dtype]:
    """The per-row input columns copied into the catalog (truth and identifiers).

    Parameters
    ----------
    input_group : zarr.Group
        The survey store.

    Returns
    -------
    dict of str to numpy.dtype
        The :data:`~survey_infer.catalog.schema.PASSTHROUGH` columns the store has, with their dtypes.
    """
    return {c: input_group[c].dtype for c in PASSTHROUGH if c in input_group}
