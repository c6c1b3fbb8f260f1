"""FITS files through astropy's public API (:mod:`astropy.io.fits`, :mod:`astropy.table`).

Everything the FITS standard defines comes from astropy: header cards (CONTINUE, HIERARCH), null markers
(``TNULLn`` cells masked, ``BLANK`` pixels NaN), ``TSCALn``/``TZEROn`` and ``BSCALE``/``BZERO`` scaling (unsigned
integers included), tile-compressed images (fpack) and every column format. What this module adds is only what
keeps a read from being silently wrong:

* a file whose last HDU is cut short (data or header) is refused with the on-disk and announced sizes, where
  astropy would warn and return fewer HDUs or short data;
* a compressed file (``.fits.gz`` ...) is decompressed completely first (:mod:`.compression`), so a truncated
  stream is refused too;
* astropy's warnings about non-standard units or keywords are silenced (they are not data problems).
"""
from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ReaderError
from .compression import decompressed_bytes, is_compressed

__all__ = [
    "FitsHDUInfo",
    "astropy_table",
    "fits_image",
    "fits_table",
    "image_data",
    "open_fits",
    "scan_fits",
    "table_column_keyword",
    "table_units",
]


@dataclass
class FitsHDUInfo:
    """One HDU as found by :func:`scan_fits`.

    Attributes
    ----------
    index : int
        Position in the file (0 = primary).
    name : str
        ``EXTNAME`` upper-cased, ``""`` when absent.
    type : str
        ``"primary"``, ``"image"`` (tile-compressed images included), ``"table"`` (binary table) or
        ``"ascii_table"``.
    header : dict
        Keyword -> value (first occurrence; COMMENT/HISTORY/blank cards dropped; undefined values None). For a
        tile-compressed image, the header of the image it holds.
    """

    index: int
    name: str
    type: str
    header: dict


@contextmanager
def open_fits(path: str | os.PathLike) -> Iterator:
    """Open a FITS file (plain or compressed) with :func:`astropy.io.fits.open`, warnings silenced.

    Parameters
    ----------
    path : path
        The file. Compressed files are decompressed in memory first (see :mod:`.compression`).

    Yields
    ------
    astropy.io.fits.HDUList
        Closed when the block ends; data are read into memory (``memmap=False``), so arrays taken from it stay
        valid.

    Raises
    ------
    ReaderError
        When astropy cannot open the file (the message names the file and astropy's reason), or a compressed
        stream is corrupt.
    """
    from astropy.io import fits

    p = Path(path)
    src = io.BytesIO(decompressed_bytes(p)) if is_compressed(p) else p
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            hdul = fits.open(src, memmap=False)
        except ReaderError:
            raise
        except Exception as exc:  # noqa: BLE001 - OSError, VerifyError, ValueError...
            raise ReaderError(p, f"corrupt FITS file ({type(exc).__name__}: {exc})") from exc
        try:
            yield hdul
        finally:
            hdul.close()


def _hdu_type(hdu, index: int) -> str:
    from astropy.io import fits

    if index == 0:
        return "primary"
    if isinstance(hdu, fits.CompImageHDU):
        return "image"
    if isinstance(hdu, fits.BinTableHDU):
        return "table"
    if isinstance(hdu, fits.TableHDU):
        return "ascii_table"
    return "image"


def _plain_header(header) -> dict:
    """An astropy Header as a plain dict (picklable, cheap to cache): first occurrence of each keyword."""
    from astropy.io.fits.card import Undefined

    out: dict = {}
    for card in header.cards:
        key = card.keyword
        if key in ("", "COMMENT", "HISTORY") or key in out:
            continue
        try:
            value = card.value
        except Exception:  # noqa: BLE001 - an unparsable card: skipped, as a reader would not use it
            continue
        out[key] = None if isinstance(value, Undefined) else value
    return out


def _file_size(path: Path) -> int:
    return len(decompressed_bytes(path)) if is_compressed(path) else path.stat().st_size


def _content_at(path: Path, offset: int, n: int) -> bytes:
    if is_compressed(path):
        return decompressed_bytes(path)[offset:offset + n]
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(n)


def scan_fits(path: str | os.PathLike) -> list[FitsHDUInfo]:
    """Every HDU's header of a FITS file, checked for completeness.

    Parameters
    ----------
    path : path
        A FITS file, plain or compressed.

    Returns
    -------
    list of FitsHDUInfo
        In file order.

    Raises
    ------
    ReaderError
        Not valid FITS (no ``SIMPLE = T``, unreadable header), or truncated: the last HDU's data end past the
        end of the file, or an extension header is cut before its END card (astropy would drop that HDU with a
        warning). Bytes after the last HDU that do not start an extension (padding, junk) are ignored, as in
        astropy.
    """
    p = Path(path)
    with open_fits(p) as hdul:
        try:
            n = len(hdul)  # loads every header (data stay unread)
            infos = [FitsHDUInfo(i, str(h.header.get("EXTNAME", "") or "").strip().upper(), _hdu_type(h, i),
                                 _plain_header(h.header)) for i, h in zip(range(n), hdul)]
            if not infos or infos[0].header.get("SIMPLE") is not True:
                raise ReaderError(p, "corrupt FITS file: the first header lacks SIMPLE = T")
            last = hdul.fileinfo(len(hdul) - 1)
            end = int(last["datLoc"]) + int(last["datSpan"])
        except ReaderError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ReaderError(p, f"corrupt FITS file ({type(exc).__name__}: {exc})") from exc
    size = _file_size(p)
    if end > size:
        k = len(infos) - 1
        raise ReaderError(p, f"truncated FITS file: {size} bytes on disk, HDU {k} ({infos[k].name or infos[k].type}) "
                             f"needs {end}")
    if size > end and _content_at(p, end, 8) == b"XTENSION":
        raise ReaderError(p, f"truncated FITS file: the header of HDU {len(infos)} is cut at byte {size} before its "
                             f"END card")
    return infos


def _native(a: np.ndarray) -> np.ndarray:
    if a.dtype.byteorder not in ("=", "|") and a.dtype.kind not in "SUO":
        return a.astype(a.dtype.newbyteorder("="))
    return a


def fits_table(path: str | os.PathLike, info: FitsHDUInfo, columns: Sequence[str] | None = None) -> dict:
    """Columns of a binary-table HDU as numpy arrays, keyed by upper-case column name.

    Read by astropy (``FITS_rec`` fields): ``TSCALn``/``TZEROn`` applied (unsigned and signed-byte columns
    included), logicals as bool; strings are decoded and stripped; cells equal to the column's ``TNULLn`` are
    masked (a column with null cells is a :class:`numpy.ma.MaskedArray`), the rule of
    :meth:`astropy.table.Table.read`; NaN in float columns stays NaN. Array cells keep their shape
    ``(nrows, repeat)``.

    Parameters
    ----------
    path : path
        The file (plain or compressed).
    info : FitsHDUInfo
        The HDU, from :func:`scan_fits` / :meth:`FileProbe.hdu`.
    columns : sequence of str, optional
        Column names to return (case-insensitive); all when None.

    Returns
    -------
    dict of str -> ndarray

    Raises
    ------
    ReaderError
        When the HDU is not a table or its data cannot be read.
    """
    return fits_tables(path, [(info, columns)])[0]


def fits_tables(path: str | os.PathLike,
                requests: Sequence[tuple[FitsHDUInfo, Sequence[str] | None]]) -> list[dict]:
    """:func:`fits_table` for several HDUs of one file, opened once (astropy's header parsing is the larger part
    of reading a small file).

    Parameters
    ----------
    path : path
        The file.
    requests : sequence of (FitsHDUInfo, sequence of str or None)
        HDU and wanted columns (None: all), as for :func:`fits_table`.

    Returns
    -------
    list of dict
        One per request, in order.

    Raises
    ------
    ReaderError
        When an HDU is not a table or its data cannot be read.
    """
    p = Path(path)
    for info, _ in requests:
        if info.type != "table":
            raise ReaderError(p, f"HDU {info.index} ({info.name or info.type}) is not a binary table")
    with open_fits(p) as hdul:
        try:
            return [_table_columns(hdul[info.index], columns) for info, columns in requests]
        except ReaderError:
            raise
        except Exception as exc:  # noqa: BLE001
            idx = ", ".join(str(info.index) for info, _ in requests)
            raise ReaderError(p, f"cannot read the table of HDU {idx} ({type(exc).__name__}: {exc})") from exc


def _table_columns(hdu, columns: Sequence[str] | None) -> dict:
    want = None if columns is None else {c.upper() for c in columns}
    data = hdu.data
    out: dict = {}
    for col in hdu.columns:
        name = col.name.upper()
        if (want is not None and name not in want) or name in out:
            continue
        a = np.asarray(data[col.name])  # scaled by astropy (TSCAL/TZERO, unsigned, logicals)
        null = (a == col.null) if col.null is not None and a.dtype.kind in "iu" else None
        if a.dtype.kind in "SU":
            a = np.char.strip(a.astype(str))
        a = _native(a)
        out[name] = np.ma.masked_array(a, mask=null) if null is not None and null.any() else a
    return out


def fits_image(path: str | os.PathLike, info: FitsHDUInfo) -> np.ndarray:
    """Data of an image HDU (plain or tile-compressed) as a numpy array, shape ``(NAXISn, ..., NAXIS1)``.

    ``BSCALE``/``BZERO`` are applied by astropy (unsigned integers keep their integer type); ``BLANK`` pixels
    become NaN (see :func:`image_data`). An HDU without data gives an empty array.

    Raises
    ------
    ReaderError
        When the data cannot be read (e.g. a corrupt compressed tile).
    """
    p = Path(path)
    with open_fits(p) as hdul:
        try:
            return np.array(image_data(hdul[info.index]))
        except Exception as exc:  # noqa: BLE001
            raise ReaderError(p, f"cannot read the image of HDU {info.index} ({type(exc).__name__}: {exc})") from exc


def image_data(hdu) -> np.ndarray:
    """Data of an astropy image HDU with undefined pixels (``BLANK``) as NaN; no data -> size-0 array.

    astropy applies ``BLANK`` only together with ``BSCALE``/``BZERO``; an unscaled integer image with ``BLANK``
    is converted to float64 here so that those pixels are NaN as well.
    """
    if hdu.data is None:
        return np.zeros(0)
    blank = hdu.header.get("BLANK")
    data = _native(np.asarray(hdu.data))
    if data.dtype.kind in "iu" and isinstance(blank, int) and not isinstance(blank, bool):
        null = data == blank
        if null.any():
            data = data.astype(np.float64)
            data[null] = np.nan
    return data


def astropy_table(hdu):
    """An astropy :class:`~astropy.table.Table` of a binary-table HDU with the FITS null markers honoured
    (``TNULLn`` integer cells masked; float NaN kept as NaN) and unit warnings (non-standard TUNIT strings)
    silenced."""
    from astropy.table import Table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Table.read(hdu, mask_invalid=False)


def table_units(info: FitsHDUInfo) -> dict[str, str]:
    """Column name (upper case) -> ``TUNITn`` string ("" when absent) of a binary-table HDU."""
    h = info.header
    return {str(h.get(f"TTYPE{i}", "")).strip().upper(): str(h.get(f"TUNIT{i}", "") or "").strip()
            for i in range(1, int(h.get("TFIELDS", 0)) + 1)}


def table_column_keyword(info: FitsHDUInfo, column: str, key: str) -> str:
    """Per-column keyword (``TUCD``, ``TUNIT``...) of ``column`` in a binary-table HDU ("" when absent)."""
    h = info.header
    for i in range(1, int(h.get("TFIELDS", 0)) + 1):
        if str(h.get(f"TTYPE{i}", "")).strip().upper() == column.upper():
            return str(h.get(f"{key}{i}", "") or "").strip()
    return ""
