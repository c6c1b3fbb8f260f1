"""Content sniffing: what a file is (FITS, HDF5, compressed FITS, unknown) and what it holds (HDU names and
headers, HDF5 dataset paths), read once per file and cached; readers decide from this whether a file is theirs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ...errors import ReaderError
from .compression import compression_of, decompressed_bytes
from .fitsfile import scan_fits

__all__ = ["FITS_MAGIC", "HDF5_MAGIC", "FileProbe", "probe_file"]

FITS_MAGIC = b"SIMPLE  ="
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


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
        For FITS: the same as objects, for :func:`~.fitsfile.fits_table` / :func:`~.fitsfile.fits_image`.
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
        """Extension names of the FITS HDUs, in file order (``""`` for unnamed ones)."""
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
        info = scan_fits(path)
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

