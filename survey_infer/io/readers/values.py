"""Metadata values read from headers, tables and HDF5 attributes: strings in any stored form, numbers from
the first header that has them, and integer target ids (lossless int64 or refused).
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence

import numpy as np

from ...errors import ReaderError

__all__ = ["ID_MAX", "ID_MIN", "as_int_id", "attr_str", "header_float", "header_str", "stable_id"]


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
    """First non-empty value among ``keys`` in the given headers (dicts; None entries skipped), as a stripped
    string; ``""`` if none."""
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

