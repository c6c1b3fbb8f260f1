"""Common ground for spectrum readers: the :class:`Spectrum` record, the :class:`SpectrumReader` interface, file
sniffing and unit handling.

Every reader turns one file (or, for formats that split an object over several files, one group of files) into a
list of :class:`Spectrum` records in the package's conventions:

* wavelengths in **vacuum Angstrom** (air wavelengths are converted with :func:`survey_infer.io.resample.air_to_vacuum`);
* flux density in **1e-17 erg s^-1 cm^-2 Angstrom^-1** (f_lambda; f_nu inputs such as microJansky are converted);
* inverse variance in the square of that unit's inverse (0 = no data);
* an optional integer mask per pixel, non-zero = bad (such pixels are excluded when resampling).

Readers never resample: that is :mod:`survey_infer.io.resample`'s job, done by ingest.

Data-safety note
----------------
Readers raise :class:`ReaderError` naming the file and the reason for anything they cannot interpret (unknown
format, truncated or corrupt file, a FITS file with no spectrum, units they cannot convert). They do not guess
silently: where a unit is absent the documented default is used and a warning is logged.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from ...errors import ReaderError  # noqa: F401  (defined in survey_infer.errors)

log = logging.getLogger("survey_infer.io.readers")

__all__ = [
    "FLUX_UNIT_STR",
    "ReaderError",
    "SpectrumArm",
    "Spectrum",
    "SpectrumReader",
    "FileProbe",
    "probe_file",
    "parse_unit",
    "flux_factor",
    "wave_to_angstrom",
    "stable_id",
    "centres_to_edges",
    "FitsHDUInfo",
    "FastFitsUnsupported",
    "scan_fits",
    "fits_table",
    "fits_image",
    "read_table",
    "read_image",
    "table_units",
    "attr_str",
    "build_arms",
    "as_int_id",
    "is_log_unit",
    "compression_of",
]

#: The flux unit every reader converts to (string form as stored in survey attrs).
FLUX_UNIT_STR = "1e-17 erg / (s cm2 Angstrom)"
FITS_MAGIC = b"SIMPLE  ="
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _flux_unit():
    import astropy.units as u

    return u.Unit(1e-17 * u.erg / u.s / u.cm**2 / u.AA)


@dataclass
class SpectrumArm:
    """One contiguous piece of spectrum (an arm, or the whole spectrum for single-arm data).

    Attributes
    ----------
    wave : ndarray, shape (n,)
        Pixel centres, vacuum Angstrom, strictly increasing.
    flux : ndarray, shape (n,)
        Flux density, 1e-17 erg s^-1 cm^-2 Angstrom^-1.
    ivar : ndarray, shape (n,)
        Inverse variance of ``flux`` (0 = no data).
    mask : ndarray of int, shape (n,), optional
        Reduction mask, non-zero = bad pixel.
    name : str
        Arm label (``"B"``, ``"RI"``...), empty for single-arm spectra.
    edges : ndarray, shape (n + 1,), optional
        Pixel edges, vacuum Angstrom. When absent they are the mid-points between centres
        (see :func:`centres_to_edges`).
    """

    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray | None = None
    name: str = ""
    edges: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.wave = np.asarray(self.wave, dtype=np.float64)
        self.flux = np.asarray(self.flux, dtype=np.float64)
        self.ivar = np.asarray(self.ivar, dtype=np.float64)
        if self.mask is not None:
            self.mask = np.asarray(self.mask)
        n = self.wave.shape[0]
        if self.wave.ndim != 1 or self.flux.shape != (n,) or self.ivar.shape != (n,):
            raise ValueError(
                f"arm {self.name!r}: wave {self.wave.shape}, flux {self.flux.shape}, ivar {self.ivar.shape} "
                "must be 1-D and of equal length"
            )
        if self.mask is not None and self.mask.shape != (n,):
            raise ValueError(f"arm {self.name!r}: mask shape {self.mask.shape} != ({n},)")
        if self.edges is not None:
            self.edges = np.asarray(self.edges, dtype=np.float64)
            if self.edges.shape != (n + 1,):
                raise ValueError(f"arm {self.name!r}: edges shape {self.edges.shape} != ({n + 1},)")

    def pixel_edges(self) -> np.ndarray:
        """Pixel edges (vacuum Angstrom), shape ``(n + 1,)``."""
        return self.edges if self.edges is not None else centres_to_edges(self.wave)

    @property
    def good(self) -> np.ndarray:
        """Boolean, True where the pixel has usable data (finite flux, finite positive ivar, mask == 0)."""
        g = np.isfinite(self.flux) & np.isfinite(self.ivar) & (self.ivar > 0)
        if self.mask is not None:
            g &= self.mask == 0
        return g


@dataclass
class Spectrum:
    """One observed spectrum of one object, in the package conventions (see module docstring).

    Attributes
    ----------
    arms : list of SpectrumArm
        One entry for single-arm data; several (possibly overlapping) for multi-arm spectrographs.
    source_files : tuple of str
        The file(s) the spectrum came from.
    reader : str
        Name of the reader that produced it.
    name : str
        Human-readable object name (e.g. ``spec-0295-51585-0596``).
    ra, dec : float
        Position, degrees (NaN when unknown).
    target_id : int or None
        Target identifier; repeat observations of one target share it.
    z_catalog : float
        Catalog redshift carried by the file or a companion file (NaN when unknown).
    t_exp : float
        Exposure time, seconds (NaN when unknown).
    columns : dict
        Further per-row values named as in the survey-store contract (e.g. ``z_true``, ``mag_h``).
    meta : dict
        Anything else worth keeping for provenance (not written to the store).
    """

    arms: list[SpectrumArm]
    source_files: tuple[str, ...] = ()
    reader: str = ""
    name: str = ""
    ra: float = float("nan")
    dec: float = float("nan")
    target_id: int | None = None
    z_catalog: float = float("nan")
    t_exp: float = float("nan")
    columns: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def wave(self) -> np.ndarray:
        """Concatenated pixel centres of all arms, vacuum Angstrom."""
        return np.concatenate([a.wave for a in self.arms])

    @property
    def flux(self) -> np.ndarray:
        """Concatenated flux of all arms, 1e-17 erg s^-1 cm^-2 Angstrom^-1."""
        return np.concatenate([a.flux for a in self.arms])

    @property
    def ivar(self) -> np.ndarray:
        """Concatenated inverse variance of all arms."""
        return np.concatenate([a.ivar for a in self.arms])

    @property
    def wave_range(self) -> tuple[float, float]:
        """(min, max) pixel centre over all arms, Angstrom."""
        return float(min(a.wave[0] for a in self.arms)), float(max(a.wave[-1] for a in self.arms))


@dataclass
class FileProbe:
    """What sniffing found out about a file without reading its data.

    Attributes
    ----------
    path : Path
    kind : str
        ``"fits"``, ``"hdf5"`` or ``"unknown"``.
    hdus : list of (name, type, header)
        For FITS: extension name (upper case, ``""`` for an unnamed HDU), ``"image"``/``"table"``/``"primary"``,
        and the header as a dict (keyword -> value).
    fits_info : list of FitsHDUInfo
        For FITS: the same plus data offsets, for :func:`fits_table` / :func:`fits_image`.
    hdf5_keys : list of str
        For HDF5: the dataset paths.
    """

    path: Path
    kind: str
    hdus: list = field(default_factory=list)
    hdf5_keys: list = field(default_factory=list)
    fits_info: list = field(default_factory=list)
    #: ``""`` for a plain file, else the compression the file was read through (``"gzip"``, ``"bzip2"``...)
    compression: str = ""

    def hdu(self, name_or_index: str | int):
        """:class:`FitsHDUInfo` of an HDU by extension name or index (None if absent)."""
        if isinstance(name_or_index, int):
            return self.fits_info[name_or_index] if 0 <= name_or_index < len(self.fits_info) else None
        for h in self.fits_info:
            if h.name == name_or_index.upper():
                return h
        return None

    def hdu_names(self) -> list[str]:
        return [h[0] for h in self.hdus]

    def header(self, name_or_index: str | int):
        """Header of an HDU by extension name or index (None if absent)."""
        if isinstance(name_or_index, int):
            return self.hdus[name_or_index][2] if 0 <= name_or_index < len(self.hdus) else None
        for n, _, h in self.hdus:
            if n == name_or_index.upper():
                return h
        return None

    def table_columns(self, name_or_index: str | int) -> list[str]:
        """Column names (as written) of a binary-table HDU, [] if absent or not a table."""
        h = self.header(name_or_index)
        if h is None or str(h.get("XTENSION", "")).strip() != "BINTABLE":
            return []
        return [str(h.get(f"TTYPE{i}", "")).strip() for i in range(1, int(h.get("TFIELDS", 0)) + 1)]

    def describe(self) -> str:
        """One-line summary used in error messages."""
        if self.kind == "fits":
            parts = []
            for n, t, h in self.hdus:
                if t == "table":
                    parts.append(f"{n or '?'}(table {h.get('NAXIS2', 0)} rows: {', '.join(self.table_columns(n or 0)[:8])})")
                else:
                    z = "Z" if h.get("ZIMAGE") is True else ""  # tile-compressed image: its own axes
                    shape = "x".join(str(h.get(f"{z}NAXIS{i}", 0)) for i in range(1, int(h.get(f"{z}NAXIS", 0)) + 1)) or "no data"
                    parts.append(f"{n or t.upper()}({t} {shape})")
            return "FITS HDUs " + ", ".join(parts)
        if self.kind == "hdf5":
            return "HDF5 datasets " + ", ".join(self.hdf5_keys[:12])
        return "unknown content"


def _probe_uncached(path: Path) -> FileProbe:
    if not path.exists():
        raise ReaderError(path, "file does not exist")
    if path.is_dir():
        raise ReaderError(path, "is a directory, not a spectrum file")
    size = path.stat().st_size
    if size == 0:
        raise ReaderError(path, "file is empty")
    with open(path, "rb") as fh:
        head = fh.read(16)
    comp = compression_of(head)
    if comp:
        data = decompressed_bytes(path)
        if data[:len(FITS_MAGIC)] == FITS_MAGIC:
            info = scan_fits(path)
            return FileProbe(path, "fits", hdus=[(h.name, h.type, h.header) for h in info], fits_info=info,
                             compression=comp)
        if data[:len(HDF5_MAGIC)] == HDF5_MAGIC:
            raise ReaderError(path, f"is a {comp}-compressed HDF5 file, which HDF5 cannot read in place: "
                                    f"decompress it first (its content is a valid HDF5 signature)")
        raise ReaderError(path, f"unknown format: a {comp}-compressed file whose content is neither FITS nor HDF5")
    if head.startswith(FITS_MAGIC):
        info = scan_fits(path, size)
        return FileProbe(path, "fits", hdus=[(h.name, h.type, h.header) for h in info], fits_info=info)
    if head.startswith(HDF5_MAGIC):
        try:
            import h5py

            keys: list[str] = []
            with h5py.File(path, "r") as f:
                f.visititems(lambda name, obj: keys.append(name) if isinstance(obj, h5py.Dataset) else None)
        except Exception as exc:  # noqa: BLE001
            raise ReaderError(path, f"corrupt HDF5 file ({type(exc).__name__}: {exc})") from exc
        return FileProbe(path, "hdf5", hdf5_keys=keys)
    return FileProbe(path, "unknown")


# ---------------------------------------------------------------------------------------------- compression
#
# Archives serve FITS files compressed (``.fits.gz``, ``.fits.bz2``, ``.fits.xz``, single-member ``.zip``).
# astropy.io.fits opens them transparently; the fast reader below decompresses them in memory (spectra are small)
# so that every reader sees the same content. The format is recognised by the compressed stream's signature,
# never by the file name.

_COMPRESSION_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"PK\x03\x04", "zip"),
                      (b"\x1f\x9d", "compress"))


def compression_of(head: bytes) -> str:
    """Compression named by a file's first bytes (``"gzip"``, ``"bzip2"``, ``"xz"``, ``"zip"``, ``"compress"``)
    or ``""`` for an uncompressed file."""
    for magic, name in _COMPRESSION_MAGIC:
        if head.startswith(magic):
            return name
    return ""


@lru_cache(maxsize=4)
def _decompressed_cached(path: str, size: int, mtime_ns: int) -> bytes:
    import bz2
    import gzip
    import lzma
    import zipfile

    p = Path(path)
    with open(p, "rb") as fh:
        comp = compression_of(fh.read(8))
    try:
        if comp == "gzip":
            return gzip.decompress(p.read_bytes())
        if comp == "bzip2":
            return bz2.decompress(p.read_bytes())
        if comp == "xz":
            return lzma.decompress(p.read_bytes())
        if comp == "zip":
            with zipfile.ZipFile(p) as z:
                names = [i for i in z.infolist() if not i.is_dir()]
                if len(names) != 1:
                    raise ReaderError(p, f"zip archive holds {len(names)} files; give one spectrum file per input")
                return z.read(names[0])
        if comp == "compress":
            try:
                import uncompresspy  # type: ignore[import-not-found]
            except ImportError:
                raise ReaderError(p, "is compressed with Unix compress (.Z), which needs the optional package "
                                     "uncompresspy: decompress it first (uncompress / gunzip)") from None
            with uncompresspy.LZWFile(p) as fh:  # pragma: no cover - optional dependency
                return fh.read()
    except ReaderError:
        raise
    except Exception as exc:  # noqa: BLE001 - EOFError, zlib.error, OSError, BadZipFile...
        raise ReaderError(p, f"corrupt or truncated {comp}-compressed file ({type(exc).__name__}: {exc})") from exc
    return p.read_bytes()


def decompressed_bytes(path: str | os.PathLike) -> bytes:
    """The content of a compressed file (cached for the last few files read)."""
    p = Path(path)
    st = p.stat()
    return _decompressed_cached(str(p), st.st_size, st.st_mtime_ns)


def _is_compressed(path: str | os.PathLike) -> bool:
    with open(path, "rb") as fh:
        return bool(compression_of(fh.read(8)))


def _open_binary(path: str | os.PathLike):
    """A binary file object on the (decompressed) content of ``path``."""
    import io

    if _is_compressed(path):
        return io.BytesIO(decompressed_bytes(path))
    return open(path, "rb")


# ---------------------------------------------------------------------------------------------- fast FITS access
#
# astropy.io.fits builds rich Header / ColDefs / FITS_rec objects: ~25 ms for the headers and ~50 ms for the
# 126-column SPECOBJ table of one SDSS spec file. Ingest reads millions of small files, so sniffing and the
# one-object-per-file formats use this minimal reader of the FITS standard instead: headers are scanned card by
# card (values: strings with '' escapes and CONTINUE, logicals, integers, reals), data are read with numpy at the
# offsets the headers imply. Anything unusual (variable-length arrays, random groups) raises FastFitsUnsupported
# and the readers fall back to astropy.


class FastFitsUnsupported(Exception):
    """The minimal FITS reader does not handle this HDU; use astropy."""


@dataclass
class FitsHDUInfo:
    """One HDU as found by :func:`scan_fits`.

    Attributes
    ----------
    index : int
    name : str
        ``EXTNAME`` upper-cased, ``""`` when absent.
    type : str
        ``"primary"``, ``"image"``, ``"table"`` (binary table) or ``"ascii_table"``.
    header : dict
        Keyword -> value (first occurrence; COMMENT/HISTORY/blank cards dropped).
    data_offset : int
        Byte offset of the data unit.
    data_bytes : int
        Size of the data unit without padding (heap included).
    """

    index: int
    name: str
    type: str
    header: dict
    data_offset: int
    data_bytes: int


def _card_value(text: str):
    t = text.lstrip()
    if t.startswith("'"):
        out, i = [], 1
        while i < len(t):
            c = t[i]
            if c == "'":
                if i + 1 < len(t) and t[i + 1] == "'":
                    out.append("'")
                    i += 2
                    continue
                break
            out.append(c)
            i += 1
        return "".join(out).rstrip()
    v = t.split("/", 1)[0].strip()
    if v == "T":
        return True
    if v == "F":
        return False
    if v == "":
        return None
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v.replace("D", "E").replace("d", "e"))
    except ValueError:
        return v


def _parse_header_block(cards: list[str]) -> dict:
    hdr: dict = {}
    last = None
    for card in cards:
        key = card[:8].rstrip()
        if key in ("", "COMMENT", "HISTORY"):
            continue
        if key == "CONTINUE":
            if last is not None and isinstance(hdr.get(last), str) and hdr[last].endswith("&"):
                cont = _card_value(card[8:])
                hdr[last] = hdr[last][:-1] + (cont if isinstance(cont, str) else "")
            continue
        if key == "HIERARCH":
            body = card[8:]
            if "=" not in body:
                continue
            k, v = body.split("=", 1)
            key = k.strip().upper()
            value = _card_value(v)
        elif card[8:10] == "= ":
            value = _card_value(card[10:])
        else:
            continue
        if key not in hdr:
            hdr[key] = value
            last = key
    return hdr


def scan_fits(path: str | os.PathLike, size: int | None = None) -> list[FitsHDUInfo]:
    """Read every header of a FITS file and locate its data units, without astropy.

    Raises
    ------
    ReaderError
        If the file is not valid FITS or is truncated (the message gives on-disk and announced sizes).
    """
    path = Path(path)
    if _is_compressed(path):
        size = len(decompressed_bytes(path))
    size = path.stat().st_size if size is None else size
    out: list[FitsHDUInfo] = []
    pos = 0
    with _open_binary(path) as fh:
        while pos < size:
            fh.seek(pos)
            if out:
                if fh.read(8) != b"XTENSION":
                    break  # trailing bytes after the last HDU (padding or junk) are ignored, as astropy does
                fh.seek(pos)
            cards: list[str] = []
            done = False
            while not done:
                block = fh.read(2880)
                if len(block) < 2880:
                    raise ReaderError(path, f"truncated FITS file: the header of HDU {len(out)} is cut at byte "
                                            f"{size} before its END card")
                pos += 2880
                text = block.decode("ascii", "replace")
                for k in range(36):
                    card = text[80 * k: 80 * k + 80]
                    if card.rstrip() == "END":
                        done = True
                        break
                    cards.append(card)
            hdr = _parse_header_block(cards)
            if not out and hdr.get("SIMPLE") is not True:
                raise ReaderError(path, "corrupt FITS file: the first header lacks SIMPLE = T")
            try:
                bitpix = int(hdr.get("BITPIX", 8))
                naxis = int(hdr.get("NAXIS", 0))
                n = 0
                if naxis > 0:
                    n = 1
                    for i in range(1, naxis + 1):
                        n *= int(hdr.get(f"NAXIS{i}", 0))
                nbytes = abs(bitpix) // 8 * int(hdr.get("GCOUNT", 1) or 1) * (int(hdr.get("PCOUNT", 0) or 0) + n)
            except (TypeError, ValueError) as exc:
                raise ReaderError(path, f"corrupt FITS header in HDU {len(out)}: {exc}") from exc
            xt = str(hdr.get("XTENSION", "")).strip().upper()
            typ = "primary" if not out else ("table" if xt == "BINTABLE" else ("ascii_table" if xt == "TABLE" else "image"))
            if typ == "table" and hdr.get("ZIMAGE") is True:  # a tile-compressed image (fpack): read via astropy
                typ = "image"
            name = str(hdr.get("EXTNAME", "") or "").strip().upper()
            if pos + nbytes > size:
                raise ReaderError(path, f"truncated FITS file: {size} bytes on disk, HDU {len(out)} "
                                        f"({name or typ}) needs {pos + nbytes}")
            out.append(FitsHDUInfo(len(out), name, typ, hdr, pos, nbytes))
            pos += 2880 * ((nbytes + 2879) // 2880)
    return out


_TFORM_RE = re.compile(r"^\s*(\d*)\s*([LXBIJKAEDCMPQ])")
_TFORM_DTYPE = {"L": "S1", "B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8", "C": ">c8",
                "M": ">c16"}


def _table_dtype(h: dict) -> np.dtype:
    names, formats = [], []
    for i in range(1, int(h.get("TFIELDS", 0)) + 1):
        m = _TFORM_RE.match(str(h.get(f"TFORM{i}", "")))
        if not m:
            raise FastFitsUnsupported(f"TFORM{i}={h.get(f'TFORM{i}')!r}")
        rep = int(m.group(1)) if m.group(1) else 1
        code = m.group(2)
        if code in "PQ":
            raise FastFitsUnsupported("variable-length array column")
        if code == "A":
            fmt = f"S{rep}" if rep > 0 else ("u1", (0,))
        elif code == "X":
            fmt = ("u1", ((rep + 7) // 8,))
        else:
            fmt = _TFORM_DTYPE[code] if rep == 1 else (_TFORM_DTYPE[code], (rep,))
        names.append(f"c{i}")
        formats.append(fmt)
    dt = np.dtype({"names": names, "formats": formats})
    if dt.itemsize != int(h.get("NAXIS1", -1)):
        raise FastFitsUnsupported(f"row size {dt.itemsize} != NAXIS1 {h.get('NAXIS1')}")
    return dt


def fits_table(path: str | os.PathLike, info: FitsHDUInfo, columns: Sequence[str] | None = None) -> dict:
    """Columns of a binary-table HDU as native numpy arrays, keyed by upper-case column name.

    Strings are decoded and stripped, logicals become bool, TSCAL/TZERO are applied. Array cells keep their
    shape ``(nrows, repeat)``.

    Raises
    ------
    FastFitsUnsupported
        For layouts this minimal reader does not handle (the caller falls back to astropy).
    """
    h = info.header
    if info.type != "table":
        raise FastFitsUnsupported(f"HDU {info.index} is not a binary table")
    dt = _table_dtype(h)
    nrows = int(h.get("NAXIS2", 0))
    with _open_binary(path) as fh:
        fh.seek(info.data_offset)
        buf = fh.read(dt.itemsize * nrows)
    if len(buf) < dt.itemsize * nrows:
        raise ReaderError(path, f"truncated FITS table in HDU {info.index}")
    rec = np.frombuffer(buf, dtype=dt, count=nrows)
    want = None if columns is None else {c.upper() for c in columns}
    out = {}
    for i in range(1, int(h.get("TFIELDS", 0)) + 1):
        name = str(h.get(f"TTYPE{i}", f"COL{i}")).strip().upper()
        if (want is not None and name not in want) or name in out:
            continue
        col = rec[f"c{i}"]
        code = _TFORM_RE.match(str(h[f"TFORM{i}"])).group(2)
        if code == "A" and col.dtype.kind == "S":
            arr = np.char.strip(np.char.decode(col, "ascii", "replace"))
        elif code == "L":
            arr = col == b"T"
        else:
            arr = col.astype(col.dtype.newbyteorder("="))
            tnull = h.get(f"TNULL{i}") if code in "BIJK" else None
            null = (arr == tnull) if isinstance(tnull, int) and not isinstance(tnull, bool) else None
            scal, zero = h.get(f"TSCAL{i}", 1), h.get(f"TZERO{i}", 0)
            if scal != 1 or zero != 0:
                nbit = 8 * arr.dtype.itemsize
                if code in "IJK" and scal == 1 and zero == 2 ** (nbit - 1):
                    arr = arr.view(f"u{arr.dtype.itemsize}") ^ np.array(1 << (nbit - 1), dtype=f"u{arr.dtype.itemsize}")
                else:
                    arr = arr * scal + zero
            if null is not None and null.any():  # FITS null marker (TNULLn, on the stored value): missing
                arr = np.ma.masked_array(arr, mask=null)
        out[name] = arr
    return out


_BITPIX = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def fits_image(path: str | os.PathLike, info: FitsHDUInfo) -> np.ndarray:
    """Data of an image HDU as a native numpy array (BSCALE/BZERO applied), shape ``(NAXISn, ..., NAXIS1)``."""
    h = info.header
    if h.get("ZIMAGE") is True:
        raise FastFitsUnsupported("tile-compressed image")
    naxis = int(h.get("NAXIS", 0))
    if naxis == 0:
        return np.zeros(0)
    if int(h.get("GCOUNT", 1) or 1) != 1 or int(h.get("PCOUNT", 0) or 0) != 0:
        raise FastFitsUnsupported("random groups / PCOUNT in an image")
    dt = np.dtype(_BITPIX[int(h["BITPIX"])])
    shape = tuple(int(h[f"NAXIS{i}"]) for i in range(naxis, 0, -1))
    n = int(np.prod(shape))
    with _open_binary(path) as fh:
        fh.seek(info.data_offset)
        buf = fh.read(dt.itemsize * n)
    if len(buf) < dt.itemsize * n:
        raise ReaderError(path, f"truncated FITS image in HDU {info.index}")
    arr = np.frombuffer(buf, dtype=dt, count=n).reshape(shape)
    arr = arr.astype(dt.newbyteorder("="))
    blank = h.get("BLANK") if int(h["BITPIX"]) > 0 else None
    null = (arr == blank) if isinstance(blank, int) and not isinstance(blank, bool) else None
    scale, zero = h.get("BSCALE", 1), h.get("BZERO", 0)
    if scale != 1 or zero != 0:
        arr = arr * scale + zero
    if null is not None and null.any():  # FITS null marker (BLANK): undefined pixels become NaN, as in astropy
        arr = arr.astype(np.float64)
        arr[null] = np.nan
    return arr


@lru_cache(maxsize=256)
def _probe_cached(path: str, size: int, mtime_ns: int) -> FileProbe:
    return _probe_uncached(Path(path))


def probe_file(path: str | os.PathLike) -> FileProbe:
    """Sniff a file's content (magic bytes, FITS headers / HDF5 dataset names); cached per (path, size, mtime).

    Raises
    ------
    ReaderError
        If the file is missing, empty, a directory, or a corrupt / truncated FITS or HDF5 file.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError as exc:
        raise ReaderError(p, "file does not exist") from exc
    except OSError as exc:
        raise ReaderError(p, f"cannot stat file: {exc}") from exc
    return _probe_cached(str(p), st.st_size, st.st_mtime_ns)


class SpectrumReader(ABC):
    """A reader for one file format.

    Subclasses set :attr:`name` (short format label stored in the ingest record) and :attr:`priority` (readers
    are tried in increasing order: specific formats before the generic table reader) and implement
    :meth:`can_read_probe` (content sniffing, cheap: headers only) and :meth:`read`.

    Formats that spread one object over several files (moons1d: one file per arm) also implement
    :meth:`group_key` and :meth:`read_group`.
    """

    name: str = "base"
    priority: int = 100
    #: True when one object spans several files (see :meth:`group_key`).
    grouped: bool = False

    def can_read(self, path: str | os.PathLike) -> bool:
        """True when the file's *content* (not only its name) is this reader's format."""
        try:
            return self.can_read_probe(probe_file(path))
        except ReaderError:
            return False

    @abstractmethod
    def can_read_probe(self, probe: FileProbe) -> bool:
        """Content test on an already sniffed file."""

    @abstractmethod
    def read(self, path: str | os.PathLike) -> list[Spectrum]:
        """Read every spectrum in ``path``.

        Raises
        ------
        ReaderError
            Naming the file and what is wrong.
        """

    def is_companion(self, probe: FileProbe) -> bool:
        """True for files this format pairs with spectra but that hold no spectrum (e.g. DESI redrock files)."""
        return False

    def group_key(self, path: str | os.PathLike) -> str:
        """Key shared by all files of one object (only for :attr:`grouped` formats)."""
        return str(Path(path).resolve())

    def read_group(self, paths: Sequence[str | os.PathLike]) -> list[Spectrum]:
        """Read one object spread over several files (only for :attr:`grouped` formats)."""
        out: list[Spectrum] = []
        for p in paths:
            out.extend(self.read(p))
        return out

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


# ---------------------------------------------------------------------------------------------------- units

_LOG_UNIT_RE = re.compile(r"^\s*(dex|log|log10|lg|ln)\s*\(\s*(.*?)\s*\)\s*$", re.IGNORECASE)
_SCALE_RE = re.compile(r"^\s*(?:(1(?:\.0*)?[eE]([-+]?\d+))|10\s*\*\*\s*\(?\s*([-+]?\d+)\s*\)?)\s*[*.]?\s*")


@lru_cache(maxsize=128)
def parse_unit(text: str, kind: str = "flux"):
    """Parse a unit string as written in FITS/HDF5 files into an :class:`astropy.units.Unit`.

    Handles FITS/OGIP/CDS/generic spellings, a leading numeric scale (``1E-17 ...``, ``10**(-19) ...``),
    ``Ang``/``AA``/``Angstroms`` and ``A`` meaning Angstrom in a flux-density or wavelength context.

    Parameters
    ----------
    text : str
        The unit string.
    kind : {"flux", "wave"}
        What the unit should describe: a spectral flux density (f_lambda or f_nu) or a length.

    Raises
    ------
    ValueError
        If the string cannot be parsed or does not describe ``kind``.
    """
    import astropy.units as u

    s = attr_str(text)
    if not s:
        raise ValueError("empty unit string")
    if kind == "wave":
        m = _LOG_UNIT_RE.match(s)
        if m:  # logarithmic wavelength: log10 (dex, log, lg, log10) or natural (ln) of a length
            from astropy.units.function.logarithmic import LogUnit

            inner = parse_unit(m.group(2) or "Angstrom", "wave")
            if m.group(1).lower() == "ln":
                return LogUnit(inner, function_unit=u.dex / np.log(10.0))
            return u.dex(inner)
    scale = 1.0
    m = _SCALE_RE.match(s)
    if m:
        exp = m.group(2) if m.group(2) is not None else m.group(3)
        scale = 10.0 ** int(exp)
        s = s[m.end():].strip()
    s = s.replace("^", "**")
    s = re.sub(r"\b(Ang|ANG|Angs|Angstroms|ANGSTROM|ANGSTROMS|angstroms|AA|angstrom)\b", "Angstrom", s)
    s = re.sub(r"\b(microns?|MICRONS?|Microns?|mum|micrometer)\b", "um", s)
    s = re.sub(r"\b(ergs)\b", "erg", s)
    candidates = [s]
    if re.search(r"(?<![A-Za-z])A(?![A-Za-z])", s):
        candidates.append(re.sub(r"(?<![A-Za-z])A(?![A-Za-z])", "Angstrom", s))
    last_exc: Exception | None = None
    for cand in candidates:
        for fmt in ("fits", "generic", "ogip", "cds"):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    unit = u.Unit(cand, format=fmt)
            except Exception as exc:  # noqa: BLE001
                last_exc = exc
                continue
            if isinstance(unit, u.FunctionUnitBase):
                if kind == "wave" and scale == 1.0 and unit.physical_unit.is_equivalent(u.m):
                    return unit
                continue
            unit = u.Unit(scale * unit)
            if kind == "wave" and unit.is_equivalent(u.m):
                return unit
            if kind == "flux" and (unit.is_equivalent(u.erg / u.s / u.cm**2 / u.AA) or unit.is_equivalent(u.Jy)):
                return unit
    raise ValueError(f"cannot interpret {text!r} as a {'wavelength' if kind == 'wave' else 'flux density'} unit"
                     + (f" ({last_exc})" if last_exc else ""))


def is_log_unit(unit) -> bool:
    """True for a logarithmic (function) unit such as ``dex(Angstrom)``, ``log(um)`` or ``ln(Angstrom)``."""
    import astropy.units as u

    if isinstance(unit, (str, bytes, np.bytes_, np.ndarray)):
        try:
            unit = parse_unit(attr_str(unit), "wave")
        except ValueError:
            return False
    return isinstance(unit, u.FunctionUnitBase)


def wave_to_angstrom(wave: np.ndarray, unit) -> np.ndarray:
    """Convert wavelengths in ``unit`` (astropy unit or string) to Angstrom (float64).

    Logarithmic units (``dex(Angstrom)``, FITS ``log(Angstrom)`` = log10, ``ln(um)``...) are converted to their
    physical length: ``10**value`` (or ``e**value``) in the unit inside the parentheses.
    """
    import astropy.units as u

    if not isinstance(unit, u.UnitBase) and not isinstance(unit, u.FunctionUnitBase):
        unit = parse_unit(unit, "wave")
    w = np.asarray(wave, dtype=np.float64)
    if isinstance(unit, u.FunctionUnitBase):
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray((w * unit).physical.to_value(u.AA), dtype=np.float64)
    return w * float(unit.to(u.AA))


def flux_factor(unit, wave_aa: np.ndarray) -> np.ndarray | float:
    """Multiplicative factor(s) that convert flux density in ``unit`` to 1e-17 erg s^-1 cm^-2 Angstrom^-1.

    f_lambda units give one number; f_nu units (Jy, uJy, erg/s/cm2/Hz) give an array over ``wave_aa``
    (f_lambda = f_nu c / lambda^2). Inverse variances scale by ``factor**-2``.
    """
    import astropy.units as u

    if isinstance(unit, str):
        unit = parse_unit(unit, "flux")
    target = _flux_unit()
    if unit.is_equivalent(target):
        return float(unit.to(target))
    # f_nu: c / lambda^2, evaluated per pixel
    c_aa = 2.99792458e18  # Angstrom / s
    fnu_cgs = float(unit.to(u.erg / u.s / u.cm**2 / u.Hz))
    return fnu_cgs * c_aa / np.asarray(wave_aa, dtype=np.float64) ** 2 / 1e-17


def ivar_from_error(err: np.ndarray) -> np.ndarray:
    """Inverse variance from a 1 sigma error array.

    ``1 / err**2`` where err is finite and > 0; 0 (no data) where err == 0 or is +inf (conventions for padding);
    NaN where err is NaN and -1 where err < 0, so that ingest counts those pixels as invalid (they are excluded
    from resampling either way).
    """
    err = np.asarray(err, dtype=np.float64)
    ok = np.isfinite(err) & (err > 0)
    out = np.zeros_like(err)
    out[ok] = 1.0 / err[ok] ** 2
    out[np.isnan(err)] = np.nan
    out[err < 0] = -1.0
    return out


def centres_to_edges(wave: np.ndarray) -> np.ndarray:
    """Pixel edges from pixel centres: mid-points inside, half a step outside at both ends.

    For a log-uniform grid (constant ``wave[i+1]/wave[i]``) the edges are geometric mid-points, which is exact for
    SDSS/BOSS ``loglam`` grids; otherwise arithmetic mid-points.
    """
    w = np.asarray(wave, dtype=np.float64)
    if w.size == 1:
        return np.array([w[0] - 0.5, w[0] + 0.5])
    ratio = w[1:] / w[:-1]
    step = np.diff(w)
    if w.size > 2 and np.all(w > 0) and np.ptp(ratio) < 1e-6 * np.mean(ratio - 1) and np.ptp(step) > 1e-6 * np.mean(step):
        lw = np.log(w)
        mid = 0.5 * (lw[1:] + lw[:-1])
        return np.exp(np.concatenate([[lw[0] - (mid[0] - lw[0])], mid, [lw[-1] + (lw[-1] - mid[-1])]]))
    mid = 0.5 * (w[1:] + w[:-1])
    return np.concatenate([[w[0] - (mid[0] - w[0])], mid, [w[-1] + (w[-1] - mid[-1])]])


def stable_id(text: str) -> int:
    """A stable non-negative int63 identifier derived from a string (sha256), for formats whose targets have
    names but no integer id."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def header_float(headers: Sequence, *keys: str) -> float:
    """First finite numeric value among ``keys`` in the given headers (NaN if none)."""
    for h in headers:
        if h is None:
            continue
        for k in keys:
            if k in h:
                try:
                    v = float(h[k])
                except (TypeError, ValueError):
                    continue
                if np.isfinite(v):
                    return v
    return float("nan")


def header_str(headers: Sequence, *keys: str) -> str:
    for h in headers:
        if h is None:
            continue
        for k in keys:
            v = h.get(k)
            if v not in (None, ""):
                return str(v).strip()
    return ""


#: Range of ids the store's int64 ``target_id`` holds losslessly (-1 = unknown).
ID_MIN, ID_MAX = -(2**63), 2**63 - 1


def as_int_id(value, path: str | os.PathLike | None = None, column: str = "id") -> int | None:
    """Integer target id from a header/table value (any integer width or sign, numeric string).

    Returns None for missing values (None, masked cells - FITS ``TNULLn`` -, NaN, blank or non-integer values).

    Raises
    ------
    ReaderError
        (when ``path`` is given; else ValueError) if the integer does not fit the store's signed 64-bit
        ``target_id`` (e.g. a uint64 id >= 2**63): ids are stored losslessly or refused, never wrapped.
    """
    if value is None or value is np.ma.masked or isinstance(value, np.ma.core.MaskedConstant):
        return None
    if isinstance(value, np.ma.MaskedArray):
        if value.size != 1 or bool(np.ma.getmaskarray(value).ravel()[0]):
            return None
        value = value.ravel()[0]
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return None
        value = value.ravel()[0]
    iv: int | None = None
    if isinstance(value, (bytes, np.bytes_, str)):
        v = attr_str(value)
        if re.fullmatch(r"[-+]?\d+", v):
            iv = int(v)
    elif isinstance(value, (bool, np.bool_)):
        return None
    elif isinstance(value, (int, np.integer)):
        iv = int(value)
    else:
        try:
            f = float(value)
        except (TypeError, ValueError, OverflowError):
            return None
        if not np.isfinite(f) or not f.is_integer():
            return None
        iv = int(f)
    if iv is None:
        return None
    if not ID_MIN <= iv <= ID_MAX:
        msg = (f"{column} value {iv} does not fit the store's signed 64-bit target_id (range -2**63..2**63-1; "
               f"-1 = unknown); refusing rather than changing it")
        if path is not None:
            raise ReaderError(path, msg)
        raise ValueError(msg)
    return iv


def read_table(path: str | os.PathLike, info: FitsHDUInfo, columns: Sequence[str] | None = None) -> dict:
    """:func:`fits_table`, falling back to astropy for layouts the fast reader does not handle."""
    try:
        return fits_table(path, info, columns)
    except FastFitsUnsupported:
        from astropy.io import fits

        want = None if columns is None else {c.upper() for c in columns}
        with fits.open(path, memmap=False) as hdul:
            t = astropy_table(hdul[info.index])  # TNULLn cells come back masked
            out = {}
            for c in t.colnames:
                if want is None or c.upper() in want:
                    col = t[c]
                    a = np.ma.asarray(col) if getattr(col, "mask", None) is not None and np.any(col.mask) \
                        else np.asarray(col)
                    out[c.upper()] = np.char.strip(a.astype(str)) if a.dtype.kind in "SU" else a
            return out


def read_image(path: str | os.PathLike, info: FitsHDUInfo) -> np.ndarray:
    """:func:`fits_image`, falling back to astropy for layouts the fast reader does not handle."""
    try:
        return fits_image(path, info)
    except FastFitsUnsupported:
        from astropy.io import fits

        with fits.open(path, memmap=False) as hdul:
            return image_data(hdul[info.index])


def table_units(info: FitsHDUInfo) -> dict[str, str]:
    """Column name (upper case) -> TUNIT string ("" when absent) of a binary-table HDU."""
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


def image_data(hdu) -> np.ndarray:
    """Data of an astropy image HDU as a numpy array with undefined pixels (``BLANK``) as NaN; empty -> size 0."""
    if hdu.data is None:
        return np.zeros(0)
    blank = hdu.header.get("BLANK")
    data = np.asarray(hdu.data)
    if data.dtype.kind in "iu" and isinstance(blank, int) and not isinstance(blank, bool):
        null = data == blank
        if null.any():
            data = data.astype(np.float64)
            data[null] = np.nan
    return data


def attr_str(value) -> str:
    """A string attribute / keyword in any form as ``str``: bytes, ``numpy.bytes_``/``numpy.str_``, 0-d or
    one-element arrays and lists (as h5py returns fixed-length or array attributes), stripped."""
    if isinstance(value, np.ndarray):
        if value.size == 1:
            return attr_str(value.ravel()[0])
        return str(value.tolist())
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return attr_str(value[0])
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", "replace").strip().rstrip("\x00").strip()
    if value is None:
        return ""
    return str(value).strip()


#: at most this many increasing pieces are accepted in one wavelength array (arms joined in one array)
MAX_WAVE_PIECES = 16


def build_arms(path: str | os.PathLike, wave, flux, ivar, mask=None, *, name: str = "", edges=None,
               label: str = "") -> list[SpectrumArm]:
    """Arms from one wavelength array, repairing what is safe and refusing with the real reason otherwise.

    * no pixels at all: refused (``empty spectrum: no pixels``);
    * non-finite or non-positive wavelengths (NaN padding, zero padding): at the ends those pixels are dropped;
      inside, the wavelength is interpolated between its neighbours and the pixel gets ivar = 0 (no data);
    * decreasing order: reversed;
    * a few increasing pieces (arms joined in one array, a repeated sample where they meet): one arm per piece,
      merged later by inverse-variance weighting; more than :data:`MAX_WAVE_PIECES` pieces or a piece of a
      single pixel is refused, naming where the order breaks.

    Parameters
    ----------
    path : path
        The file (for error messages).
    wave : ndarray, shape (n,)
        Vacuum Angstrom (already converted).
    flux, ivar : ndarray, shape (n,)
        Store units.
    mask : ndarray, shape (n,), optional
        Non-zero = bad.
    edges : ndarray, shape (n + 1,), optional
        Pixel edges; kept when no repair was needed.
    label : str
        Prefix naming the spectrum in messages (e.g. ``"spectrum 2: "``).

    Returns
    -------
    list of SpectrumArm

    Raises
    ------
    ReaderError
        Empty spectrum, no usable wavelength, mismatched lengths, or wavelengths out of order beyond repair.
    """
    w = np.asarray(wave, dtype=np.float64).ravel()
    f = np.asarray(flux, dtype=np.float64).ravel()
    iv = np.array(ivar, dtype=np.float64).ravel()
    n = w.size
    if n == 0 or f.size == 0:
        raise ReaderError(path, f"{label}empty spectrum: no pixels (zero-length wavelength/flux arrays)")
    if f.size != n or iv.size != n:
        raise ReaderError(path, f"{label}wavelength ({n}), flux ({f.size}) and weight ({iv.size}) lengths differ")
    mk = None if mask is None else np.asarray(mask).ravel()
    if mk is not None and mk.size != n:
        raise ReaderError(path, f"{label}mask has {mk.size} pixels, wavelength {n}")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(w) & (w > 0)
    if not valid.any():
        raise ReaderError(path, f"{label}no finite positive wavelength in its {n} pixels (all NaN/inf/zero)")
    repaired = not valid.all()
    if repaired:
        idx = np.flatnonzero(valid)
        a, b = int(idx[0]), int(idx[-1]) + 1
        inner_bad = ~valid[a:b]
        w, f, iv = w[a:b].copy(), f[a:b], iv[a:b].copy()
        mk = None if mk is None else mk[a:b]
        if inner_bad.any():
            pos = np.arange(b - a)
            w[inner_bad] = np.interp(pos[inner_bad], pos[~inner_bad], w[~inner_bad])
            iv[inner_bad] = 0.0
        log.info("%s: %s%d pixels without a valid wavelength (NaN/inf/<= 0) get no data", path, label,
                 int(n - valid.sum()))
    d = np.diff(w)
    if np.all(d > 0):
        pieces = [np.arange(w.size)]
    elif np.all(d < 0):
        pieces = [np.arange(w.size)[::-1]]
        repaired = True
    else:
        order = np.arange(w.size)
        if (d < 0).sum() > (d > 0).sum():
            order = order[::-1]
        ww = w[order]
        cuts = np.flatnonzero(np.diff(ww) <= 0) + 1
        pieces = np.split(order, cuts)
        repaired = True
        if len(pieces) > MAX_WAVE_PIECES or min(len(p) for p in pieces) < 2:
            k = int(cuts[0])
            raise ReaderError(path, f"{label}wavelengths are not in order: they go back {len(cuts)} times (first at "
                                    f"pixel {int(order[k])}: {ww[k]:.6g} after {ww[k - 1]:.6g} Angstrom); sort the "
                                    f"spectrum or split it into arms")
        log.info("%s: %swavelengths go back %d times; read as %d arms", path, label, len(cuts), len(pieces))
    out = []
    for j, sel in enumerate(pieces):
        e = None
        if edges is not None and not repaired:
            e = np.asarray(edges, dtype=np.float64)
        out.append(SpectrumArm(wave=w[sel], flux=f[sel], ivar=iv[sel], mask=None if mk is None else mk[sel],
                               name=name if len(pieces) == 1 else f"{name}{'.' if name else ''}{j}", edges=e))
    return out


def astropy_table(hdu):
    """An astropy :class:`~astropy.table.Table` of a binary-table HDU with the FITS null markers honoured (TNULLn
    integer cells masked; float NaN kept as NaN) and unit warnings (non-standard TUNIT strings) silenced."""
    from astropy.table import Table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Table.read(hdu, mask_invalid=False)
