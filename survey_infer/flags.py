"""The ``zwarn`` bitmask: defined once, with names, descriptions, and the bad/informational split.

``zwarn`` is int32, 0 = good (DESI style). The layout follows Redrock's ``ZWarningMask``
(``redrock/zwarning.py``, the ``ZWARN`` column of DESI redshift catalogs), so that a DESI user's selection means
the same thing here:

* bits 0–11 are Redrock's, at Redrock's positions and with Redrock's names. survey-infer sets those whose
  meaning it shares — ``LITTLE_COVERAGE`` (1), ``Z_FITLIMIT`` (5, the mode at the edge of the redshift grid),
  ``NODATA`` (9) and ``POORDATA`` (11) — and never sets the others (``SKY``, ``SMALL_DELTA_CHI2``,
  ``NEGATIVE_MODEL``, ``MANY_OUTLIERS``, ``NEGATIVE_EMISSION``, ``UNPLUGGED``, ``BAD_TARGET``, ``BAD_MINFIT``:
  a template fit's diagnostics, or fibre/targeting information the input does not carry);
* bits 12–15 are left free (room for Redrock's future bits);
* bits 16–23 are the users' (Redrock's ``RESERVED16``–``RESERVED23``, which Redrock never sets and leaves to
  post-fit "afterburners"); survey-infer never sets them either;
* bits 24–30 are survey-infer's own (PDF statistics and the calibrated screening rule); bit 31 (the sign) is
  never used.

The one reliability selection used by the catalog, ``evaluate`` and every figure is
``z_reliable = (zwarn & BAD_MASK) == 0``.

Descriptions are templates filled with the thresholds the model applies (:func:`bit_table` with the model's
``calibration["thresholds"]``), so a catalog's ``zwarn_bits`` attribute states the numbers that set its bits.

Catalogs written with the earlier layout (NODATA at bit 0, …; ``screening_version`` sc-1/sc-2) have other
meanings at the same bits; :func:`layout_mismatch` detects them so that a run refuses to add rows to one.
"""
from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

__all__ = ["Bit", "ZWarn", "ZWARN_BITS", "BAD_MASK", "INFO_MASK", "USER_MASK", "USER_BITS", "REDROCK_BITS",
           "NBITS", "LAYOUT", "z_reliable", "describe", "bit_table", "flag_counts", "cf_flag_attrs",
           "layout_mismatch", "DEFAULT_THRESHOLDS", "MASK_BAD_SOURCE", "MASK_INVALID_INPUT"]

LAYOUT = "redrock-1"  # recorded in the catalog attrs (``zwarn_layout``); change with any bit move

# bit values of the survey store's ``mask`` column (input flags; the store is written by the input room, read by
# the science layer: both import them from here)
#: ``mask`` bit value: channel inside the source's range rejected for bad (masked or invalid) source pixels
MASK_BAD_SOURCE = 1
#: ``mask`` bit value: the input had non-finite flux or NaN/inf/negative ivar in this channel (zeroed)
MASK_INVALID_INPUT = 2

DEFAULT_THRESHOLDS = {
    "quality": 0.5,  # SCREENED below this (calibrated)
    "p_outside": 0.5,  # OUT_OF_RANGE above this
    "low_confidence": 0.2,  # LOW_CONFIDENCE when pz_conf below
    "mc_unstable": 0.02,  # MC_UNSTABLE when z_mc_std above
    "broad_pdf": 0.05,  # BROAD_PDF when the 68% interval is wider
    "low_snr": 0.5,  # LOW_SNR when median continuum S/N per pixel below
    "little_coverage": 0.3,  # LITTLE_COVERAGE when usable fraction below
    "bad_input": 0.05,  # POORDATA when the fraction of invalid input pixels is above
    "peak_mass": 0.05,  # a secondary peak counts when it holds at least this mass (±3 bins)
    "conf_window": 0.01,  # pz_conf window half-width in z
    "z_edge": 0.01,  # Z_FITLIMIT when the mode is this close to the edge of the redshift grid
}  # the thresholds of the flag bits (screening applies them; a model's calibrated ones override these)


@dataclass(frozen=True)
class Bit:
    """One ``zwarn`` bit.

    Attributes
    ----------
    name : Redrock's name for bits 0–11, survey-infer's for its own bits.
    bit : position (value ``1 << bit``).
    bad : whether the bit is in :data:`BAD_MASK` (makes ``z_reliable`` False).
    description : text; ``{name}`` fields are thresholds of :data:`DEFAULT_THRESHOLDS`
        (or the model's), filled by :func:`bit_table`.
    used : False for Redrock bits survey-infer never sets.
    aliases : other names of the bit (names it had before the Redrock layout); :class:`ZWarn` and
        :func:`bit_table` know them too.
    """

    name: str
    bit: int
    bad: bool
    description: str
    used: bool = True
    aliases: tuple[str, ...] = ()

    @property
    def value(self) -> int:
        return 1 << self.bit

    def describe(self, thresholds: dict | None = None) -> str:
        """The description with the thresholds filled in (the defaults for any not given)."""
        th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
        fields = [f for _, f, _, _ in string.Formatter().parse(self.description) if f]
        return self.description.format(**{f: _fmt(th[f.split(":")[0]]) for f in fields}) if fields \
            else self.description


def _fmt(v) -> str:
    return f"{float(v):.4g}"


_NEVER = "never set by survey-infer"
ZWARN_BITS: tuple[Bit, ...] = (
    # Redrock's bits (redrock/zwarning.py, ZWarningMask), same positions and names
    Bit("SKY", 0, True, f"Redrock: sky fibre; {_NEVER} (the input has no fibre type)", used=False),
    Bit("LITTLE_COVERAGE", 1, True,
        "too little wavelength coverage: less than {little_coverage} of the channels usable after sky and "
        "bad-pixel masking (Redrock: too little wavelength coverage)"),
    Bit("SMALL_DELTA_CHI2", 2, True,
        f"Redrock: chi2 of the best fit too close to the second best; {_NEVER} (no template fit; the PDF's "
        "analogues are LOW_CONFIDENCE and SCREENED)", used=False),
    Bit("NEGATIVE_MODEL", 3, True, f"Redrock: synthetic spectrum is negative; {_NEVER}", used=False),
    Bit("MANY_OUTLIERS", 4, True, f"Redrock: too many 5-sigma outliers from the best model; {_NEVER}", used=False),
    Bit("Z_FITLIMIT", 5, False,
        "the mode lies within {z_edge} of the edge of the redshift grid (Redrock: chi2 minimum at the edge "
        "of the fitted range); informational here"),
    Bit("NEGATIVE_EMISSION", 6, True, f"Redrock: a QSO line has negative emission; {_NEVER}", used=False),
    Bit("UNPLUGGED", 7, True, f"Redrock: fibre unplugged or broken; {_NEVER}", used=False),
    Bit("BAD_TARGET", 8, True, f"Redrock: catastrophically bad targeting data; {_NEVER}", used=False),
    Bit("NODATA", 9, True, "no valid pixel: all ivar = 0 or masked; estimates are NaN (Redrock: no data)"),
    Bit("BAD_MINFIT", 10, True, f"Redrock: bad parabola fit to the chi2 minimum; {_NEVER}", used=False),
    Bit("POORDATA", 11, True,
        "poor input: more than {bad_input} of the pixels had non-finite flux/ivar or negative ivar and were "
        "zeroed (Redrock: poor input data quality)", aliases=("BAD_INPUT",)),
    # survey-infer's own bits
    Bit("LOW_SNR", 24, False, "median continuum S/N per pixel below {low_snr} (informational)"),
    Bit("MULTI_PEAK", 25, False,
        "the PDF has more than one peak holding at least {peak_mass} of the probability within +-3 bins "
        "(informational)"),
    Bit("BROAD_PDF", 26, False, "the 68% interval is wider than {broad_pdf} in z (informational)"),
    Bit("LOW_CONFIDENCE", 27, True, "probability within +-{conf_window} of the mode (pz_conf) below "
        "{low_confidence}"),
    Bit("MC_UNSTABLE", 28, False,
        "MC-dropout samples disagree: z_mc_std above {mc_unstable} (informational)"),
    Bit("OUT_OF_RANGE", 29, True,
        "p_outside above {p_outside}: the object looks outside the trained redshift range or unlike training data"),
    Bit("SCREENED", 30, True,
        "set aside by the calibrated screening rule: quality = pz_conf * (1 - p_outside) below {quality}"),
)

REDROCK_BITS = tuple(range(0, 12))
USER_BITS = tuple(range(16, 24))
USER_MASK = sum(1 << b for b in USER_BITS)
NBITS = 31  # bits 0..30 (int32 without the sign bit)


class ZWarn:
    """Attribute access to bit values, e.g. ``ZWarn.NODATA`` (= 512, Redrock's value)."""

    pass


for _b in ZWARN_BITS:
    for _name in (_b.name, *_b.aliases):
        setattr(ZWarn, _name, _b.value)

BAD_MASK: int = sum(b.value for b in ZWARN_BITS if b.bad and b.used)
INFO_MASK: int = sum(b.value for b in ZWARN_BITS if not b.bad and b.used)

assert BAD_MASK & USER_MASK == 0 and INFO_MASK & USER_MASK == 0 and BAD_MASK & INFO_MASK == 0
assert len({b.bit for b in ZWARN_BITS}) == len(ZWARN_BITS) and max(b.bit for b in ZWARN_BITS) < NBITS


def z_reliable(zwarn: np.ndarray) -> np.ndarray:
    """The single reliability selection.

    Parameters
    ----------
    zwarn : (n,) integer array.

    Returns
    -------
    (n,) bool, ``(zwarn & BAD_MASK) == 0``.
    """
    return (np.asarray(zwarn).astype(np.int64) & BAD_MASK) == 0


def describe(value: int) -> list[str]:
    """Names of the bits set in ``value`` (user bits as ``USER16``..``USER23``, others as ``BITnn``)."""
    value = int(value)
    known = {b.bit: b.name for b in ZWARN_BITS}
    known.update({b: f"USER{b}" for b in USER_BITS})
    return [known.get(i, f"BIT{i}") for i in range(32) if value & (1 << i)]


def bit_table(thresholds: dict | None = None, *, unused: bool = True) -> list[dict]:
    """The bit table as records (for catalog attrs, FITS headers and docs).

    Parameters
    ----------
    thresholds : the model's ``calibration["thresholds"]``; descriptions state these values (defaults from
        :data:`DEFAULT_THRESHOLDS` for any not given).
    unused : include Redrock's bits that survey-infer never sets.

    Returns
    -------
    list of dict with ``name``, ``bit``, ``value``, ``bad``, ``used``, ``description``, one per bit; then one
    per alias (with ``alias_of``: the bit's name), so that a look-up by an older name still finds its bit; the
    last record covers the user bits (``bit`` is the string ``"16-23"``).
    """
    rows = [{"name": b.name, "bit": b.bit, "value": b.value, "bad": b.bad, "used": b.used,
             "description": b.describe(thresholds)} for b in ZWARN_BITS if unused or b.used]
    rows += [{"name": a, "bit": b.bit, "value": b.value, "bad": b.bad, "used": b.used, "alias_of": b.name,
              "description": f"another name of {b.name}"} for b in ZWARN_BITS for a in b.aliases]
    rows.append({"name": "USER16..USER23", "bit": "16-23", "value": USER_MASK, "bad": False, "used": False,
                 "description": "reserved for users (Redrock's RESERVED16..23); never set by survey-infer"})
    return rows


def flag_counts(zwarn: np.ndarray) -> dict[str, int]:
    """How many objects have each bit survey-infer sets (``{name: count}``)."""
    z = np.asarray(zwarn).astype(np.int64)
    return {b.name: int(((z & b.value) != 0).sum()) for b in ZWARN_BITS if b.used}


def cf_flag_attrs() -> dict:
    """CF-convention attributes of the ``zwarn`` variable (CF 1.11 §3.5, "Flags").

    Returns
    -------
    dict with ``flag_masks`` (list of int, one per bit survey-infer sets) and ``flag_meanings`` (the matching
    names, blank separated), as CF readers (e.g. ``cf_xarray``) decode them.
    """
    used = [b for b in ZWARN_BITS if b.used]
    return {"flag_masks": [int(b.value) for b in used], "flag_meanings": " ".join(b.name for b in used)}


def layout_mismatch(attrs: dict) -> str | None:
    """Why a catalog's ``zwarn`` bits mean something else than this version's, or None when they agree.

    Parameters
    ----------
    attrs : the catalog's attributes (``zwarn_bits``: the table it was made with).

    Returns
    -------
    A one-line reason naming the first bit whose meaning differs, or None.
    """
    table = attrs.get("zwarn_bits")
    if not isinstance(table, list):
        return None
    old = {r.get("bit"): r.get("name") for r in table
           if isinstance(r, dict) and isinstance(r.get("bit"), int) and not r.get("alias_of")}
    new = {b.bit: b.name for b in ZWARN_BITS}
    for bit in sorted(set(old) | set(new)):
        if old.get(bit) is not None and old.get(bit) != new.get(bit):
            return (f"zwarn bit {bit} is {old[bit]} in the catalog but {new.get(bit) or 'unused'} in this version "
                    f"(layout {LAYOUT}: Redrock's positions)")
    return None
