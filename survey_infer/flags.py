"""The ``zwarn`` bitmask: defined once, with names, descriptions, and the bad/informational split.

``zwarn`` is int32, 0 = good (DESI style). Bits 16–23 are reserved for users and never set by survey-infer.
The one reliability selection used by the catalog, ``evaluate`` and every figure is
``z_reliable = (zwarn & BAD_MASK) == 0``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ZWarn", "ZWARN_BITS", "BAD_MASK", "INFO_MASK", "USER_MASK", "z_reliable", "describe", "bit_table",
           "flag_counts"]


@dataclass(frozen=True)
class Bit:
    name: str
    bit: int
    bad: bool
    description: str

    @property
    def value(self) -> int:
        return 1 << self.bit


ZWARN_BITS: tuple[Bit, ...] = (
    Bit("NODATA", 0, True, "no valid pixel: all ivar = 0 or masked; estimates are NaN"),
    Bit("BAD_INPUT", 1, True, "input had non-finite or invalid values that were zeroed (more than 5% of pixels)"),
    Bit("LITTLE_COVERAGE", 2, True, "less than 30% of channels usable after sky and bad-pixel masking"),
    Bit("LOW_SNR", 3, False, "median continuum S/N per pixel below 0.5 (informational)"),
    Bit("MULTI_PEAK", 4, False, "the PDF has more than one significant peak (informational)"),
    Bit("BROAD_PDF", 5, False, "the 68% interval is wider than 0.05 in z (informational)"),
    Bit("LOW_CONFIDENCE", 6, True, "probability within +-0.01 of the mode below the calibrated threshold"),
    Bit("MC_UNSTABLE", 7, False, "MC-dropout samples disagree on the mode (epistemic spread above threshold)"),
    Bit("Z_EDGE", 8, False, "the mode lies within 0.01 of the edge of the redshift grid (informational)"),
    Bit("OUT_OF_RANGE", 9, True, "the object looks outside the trained redshift range or unlike training data"),
    Bit("SCREENED", 10, True, "set aside by the calibrated PDF screening rule (see the model's thresholds)"),
)

USER_BITS = tuple(range(16, 24))
USER_MASK = sum(1 << b for b in USER_BITS)


class ZWarn:
    """Attribute access to bit values, e.g. ``ZWarn.NODATA``."""

    pass


for _b in ZWARN_BITS:
    setattr(ZWarn, _b.name, _b.value)

BAD_MASK: int = sum(b.value for b in ZWARN_BITS if b.bad)
INFO_MASK: int = sum(b.value for b in ZWARN_BITS if not b.bad)

assert BAD_MASK & USER_MASK == 0 and INFO_MASK & USER_MASK == 0


def z_reliable(zwarn: np.ndarray) -> np.ndarray:
    """The single reliability selection: ``(zwarn & BAD_MASK) == 0``."""
    return (np.asarray(zwarn).astype(np.int64) & BAD_MASK) == 0


def describe(value: int) -> list[str]:
    """Names of the bits set in ``value`` (user bits as ``USER16``..``USER23``)."""
    names = [b.name for b in ZWARN_BITS if value & b.value]
    names += [f"USER{b}" for b in USER_BITS if value & (1 << b)]
    return names


def bit_table() -> list[dict]:
    """The bit table as records (for attrs, FITS headers and the README)."""
    rows = [{"name": b.name, "bit": b.bit, "value": b.value, "bad": b.bad, "description": b.description}
            for b in ZWARN_BITS]
    rows.append({"name": "USER16..USER23", "bit": "16-23", "value": USER_MASK, "bad": False,
                 "description": "reserved for users; never set by survey-infer"})
    return rows


def flag_counts(zwarn: np.ndarray) -> dict[str, int]:
    """How many objects have each bit set."""
    z = np.asarray(zwarn).astype(np.int64)
    return {b.name: int(((z & b.value) != 0).sum()) for b in ZWARN_BITS}
