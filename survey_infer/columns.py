"""The per-row columns of a survey (identifiers, coordinates, exposure, truth): dtypes, units and descriptions.

One contract for both rooms: the input room writes these columns into the survey store
(:mod:`survey_infer.io.survey_store`, :mod:`survey_infer.io.ingest`) and the output room copies them into the
catalog and its exports (:mod:`survey_infer.catalog`). Units are strings :class:`astropy.units.Unit` parses.

This module imports nothing from the package (domain layer of the contracts in ``pyproject.toml``).
"""
from __future__ import annotations

__all__ = ["ROW_COLUMN_DTYPES", "COLUMN_ATTRS"]

ROW_COLUMN_DTYPES: dict[str, str] = {
    "object_id": "int64",
    "target_id": "int64",
    "ra": "float64",
    "dec": "float64",
    "t_exp": "float32",
    "z_true": "float32",
    "logmstar_true": "float32",
    "logsfr_true": "float32",
    "is_passive": "bool",
    "mag_h": "float32",
    "kind": "uint8",
    "z_catalog": "float32",
}
COLUMN_ATTRS: dict[str, dict] = {
    "object_id": {"description": "unique row identifier (one row = one spectrum)"},
    "target_id": {"description": "target identifier; repeat observations share it"},
    "ra": {"units": "deg", "description": "right ascension (ICRS)"},
    "dec": {"units": "deg", "description": "declination (ICRS)"},
    "t_exp": {"units": "s", "description": "exposure time"},
    "z_true": {"description": "true redshift (simulation)"},
    "logmstar_true": {"units": "dex(solMass)", "description": "true log10 stellar mass, Chabrier IMF (simulation)"},
    "logsfr_true": {"units": "dex(solMass / yr)", "description": "true log10 SFR, Chabrier IMF (simulation)"},
    "is_passive": {"description": "quiescent galaxy (simulation)"},
    "mag_h": {"units": "mag(AB)", "description": "AB magnitude in the H filter (simulation)"},
    "kind": {"description": "0 galaxy in range, 1 star, 2 galaxy below range, 3 galaxy above range"},
    "z_catalog": {"description": "catalog redshift carried from the source files (ingest)"},
}
