"""The tables docs/catalog.md embeds, generated from the code: the zwarn bit table and the column table.

``python -m survey_infer.catalog.export --markdown zwarn`` (or ``columns``) prints them; a test keeps the
document in sync.
"""
from __future__ import annotations

import json
from pathlib import Path

from ... import flags
from ..schema import PASSTHROUGH, PER_OBJECT, PZ_DESCRIPTION, PZ_NAME, ZGRID_NAME
from .columns import fits_unit

__all__ = ["zwarn_markdown", "columns_markdown"]


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
    thresholds : dict, optional
        Screening thresholds stated in the descriptions (default: the shipped default model's).

    Returns
    -------
    str
        A Markdown table (bit, value, name with aliases, bad/info/never set/user, meaning) and a line with the
        masks, ending in a newline.
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
    """The catalog column table as Markdown (embedded in docs/catalog.md).

    Returns
    -------
    str
        One row per schema column, passthrough column, ``pz`` and ``z_grid``: dtype, unit, FITS ``TUNIT`` and
        description; ends in a newline.
    """
    from ...columns import COLUMN_ATTRS, ROW_COLUMN_DTYPES

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
