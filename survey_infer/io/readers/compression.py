"""Compressed inputs. Archives serve FITS files compressed (``.fits.gz``, ``.fits.bz2``, ``.fits.xz``,
single-member ``.zip``); they are decompressed in memory with the standard library (spectra are small) and the
content is then read like a plain file. The compression is recognised by the stream's signature, never by the
file name, and a corrupt or truncated stream is refused here (astropy, handed a truncated ``.gz``, returns the
HDUs it could read without a word).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from ...errors import ReaderError

__all__ = ["compression_of", "decompressed_bytes", "is_compressed"]

_COMPRESSION_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"PK\x03\x04", "zip"),
                      (b"\x1f\x9d", "compress"))


def compression_of(head: bytes) -> str:
    """The compression a file's first bytes announce.

    Parameters
    ----------
    head : bytes
        The file's first bytes (8 are enough).

    Returns
    -------
    str
        ``"gzip"``, ``"bzip2"``, ``"xz"``, ``"zip"``, ``"compress"``, or ``""`` for an uncompressed file.
    """
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
    """The whole decompressed content of a compressed file (cached per path, size and mtime for the last few).

    Raises
    ------
    ReaderError
        For a corrupt or truncated stream, a zip archive holding more than one file, or Unix compress (.Z)
        without the optional ``uncompresspy`` package.
    """
    p = Path(path)
    st = p.stat()
    return _decompressed_cached(str(p), st.st_size, st.st_mtime_ns)



def is_compressed(path: str | os.PathLike) -> bool:
    """True when the file's first bytes are a compression signature (see :func:`compression_of`)."""
    with open(path, "rb") as fh:
        return bool(compression_of(fh.read(8)))
