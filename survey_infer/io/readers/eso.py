"""ESO Phase-3 1D spectra (Science Data Products standard; e.g. LEGA-C DR3, X-shooter, FORS2, MUSE 1D).

Layout: a binary table (normally ``PHASE3SPECTRA``, one row) whose cells are arrays: ``WAVE``, ``FLUX`` (or
``FLUX_REDUCED``), ``ERR`` (1 sigma; or ``ERR_REDUCED``), optional ``QUAL`` (non-zero = bad). Several rows are read
as several spectra. Primary ``PRODCATG = 'SCIENCE.SPECTRUM'`` and/or table ``VOCLASS = 'SPECTRUM ...'`` identify
the format.

Quirks handled:

* units come from ``TUNITn`` (LEGA-C flux is ``10**(-19).erg.cm**(-2).s**(-1).angstrom**(-1)``, i.e. 0.01 of the
  store unit; X-shooter wavelengths are in nm); absent units mean Angstrom / erg s-1 cm-2 A-1 with a warning;
* air wavelengths: the wavelength column's ``TUCDn`` contains ``obs.atmos`` (``em.wl;obs.atmos``) for air, as in
  LEGA-C; they are converted to vacuum. Without it the wavelengths are taken to be vacuum;
* redshift: from header keywords ``Z``, ``REDSHIFT``, ``Z_SPEC`` or ``Z_BEST`` when present (LEGA-C DR3 spectra
  carry none: their redshifts are in the DR3 catalogue, so ``z_catalog`` stays unknown);
* ``target_id``: LEGA-C names ``M<mask>_<id>`` give the UltraVISTA id (shared by repeat observations on different
  masks); other objects get a stable hash of ``OBJECT``. ``t_exp`` is ``TEXPTIME`` (else ``EXPTIME``).
* LEGA-C spectra are topocentric (``SPECSYS = 'TOPOCENT'``); the < 30 km/s barycentric offset is not corrected.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .base import (
    FileProbe,
    ReaderError,
    Spectrum,
    SpectrumReader,
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
    table_column_keyword,
    table_units,
    wave_to_angstrom,
)

_LEGAC_RE = re.compile(r"^M\d+_(\d+)$")


def _find(cols: list[str], *cands: str) -> str | None:
    up = {c.upper(): c for c in cols}
    for c in cands:
        if c in up:
            return up[c]
    return None


class ESOPhase3Reader(SpectrumReader):
    """Reader for ESO Phase-3 1D spectra (WAVE/FLUX/ERR/QUAL array cells)."""

    name = "eso_phase3"
    priority = 20

    @staticmethod
    def _table_hdus(probe: FileProbe) -> list[int]:
        out = []
        for i, (n, t, h) in enumerate(probe.hdus):
            if t != "table":
                continue
            cols = [c.upper() for c in probe.table_columns(i)]
            if "WAVE" in cols and ("FLUX" in cols or "FLUX_REDUCED" in cols):
                out.append(i)
        return out

    def _table_hdu(self, probe: FileProbe) -> int | None:
        t = self._table_hdus(probe)
        return t[0] if t else None

    def can_read_probe(self, probe: FileProbe) -> bool:
        """Content test on an already sniffed file (see :meth:`.SpectrumReader.can_read_probe`)."""
        if probe.kind != "fits":
            return False
        i = self._table_hdu(probe)
        if i is None:
            return False
        h0, h = probe.header(0), probe.header(i)
        prodcatg = str(h0.get("PRODCATG", "")).upper()
        voclass = str(h.get("VOCLASS", "")).upper()
        return prodcatg.startswith("SCIENCE.SPECTRUM") or voclass.startswith("SPECTRUM") or probe.hdus[i][0] == "PHASE3SPECTRA"

    def read(self, path: str | os.PathLike) -> list[Spectrum]:
        """Every row of every WAVE/FLUX table of the file (one spectrum each)."""
        path = Path(path)
        probe = probe_file(path)
        tables = self._table_hdus(probe)
        if not tables:
            raise ReaderError(path, "ESO Phase-3 file without a WAVE/FLUX table")
        out = []
        for idx in tables:
            out += self._read_hdu(path, probe, idx, f"HDU {idx}: " if len(tables) > 1 else "")
        return out

    def _read_hdu(self, path: Path, probe: FileProbe, idx: int, where: str) -> list[Spectrum]:
        info = probe.hdu(idx)
        h, hdr0 = info.header, probe.header(0)
        names = list(table_units(info))
        cw = _find(names, "WAVE")
        cf = _find(names, "FLUX", "FLUX_REDUCED")
        ce = _find(names, "ERR", "ERR_REDUCED", "ERROR")
        cq = _find(names, "QUAL", "QUALITY")
        units = table_units(info)
        wunit, funit = units.get(cw, ""), units.get(cf, "")
        eunit = (units.get(ce, "") or funit) if ce else funit
        wucd = table_column_keyword(info, cw, "TUCD")
        try:
            d = fits_table(path, info, [c for c in (cw, cf, ce, cq) if c])
            rows = []
            for r in range(len(d[cw])):
                rows.append((np.atleast_1d(np.ma.filled(np.ma.asarray(d[cw][r], dtype=np.float64), np.nan)).ravel(),
                             np.atleast_1d(np.ma.filled(np.ma.asarray(d[cf][r], dtype=np.float64), np.nan)).ravel(),
                             np.atleast_1d(np.ma.filled(np.ma.asarray(d[ce][r], dtype=np.float64), np.nan)).ravel()
                             if ce else None,
                             np.atleast_1d(np.ma.filled(np.ma.asarray(d[cq][r]), 1)).ravel() if cq else None))
        except Exception as exc:  # noqa: BLE001
            raise ReaderError(path, f"cannot read ESO Phase-3 spectrum ({type(exc).__name__}: {exc})") from exc
        if not rows:
            raise ReaderError(path, f"{where}ESO Phase-3 table has no rows (empty: no spectrum)")
        if not wunit.strip():
            log.warning("%s: wavelength unit not given; assuming Angstrom", path)
            wunit = "Angstrom"
        if not funit.strip():
            log.warning("%s: flux unit not given; assuming erg/s/cm2/Angstrom", path)
            funit = eunit = "erg/s/cm2/Angstrom"
        air = "obs.atmos" in wucd.lower() or str(h.get("AIRORVAC", hdr0.get("AIRORVAC", ""))).lower().startswith("air")
        obj = header_str([h, hdr0], "OBJECT")
        m = _LEGAC_RE.match(obj)
        tid = int(m.group(1)) if m else (stable_id(obj) if obj else None)
        z = header_float([h, hdr0], "Z", "REDSHIFT", "Z_SPEC", "Z_BEST")
        out = []
        for r, (wave, flux, err, qual) in enumerate(rows):
            label = f"{where}row {r}: "
            if wave.size == 0:
                raise ReaderError(path, f"{label}empty spectrum: no pixels")
            if not (wave.size == flux.size and (err is None or err.size == wave.size)):
                raise ReaderError(path, f"{label}WAVE ({wave.size}), FLUX ({flux.size}) and ERR lengths differ")
            try:
                wave = wave_to_angstrom(wave, wunit)
                if air:
                    from ..resample import air_to_vacuum

                    wave = air_to_vacuum(wave)
                wpos = np.where(np.isfinite(wave) & (wave > 0), wave, 1.0)
                ff = flux_factor(parse_unit(funit, "flux"), wpos)
                fe = flux_factor(parse_unit(eunit, "flux"), wpos)
            except ValueError as exc:
                raise ReaderError(path, f"{label}{exc}") from exc
            if err is None:
                raise ReaderError(path, "ESO Phase-3 table has no ERR column: cannot weight the spectrum")
            ivar = ivar_from_error(err * fe)
            out.append(Spectrum(
                arms=build_arms(path, wave, flux * ff, ivar, qual, label=label if len(rows) > 1 or where else ""),
                source_files=(str(path),),
                reader=self.name,
                name=obj or path.stem + (f":{r}" if len(rows) > 1 else ""),
                ra=header_float([h, hdr0], "RA"),
                dec=header_float([h, hdr0], "DEC"),
                target_id=tid,
                z_catalog=z,
                t_exp=header_float([hdr0, h], "TEXPTIME", "EXPTIME"),
                meta={"air_wavelengths": bool(air), "specsys": header_str([hdr0, h], "SPECSYS")},
            ))
        return out
