"""Names, dtypes, units and descriptions of the catalog's variables (DESIGN §7): the contract, in one place.

Units are strings :class:`astropy.units.Unit` parses, spelled one way everywhere (survey store, catalog, FITS
``TUNITn``, Parquet): FITS-standard strings where one exists (``deg``, ``s``); log quantities as astropy's function
units ``dex(solMass)`` and ``dex(solMass / yr)``; their 1-sigma errors (differences of logs) in ``dex``;
dimensionless quantities have no unit.
"""
from __future__ import annotations

CATALOG_SCHEMA = 1

# name -> (dtype, units or "", description)
PER_OBJECT: dict[str, tuple[str, str, str]] = {
    "object_id": ("int64", "", "unique row identifier, passed through from the survey store"),
    "ra": ("float64", "deg", "right ascension (ICRS), passed through"),
    "dec": ("float64", "deg", "declination (ICRS), passed through"),
    "z": ("float32", "", "best redshift: mode of the MC-averaged PDF refined below the bin width"),
    "z_mean": ("float32", "", "mean redshift of the PDF"),
    "z_err": ("float32", "", "rms deviation of the redshift PDF about z (the mode), the spread within bins included "
                             "(dz/sqrt(12) for a PDF in one bin); not Redrock's ZERR (chi2 curvature)"),
    "z_lo68": ("float32", "", "lower edge of the narrowest contiguous interval holding the mode and >=68% of the PDF"),
    "z_hi68": ("float32", "", "upper edge of the 68% interval"),
    "z_lo95": ("float32", "", "lower edge of the narrowest contiguous interval holding the mode and >=95% of the PDF"),
    "z_hi95": ("float32", "", "upper edge of the 95% interval"),
    "z_mc_std": ("float32", "", "epistemic spread: standard deviation of the per-MC-sample PDF means"),
    "p_outside": ("float32", "", "probability that the object is outside the trained redshift range / not a galaxy"),
    "logmstar": ("float32", "dex(solMass)", "log10 stellar mass in solar masses (Chabrier IMF)"),
    "logmstar_err": ("float32", "dex", "total 1-sigma error of logmstar"),
    "logmstar_err_mc": ("float32", "dex", "epistemic (MC dropout) part of logmstar_err"),
    "logsfr": ("float32", "dex(solMass / yr)", "log10 star-formation rate in solar masses per year (Chabrier IMF)"),
    "logsfr_err": ("float32", "dex", "total 1-sigma error of logsfr"),
    "logsfr_err_mc": ("float32", "dex", "epistemic (MC dropout) part of logsfr_err"),
    "pz_peak": ("float32", "", "height of the highest PDF bin (probability per bin)"),
    "pz_conf": ("float32", "", "probability within +-0.01 of the mode"),
    "pz_entropy": ("float32", "", "Shannon entropy of the PDF in nats"),
    "pz_npeaks": ("int16", "", "number of significant peaks in the PDF"),
    "quality": ("float32", "", "reliability score in 0-1 used by the screening rule"),
    "z_reliable": ("bool", "", "(zwarn & BAD_MASK) == 0: the one reliability selection"),
    "zwarn": ("int32", "", "warning bitmask, 0 = good; bits 0-11 at Redrock's (DESI ZWARN) positions; see "
                           "flag_masks/flag_meanings and the catalog's zwarn_bits attribute"),
    "snr": ("float32", "", "median continuum S/N per pixel over usable channels"),
    "masked_fraction": ("float32", "", "fraction of channels masked (sky + bad pixels + no data)"),
    "run_id": ("int32", "", "which run (see attrs['runs']) wrote this row"),
}

# truth / passthrough columns copied when present in the input
PASSTHROUGH = ("target_id", "t_exp", "z_true", "logmstar_true", "logsfr_true", "is_passive", "mag_h", "kind",
               "z_catalog")

PZ_NAME = "pz"
PZ_DESCRIPTION = "MC-averaged redshift probability per bin (sums to 1 over zbin)"
ZGRID_NAME = "z_grid"


def fill_value(dtype: str):
    """The fill value of rows not (yet) computed.

    Parameters
    ----------
    dtype : str
        A numpy dtype name (``"float32"``, ``"int16"``, ``"uint8"``, ``"bool"``...).

    Returns
    -------
    float, int or bool
        NaN for floats, -1 for signed integers, the maximum for unsigned integers (e.g. 255 for uint8), False
        for bool.
    """
    import numpy as np

    if dtype.startswith("float"):
        return float("nan")
    if dtype == "bool":
        return False
    if dtype.startswith("uint"):
        return int(np.iinfo(np.dtype(dtype)).max)
    return -1
