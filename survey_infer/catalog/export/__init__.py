"""Export a catalog (Zarr, DESIGN §7) to FITS or Parquet for astropy, TOPCAT and pandas.

Both writers stream: rows are read from the Zarr catalog a block at a time (whole Zarr chunks, about
:data:`TARGET_CHUNK_BYTES` per block, ``pz`` included) and appended to the output, so memory stays bounded
however large the catalog. The output is written under a temporary name in the destination folder and
renamed into place (``os.replace``) only when complete; an existing file is replaced only with
``overwrite=True`` (``--overwrite``).

FITS layout
-----------
* HDU 0 (primary): no data; origin, software version, model sha256, creation date.
* HDU 1 ``CATALOG`` (BINTABLE): one column per per-object catalog variable. ``TUNITn`` holds every column's
  unit (dimensionless columns have none): the FITS-standard spelling when there is one (``deg``, ``s``), else
  the catalog's own spelling, which :class:`astropy.units.Unit` parses (``dex(solMass)``,
  ``dex(solMass / yr)``, ``dex``, ``mag(AB)``: the FITS standard has no logarithmic units, so
  ``Table.read`` warns about these and keeps them as ``UnrecognizedUnit``; ``u.Unit(str(col.unit))`` turns
  them into astropy units, and the Parquet file restores them directly).
  Each column's description is in ``TCOMMn`` (full text), as the comment of ``TTYPEn`` (what TOPCAT shows)
  and in astropy's serialized-column block (so ``Table.read`` restores ``description``). Header keywords
  carry the provenance (:func:`provenance_cards`), the redshift grid (``ZMIN``, ``ZMAX``, ``DZ``, ``NZBIN``)
  and the zwarn bit table (``ZWBITnn``, :func:`zwarn_header_cards`). ``pz`` (with ``--with-pz``) is a
  fixed-length float32 vector column.
* HDU 2 ``Z_GRID`` (1-D float64 image): the redshift bin centres, the axis of ``pz``.

Every HDU carries ``CHECKSUM``/``DATASUM`` (``fits.open(path, checksum=True)`` verifies them).

Integer columns keep the catalog's fill value -1 for rows not computed (no ``TNULL``); float columns hold NaN.

Parquet layout
--------------
Same columns (``pz`` as a fixed-size list of float32). Each field's metadata has ``units`` and
``description``; the schema metadata has ``survey_infer`` (JSON: catalog attrs, z grid, per-column units and
descriptions, export provenance), ``zwarn_bits`` (JSON bit table) and ``table_meta_yaml`` (astropy's header,
so ``Table.read(path)`` restores units and descriptions). One row group per streamed block.

Documentation helpers
---------------------
``python -m survey_infer.io.export --markdown zwarn`` prints the zwarn bit table and ``--markdown columns``
the column table; docs/catalog.md embeds both (a test keeps them in sync).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import logging
import os
import sys
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ... import __version__
from ... import flags
from ...errors import UserError
from ...provenance import dependency_versions, provenance
from ..schema import PASSTHROUGH, PER_OBJECT, PZ_DESCRIPTION, PZ_NAME, ZGRID_NAME

__all__ = [
    "export_catalog",
    "register",
    "open_catalog",
    "catalog_columns",
    "fits_unit",
    "zwarn_header_cards",
    "bit_table_of",
    "zwarn_markdown",
    "columns_markdown",
    "provenance_cards",
    "fits_checksum",
    "encode_checksum",
    "OutputExistsError",
    "TARGET_CHUNK_BYTES",
]

log = logging.getLogger(__name__)

FORMATS = ("fits", "parquet")
TARGET_CHUNK_BYTES = 32 * 2**20
_BLOCK = 2880


# ----------------------------------------------------------------------------------------------------------
# opening the catalog and choosing columns
# ----------------------------------------------------------------------------------------------------------
def open_catalog(catalog: str | Path):
    """Open a catalog lazily (no dask, nothing loaded) as an :class:`xarray.Dataset`.

    Raises
    ------
    FileNotFoundError
        When ``catalog`` does not exist.
    UserError
        When it is not a readable Zarr catalog with an ``object`` dimension.
    """
    import xarray as xr

    path = Path(catalog)
    if not path.exists():
        raise FileNotFoundError(f"catalog {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "no consolidated metadata" fallback
            ds = xr.open_zarr(str(path), chunks=None)
    except Exception as exc:  # noqa: BLE001 - report any zarr/xarray failure with the path
        raise UserError(f"{path} is not a readable Zarr catalog: {exc}") from exc
    if "object" not in ds.dims:
        raise UserError(f"{path} has no 'object' dimension; is it a survey-infer catalog (not a survey store)?")
    return ds


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
        Per-row shape: ``()`` or ``(nzbin,)`` for ``pz``.
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
    """The ``TUNITn`` string of ``units``, or None when dimensionless or not a unit astropy parses.

    The FITS-standard spelling when astropy writes one that parses back to the same unit (``deg``, ``s``);
    else, for function units the FITS standard lacks (``dex(solMass)``, ``dex(solMass / yr)``, ``dex``,
    ``mag(AB)``), astropy's generic spelling, which ``astropy.units.Unit`` parses back.
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


_SUPPORTED_KINDS = "biufSU"


def catalog_columns(ds, with_pz: bool = False) -> list[Column]:
    """Columns to export, in contract order: §7 per-object variables, passthrough truth, any other
    per-object variables, then ``pz`` when ``with_pz``.

    Raises
    ------
    UserError
        When ``with_pz`` is asked but the catalog has no ``pz`` (the run left it out).
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
        cols.append(Column(PZ_NAME, np.dtype(var.dtype), (int(ds.sizes["zbin"]),), _units(var, PZ_NAME),
                           desc))
    return cols


def _store_column_attrs(name: str) -> dict:
    try:
        from ...io.survey_store import COLUMN_ATTRS
    except ImportError:  # pragma: no cover
        return {}
    return dict(COLUMN_ATTRS.get(name, {}))


def _units(var, name: str) -> str:
    """The variable's ``units`` attr; else the contract's (catalog schema, then the survey store's columns)."""
    u = var.attrs.get("units", var.attrs.get("unit"))
    if u is None:
        u = PER_OBJECT[name][1] if name in PER_OBJECT else _store_column_attrs(name).get("units", "")
    return str(u or "")


_GENERIC_PASSTHROUGH = "passed through from the input store"


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


def _default_chunk_rows(ds, cols: list[Column]) -> int:
    """Rows per streamed block: whole Zarr chunks, about TARGET_CHUNK_BYTES of data per block."""
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


def _iter_blocks(ds, cols: list[Column], chunk_rows: int) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    n = int(ds.sizes["object"])
    for a in range(0, n, chunk_rows):
        b = min(n, a + chunk_rows)
        try:
            data = {c.name: np.asarray(ds[c.name].variable[a:b].values) for c in cols}
        except Exception as exc:  # noqa: BLE001 - name the block that failed
            raise UserError(f"cannot read catalog rows {a}..{b}: {exc}") from exc
        yield a, b, data


# ----------------------------------------------------------------------------------------------------------
# zwarn bit table: FITS cards and Markdown
# ----------------------------------------------------------------------------------------------------------
def bit_table_of(attrs: dict | None = None) -> list[dict]:
    """The zwarn bit table recorded in catalog ``attrs`` (``zwarn_bits``) when it is well formed, else
    :func:`survey_infer.flags.bit_table` (an old catalog keeps the meaning its bits had when it was made)."""
    table = (attrs or {}).get("zwarn_bits")
    keys = {"name", "bit", "value", "bad", "description"}
    if isinstance(table, list) and table and all(isinstance(r, dict) and keys <= set(r) for r in table):
        return table
    return flags.bit_table()


def zwarn_header_cards(table: list[dict] | None = None) -> list[tuple[str, object, str]]:
    """The zwarn bit table as FITS header cards ``(keyword, value, comment)``.

    ``ZWBITnn = 'NAME'`` with comment ``"bad|info: description"`` (cut to fit the card), the masks
    ``ZWBADMSK``/``ZWINFMSK``/``ZWUSRMSK``, and ``COMMENT`` cards with the full descriptions.

    Parameters
    ----------
    table : list of dict, optional
        A bit table as :func:`survey_infer.flags.bit_table` returns (default: that one).
    """
    table = table if table is not None else flags.bit_table()
    table = [r for r in table if not r.get("alias_of")]  # other names of a bit: in the docs, not the header
    single = [r for r in table if isinstance(r["bit"], int)]
    bad = sum(int(r["value"]) for r in single if r["bad"] and r.get("used", True))
    info = sum(int(r["value"]) for r in single if not r["bad"] and r.get("used", True))
    cards: list[tuple[str, object, str]] = [
        ("ZWBADMSK", bad, "zwarn bits that make z unreliable (BAD_MASK)"),
        ("ZWINFMSK", info, "informational zwarn bits"),
        ("ZWUSRMSK", int(flags.USER_MASK), "zwarn bits 16-23 reserved for users"),
    ]
    comments = ["zwarn: int32 bitmask, 0 = good; z_reliable = (zwarn & ZWBADMSK) == 0; bits 0-11 are "
                "Redrock's (DESI ZWARN) at Redrock's positions"]
    for row in table:
        kind = ("bad" if row["bad"] else "info") if row.get("used", True) else "never set"
        if isinstance(row["bit"], int):
            cards.append((f"ZWBIT{row['bit']:02d}", row["name"], f"{kind}: {row['description']}"))
            comments.append(f"zwarn bit {row['bit']} {row['name']} ({kind}, value {row['value']}): "
                            f"{row['description']}")
        else:
            comments.append(f"zwarn bits {row['bit']} {row['name']}: {row['description']}")
    cards += [("COMMENT", c, "") for c in comments]
    return cards


def _shipped_thresholds() -> dict:
    """The screening thresholds of the shipped default model (its ``model.json``), {} when unreadable."""
    p = Path(__file__).resolve().parents[2] / "data" / "models" / "default" / "model.json"
    try:
        return dict(json.loads(p.read_text()).get("calibration", {}).get("thresholds", {}))
    except (OSError, ValueError):  # pragma: no cover - a broken install
        return {}


def zwarn_markdown(thresholds: dict | None = None) -> str:
    """The zwarn bit table as Markdown (embedded in docs/catalog.md).

    Parameters
    ----------
    thresholds : thresholds stated in the descriptions (default: the shipped default model's).
    """
    lines = ["| bit | value | name | bad? | meaning |", "|---:|---:|---|:---:|---|"]
    table = flags.bit_table(_shipped_thresholds() if thresholds is None else thresholds)
    table.sort(key=lambda r: r["bit"] if isinstance(r["bit"], int) else 16)
    aliases = {}
    for row in table:
        if row.get("alias_of"):
            aliases.setdefault(row["alias_of"], []).append(row["name"])
    for row in table:
        if row.get("alias_of"):
            continue
        bad = ("bad" if row["bad"] else "info") if row["used"] else "never set"
        if not isinstance(row["bit"], int):
            bad = "user"
        name = f"`{row['name']}`" + "".join(f" (also `{a}`)" for a in aliases.get(row["name"], []))
        lines.append(f"| {row['bit']} | {row['value']} | {name} | {bad} | {row['description']} |")
    lines.append("")
    lines.append(f"`BAD_MASK = {flags.BAD_MASK}` (0x{flags.BAD_MASK:x}), `INFO_MASK = {flags.INFO_MASK}` "
                 f"(0x{flags.INFO_MASK:x}), `USER_MASK = {flags.USER_MASK}` (0x{flags.USER_MASK:x}); "
                 "`z_reliable = (zwarn & BAD_MASK) == 0`.")
    return "\n".join(lines) + "\n"


def columns_markdown() -> str:
    """The catalog column table as Markdown (embedded in docs/catalog.md)."""
    from ...io.survey_store import COLUMN_ATTRS, ROW_COLUMN_DTYPES

    lines = ["| column | dtype | unit | FITS TUNIT | description |", "|---|---|---|---|---|"]

    def row(name, dtype, units, desc):
        fu = fits_unit(units)
        tunit = f"`{fu}`" if fu else ("(none; unit in the description)" if units else "")
        lines.append(f"| `{name}` | {dtype} | {f'`{units}`' if units else ''} | {tunit} | {desc} |")

    for name, (dtype, units, desc) in PER_OBJECT.items():
        row(name, dtype, units, desc)
    for name in PASSTHROUGH:
        a = COLUMN_ATTRS.get(name, {})
        row(name, ROW_COLUMN_DTYPES.get(name, "float32"), a.get("units", ""),
            f"(passthrough, when in the input) {a.get('description', '')}")
    row(f"{PZ_NAME}(object, zbin)", "float16/float32", "", PZ_DESCRIPTION + " (exported only with `--with-pz`)")
    row(f"{ZGRID_NAME}(zbin)", "float64", "", "redshift bin centres (FITS: `Z_GRID` HDU and ZMIN/ZMAX/DZ/NZBIN "
        "keywords; Parquet: schema metadata)")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# provenance keywords
# ----------------------------------------------------------------------------------------------------------
def _json(obj) -> str:
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=default)


def _scalar(v):
    """A header value: ints, floats, bools and strings as they are, anything else as JSON."""
    if isinstance(v, (bool, int, float, str)):
        return v
    return _json(v)


def _last_provenance(attrs: dict) -> dict:
    prov = attrs.get("provenance")
    if isinstance(prov, list):
        prov = prov[-1] if prov else {}
    return prov if isinstance(prov, dict) else {}


def _z_grid(ds) -> np.ndarray | None:
    if ZGRID_NAME in ds.variables:
        return np.asarray(ds[ZGRID_NAME].values, dtype=np.float64)
    return None


def _grid_keywords(zg: np.ndarray | None) -> list[tuple[str, object, str]]:
    if zg is None or zg.size == 0:
        return []
    cards: list[tuple[str, object, str]] = [
        ("NZBIN", int(zg.size), "number of redshift bins of pz"),
        ("ZMIN", float(zg[0]), "first redshift bin centre"),
        ("ZMAX", float(zg[-1]), "last redshift bin centre"),
    ]
    if zg.size > 1:
        d = np.diff(zg)
        if np.allclose(d, d.mean(), rtol=1e-6, atol=1e-9):
            cards.append(("DZ", float(d.mean()), "redshift bin width (uniform grid)"))
        else:
            dl = np.diff(np.log1p(zg))
            if np.allclose(dl, dl.mean(), rtol=1e-6, atol=1e-12):
                cards.append(("DLN1PZ", float(dl.mean()), "bin width in ln(1+z) (grid uniform in ln(1+z))"))
            cards.append(("DZ", float(np.median(d)), "median redshift bin width (non-uniform grid)"))
    cards.append(("ZGRIDHSH", hashlib.sha256(np.ascontiguousarray(zg, dtype="<f8").tobytes()).hexdigest()[:16],
                  "sha256 prefix of the z grid (float64 LE)"))
    return cards


_FP_KEYWORDS = {
    "preprocessing_version": ("PREPVERS", "preprocessing version"),
    "sky_mask_hash": ("SKYMHASH", "sky mask hash"),
    "z_grid_hash": ("FPZGHASH", "z grid hash (fingerprint)"),
    "z_grid": ("FPZGHASH", "z grid hash (fingerprint)"),
    "torch_version": ("FPTORCH", "torch version (fingerprint)"),
    "torch": ("FPTORCH", "torch version (fingerprint)"),
    "device_class": ("DEVCLASS", "device class the numbers were made on"),
    "device": ("DEVCLASS", "device class the numbers were made on"),
    "dtypes": ("FPDTYPES", "dtypes (fingerprint)"),
}


def provenance_cards(attrs: dict) -> list[tuple[str, object, str]]:
    """Provenance keywords from catalog attrs: software and dependency versions, model sha256, fingerprint,
    MC samples, seed, creation time. Long JSON values use the FITS long-string (CONTINUE) convention."""
    prov = _last_provenance(attrs)
    fp = attrs.get("fingerprint") if isinstance(attrs.get("fingerprint"), dict) else {}
    cards: list[tuple[str, object, str]] = [
        ("ORIGIN", "survey-infer", "software that made this catalog"),
        ("SWVERS", str(attrs.get("software_version", prov.get("version", "unknown"))),
         "survey-infer version that made the catalog"),
        ("EXPVERS", __version__, "survey-infer version that exported this file"),
        ("DATE", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "file written (UTC)"),
    ]
    if attrs.get("created"):
        cards.append(("CATDATE", str(attrs["created"]), "catalog created (UTC)"))
    sha = attrs.get("model_sha256") or fp.get("model_sha256")
    if sha:
        cards.append(("MODELSHA", str(sha), "sha256 of the model weights"))
    mc = attrs.get("mc_samples", fp.get("mc_samples"))
    if mc is not None:
        cards.append(("MC_T", _scalar(mc), "MC-dropout samples per object (T)"))
    seed = attrs.get("seed", fp.get("seed"))
    if seed is not None:
        cards.append(("SEED", _scalar(seed), "random seed of the MC dropout"))
    if fp:
        cards.append(("FPHASH", hashlib.sha256(_json(fp).encode()).hexdigest()[:16],
                      "sha256 prefix of the numerics fingerprint JSON"))
        seen = set()
        for k, (kw, comment) in _FP_KEYWORDS.items():
            if k in fp and kw not in seen:
                v = fp[k]
                cards.append((kw, _scalar(v), comment))
                seen.add(kw)
        cards.append(("FINGERPR", _json(fp), "numerics fingerprint (JSON)"))
    deps = dict(prov.get("dependencies") or dependency_versions())
    if prov.get("python"):
        deps.setdefault("python", prov["python"])
    for name, ver in deps.items():
        kw = "V_" + "".join(ch for ch in name.upper() if ch.isalnum())[:6]
        cards.append((kw, str(ver), f"{name} version (catalog run)"))
    runs = attrs.get("runs")
    if isinstance(runs, list):
        cards.append(("NRUNS", len(runs), "runs that wrote rows (see run_id, RUNSJSON)"))
        cards.append(("RUNSJSON", _json(runs), "run records (JSON)"))
    if prov:
        cards.append(("PROVJSON", _json(prov), "provenance of the catalog (JSON)"))
    if attrs.get("input_store"):
        cards.append(("INSTORE", str(attrs["input_store"]), "input survey store"))
    return cards


# ----------------------------------------------------------------------------------------------------------
# FITS checksums
# ----------------------------------------------------------------------------------------------------------
class _Checksum:
    """Incremental FITS ones-complement 32-bit checksum over a byte stream (any chunking)."""

    def __init__(self):
        self.hi = 0
        self.lo = 0
        self._rest = b""

    def update(self, data) -> None:
        mv = memoryview(data).cast("B")
        if self._rest:
            need = 4 - len(self._rest)
            self._rest += bytes(mv[:need])
            mv = mv[need:]
            if len(self._rest) == 4:
                self._add(np.frombuffer(self._rest, dtype=">u4"))
                self._rest = b""
        k = len(mv) - len(mv) % 4
        step = 1 << 22  # 4 MiB slices keep the temporaries small
        for a in range(0, k, step):
            self._add(np.frombuffer(mv[a : min(k, a + step)], dtype=">u4"))
        if k < len(mv):
            self._rest = bytes(mv[k:])

    def _add(self, words: np.ndarray) -> None:
        self.hi += int(np.sum(words >> 16, dtype=np.uint64))
        self.lo += int(np.sum(words & 0xFFFF, dtype=np.uint64))

    @property
    def value(self) -> int:
        if self._rest:
            raise ValueError("checksummed stream is not a multiple of 4 bytes")
        hi, lo = self.hi, self.lo
        while True:
            hc, lc = hi >> 16, lo >> 16
            if not hc and not lc:
                return (hi << 16) | lo
            hi = (hi & 0xFFFF) + lc
            lo = (lo & 0xFFFF) + hc


def fits_checksum(data, sum32: int = 0) -> int:
    """FITS 32-bit ones-complement checksum of ``data`` (length a multiple of 4), continuing from ``sum32``."""
    c = _Checksum()
    c.hi, c.lo = sum32 >> 16, sum32 & 0xFFFF
    c.update(data)
    return c.value


_EXCLUDE = (0x3A, 0x3B, 0x3C, 0x3D, 0x3E, 0x3F, 0x40, 0x5B, 0x5C, 0x5D, 0x5E, 0x5F, 0x60)


def encode_checksum(value: int, complement: bool = True) -> str:
    """ASCII encoding of a checksum for the CHECKSUM keyword (FITS checksum convention, §A.7.2)."""
    if complement:
        value = ~value & 0xFFFFFFFF
    asc = [0] * 16
    for i in range(4):
        byte = (value >> (24 - 8 * i)) & 0xFF
        q, r = byte // 4 + ord("0"), byte % 4
        ch = [q + r, q, q, q]
        check = True
        while check:
            check = False
            for x in _EXCLUDE:
                for j in (0, 2):
                    if ch[j] == x or ch[j + 1] == x:
                        ch[j] += 1
                        ch[j + 1] -= 1
                        check = True
        for j in range(4):
            asc[4 * j + i] = ch[j]
    return bytes(asc[-1:] + asc[:-1]).decode("ascii")


# ----------------------------------------------------------------------------------------------------------
# FITS writing
# ----------------------------------------------------------------------------------------------------------
_ASCII = str.maketrans({"≥": ">=", "≤": "<=", "±": "+-", "–": "-", "—": "-", "σ": "sigma", "α": "alpha",
                        "β": "beta", "γ": "gamma", "δ": "delta", "Å": "Angstrom", "×": "x", "’": "'"})


def _ascii(s: str) -> str:
    return str(s).translate(_ASCII).encode("ascii", "replace").decode("ascii")


def _card(key: str, value, comment: str = ""):
    """A header card whose comment is cut to fit 80 characters (long string values use CONTINUE)."""
    from astropy.io import fits

    comment = _ascii(comment)
    if isinstance(value, str):
        value = _ascii(value)
    if key in ("COMMENT", "HISTORY"):
        return fits.Card(key, value)
    plain = fits.Card(key, value)
    image = plain.image
    if len(image) > 80 or not comment:  # CONTINUE cards: keep the comment out
        return plain
    room = 80 - max(30, len(image.rstrip())) - 3  # astropy pads the value field to column 30
    if room < 4:
        return plain
    if len(comment) > room:
        comment = comment[: room - 2] + ".."
    return fits.Card(key, value, comment)


def _fill_header(hdr, cards) -> None:
    for key, value, comment in cards:
        c = _card(key, value, comment)
        if key in ("COMMENT", "HISTORY"):
            # COMMENT cards hold 72 characters; wrap longer text
            text = _ascii(value)
            for i in range(0, max(len(text), 1), 72):
                hdr.append((key, text[i : i + 72]), bottom=True)
        else:
            hdr.append(c, bottom=True)


@dataclass
class _FitsColumn:
    col: Column
    tform: str
    storage: np.dtype  # big-endian storage dtype of one element
    tzero: int | None = None
    bool_: bool = False
    text: bool = False


def _fits_layout(cols: list[Column]) -> list[_FitsColumn]:
    out = []
    for c in cols:
        dt, rep = c.dtype, int(np.prod(c.shape, dtype=np.int64)) if c.shape else 1
        pre = str(rep) if c.shape else ""
        k, size = dt.kind, dt.itemsize
        if k == "b":
            out.append(_FitsColumn(c, pre + "L", np.dtype("u1"), bool_=True))
        elif k == "u" and size == 1:
            out.append(_FitsColumn(c, pre + "B", np.dtype("u1")))
        elif k == "i" and size <= 2:
            out.append(_FitsColumn(c, pre + "I", np.dtype(">i2")))
        elif k == "i" and size == 4:
            out.append(_FitsColumn(c, pre + "J", np.dtype(">i4")))
        elif k == "i":
            out.append(_FitsColumn(c, pre + "K", np.dtype(">i8")))
        elif k == "u":
            code, bits = {2: ("I", 16), 4: ("J", 32), 8: ("K", 64)}[size]
            out.append(_FitsColumn(c, pre + code, np.dtype(f">i{size}"), tzero=1 << (bits - 1)))
        elif k == "f" and size <= 4:
            out.append(_FitsColumn(c, pre + "E", np.dtype(">f4")))
        elif k == "f":
            out.append(_FitsColumn(c, pre + "D", np.dtype(">f8")))
        elif k in "SU":
            width = max(1, size // (4 if k == "U" else 1))
            out.append(_FitsColumn(c, f"{width}A", np.dtype(f"S{width}"), text=True))
        else:  # pragma: no cover - filtered by catalog_columns
            raise UserError(f"column {c.name!r}: dtype {dt} cannot be written to FITS")
    return out


def _row_dtype(layout: list[_FitsColumn]) -> np.dtype:
    return np.dtype([(f.col.name, f.storage, f.col.shape) if f.col.shape else (f.col.name, f.storage)
                     for f in layout])


def _encode_rows(layout: list[_FitsColumn], data: dict[str, np.ndarray], n: int) -> np.ndarray:
    """Rows as a big-endian structured array in FITS BINTABLE layout (write its buffer)."""
    rec = np.zeros(n, dtype=_row_dtype(layout))
    for f in layout:
        v = np.asarray(data[f.col.name])
        if f.bool_:
            rec[f.col.name] = np.where(v, ord("T"), ord("F")).astype("u1")
        elif f.tzero is not None:
            rec[f.col.name] = (v.astype(np.uint64) - np.uint64(f.tzero)).astype(np.int64).astype(f.storage)
        elif f.text:
            if v.dtype.kind == "U":
                v = np.char.encode(np.char.translate(v, _ASCII), "ascii", "replace") if v.size else v.astype("S")
            rec[f.col.name] = v.astype(f.storage)
        else:
            rec[f.col.name] = v
    return rec


def _astropy_yaml_comments(cols: list[Column], fits_dtypes: dict[str, np.dtype]) -> list[str]:
    """astropy's serialized-column COMMENT block (so Table.read restores each column's description)."""
    try:  # astropy's own (private) encoder, so the block is exactly what Table.read expects
        from astropy.io.fits.connect import _encode_mixins
    except ImportError:  # pragma: no cover - descriptions remain in TCOMMn / TTYPEn comments
        log.debug("export: astropy serialized-column encoder not available; no YAML block")
        return []
    from astropy.table import Column as ACol, Table

    t = Table()
    for c in cols:
        t.add_column(ACol(name=c.name, dtype=fits_dtypes[c.name], shape=c.shape, length=0,
                          unit=c.fits_unit, description=_ascii(c.fits_description)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = _encode_mixins(t)
    return list(enc.meta.get("comments", []))


def _table_header(layout: list[_FitsColumn], n: int, extra_cards, extname: str):
    from astropy.io import fits

    hdr = fits.Header()
    naxis1 = _row_dtype(layout).itemsize
    for key, value, comment in (
        ("XTENSION", "BINTABLE", "binary table extension"),
        ("BITPIX", 8, "array data type"),
        ("NAXIS", 2, "number of array dimensions"),
        ("NAXIS1", naxis1, "length of dimension 1 (bytes per row)"),
        ("NAXIS2", int(n), "length of dimension 2 (rows)"),
        ("PCOUNT", 0, "number of group parameters"),
        ("GCOUNT", 1, "number of groups"),
        ("TFIELDS", len(layout), "number of table fields"),
    ):
        hdr.append(_card(key, value, comment), bottom=True)
    for i, f in enumerate(layout, start=1):
        c = f.col
        desc = _ascii(c.fits_description)
        hdr.append(_card(f"TTYPE{i}", c.name, desc), bottom=True)
        hdr.append(_card(f"TFORM{i}", f.tform, "data format of field: " + ("logical" if f.bool_ else "char" if f.text else f.storage.name)), bottom=True)
        if c.fits_unit:
            hdr.append(_card(f"TUNIT{i}", c.fits_unit, "physical unit of field"), bottom=True)
        if f.tzero is not None:
            hdr.append(_card(f"TZERO{i}", f.tzero, "offset for unsigned integers"), bottom=True)
            hdr.append(_card(f"TSCAL{i}", 1, ""), bottom=True)
        if desc:
            hdr.append(_card(f"TCOMM{i}", desc, ""), bottom=True)
    hdr.append(_card("EXTNAME", extname, "name of this HDU"), bottom=True)
    _fill_header(hdr, extra_cards)
    return hdr


def _header_bytes(hdr, datasum: int, stamp: str) -> bytes:
    """Header with DATASUM and CHECKSUM set (CHECKSUM makes header+data sum to -0)."""
    from astropy.io import fits

    h = hdr.copy()
    for key in ("CHECKSUM", "DATASUM"):
        if key in h:
            del h[key]
    h.append(fits.Card("CHECKSUM", "0" * 16, f"HDU checksum updated {stamp}"), bottom=True)
    h.append(fits.Card("DATASUM", str(datasum), f"data unit checksum updated {stamp}"), bottom=True)
    raw = h.tostring(padding=True).encode("ascii")
    h["CHECKSUM"] = encode_checksum(fits_checksum(raw, datasum))
    out = h.tostring(padding=True).encode("ascii")
    assert len(out) == len(raw) and len(out) % _BLOCK == 0
    return out


def _pad(nbytes: int) -> bytes:
    return b"\0" * ((-nbytes) % _BLOCK)


def _small_hdu(hdr, data: bytes, stamp: str) -> bytes:
    data = data + _pad(len(data))
    return _header_bytes(hdr, fits_checksum(data), stamp) + data


def _write_fits(ds, cols: list[Column], tmp: Path, chunk_rows: int, attrs: dict) -> None:
    from astropy.io import fits

    n = int(ds.sizes["object"])
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    zg = _z_grid(ds)
    prov_cards = provenance_cards(attrs)
    layout = _fits_layout(cols)
    fits_dtypes = {}  # dtype astropy reads back for each column
    for f in layout:
        if f.bool_:
            fits_dtypes[f.col.name] = np.dtype(bool)
        elif f.tzero is not None or f.text:
            fits_dtypes[f.col.name] = f.col.dtype if f.tzero is not None else f.storage
        else:
            fits_dtypes[f.col.name] = f.storage.newbyteorder("=")

    primary = fits.Header()
    _fill_header(primary, [
        ("SIMPLE", True, "conforms to FITS standard"),
        ("BITPIX", 8, "array data type"),
        ("NAXIS", 0, "number of array dimensions"),
        ("EXTEND", True, ""),
        *[c for c in prov_cards if c[0] in ("ORIGIN", "SWVERS", "EXPVERS", "DATE", "CATDATE", "MODELSHA")],
        ("COMMENT", "survey-infer redshift catalog: table in HDU 1 (CATALOG), z grid in HDU 2 (Z_GRID)", ""),
    ])
    extra = [("NOBJECT", n, "rows (objects) in the catalog"), *prov_cards, *_grid_keywords(zg),
             *zwarn_header_cards(bit_table_of(attrs))]
    extra += [("COMMENT", line, "") for line in _astropy_yaml_comments(cols, fits_dtypes)]
    thdr = _table_header(layout, n, extra, "CATALOG")

    with open(tmp, "wb") as fh:
        fh.write(_small_hdu(primary, b"", stamp))
        start = fh.tell()
        placeholder = _header_bytes(thdr, 0, stamp)
        fh.write(placeholder)
        acc = _Checksum()
        nbytes = 0
        for a, b, data in _iter_blocks(ds, cols, chunk_rows):
            rec = _encode_rows(layout, data, b - a)
            del data
            raw = memoryview(rec).cast("B")
            acc.update(raw)
            fh.write(raw)
            nbytes += len(raw)
            del raw, rec
            log.debug("export: FITS rows %d..%d written", a, b)
        pad = _pad(nbytes)
        acc.update(pad)
        fh.write(pad)
        final = _header_bytes(thdr, acc.value, stamp)
        if len(final) != len(placeholder):  # pragma: no cover - card count is fixed
            raise RuntimeError("FITS header size changed while writing; please report this bug")
        fh.seek(start)
        fh.write(final)
        fh.seek(0, os.SEEK_END)
        if zg is not None:
            ihdr = fits.Header()
            _fill_header(ihdr, [
                ("XTENSION", "IMAGE", "image extension"),
                ("BITPIX", -64, "array data type"),
                ("NAXIS", 1, "number of array dimensions"),
                ("NAXIS1", int(zg.size), "number of redshift bins"),
                ("PCOUNT", 0, "number of parameters"),
                ("GCOUNT", 1, "number of groups"),
                ("EXTNAME", "Z_GRID", "redshift bin centres of pz"),
                *_grid_keywords(zg),
                ("COMMENT", "z_grid(zbin): redshift bin centres; the axis of the pz column in CATALOG", ""),
            ])
            fh.write(_small_hdu(ihdr, zg.astype(">f8").tobytes(), stamp))
        fh.flush()
        os.fsync(fh.fileno())


# ----------------------------------------------------------------------------------------------------------
# Parquet writing
# ----------------------------------------------------------------------------------------------------------
def _arrow_type(c: Column):
    import pyarrow as pa

    k = c.dtype.kind
    if k == "f" and c.dtype.itemsize < 4:
        base = pa.float32()
    elif k in "SU":
        base = pa.string()
    else:
        base = pa.from_numpy_dtype(c.dtype)
    if c.shape:
        return pa.list_(base, int(np.prod(c.shape)))
    return base


def _arrow_array(c: Column, v: np.ndarray, typ):
    import pyarrow as pa

    if c.shape:
        flat = np.ascontiguousarray(v, dtype=np.float32 if c.dtype.kind == "f" and c.dtype.itemsize < 4
                                    else v.dtype).reshape(-1)
        return pa.FixedSizeListArray.from_arrays(pa.array(flat, type=typ.value_type), int(np.prod(c.shape)))
    if c.dtype.kind == "f" and c.dtype.itemsize < 4:
        v = v.astype(np.float32)
    if c.dtype.kind == "S":
        v = np.char.decode(v, "utf-8", "replace")
    return pa.array(v, type=typ)


def _astropy_parquet_yaml(cols: list[Column], meta: dict) -> str:
    import astropy.units as u
    from astropy.table import Column as ACol, Table, meta as ameta

    t = Table(meta=meta)
    for c in cols:
        dt = np.dtype(np.float32) if c.dtype.kind == "f" and c.dtype.itemsize < 4 else c.dtype
        unit = None
        if c.units:
            try:
                unit = u.Unit(c.units)
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


def _write_parquet(ds, cols: list[Column], tmp: Path, chunk_rows: int, attrs: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    zg = _z_grid(ds)
    fields = [pa.field(c.name, _arrow_type(c), nullable=False,
                       metadata={b"units": c.units.encode(), b"description": c.description.encode()})
              for c in cols]
    info = {
        "format": "survey-infer catalog export",
        "attrs": attrs,
        "z_grid": None if zg is None else zg.tolist(),
        "columns": {c.name: {"units": c.units, "description": c.description} for c in cols},
        "bad_mask": int(sum(int(r["value"]) for r in bit_table_of(attrs)
                            if r["bad"] and isinstance(r["bit"], int))),
        "exported_by": provenance(),
    }
    small_meta = {k: attrs[k] for k in ("software_version", "model_sha256", "mc_samples", "seed", "created")
                  if k in attrs}
    small_meta["zwarn_bad_mask"] = info["bad_mask"]
    metadata = {
        b"survey_infer": _json(info).encode(),
        b"zwarn_bits": _json(bit_table_of(attrs)).encode(),
    }
    yaml_meta = _astropy_parquet_yaml(cols, json.loads(_json(small_meta)))
    if yaml_meta:
        metadata[b"table_meta_yaml"] = yaml_meta.encode()
    schema = pa.schema(fields, metadata=metadata)
    # dictionary encoding is useless for float PDFs and costs memory: only for the scalar columns
    dict_cols = [c.name for c in cols if not c.shape]
    with pq.ParquetWriter(str(tmp), schema, compression="zstd", use_dictionary=dict_cols) as writer:
        for a, b, data in _iter_blocks(ds, cols, chunk_rows):
            arrays = [_arrow_array(c, data[c.name], f.type) for c, f in zip(cols, fields)]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema), row_group_size=max(1, b - a))
            log.debug("export: Parquet rows %d..%d written", a, b)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())


# ----------------------------------------------------------------------------------------------------------
# public API and command line
# ----------------------------------------------------------------------------------------------------------
def _infer_format(out: Path) -> str | None:
    name = out.name.lower()
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
    catalog : path
        The Zarr catalog written by ``survey-infer run``.
    out : path
        Output file. Written under a temporary name in the same folder, then renamed into place.
    fmt : {"fits", "parquet"} or None
        Output format; None infers it from the suffix of ``out`` (``.parquet``/``.pq`` → Parquet, anything
        else → FITS).
    with_pz : bool
        Also export ``pz(object, zbin)`` as a fixed-length float32 vector column.
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
    FileExistsError
        ``out`` exists and ``overwrite`` is False.
    FileNotFoundError
        ``catalog`` does not exist.
    UserError
        Bad format, unreadable catalog, ``with_pz`` without a stored ``pz``.
    """
    out = Path(out)
    fmt = (fmt or _infer_format(out) or "fits").lower()
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r} for {out}; use one of {', '.join(FORMATS)}")
    if out.name.lower().endswith((".gz", ".bz2", ".fz")):
        raise UserError(f"{out}: compressed output is not supported (streaming writer); write {out.stem} "
                        "and compress it afterwards")
    if out.is_dir():
        raise UserError(f"{out} is a directory; give a file name")
    if out.exists() and not overwrite:
        raise OutputExistsError(out)
    ds = open_catalog(catalog)
    cols = catalog_columns(ds, with_pz=with_pz)
    if not cols:
        raise UserError(f"catalog {catalog} has no per-object variables to export")
    if chunk_rows is None:
        chunk_rows = _default_chunk_rows(ds, cols)
    if chunk_rows < 1:
        raise UserError(f"chunk_rows must be >= 1, got {chunk_rows}")
    attrs = json.loads(_json(dict(ds.attrs)))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        if fmt == "fits":
            _write_fits(ds, cols, tmp, chunk_rows, attrs)
        else:
            _write_parquet(ds, cols, tmp, chunk_rows, attrs)
        if out.exists() and not overwrite:  # appeared while we were writing
            raise OutputExistsError(out, "appeared while exporting")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    log.debug("export: wrote %s (%s, %d rows, %d columns)", out, fmt, int(ds.sizes["object"]), len(cols))
    return out


class OutputExistsError(FileExistsError):
    """The export's output file exists and ``overwrite`` is False (``path``: that file)."""

    def __init__(self, path: Path, what: str = "exists") -> None:
        self.path, self.what = Path(path), what
        super().__init__(f"{path} {what}; pass overwrite=True to replace it")


def _cmd(args: argparse.Namespace) -> int:
    if args.chunk_rows is not None and args.chunk_rows < 1:
        raise UserError(f"--chunk-rows must be >= 1, got {args.chunk_rows}")
    try:
        out = export_catalog(args.catalog, args.out, fmt=args.format, with_pz=args.with_pz,
                             overwrite=args.overwrite, chunk_rows=args.chunk_rows)
    except OutputExistsError as exc:  # the same error in the command's own words
        raise UserError(f"{exc.path} {exc.what}; pass --overwrite to replace it") from None
    size = out.stat().st_size
    human = f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 1024:.1f} KiB"
    print(f"wrote {out} ({human})")
    return 0


def register(subparsers) -> None:
    """Add ``export CATALOG --format fits|parquet --out FILE [--with-pz] [--overwrite]``."""
    p = subparsers.add_parser(
        "export",
        help="export a catalog to FITS or Parquet (units, descriptions, provenance, zwarn bits)",
        description="Export a survey-infer catalog to a FITS BINTABLE (units in TUNIT, descriptions in "
                    "TCOMM/TTYPE comments, provenance keywords, zwarn bit table, CHECKSUM) or to Parquet (units "
                    "and descriptions in the schema metadata). Streams in row blocks; never loads the catalog.",
    )
    p.add_argument("catalog", help="catalog (Zarr) written by 'survey-infer run'")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (default: parquet when --out ends in .parquet or .pq, else fits)")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--with-pz", action="store_true", help="also export pz(object, zbin) as a vector column")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--chunk-rows", type=int, default=None, metavar="N",
                   help="rows per streamed block (default: whole Zarr chunks, ~32 MiB per block)")
    p.set_defaults(func=_cmd)


def main(argv: list[str] | None = None) -> int:
    """``python -m survey_infer.io.export --markdown zwarn|columns``: print the tables for docs/catalog.md."""
    ap = argparse.ArgumentParser(prog="python -m survey_infer.io.export",
                                 description="Print the generated tables embedded in docs/catalog.md.")
    ap.add_argument("--markdown", choices=("zwarn", "columns"), required=True)
    args = ap.parse_args(argv)
    sys.stdout.write(zwarn_markdown() if args.markdown == "zwarn" else columns_markdown())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
