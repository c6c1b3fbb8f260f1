"""Spectrum readers, one module per input format, and content-based format detection.

==================  ============================================  =========================================
reader name         format                                        module
==================  ============================================  =========================================
``sdss``            SDSS/BOSS ``spec-*.fits`` (COADD + SPECOBJ)   :mod:`.sdss`
``desi``            DESI ``coadd-*``/``spectra-*`` (B/R/Z arms)   :mod:`.desi`
``jwst_msaexp``     JWST/NIRSpec msaexp ``SPEC1D`` tables         :mod:`.jwst`
``moons1d``         moons1d per-arm outputs (3 files / object)    :mod:`.moons1d`
``eso_phase3``      ESO Phase-3 1D spectra (LEGA-C, X-shooter..)  :mod:`.eso`
``generic``         FITS table / FITS images / HDF5               :mod:`.generic`
==================  ============================================  =========================================

:func:`find_reader` sniffs a file's *content* (magic bytes, HDU names, columns, header keywords; never only the
file name) and returns the first reader, in priority order, that recognises it. Files that no reader recognises,
or that are corrupt, raise :class:`ReaderError` naming the file and the reason.
"""
from __future__ import annotations

import os
from pathlib import Path

from .base import (
    FLUX_UNIT_STR,
    FileProbe,
    ReaderError,
    Spectrum,
    SpectrumArm,
    SpectrumReader,
    probe_file,
)
from .desi import DESIReader
from .eso import ESOPhase3Reader
from .generic import GenericTableReader
from .jwst import MsaexpReader
from .moons1d import Moons1dReader
from .sdss import SDSSReader

__all__ = [
    "FLUX_UNIT_STR",
    "FileProbe",
    "ReaderError",
    "Spectrum",
    "SpectrumArm",
    "SpectrumReader",
    "companion_of",
    "default_readers",
    "find_reader",
    "probe_file",
    "read_spectra",
    "reader_by_name",
]


def default_readers(*, moons1d_sky_mask: bool = False) -> list[SpectrumReader]:
    """All readers, in the order they are tried (specific formats first, the generic table reader last)."""
    readers: list[SpectrumReader] = [SDSSReader(), DESIReader(), MsaexpReader(), Moons1dReader(moons1d_sky_mask),
                                     ESOPhase3Reader(), GenericTableReader()]
    return sorted(readers, key=lambda r: r.priority)


def reader_by_name(name: str, readers: list[SpectrumReader] | None = None) -> SpectrumReader:
    """The reader whose :attr:`~SpectrumReader.name` is ``name`` (from ``readers``, default all).

    Raises
    ------
    KeyError
        If no reader has that name (the message lists the known names).
    """
    for r in readers or default_readers():
        if r.name == name:
            return r
    raise KeyError(f"no reader named {name!r}; known: {[r.name for r in default_readers()]}")


def companion_of(path: str | os.PathLike, readers: list[SpectrumReader] | None = None) -> SpectrumReader | None:
    """The reader that pairs with ``path`` when it is a companion file holding no spectrum (else None)."""
    probe = probe_file(path)
    for r in readers or default_readers():
        if r.is_companion(probe):
            return r
    return None


def find_reader(path: str | os.PathLike, readers: list[SpectrumReader] | None = None) -> SpectrumReader:
    """The reader for ``path``, chosen by content.

    Raises
    ------
    ReaderError
        If the file is missing, corrupt, or no reader recognises it (the message lists what the file holds).
    """
    probe = probe_file(path)
    readers = readers or default_readers()
    for r in readers:
        if r.can_read_probe(probe):
            return r
    if probe.kind == "unknown":
        raise ReaderError(path, "unknown format: neither FITS nor HDF5 (no recognised signature in the first bytes)")
    for r in readers:
        if r.is_companion(probe):
            raise ReaderError(path, f"is a {r.name} companion file (redshifts/metadata), not a spectrum")
    raise ReaderError(path, f"no spectrum found: no reader recognises this file ({probe.describe()})")


def read_spectra(path: str | os.PathLike, readers: list[SpectrumReader] | None = None) -> list[Spectrum]:
    """Read every spectrum in one file with the reader chosen by :func:`find_reader`.

    For grouped formats (moons1d) this reads the single file given; use the reader's ``read_group`` (or ingest)
    to combine the arms of one object.
    """
    reader = find_reader(path, readers)
    spectra = reader.read(Path(path))
    if not spectra:
        raise ReaderError(path, f"{reader.name} reader found no spectrum in the file")
    return spectra
