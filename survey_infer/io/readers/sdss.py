"""SDSS / BOSS ``spec-PLATE-MJD-FIBER.fits`` files (DR8 and later, full or lite).

Layout: HDU ``COADD`` (binary table, one row per pixel: ``flux``, ``loglam``, ``ivar``, ``and_mask``...), HDU
``SPECOBJ`` (SDSS-I/II; ``SPALL`` in some BOSS files) with the pipeline redshift ``Z``, ``PLUG_RA``/``PLUG_DEC``
and object ids.

Quirks handled:

* wavelengths are ``10**loglam`` in **vacuum** (the SDSS convention; a primary-header ``VACUUM = F`` would mean air
  and is honoured); pixels are uniform in log-lambda, so pixel edges are geometric mid-points;
* flux is 1e-17 erg/s/cm2/A (primary ``BUNIT``, parsed and converted if it ever says otherwise);
* ``and_mask != 0`` (bad in every exposure) marks bad pixels; ``or_mask`` is ignored (too aggressive);
* ``target_id`` is ``BESTOBJID`` (the photometric object, shared by repeat spectra of one target), falling back to
  ``TARGETOBJID`` then ``SPECOBJID``; ``t_exp`` is the primary ``EXPTIME``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import (FileProbe, ReaderError, Spectrum, SpectrumArm, SpectrumReader, as_int_id, flux_factor,
                   header_float, log, parse_unit)


class SDSSReader(SpectrumReader):
    """Reader for SDSS/BOSS ``spec-*.fits`` (COADD + SPECOBJ HDUs)."""

    name = "sdss"
    priority = 10

    def can_read_probe(self, probe: FileProbe) -> bool:
        if probe.kind != "fits" or "COADD" not in probe.hdu_names():
            return False
        cols = {c.lower() for c in probe.table_columns("COADD")}
        return {"flux", "loglam", "ivar"} <= cols

    def read(self, path: str | os.PathLike) -> list[Spectrum]:
        from astropy.io import fits

        path = Path(path)
        try:
            with fits.open(path, memmap=False) as hdul:
                hdr0 = hdul[0].header
                if "COADD" not in hdul:
                    raise ReaderError(path, "SDSS spec file without a COADD HDU")
                d = hdul["COADD"].data
                names = {n.lower(): n for n in d.columns.names}
                loglam = np.asarray(d[names["loglam"]], dtype=np.float64)
                flux = np.asarray(d[names["flux"]], dtype=np.float64)
                ivar = np.asarray(d[names["ivar"]], dtype=np.float64)
                mask = np.asarray(d[names["and_mask"]]) if "and_mask" in names else None
                specobj = None
                for ext in ("SPECOBJ", "SPALL"):
                    if ext in hdul:
                        specobj = hdul[ext].data
                        break
                meta_row = {}
                if specobj is not None and len(specobj) > 0:
                    row = specobj[0]
                    for c in specobj.columns.names:
                        if c.upper() in ("Z", "Z_ERR", "ZWARNING", "CLASS", "PLUG_RA", "PLUG_DEC", "BESTOBJID",
                                         "TARGETOBJID", "SPECOBJID", "PLATE", "MJD", "FIBERID"):
                            v = row[c]
                            meta_row[c.upper()] = v.strip() if isinstance(v, str) else v
        except ReaderError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ReaderError(path, f"cannot read SDSS spec file ({type(exc).__name__}: {exc})") from exc
        if loglam.size == 0:
            raise ReaderError(path, "SDSS COADD HDU has no pixels")
        wave = 10.0**loglam
        vac = hdr0.get("VACUUM", True)
        if vac is False:
            from ..resample import air_to_vacuum

            wave = air_to_vacuum(wave)
        if not np.all(np.diff(wave) > 0):
            raise ReaderError(path, "SDSS loglam is not strictly increasing")
        dl = np.median(np.diff(loglam))
        edges = 10.0 ** np.concatenate([loglam - dl / 2, [loglam[-1] + dl / 2]])
        if vac is False:
            from ..resample import air_to_vacuum

            edges = air_to_vacuum(edges)
        bunit = hdr0.get("BUNIT")
        if bunit:
            try:
                fac = flux_factor(parse_unit(bunit, "flux"), wave)
            except ValueError as exc:
                raise ReaderError(path, f"unusable flux unit BUNIT={bunit!r}: {exc}") from exc
        else:
            fac = 1.0
        flux = flux * fac
        ivar = ivar / np.asarray(fac) ** 2
        z = float(meta_row.get("Z", np.nan)) if "Z" in meta_row else float("nan")
        ra = float(meta_row["PLUG_RA"]) if "PLUG_RA" in meta_row else header_float([hdr0], "PLUG_RA", "RA")
        dec = float(meta_row["PLUG_DEC"]) if "PLUG_DEC" in meta_row else header_float([hdr0], "PLUG_DEC", "DEC")
        tid = None
        for key in ("BESTOBJID", "TARGETOBJID", "SPECOBJID"):
            tid = as_int_id(meta_row.get(key))
            if tid:
                break
        if not tid:
            tid = None
        plate = meta_row.get("PLATE", hdr0.get("PLATEID"))
        mjd = meta_row.get("MJD", hdr0.get("MJD"))
        fiber = meta_row.get("FIBERID", hdr0.get("FIBERID"))
        name = f"spec-{int(plate):04d}-{int(mjd):05d}-{int(fiber):04d}" if None not in (plate, mjd, fiber) else path.stem
        if not np.isfinite(z):
            log.debug("%s: no SPECOBJ redshift", path)
        spec = Spectrum(
            arms=[SpectrumArm(wave=wave, flux=flux, ivar=ivar, mask=mask, name="", edges=edges)],
            source_files=(str(path),),
            reader=self.name,
            name=name,
            ra=ra,
            dec=dec,
            target_id=tid,
            z_catalog=z,
            t_exp=header_float([hdr0], "EXPTIME"),
            meta={"class": meta_row.get("CLASS", ""), "zwarning": int(meta_row.get("ZWARNING", 0) or 0)},
        )
        return [spec]
