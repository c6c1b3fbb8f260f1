"""The reader interface, :class:`SpectrumReader`, and the toolkit a reader is written with.

The toolkit lives in one module per job and is re-exported here (``survey_infer.io.readers.base.<name>`` is
public and stays so): the spectrum model (:mod:`.spectrum`: :class:`Spectrum`, :class:`SpectrumArm`,
:func:`build_arms`), content sniffing (:mod:`.probe`), FITS through astropy (:mod:`.fitsfile`), compressed
inputs (:mod:`.compression`), units (:mod:`.units`) and metadata values (:mod:`.values`).

Every reader turns one file (or, for formats that split an object over several files, one group of files) into a
list of :class:`Spectrum` records in the package's conventions:

* wavelengths in **vacuum Angstrom** (air wavelengths are converted with :func:`survey_infer.io.resample.air_to_vacuum`);
* flux density in **1e-17 erg s^-1 cm^-2 Angstrom^-1** (f_lambda; f_nu inputs such as microJansky are converted);
* inverse variance in the square of that unit's inverse (0 = no data);
* an optional integer mask per pixel, non-zero = bad (such pixels are excluded when resampling).

Readers never resample: that is :mod:`survey_infer.io.resample`'s job, done by ingest.

Data-safety note
----------------
Readers raise :class:`ReaderError` naming the file and the reason for anything they cannot interpret (unknown
format, truncated or corrupt file, a FITS file with no spectrum, units they cannot convert). They do not guess
silently: where a unit is absent the documented default is used and a warning is logged.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from ...errors import ReaderError
from .compression import compression_of, decompressed_bytes
from .fitsfile import (
    FitsHDUInfo,
    astropy_table,
    fits_image,
    fits_table,
    fits_tables,
    image_data,
    open_fits,
    scan_fits,
    table_column_keyword,
    table_units,
)
from .probe import FileProbe, probe_file
from .spectrum import (
    MAX_WAVE_PIECES,
    Spectrum,
    SpectrumArm,
    build_arms,
    centres_to_edges,
    ivar_from_error,
    log,
)
from .units import FLUX_UNIT_STR, flux_factor, is_log_unit, parse_unit, wave_to_angstrom
from .values import (
    ID_MAX,
    ID_MIN,
    as_int_id,
    attr_str,
    header_float,
    header_str,
    stable_id,
)

__all__ = [
    "FLUX_UNIT_STR",
    "ID_MAX",
    "ID_MIN",
    "MAX_WAVE_PIECES",
    "FileProbe",
    "FitsHDUInfo",
    "ReaderError",
    "Spectrum",
    "SpectrumArm",
    "SpectrumReader",
    "as_int_id",
    "astropy_table",
    "attr_str",
    "build_arms",
    "centres_to_edges",
    "compression_of",
    "decompressed_bytes",
    "fits_image",
    "fits_table",
    "fits_tables",
    "flux_factor",
    "header_float",
    "header_str",
    "image_data",
    "is_log_unit",
    "ivar_from_error",
    "log",
    "open_fits",
    "parse_unit",
    "probe_file",
    "scan_fits",
    "stable_id",
    "table_column_keyword",
    "table_units",
    "wave_to_angstrom",
]


class SpectrumReader(ABC):
    """A reader for one file format.

    Subclasses set :attr:`name` (short format label stored in the ingest record) and :attr:`priority` (readers
    are tried in increasing order: specific formats before the generic table reader) and implement
    :meth:`can_read_probe` (content sniffing, cheap: headers only) and :meth:`read`.

    Formats that spread one object over several files (moons1d: one file per arm) also implement
    :meth:`group_key` and :meth:`read_group`.
    """

    name: str = "base"
    priority: int = 100
    #: True when one object spans several files (see :meth:`group_key`).
    grouped: bool = False

    def can_read(self, path: str | os.PathLike) -> bool:
        """True when the file's *content* (not only its name) is this reader's format."""
        try:
            return self.can_read_probe(probe_file(path))
        except ReaderError:
            return False

    @abstractmethod
    def can_read_probe(self, probe: FileProbe) -> bool:
        """Content test on an already sniffed file."""

    @abstractmethod
    def read(self, path: str | os.PathLike) -> list[Spectrum]:
        """Read every spectrum in ``path``.

        Raises
        ------
        ReaderError
            Naming the file and what is wrong.
        """

    def is_companion(self, probe: FileProbe) -> bool:
        """True for files this format pairs with spectra but that hold no spectrum (e.g. DESI redrock files)."""
        return False

    def group_key(self, path: str | os.PathLike) -> str:
        """Key shared by all files of one object (only for :attr:`grouped` formats)."""
        return str(Path(path).resolve())

    def read_group(self, paths: Sequence[str | os.PathLike]) -> list[Spectrum]:
        """Read one object spread over several files (only for :attr:`grouped` formats)."""
        out: list[Spectrum] = []
        for p in paths:
            out.extend(self.read(p))
        return out

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
