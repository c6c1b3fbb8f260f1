#!/usr/bin/env python
"""Digest of a catalog store: one sha256 per data variable, one of the attributes, one total.

Used to show that a catalog is bit-identical before and after a change of code (issue 14's refactor): run the
same ``survey-infer run`` with the old and the new code and compare the totals.

What is hashed
--------------
* every array of the Zarr group (data variables and coordinates, e.g. ``z``, ``pz``, ``z_grid``): its name, dtype,
  dimension names, shape, its attributes (minus run-time fields, see below) and its stored values, read raw
  (no CF decoding, so fill values are hashed as stored). For floating-point arrays the NaN positions are hashed
  as a bit mask and the values with NaN replaced by 0 (every NaN counts the same whatever its payload; ``-0.0``
  and ``0.0`` still differ, as they do in the bytes).
* the group attributes as canonical JSON (sorted keys), with run-time fields left out at any depth: timestamps
  (``created``, ``started``, ``started_unix``, ``finished``, ``acquired``, ``heartbeat``), durations (``seconds``),
  run ids (``run_id``), host names (``host``) and the paths/commands of the machine the run was made on
  (``command``, ``model_dir``). ``--ignore KEY`` adds keys, ``--keep KEY`` hashes a default one after all.
* not hashed: the run's bookkeeping beside the data (``_markers/``, ``_lock``, ``_lock.json``).

The total is the sha256 of the sorted ``name digest`` lines (variables and ``@attrs``).

Usage::

    python tools/catalog_digest.py CATALOG.zarr                 # one line per variable, @attrs, TOTAL
    python tools/catalog_digest.py BEFORE.zarr AFTER.zarr       # both, and which entries differ (exit 1 if any)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import zarr

RUNTIME_KEYS = frozenset({
    "created", "started", "started_unix", "finished", "acquired", "heartbeat",  # timestamps
    "seconds",  # durations
    "run_id",  # run ids
    "host",  # host names
    "command", "model_dir",  # paths of the machine/checkout the run was made on
})


def strip_runtime(obj: Any, ignore: frozenset[str]) -> Any:
    """Return ``obj`` (JSON-like: dicts, lists, scalars) without the dict keys in ``ignore``, at any depth.

    Parameters
    ----------
    obj : Any
        Attribute value as read from Zarr (dict, list, str, number, bool or None).
    ignore : frozenset of str
        Keys to drop wherever they occur.

    Returns
    -------
    Any
        A copy with those keys left out; other values unchanged.
    """
    if isinstance(obj, dict):
        return {k: strip_runtime(v, ignore) for k, v in obj.items() if k not in ignore}
    if isinstance(obj, (list, tuple)):
        return [strip_runtime(v, ignore) for v in obj]
    return obj


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, allow_nan=True).encode()


def array_digest(name: str, arr: zarr.Array, ignore: frozenset[str]) -> str:
    """sha256 of one stored array: name, dtype, dimension names, shape, attributes and raw values.

    Parameters
    ----------
    name : str
        Array name inside the group.
    arr : zarr.Array
        The array (read whole, raw: no CF decoding).
    ignore : frozenset of str
        Attribute keys left out (run-time fields).

    Returns
    -------
    str
        Hex sha256. NaN positions are hashed as a bit mask, the values with NaN replaced by 0.
    """
    values = np.ascontiguousarray(arr[...])
    h = hashlib.sha256()
    dims = list(getattr(arr.metadata, "dimension_names", None) or arr.attrs.get("_ARRAY_DIMENSIONS", []) or [])
    h.update(_canonical_json({"name": name, "dtype": values.dtype.str, "dims": dims, "shape": list(values.shape),
                              "attrs": strip_runtime(dict(arr.attrs), ignore)}))
    if np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.complexfloating):
        nan = np.isnan(values)
        h.update(np.packbits(nan.ravel()).tobytes())
        values = np.where(nan, np.zeros((), values.dtype), values)
    if values.dtype.kind in "OUS":  # strings: hash their text, not object pointers
        h.update(_canonical_json(values.astype(str).tolist()))
    else:
        h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()


def catalog_digest(path: str | Path, ignore: frozenset[str] = RUNTIME_KEYS) -> dict[str, str]:
    """Digest of every array of a catalog store, of its attributes, and a total.

    Parameters
    ----------
    path : str or Path
        Catalog store (a Zarr group directory, e.g. the output of ``survey-infer run``).
    ignore : frozenset of str, optional
        Attribute keys left out at any depth (default :data:`RUNTIME_KEYS`).

    Returns
    -------
    dict of str to str
        ``{array name: sha256, ..., "@attrs": sha256, "TOTAL": sha256}``; arrays whose name starts with ``_``
        (run bookkeeping) are left out.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such catalog store")
    group = zarr.open_group(str(path), mode="r")
    out: dict[str, str] = {}
    with warnings.catch_warnings():  # the run's bookkeeping files (_lock.json) are not Zarr nodes: expected
        warnings.simplefilter("ignore")
        arrays = sorted(group.arrays(), key=lambda kv: kv[0])
    for name, arr in arrays:
        if not name.startswith("_"):
            out[name] = array_digest(name, arr, ignore)
    out["@attrs"] = hashlib.sha256(_canonical_json(strip_runtime(dict(group.attrs), ignore))).hexdigest()
    lines = "".join(f"{k} {v}\n" for k, v in sorted(out.items()))
    out["TOTAL"] = hashlib.sha256(lines.encode()).hexdigest()
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: print the digests of one catalog, or of two side by side (exit 1 when they differ)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("catalogs", nargs="+", metavar="CATALOG", help="one catalog store, or two to compare")
    ap.add_argument("--ignore", action="append", default=[], metavar="KEY", help="also leave out this attr key")
    ap.add_argument("--keep", action="append", default=[], metavar="KEY", help="hash this run-time key after all")
    args = ap.parse_args(argv)
    if len(args.catalogs) > 2:
        ap.error("give one catalog, or two to compare")
    ignore = (RUNTIME_KEYS | set(args.ignore)) - set(args.keep)
    try:
        digests = [catalog_digest(p, frozenset(ignore)) for p in args.catalogs]
    except FileNotFoundError as exc:
        print(f"catalog_digest: error: {exc}", file=sys.stderr)
        return 2
    if len(digests) == 1:
        for k, v in digests[0].items():
            print(f"{k:18s} {v}")
        return 0
    a, b = digests
    differ = []
    for k in sorted(set(a) | set(b), key=lambda k: (k == "TOTAL", k)):
        same = a.get(k) == b.get(k)
        if not same:
            differ.append(k)
        print(f"{k:18s} {a.get(k, '-'):64s} {b.get(k, '-'):64s} {'same' if same else 'DIFFERS'}")
    print("identical" if not differ else f"differ: {', '.join(d for d in differ if d != 'TOTAL')}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
