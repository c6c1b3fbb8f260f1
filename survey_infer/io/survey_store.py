"""The survey store: spectra on one instrument grid in a Zarr v3 group (DESIGN §2).

Layout
------
Dims ``object`` (N) and ``wave`` (W); every array is chunked along ``object`` only, so a chunk holds whole
spectra.

* ``flux(object, wave)`` float32, unit in ``attrs["units"]``; ``ivar(object, wave)`` float32, 0 = no data;
  optional ``mask(object, wave)`` uint8, non-zero = bad: bit value 1 (:data:`MASK_BAD_SOURCE`) a channel inside
  the source's range rejected for bad source pixels (masked by the reduction or invalid), bit value 2
  (:data:`MASK_INVALID_INPUT`) the input had non-finite flux or NaN/inf/negative ivar there (set to ivar = 0); the
  fraction of channels with bit 2 drives the catalog's ``BAD_INPUT`` flag.
* ``wave(wave)`` float64 vacuum Angstrom, ``arm(wave)`` uint8, ``sky_mask(wave)`` uint8 (the instrument's
  default sky mask, 1 = sky line).
* per row: ``object_id`` int64 (unique), optional ``target_id`` int64, ``ra``/``dec`` deg, ``t_exp`` s and any
  truth columns.
* attrs: ``instrument``, ``instrument_config``, ``grid_hash``, ``flux_unit``, ``n_objects`` (rows committed),
  ``provenance`` (list, one record per write session), ``sanitized`` counts.

Data safety
-----------
A new store is written under a temporary name beside the target and renamed into place by
:meth:`SurveyWriter.commit`; an interrupted write leaves the temporary folder, never a half-written store under
the final name. Appends resize the arrays but only :meth:`SurveyWriter.commit` raises ``n_objects``; rows past
``n_objects`` left by an interrupted append are ignored by readers and overwritten by the next append.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from ..instrument import Instrument, load_instrument
from ..provenance import provenance
from ..errors import SurveyStoreError  # noqa: F401  (defined in survey_infer.errors)

__all__ = [
    "SurveyStoreError",
    "SurveyWriter",
    "create_survey",
    "append_survey",
    "open_survey",
    "validate_survey",
    "sanitize_spectra",
    "DEFAULT_CHUNK_OBJECTS",
    "MASK_BAD_SOURCE",
    "MASK_INVALID_INPUT",
    "spectrum_codec",
]

SURVEY_SCHEMA = 1
DEFAULT_CHUNK_OBJECTS = 256
from ..flags import MASK_BAD_SOURCE, MASK_INVALID_INPUT  # noqa: E402,F401  (mask bit values; re-exported)
REQUIRED_VARS = ("flux", "ivar", "wave", "arm", "object_id")
from ..columns import COLUMN_ATTRS, ROW_COLUMN_DTYPES  # noqa: E402,F401  (the row-column contract; re-exported)


def spectrum_codec() -> list:
    """Compressor for spectra: Blosc-LZ4 with byte shuffle (fast to decode; see benchmarks/store_io.py)."""
    return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]


def sanitize_spectra(
    flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Make spectra safe to store: non-finite flux, non-finite or negative ivar become ivar = 0, flux = 0.

    Parameters
    ----------
    flux, ivar : ndarray, shape (n, W)
        Flux density and inverse variance (flux unit⁻²).
    mask : ndarray, optional
        Reduction mask; non-zero pixels also get ivar = 0.

    Returns
    -------
    flux, ivar : ndarray (float32, copies)
    counts : dict
        ``nonfinite_flux``, ``bad_ivar`` and ``masked`` pixel counts.
    """
    flux = np.array(flux, dtype=np.float32, copy=True)
    ivar = np.array(ivar, dtype=np.float32, copy=True)
    bad_flux = ~np.isfinite(flux)
    bad_ivar = ~np.isfinite(ivar) | (ivar < 0)
    counts = {"nonfinite_flux": int(bad_flux.sum()), "bad_ivar": int(bad_ivar.sum()), "masked": 0}
    bad = bad_flux | bad_ivar
    if mask is not None:
        m = np.asarray(mask) != 0
        counts["masked"] = int((m & ~bad).sum())
        bad |= m
    flux[bad] = 0.0
    ivar[bad] = 0.0
    return flux, ivar, counts


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


class SurveyWriter:
    """Writes rows into a survey store; see the module docstring for the safety rules.

    Use :func:`create_survey` or :func:`append_survey` to make one. Region writes (:meth:`write`) that cover
    whole chunks may run in parallel from several processes (one writer per chunk); :meth:`commit` runs once.
    """

    def __init__(self, final_path: Path, work_path: Path, start: int, n_rows: int, new: bool):
        self.final_path = Path(final_path)
        self.work_path = Path(work_path)
        self.start = int(start)
        self.n_rows = int(n_rows)
        self.new = new
        self.counts = {"nonfinite_flux": 0, "bad_ivar": 0, "masked": 0}

    @property
    def group(self) -> zarr.Group:
        """The Zarr group being written (the temporary store of a new store, else the store itself), opened
        without consolidated metadata."""
        return zarr.open_group(str(self.work_path), mode="r+", use_consolidated=False)

    def write(self, offset: int, data: Mapping[str, np.ndarray], group: zarr.Group | None = None) -> dict:
        """Write rows ``[start + offset, start + offset + n)``.

        Parameters
        ----------
        offset : int
            Row offset relative to the first row of this write session.
        data : mapping
            ``flux``, ``ivar`` (n, W) and per-row columns (n,). ``mask`` optional. Spectra are sanitized.

        Returns
        -------
        dict
            Sanitization counts for these rows.
        """
        g = group if group is not None else self.group
        n = len(data["flux"])
        lo = self.start + offset
        if offset < 0 or offset + n > self.n_rows:
            raise SurveyStoreError(f"{self.final_path}: write of rows {offset}..{offset + n} outside 0..{self.n_rows}")
        flux, ivar, counts = sanitize_spectra(data["flux"], data["ivar"], data.get("mask"))
        g["flux"][lo : lo + n] = flux
        g["ivar"][lo : lo + n] = ivar
        if "mask" in g and counts["nonfinite_flux"] + counts["bad_ivar"] > 0:
            # invalid values zeroed here are marked in the mask, so that BAD_INPUT can be set downstream
            with np.errstate(invalid="ignore"):
                invalid = (~np.isfinite(np.asarray(data["flux"], np.float32)) | ~np.isfinite(np.asarray(data["ivar"], np.float32))
                           | (np.asarray(data["ivar"], np.float32) < 0))
            m = np.zeros(invalid.shape, np.uint8) if data.get("mask") is None else np.array(data["mask"], np.uint8)
            m[invalid] |= MASK_INVALID_INPUT | MASK_BAD_SOURCE
            data = {**data, "mask": m}
        for name, arr in data.items():
            if name in ("flux", "ivar"):
                continue
            if name not in g:
                raise SurveyStoreError(f"{self.final_path}: column {name!r} was not declared when the store was created")
            g[name][lo : lo + n] = np.asarray(arr)
        for k in counts:
            self.counts[k] += counts[k]
        return counts

    def commit(self, extra_attrs: Mapping | None = None, counts: Mapping | None = None) -> Path:
        """Check ids, record provenance and counts, then make the rows visible (rename or raise ``n_objects``)."""
        g = self.group
        total = self.start + self.n_rows
        ids = np.asarray(g["object_id"][:total])
        uniq, cnt = np.unique(ids, return_counts=True)
        if (cnt > 1).any():
            dup = uniq[cnt > 1][:10].tolist()
            raise SurveyStoreError(f"{self.final_path}: duplicate object_id values {dup} (every row needs its own id)")
        attrs = dict(g.attrs)
        san = dict(attrs.get("sanitized", {}))
        for k, v in (counts or self.counts).items():
            san[k] = int(san.get(k, 0)) + int(v)
        prov = list(attrs.get("provenance", []))
        prov.append(provenance())
        upd = {"n_objects": int(total), "sanitized": san, "provenance": prov}
        if extra_attrs:
            upd.update(dict(extra_attrs))
        g.attrs.update(upd)
        if self.new:
            if self.final_path.exists():
                shutil.rmtree(self.final_path)
            os.replace(self.work_path, self.final_path)
        return self.final_path

    def abort(self) -> None:
        """Drop a new store's temporary folder (appends keep the committed rows untouched)."""
        if self.new and self.work_path.exists():
            shutil.rmtree(self.work_path, ignore_errors=True)


def create_survey(
    path: str | Path,
    n_objects: int,
    instrument: Instrument | str | None = None,
    *,
    chunk_objects: int = DEFAULT_CHUNK_OBJECTS,
    columns: Mapping[str, str] | None = None,
    with_mask: bool = False,
    flux_unit: str | None = None,
    attrs: Mapping | None = None,
    overwrite: bool = False,
    sky_mask: np.ndarray | None = None,
) -> SurveyWriter:
    """Create an empty survey store (under a temporary name) and return its writer.

    Parameters
    ----------
    path : path
        Final store location (a directory).
    n_objects : int
        Number of rows (spectra).
    instrument : Instrument or name, optional
        Wavelength grid; default MOONS LR.
    chunk_objects : int
        Rows per chunk (every chunk holds whole spectra).
    columns : mapping, optional
        Per-row columns besides ``object_id`` (name → dtype); known names default to their contract dtype.
    with_mask : bool
        Create the ``mask(object, wave)`` uint8 array.
    flux_unit : str, optional
        Defaults to the instrument's flux unit.
    sky_mask : ndarray, optional
        ``sky_mask(wave)`` to store; defaults to the instrument's shipped sky mask when one exists.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise SurveyStoreError(f"{path} exists; pass overwrite=True (--overwrite) or use append")
    inst = instrument if isinstance(instrument, Instrument) else load_instrument(instrument)
    W = inst.n_wave
    work = _tmp_name(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    g = zarr.open_group(str(work), mode="w", zarr_format=3)
    chunk = int(max(1, min(chunk_objects, max(n_objects, 1))))
    unit = flux_unit or inst.config.get("flux_unit", "1e-17 erg / (s cm2 Angstrom)")
    shape2 = (int(n_objects), W)
    g.create_array("flux", shape=shape2, chunks=(chunk, W), dtype="float32", compressors=spectrum_codec(),
                   dimension_names=("object", "wave"), fill_value=0.0,
                   attributes={"units": unit, "description": "flux density"})
    g.create_array("ivar", shape=shape2, chunks=(chunk, W), dtype="float32", compressors=spectrum_codec(),
                   dimension_names=("object", "wave"), fill_value=0.0,
                   attributes={"units": f"({unit})**-2", "description": "inverse variance of flux; 0 = no data"})
    if with_mask:
        g.create_array("mask", shape=shape2, chunks=(chunk, W), dtype="uint8", compressors=spectrum_codec(),
                       dimension_names=("object", "wave"), fill_value=0,
                       attributes={"description": "non-zero = bad pixel: 1 = rejected for bad (masked or invalid) "
                                                  "source pixels, 2 = input had non-finite flux or invalid ivar"})
    g.create_array("wave", data=inst.wave.astype("float64"), chunks=(W,), dimension_names=("wave",),
                   attributes={"units": "Angstrom", "description": "vacuum wavelength of channel centres"})
    g.create_array("arm", data=inst.arm_index, chunks=(W,), dimension_names=("wave",),
                   attributes={"description": "arm index: " + ", ".join(f"{i}={n}" for i, n in enumerate(inst.arm_names))})
    if sky_mask is None:
        try:
            from ..skymask import instrument_sky_mask

            sky_mask = instrument_sky_mask(inst)
        except Exception:  # no sky model for this instrument
            sky_mask = None
    if sky_mask is not None:
        g.create_array("sky_mask", data=np.asarray(sky_mask, np.uint8), chunks=(W,), dimension_names=("wave",),
                       attributes={"description": "instrument default sky mask, 1 = sky line channel"})
    cols = {"object_id": "int64"}
    for name, dt in (columns or {}).items():
        cols[name] = dt or ROW_COLUMN_DTYPES.get(name, "float32")
    for name, dt in cols.items():
        fill = -1 if np.dtype(dt).kind in "iu" and name in ("object_id", "target_id") else (False if dt == "bool" else 0)
        if np.dtype(dt).kind == "f":
            fill = float("nan")
        g.create_array(name, shape=(int(n_objects),), chunks=(chunk,), dtype=dt, dimension_names=("object",),
                       fill_value=fill, attributes=COLUMN_ATTRS.get(name, {}))
    base_attrs = {
        "survey_schema": SURVEY_SCHEMA,
        "instrument": inst.name,
        "instrument_config": inst.config,
        "grid_hash": inst.grid_hash,
        "flux_unit": unit,
        "chunk_objects": chunk,
        "n_objects": 0,
        "provenance": [],
        "sanitized": {},
    }
    base_attrs.update(dict(attrs or {}))
    g.attrs.update(base_attrs)
    return SurveyWriter(path, work, 0, int(n_objects), new=True)


def append_survey(path: str | Path, n_new: int) -> SurveyWriter:
    """Open a committed store for appending ``n_new`` rows (arrays are resized; rows become visible on commit)."""
    path = Path(path)
    g = _open_group(path, mode="r+")
    n0 = int(g.attrs.get("n_objects", 0))
    for name in list(g.array_keys()):
        arr = g[name]
        if arr.metadata.dimension_names and arr.metadata.dimension_names[0] == "object":
            arr.resize((n0 + n_new,) + arr.shape[1:])
    return SurveyWriter(path, path, n0, n_new, new=False)


def _open_group(path: Path, mode: str = "r") -> zarr.Group:
    if not Path(path).exists():
        raise SurveyStoreError(f"survey store {path} does not exist")
    try:
        return zarr.open_group(str(path), mode=mode, zarr_format=3, use_consolidated=False)
    except Exception as exc:  # noqa: BLE001 - report any zarr failure with the path
        raise SurveyStoreError(f"{path} is not a readable Zarr v3 survey store: {exc}") from exc


def open_survey(path: str | Path, *, validate: bool = True, chunks: dict | None = None):
    """Open a survey store as an :class:`xarray.Dataset` (lazy, dask-backed), limited to committed rows.

    Raises
    ------
    SurveyStoreError
        Naming the store and what is wrong (missing variables, mismatched shapes, uncommitted store).
    """
    import xarray as xr

    path = Path(path)
    g = _open_group(path)
    if validate:
        validate_survey(path, group=g)
    n = int(g.attrs.get("n_objects", 0))
    ds = xr.open_zarr(str(path), consolidated=False, chunks=chunks if chunks is not None else {}, zarr_format=3)
    if ds.sizes.get("object", 0) != n:
        ds = ds.isel(object=slice(0, n))
    return ds


def validate_survey(path: str | Path, instrument: Instrument | str | None = None, *, group: zarr.Group | None = None) -> dict:
    """Check a survey store against the contract (DESIGN §2).

    Parameters
    ----------
    instrument : optional
        When given, the store's wavelength grid must equal this instrument's.

    Returns
    -------
    dict
        The store attrs (for convenience).
    """
    path = Path(path)
    g = group if group is not None else _open_group(path)
    missing = [v for v in REQUIRED_VARS if v not in g]
    if missing:
        raise SurveyStoreError(f"survey store {path} lacks required variable(s) {', '.join(missing)}")
    attrs = dict(g.attrs)
    if "n_objects" not in attrs:
        raise SurveyStoreError(f"survey store {path} has no 'n_objects' attribute (never committed?)")
    W = g["wave"].shape[0]
    for v in ("flux", "ivar", "mask"):
        if v in g and (g[v].ndim != 2 or g[v].shape[1] != W):
            raise SurveyStoreError(f"survey store {path}: {v} has shape {g[v].shape}, expected (N, {W})")
        if v in g and g[v].chunks[1] != W:
            raise SurveyStoreError(f"survey store {path}: {v} is chunked along wave {g[v].chunks}; chunks must hold whole spectra")
    n = int(attrs["n_objects"])
    if g["flux"].shape[0] < n:
        raise SurveyStoreError(f"survey store {path}: n_objects={n} but flux has {g['flux'].shape[0]} rows")
    if instrument is not None:
        inst = instrument if isinstance(instrument, Instrument) else load_instrument(instrument)
        if not inst.matches(g["wave"][:]):
            raise SurveyStoreError(
                f"survey store {path} is on grid '{attrs.get('instrument')}' ({W} channels, hash "
                f"{attrs.get('grid_hash')}) but instrument '{inst.name}' has {inst.n_wave} channels (hash {inst.grid_hash})"
            )
    return attrs


def store_instrument(path: str | Path) -> Instrument:
    """The instrument recorded in a store's attrs."""
    attrs = dict(_open_group(Path(path)).attrs)
    cfg = attrs.get("instrument_config")
    if cfg:
        return load_instrument(cfg)
    return load_instrument(attrs.get("instrument"))


def read_attrs(path: str | Path) -> dict:
    """The store's attrs as a plain dict."""
    return json.loads(json.dumps(dict(_open_group(Path(path)).attrs)))
