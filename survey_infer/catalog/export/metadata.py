"""What an export says about its catalog: provenance keywords, the redshift grid and the zwarn bit table.

Written as ``(keyword, value, comment)`` triples, which the FITS writer turns into header cards; the Parquet
writer stores the same facts as JSON in its schema metadata (:func:`to_json`).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json

import numpy as np

from ... import __version__
from ... import flags
from ...provenance import dependency_versions

__all__ = ["bit_table_of", "zwarn_header_cards", "provenance_cards", "grid_keywords", "to_json"]

Card = tuple[str, object, str]

_BIT_KEYS = {"name", "bit", "value", "bad", "description"}

# fingerprint key -> (FITS keyword, comment); two spellings of a key share a keyword (the first one present wins)
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


def to_json(obj) -> str:
    """Compact JSON of ``obj`` (header values, Parquet metadata).

    Parameters
    ----------
    obj : object
        JSON-like; numpy scalars and arrays become Python values, anything else unknown its ``str``.

    Returns
    -------
    str
        Sorted keys, no spaces.
    """
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=default)


def _scalar(v):
    """A header value: ints, floats, bools and strings as they are, anything else as JSON."""
    return v if isinstance(v, (bool, int, float, str)) else to_json(v)


def bit_table_of(attrs: dict | None = None) -> list[dict]:
    """The zwarn bit table of a catalog.

    Parameters
    ----------
    attrs : dict, optional
        Catalog attributes.

    Returns
    -------
    list of dict
        ``attrs["zwarn_bits"]`` when it is well formed (an old catalog keeps the meaning its bits had when it
        was made), else :func:`survey_infer.flags.bit_table`.
    """
    table = (attrs or {}).get("zwarn_bits")
    if isinstance(table, list) and table and all(isinstance(r, dict) and _BIT_KEYS <= set(r) for r in table):
        return table
    return flags.bit_table()


def zwarn_header_cards(table: list[dict] | None = None) -> list[Card]:
    """The zwarn bit table as FITS header cards.

    Parameters
    ----------
    table : list of dict, optional
        A bit table as :func:`survey_infer.flags.bit_table` returns (default: that one).

    Returns
    -------
    list of (str, object, str)
        ``(keyword, value, comment)``: the masks ``ZWBADMSK``/``ZWINFMSK``/``ZWUSRMSK``, ``ZWBITnn = 'NAME'``
        with comment ``"bad|info: description"``, and ``COMMENT`` cards with the full descriptions.
    """
    table = table if table is not None else flags.bit_table()
    table = [r for r in table if not r.get("alias_of")]  # other names of a bit: in the docs, not the header
    single = [r for r in table if isinstance(r["bit"], int)]
    bad = sum(int(r["value"]) for r in single if r["bad"] and r.get("used", True))
    info = sum(int(r["value"]) for r in single if not r["bad"] and r.get("used", True))
    cards: list[Card] = [
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
    return cards + [("COMMENT", c, "") for c in comments]


def grid_keywords(zg: np.ndarray | None) -> list[Card]:
    """Header cards describing the redshift grid.

    Parameters
    ----------
    zg : ndarray of float, shape (nzbin,), or None
        Bin centres (redshift, dimensionless).

    Returns
    -------
    list of (str, object, str)
        ``NZBIN``, ``ZMIN``, ``ZMAX``, ``DZ`` (the width of a uniform grid, else the median width, with
        ``DLN1PZ`` for a grid uniform in ln(1+z)) and ``ZGRIDHSH`` (sha256 prefix of the float64 LE grid);
        empty for no grid.
    """
    if zg is None or zg.size == 0:
        return []
    cards: list[Card] = [
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


def _last_provenance(attrs: dict) -> dict:
    prov = attrs.get("provenance")
    if isinstance(prov, list):
        prov = prov[-1] if prov else {}
    return prov if isinstance(prov, dict) else {}


def provenance_cards(attrs: dict) -> list[Card]:
    """Provenance keywords from catalog attributes.

    Parameters
    ----------
    attrs : dict
        Catalog attributes (JSON-like).

    Returns
    -------
    list of (str, object, str)
        Software that made and exported the catalog (``ORIGIN``, ``SWVERS``, ``EXPVERS``, ``DATE`` in UTC,
        ``CATDATE``), ``MODELSHA``, ``MC_T``, ``SEED``, the numerics fingerprint (``FPHASH``, one keyword per
        known field, ``FINGERPR`` JSON), dependency versions (``V_<NAME>``), the run records (``NRUNS``,
        ``RUNSJSON``), ``PROVJSON`` and ``INSTORE``. Long strings are written with the FITS long-string
        (CONTINUE) convention by the FITS writer.
    """
    prov = _last_provenance(attrs)
    fp = attrs.get("fingerprint") if isinstance(attrs.get("fingerprint"), dict) else {}
    cards: list[Card] = [
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
        cards.append(("FPHASH", hashlib.sha256(to_json(fp).encode()).hexdigest()[:16],
                      "sha256 prefix of the numerics fingerprint JSON"))
        seen = set()
        for k, (kw, comment) in _FP_KEYWORDS.items():
            if k in fp and kw not in seen:
                cards.append((kw, _scalar(fp[k]), comment))
                seen.add(kw)
        cards.append(("FINGERPR", to_json(fp), "numerics fingerprint (JSON)"))
    deps = dict(prov.get("dependencies") or dependency_versions())
    if prov.get("python"):
        deps.setdefault("python", prov["python"])
    for name, ver in deps.items():
        kw = "V_" + "".join(ch for ch in name.upper() if ch.isalnum())[:6]
        cards.append((kw, str(ver), f"{name} version (catalog run)"))
    runs = attrs.get("runs")
    if isinstance(runs, list):
        cards.append(("NRUNS", len(runs), "runs that wrote rows (see run_id, RUNSJSON)"))
        cards.append(("RUNSJSON", to_json(runs), "run records (JSON)"))
    if prov:
        cards.append(("PROVJSON", to_json(prov), "provenance of the catalog (JSON)"))
    if attrs.get("input_store"):
        cards.append(("INSTORE", str(attrs["input_store"]), "input survey store"))
    return cards
