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

from .base import (
    FileProbe,
    ReaderError,
    Spectrum,
    SpectrumReader,
    as_int_id,
    build_arms,
    fits_tables,
    flux_factor,
    header_float,
    log,
    parse_unit,
    probe_file,
)


class SDSSReader(SpectrumReader):
    """Reader for SDSS/BOSS ``spec-*.fits`` (COADD + SPECOBJ HDUs)."""

    name = "sdss"
    priority = 10

    def can_read_probe(self, probe: FileProbe) -> bool:
        """Content test on an already sniffed file (see :meth:`.SpectrumReader.can_read_probe`)."""
        if probe.kind != "fits" or "COADD" not in probe.hdu_names():
            return False
        cols = {c.lower() for c in probe.table_columns("COADD")}
        return {"flux", "loglam", "ivar"} <= cols

    def read(self, path: str | os.PathLike) -> list[Spectrum]:
        """Every spectrum in ``path`` (see :meth:`.SpectrumReader.read`; raises :class:`ReaderError`)."""
        path = Path(path)
        probe = probe_file(path)
        coadd = probe.hdu("COADD")
        if coadd is None:
            raise ReaderError(path, "SDSS spec file without a COADD HDU")
        hdr0 = probe.header(0)
        try:
            so = probe.hdu("SPECOBJ") or probe.hdu("SPALL")
            requests = [(coadd, ["flux", "loglam", "ivar", "and_mask"])]
            if so is not None and int(so.header.get("NAXIS2", 0)) > 0:
                requests.append((so, ["Z", "Z_ERR", "ZWARNING", "CLASS", "PLUG_RA", "PLUG_DEC", "BESTOBJID",
                                      "TARGETOBJID", "SPECOBJID", "PLATE", "MJD", "FIBERID"]))
            d, *rest = fits_tables(path, requests)  # one open of the file
            loglam = d["LOGLAM"].astype(np.float64)
            flux = d["FLUX"].astype(np.float64)
            ivar = d["IVAR"].astype(np.float64)
            mask = d.get("AND_MASK")
            # masked cells (FITS TNULLn) are unknown values
            meta_row = {k: v[0] for k, v in rest[0].items() if not np.ma.is_masked(v[0])} if rest else {}
        except (ReaderError, KeyError) as exc:
            raise ReaderError(path, f"cannot read SDSS spec file: {exc}") from exc
        except Exception as exc:  # noqa: BLE001
            raise ReaderError(path, f"cannot read SDSS spec file ({type(exc).__name__}: {exc})") from exc
        if loglam.size == 0:
            raise ReaderError(path, "SDSS COADD HDU has no pixels (empty spectrum)")
        loglam = np.ma.filled(loglam, np.nan)
        flux = np.ma.filled(flux, np.nan)
        ivar = np.ma.filled(ivar, np.nan)
        if mask is not None:
            mask = np.ma.filled(mask, 1)
        dl = np.nanmedian(np.diff(loglam)) if loglam.size > 1 else 1e-4
        wave = 10.0**loglam
        edges = 10.0 ** np.concatenate([loglam - dl / 2, [loglam[-1] + dl / 2]])
        if hdr0.get("VACUUM", True) is False:  # SDSS spectra are vacuum; honour an explicit VACUUM = F
            from ..resample import air_to_vacuum

            wave, edges = air_to_vacuum(wave), air_to_vacuum(edges)
        bunit = hdr0.get("BUNIT")
        fac = 1.0
        if bunit:
            try:
                fac = flux_factor(parse_unit(str(bunit), "flux"), np.where(np.isfinite(wave), wave, 1.0))
            except ValueError as exc:
                raise ReaderError(path, f"unusable flux unit BUNIT={bunit!r}: {exc}") from exc
        flux = flux * fac
        ivar = ivar / np.asarray(fac) ** 2
        z = float(meta_row["Z"]) if "Z" in meta_row else float("nan")
        ra = float(meta_row["PLUG_RA"]) if "PLUG_RA" in meta_row else header_float([hdr0], "PLUG_RA", "RA")
        dec = float(meta_row["PLUG_DEC"]) if "PLUG_DEC" in meta_row else header_float([hdr0], "PLUG_DEC", "DEC")
        tid = None
        for key in ("BESTOBJID", "TARGETOBJID", "SPECOBJID"):
            tid = as_int_id(meta_row.get(key), path, key)
            if tid:
                break
        plate = meta_row.get("PLATE", hdr0.get("PLATEID"))
        mjd = meta_row.get("MJD", hdr0.get("MJD"))
        fiber = meta_row.get("FIBERID", hdr0.get("FIBERID"))
        try:
            name = f"spec-{int(plate):04d}-{int(mjd):05d}-{int(fiber):04d}"
        except (TypeError, ValueError):
            name = path.stem
        if not np.isfinite(z):
            log.debug("%s: no SPECOBJ redshift", path)
        spec = Spectrum(
            arms=build_arms(path, wave, flux, ivar, mask, edges=edges),
            source_files=(str(path),),
            reader=self.name,
            name=name,
            ra=ra,
            dec=dec,
            target_id=tid or None,
            z_catalog=z,
            t_exp=header_float([hdr0], "EXPTIME"),
            meta={"class": str(meta_row.get("CLASS", "")), "zwarning": int(meta_row.get("ZWARNING", 0) or 0)},
        )
        return [spec]
