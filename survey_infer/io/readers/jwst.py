"""JWST/NIRSpec 1D spectra written by msaexp (``*.spec.fits``).

Layout: binary table ``SPEC1D`` with one row per pixel: ``wave`` (TUNIT ``um``), ``flux`` and ``err`` (TUNIT
``uJy``), plus optional ``valid``; 2D ``SCI``/``WHT``/``PROFILE`` images are ignored. Source metadata sit in the
``SPEC1D`` header: ``SRCNAME``, ``SRCID``, ``SRCRA``/``SRCDEC``, ``EFFEXPTM`` (s), ``GRATING``.

Quirks handled:

* the units are taken from ``TUNITn`` (the ``BUNIT`` keyword of the same header says ``mJy`` but describes the 2D
  images); f_nu is converted to f_lambda per pixel: f_lambda = f_nu c / lambda^2, then to 1e-17 erg/s/cm2/A;
* wavelengths are vacuum (space observatory); the PRISM grid is strongly non-uniform (R ~ 30-300), so pixel edges
  are mid-points between centres;
* pixels with ``err <= 0`` or non-finite values (the file pads both ends with zeros / inf) get ivar = 0;
* a redshift is read from ``REDSHIFT``/``Z`` header keywords if present (msaexp test files carry none).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import (
    FileProbe,
    ReaderError,
    Spectrum,
    SpectrumReader,
    as_int_id,
    build_arms,
    fits_table,
    flux_factor,
    header_float,
    header_str,
    ivar_from_error,
    log,
    parse_unit,
    probe_file,
    stable_id,
    table_units,
    wave_to_angstrom,
)


class MsaexpReader(SpectrumReader):
    """Reader for msaexp ``SPEC1D`` tables (JWST/NIRSpec)."""

    name = "jwst_msaexp"
    priority = 10

    def can_read_probe(self, probe: FileProbe) -> bool:
        """Content test on an already sniffed file (see :meth:`.SpectrumReader.can_read_probe`)."""
        if probe.kind != "fits" or "SPEC1D" not in probe.hdu_names():
            return False
        cols = {c.lower() for c in probe.table_columns("SPEC1D")}
        return {"wave", "flux", "err"} <= cols

    def read(self, path: str | os.PathLike) -> list[Spectrum]:
        """Every ``SPEC1D`` table of the file (one spectrum each)."""
        path = Path(path)
        probe = probe_file(path)
        infos = [i for i in probe.fits_info if i.name == "SPEC1D" and i.type == "table"]
        if not infos:
            raise ReaderError(path, "no SPEC1D table")
        out = []
        for info in infos:
            out += self._read_table(path, probe, info, f"SPEC1D HDU {info.index}: " if len(infos) > 1 else "")
        return out

    def _read_table(self, path: Path, probe: FileProbe, info, label: str) -> list[Spectrum]:
        h, hdr0 = info.header, probe.header(0)
        units = {k.lower(): v for k, v in table_units(info).items()}
        try:
            d = fits_table(path, info, ["wave", "flux", "err", "valid"])
            wave, flux, err = (np.ma.filled(np.ma.asarray(d[k], dtype=np.float64), np.nan) for k in ("WAVE", "FLUX", "ERR"))
            valid = d["VALID"].astype(bool) if "VALID" in d else None
        except Exception as exc:  # noqa: BLE001
            raise ReaderError(path, f"cannot read msaexp SPEC1D table ({type(exc).__name__}: {exc})") from exc
        if wave.size == 0:
            raise ReaderError(path, f"{label}SPEC1D table has no rows (empty spectrum, no pixels)")
        wunit = units.get("wave") or ""
        funit = units.get("flux") or ""
        eunit = units.get("err") or funit
        if not wunit:
            log.warning("%s: SPEC1D wave has no TUNIT; assuming micron (msaexp convention)", path)
            wunit = "um"
        if not funit:
            log.warning("%s: SPEC1D flux has no TUNIT; assuming microJansky (msaexp convention)", path)
            funit = eunit = "uJy"
        try:
            wave = wave_to_angstrom(wave, wunit)
            wpos = np.where(np.isfinite(wave) & (wave > 0), wave, 1.0)
            ff = flux_factor(parse_unit(funit, "flux"), wpos)
            fe = flux_factor(parse_unit(eunit, "flux"), wpos)
        except ValueError as exc:
            raise ReaderError(path, f"{label}{exc}") from exc
        ivar = ivar_from_error(err * fe)
        mask = None if valid is None else (~np.ma.filled(valid, False)).astype(np.uint8)
        name = header_str([h, hdr0], "SRCNAME") or path.stem
        arms = build_arms(path, wave, flux * ff, ivar, mask, name=header_str([h, hdr0], "GRATING"), label=label)
        tid = as_int_id(h.get("SRCID"), path, "SRCID")
        if tid is None:
            tid = stable_id(name)
        spec = Spectrum(
            arms=arms,
            source_files=(str(path),),
            reader=self.name,
            name=name,
            ra=header_float([h, hdr0], "SRCRA", "RA_TARG", "RA"),
            dec=header_float([h, hdr0], "SRCDEC", "DEC_TARG", "DEC"),
            target_id=tid,
            z_catalog=header_float([h, hdr0], "REDSHIFT", "Z"),
            t_exp=header_float([h, hdr0], "EFFEXPTM", "EXPTIME"),
            meta={"grating": header_str([h, hdr0], "GRATING"), "filter": header_str([h, hdr0], "FILTER")},
        )
        return [spec]
