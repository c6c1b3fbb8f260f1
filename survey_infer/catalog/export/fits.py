"""Write a catalog as a FITS file through astropy's public API, streaming the table rows.

Layout
------
* HDU 0 (primary): no data; origin, software version, model sha256, creation dates.
* HDU 1 ``CATALOG`` (BINTABLE): one column per exported variable. ``TUNITn`` holds every unit (the FITS-standard
  spelling when there is one, else astropy's, e.g. ``dex(solMass)``: the FITS standard has no logarithmic units,
  so ``Table.read`` keeps those as ``UnrecognizedUnit`` and ``u.Unit(str(col.unit))`` turns them into astropy
  units). Each description is in ``TCOMMn`` (full text), in the comment of ``TTYPEn`` (what TOPCAT shows) and in
  astropy's serialized-column block (so ``Table.read`` restores ``description``). Header keywords carry the
  provenance, the redshift grid and the zwarn bit table (:mod:`.metadata`). Integer columns keep the catalog's
  fill value -1 for rows not computed (no ``TNULL``); float columns hold NaN; unsigned integers use ``TZERO``.
* HDU 2 ``Z_GRID`` (1-D float64 image): the redshift bin centres, the axis of the ``pz`` vector column.

Every HDU carries ``CHECKSUM``/``DATASUM`` (``fits.open(path, checksum=True)`` verifies them); the long JSON
values use the OGIP long-string convention, declared by ``LONGSTRN`` (``fitsverify`` passes the file clean).

How it is written, all with astropy: the column layout and the serialized-column block come from writing a
0-row :class:`astropy.table.Table` with the columns' dtypes and descriptions; the table header, with the final
``NAXIS2``, opens a :class:`astropy.io.fits.StreamingHDU`; each block of rows is encoded by astropy
(``Table.write`` to memory: big-endian, ``T``/``F`` logicals, ``TZERO`` offsets) and its data bytes are appended
to the stream; the ``Z_GRID`` image is appended with :func:`astropy.io.fits.append`; finally the file is opened
in update mode and astropy's ``add_checksum`` sets each HDU's checksums (the
cards were reserved when the headers were written, so no header grows and only headers are rewritten; astropy
reads the table back through a memory map to sum it).

Written here rather than left to astropy, and why: the cut of card comments (astropy cuts an over-long comment
with a warning and no mark; TOPCAT shows the TTYPE comment), ASCII spellings of symbols in headers and text
columns (FITS holds ASCII), ``TUNIT`` for units FITS syntax lacks (astropy drops ``dex(...)``/``mag(AB)`` with a
warning), and three dtype choices (no float16 in FITS; astropy 8.0 writes int8 as a logical column).
"""
from __future__ import annotations

import datetime as _dt
import io
import warnings
from pathlib import Path

import numpy as np

from .columns import Column, iter_blocks, z_grid
from .metadata import Card, bit_table_of, grid_keywords, provenance_cards, zwarn_header_cards

__all__ = ["write_fits"]

_ASCII = str.maketrans({"≥": ">=", "≤": "<=", "±": "+-", "–": "-", "—": "-", "σ": "sigma", "α": "alpha",
                        "β": "beta", "γ": "gamma", "δ": "delta", "Å": "Angstrom", "×": "x", "’": "'"})
_PRIMARY_KEYS = ("ORIGIN", "SWVERS", "EXPVERS", "DATE", "CATDATE", "MODELSHA")
_CHECKSUM_PLACEHOLDERS = [("CHECKSUM", "0" * 16, "HDU checksum"), ("DATASUM", "0", "data unit checksum")]


def _ascii(s: str) -> str:
    """FITS headers and ``A`` columns hold ASCII: common symbols spelled out, anything else as ``?``."""
    return str(s).translate(_ASCII).encode("ascii", "replace").decode("ascii")


def _card(key: str, value, comment: str = ""):
    """A header card whose comment is cut to fit its 80 characters (astropy would cut it with a warning).

    Long string values use astropy's CONTINUE cards, without the comment.
    """
    from astropy.io import fits

    if isinstance(value, str):
        value = _ascii(value)
    plain = fits.Card(key, value)
    comment = _ascii(comment)
    if not comment or len(plain.image) > 80:
        return plain
    room = 80 - max(30, len(plain.image.rstrip())) - 3  # astropy pads the value field to column 30
    if room < 4:
        return plain
    if len(comment) > room:
        comment = comment[: room - 2] + ".."
    return fits.Card(key, value, comment)


def _add_cards(hdr, cards: list[Card]) -> None:
    """Append ``(keyword, value, comment)`` cards; COMMENT text longer than a card spans several (astropy)."""
    for key, value, comment in cards:
        if key == "COMMENT":
            hdr.add_comment(_ascii(value))
        else:
            hdr.append(_card(key, value, comment), end=True)


def _fits_dtype(c: Column) -> np.dtype:
    """The dtype a column is handed to astropy in: float16 -> float32 (``E``), int8 -> int16 (astropy would write
    int8 as a logical), Unicode -> ASCII bytes of the same width; others as stored (unsigned via ``TZERO``)."""
    k, size = c.dtype.kind, c.dtype.itemsize
    if k == "f" and size < 4:
        return np.dtype(np.float32)
    if k == "i" and size == 1:
        return np.dtype(np.int16)
    if k == "U":
        return np.dtype(f"S{max(1, size // 4)}")
    if k == "S":
        return np.dtype(f"S{max(1, size)}")
    return c.dtype


def _fits_values(c: Column, v: np.ndarray) -> np.ndarray:
    dt = _fits_dtype(c)
    if c.dtype.kind == "U":
        v = np.char.encode(np.char.translate(v, _ASCII), "ascii", "replace") if v.size else v.astype(dt)
    return np.asarray(v).astype(dt, copy=False)


def _table_bytes(table) -> tuple[object, memoryview]:
    """``table`` written by astropy as a FITS file in memory: (its BINTABLE header, a view of its data bytes,
    unpadded)."""
    from astropy.io import fits

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # units astropy cannot spell in FITS: TUNIT is set by _table_header
        table.write(buf, format="fits")
    buf.seek(0)
    fits.Header.fromfile(buf)  # the primary header (no data)
    hdr = fits.Header.fromfile(buf)  # the table's; leaves buf at the start of its data
    start = buf.tell()
    return hdr, buf.getbuffer()[start : start + hdr["NAXIS1"] * hdr["NAXIS2"]]


def _table_header(cols: list[Column], n: int, extra: list[Card]):
    """The CATALOG header: astropy's header of a 0-row table of the columns, with units, descriptions, ``n``
    rows, ``EXTNAME``, the extra cards and reserved checksum cards."""
    from astropy.table import Column as ACol, Table
    import astropy.units as u

    t = Table()
    for c in cols:
        t.add_column(ACol(name=c.name, dtype=_fits_dtype(c), shape=c.shape, length=0,
                          unit=u.Unit(c.fits_unit) if c.fits_unit else None,
                          description=_ascii(c.fits_description)))
    hdr, _ = _table_bytes(t)
    hdr["NAXIS2"] = int(n)
    for i, c in enumerate(cols, start=1):
        desc = _ascii(c.fits_description)
        hdr.set(f"TTYPE{i}", c.name, _card(f"TTYPE{i}", c.name, desc).comment)
        after = f"TDIM{i}" if f"TDIM{i}" in hdr else f"TFORM{i}"
        if c.fits_unit:
            hdr.set(f"TUNIT{i}", c.fits_unit, "physical unit of field", after=after)
            after = f"TUNIT{i}"
        if desc:
            hdr.set(f"TCOMM{i}", desc, after=after)
    hdr.set("EXTNAME", "CATALOG", "name of this HDU")
    _add_cards(hdr, extra + _CHECKSUM_PLACEHOLDERS)
    return hdr


def _encode_block(cols: list[Column], data: dict[str, np.ndarray], naxis1: int) -> np.ndarray:
    """Rows of one block in FITS BINTABLE layout (astropy's encoding), as the uint8 array StreamingHDU takes."""
    from astropy.table import Table

    hdr, raw = _table_bytes(Table([_fits_values(c, data[c.name]) for c in cols], names=[c.name for c in cols],
                                  copy=False))
    if hdr["NAXIS1"] != naxis1:  # pragma: no cover - dtypes are fixed by _fits_dtype
        raise RuntimeError(f"FITS row layout changed between blocks ({hdr['NAXIS1']} != {naxis1} bytes); "
                           "please report this bug")
    return np.frombuffer(raw, dtype=np.uint8)


def write_fits(ds, cols: list[Column], path: Path, chunk_rows: int, attrs: dict) -> None:
    """Write the FITS file (layout in the module docstring), reading ``chunk_rows`` rows at a time.

    Parameters
    ----------
    ds : xarray.Dataset
        The catalog, opened without dask.
    cols : list of Column
        The columns to write (:func:`.columns.catalog_columns`).
    path : Path
        The file to write (a new, temporary file; the caller renames it into place).
    chunk_rows : int
        Rows per block; memory holds about one block (a few copies of it) at a time.
    attrs : dict
        The catalog's attributes, JSON-like (provenance, fingerprint, zwarn bit table).

    Raises
    ------
    UserError
        A block of the catalog cannot be read.
    OSError
        The file cannot be written.
    """
    from astropy.io import fits

    path = str(path)  # astropy takes a Path's .name for its file name
    n = int(ds.sizes["object"])
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    zg = z_grid(ds)
    prov = provenance_cards(attrs)

    primary = fits.PrimaryHDU()
    _add_cards(primary.header, [c for c in prov if c[0] in _PRIMARY_KEYS] + [
        ("COMMENT", "survey-infer redshift catalog: table in HDU 1 (CATALOG), z grid in HDU 2 (Z_GRID)", ""),
        *_CHECKSUM_PLACEHOLDERS])
    primary.writeto(path)

    extra = [("NOBJECT", n, "rows (objects) in the catalog"),
             ("LONGSTRN", "OGIP 1.0", "long strings (JSON values) use CONTINUE cards"), *prov, *grid_keywords(zg),
             *zwarn_header_cards(bit_table_of(attrs))]
    thdr = _table_header(cols, n, extra)
    with fits.StreamingHDU(path, thdr) as stream:
        for a, b, data in iter_blocks(ds, cols, chunk_rows):
            stream.write(_encode_block(cols, data, thdr["NAXIS1"]))
            del data
        if not stream.writecomplete:  # pragma: no cover - iter_blocks covers every row
            raise RuntimeError(f"FITS stream of {path} is short of rows; please report this bug")

    if zg is not None:
        image = fits.ImageHDU(zg, name="Z_GRID")
        image.header.set("EXTNAME", "Z_GRID", "redshift bin centres of pz")
        _add_cards(image.header, [*grid_keywords(zg), ("COMMENT", "z_grid(zbin): redshift bin centres; the axis of "
                                                       "the pz column in CATALOG", ""), *_CHECKSUM_PLACEHOLDERS])
        fits.append(path, image.data, image.header, verify=False)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the placeholders' checksums do not verify yet
        with fits.open(path, mode="update", memmap=True) as hdul:
            for hdu in hdul:
                hdu.add_checksum(when=f"updated {stamp} UTC")
