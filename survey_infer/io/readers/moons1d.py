"""Outputs of the public MOONS 1D simulator ``moons1d`` (1.0.3; ``Simulation.SavetoFits``).

moons1d writes **one FITS file per arm** (``<name>_RI.fits``, ``<name>_YJ.fits``, ``<name>_H.fits``):

* primary header: ``INST = 'MOONS_SIM'``, ``BAND`` (RI / YJ / H), ``R_MODE`` (LR / HR), ``OBNAME``, ``NDIT``,
  ``DIT`` (s), ``Z`` (input redshift), ``MAG`` and ``WAVE`` (normalisation magnitude and filter), ``TEMPLATE``;
* HDU 1: calibrated flux, erg/s/cm2/A (``TUNIT2``), linear grid ``CRVAL1 + CDELT1 * i`` Angstrom (vacuum, the
  ESO SkyCalc convention); HDU 2: 1 sigma error, same unit; HDU 3: integer sky mask (1 = sky line); HDU 4: sky.

The three files of one object are grouped by directory and file name with the ``_<BAND>`` suffix removed.
A missing arm simply leaves its channels without data (a warning is logged).

Quirks handled:

* the flux unit is converted to 1e-17 erg/s/cm2/A (factor 1e17);
* the LR grids are exactly the MOONS LR instrument grids (the header ``CDELT1`` is the unrounded dispersion,
  e.g. 0.69708995 vs 0.697090 A: 3e-4 pixel over the arm), so ingest copies them channel for channel;
* the sky mask is a sky-line flag, not a bad-pixel mask (the errors already include the sky noise): it is kept in
  ``Spectrum.meta["sky_mask"]`` and only applied as a bad-pixel mask when the reader is built with
  ``apply_sky_mask=True`` (``survey-infer ingest --moons1d-sky-mask``);
* ``z_catalog`` and ``z_true`` are the simulation input redshift ``Z``; ``mag_h`` is ``MAG_H`` when
  ``tools/make_moons1d_set.py`` wrote it (or ``MAG`` when the normalisation filter ``WAVE`` is H);
  ``t_exp = NDIT * DIT`` unless ``TEXP`` is present; ``RA``/``DEC``/``TARGID``/``OBJNAME`` are read when present,
  and ``LOGM_T``/``LSFR_T`` become ``logmstar_true``/``logsfr_true``.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .base import (
    FileProbe,
    ReaderError,
    Spectrum,
    SpectrumArm,
    SpectrumReader,
    as_int_id,
    fits_image,
    flux_factor,
    header_float,
    header_str,
    ivar_from_error,
    log,
    parse_unit,
    probe_file,
    stable_id,
    wave_to_angstrom,
)

ARM_ORDER = ("RI", "YJ", "H")
_BAND_RE = re.compile(r"^(.*)_(RI|YJ|H|YJH|[A-Z]+)$")


def _band_of(path: Path, hdr0) -> str:
    band = str(hdr0.get("BAND", "")).strip().upper()
    if not band:
        m = _BAND_RE.match(path.stem)
        band = m.group(2) if m else ""
    return band


class Moons1dReader(SpectrumReader):
    """Reader for moons1d per-arm FITS outputs, grouped into one spectrum per object."""

    name = "moons1d"
    priority = 10
    grouped = True

    def __init__(self, apply_sky_mask: bool = False):
        self.apply_sky_mask = bool(apply_sky_mask)

    def can_read_probe(self, probe: FileProbe) -> bool:
        """Content test on an already sniffed file (see :meth:`.SpectrumReader.can_read_probe`)."""
        if probe.kind != "fits" or len(probe.hdus) < 3:
            return False
        h0 = probe.header(0)
        h1 = probe.header(1)
        return (str(h0.get("INST", "")).strip().upper() == "MOONS_SIM" and h1 is not None
                and "CRVAL1" in h1 and "CDELT1" in h1)

    def group_key(self, path: str | os.PathLike) -> str:
        """Key shared by the files of one object (see :meth:`.SpectrumReader.group_key`)."""
        p = Path(path).resolve()
        band = _band_of(p, probe_file(p).header(0))
        stem = p.stem
        if band and stem.upper().endswith("_" + band):
            stem = stem[: -(len(band) + 1)]
        return str(p.parent / stem)

    def _read_arm(self, path: Path) -> tuple[str, SpectrumArm, dict]:
        probe = probe_file(path)
        if not self.can_read_probe(probe):
            raise ReaderError(path, f"not a moons1d output file ({probe.describe()})")
        try:
            hdr0 = dict(probe.header(0))
            h1 = probe.header(1)
            flux = fits_image(path, probe.hdu(1)).astype(np.float64).ravel()
            err = fits_image(path, probe.hdu(2)).astype(np.float64).ravel()
            q = probe.hdu(3)
            qual = fits_image(path, q).ravel() if q is not None and int(q.header.get("NAXIS", 0)) > 0 else None
            crval, cdelt = float(h1["CRVAL1"]), float(h1["CDELT1"])
            crpix = float(h1.get("CRPIX1", 1.0))
            wunit = str(h1.get("TUNIT1", "") or "Angstrom")
            funit = str(h1.get("TUNIT2", "") or "")
        except ReaderError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ReaderError(path, f"cannot read moons1d arm file ({type(exc).__name__}: {exc})") from exc
        if flux.size == 0:
            raise ReaderError(path, "empty spectrum: the flux image (HDU 1) has no pixels")
        if flux.shape != err.shape:
            raise ReaderError(path, f"flux ({flux.size}) and error ({err.size}) lengths differ")
        band = _band_of(path, hdr0)
        try:
            wave = wave_to_angstrom(crval + cdelt * (np.arange(flux.size) + 1 - crpix), wunit)
            if not funit:
                log.warning("%s: moons1d flux unit (TUNIT2) missing; assuming erg/s/cm2/Angstrom", path)
                funit = "erg/s/cm2/Angstrom"
            fac = flux_factor(parse_unit(funit, "flux"), wave)
        except ValueError as exc:
            raise ReaderError(path, str(exc)) from exc
        # undefined sky-mask pixels (BLANK -> NaN) count as flagged
        sky = None if qual is None or qual.size != flux.size else np.where(np.isfinite(qual), qual, 1).astype(np.uint8)
        mask = sky if self.apply_sky_mask else None
        arm = SpectrumArm(wave=wave, flux=flux * fac, ivar=ivar_from_error(err * fac), mask=mask, name=band)
        return band, arm, {"header": hdr0, "sky_mask": sky}

    def read(self, path: str | os.PathLike) -> list[Spectrum]:
        """Every spectrum in ``path`` (see :meth:`.SpectrumReader.read`; raises :class:`ReaderError`)."""
        return self.read_group([path])

    def read_group(self, paths: Sequence[str | os.PathLike]) -> list[Spectrum]:
        """One object spread over several files (see :meth:`.SpectrumReader.read_group`)."""
        paths = [Path(p) for p in paths]
        arms: dict[str, tuple[SpectrumArm, dict, Path]] = {}
        for p in paths:
            band, arm, info = self._read_arm(p)
            if band in arms:
                raise ReaderError(paths, f"two files for arm {band} of one object: {arms[band][2]} and {p}")
            arms[band] = (arm, info, p)
        order = sorted(arms, key=lambda b: (ARM_ORDER.index(b) if b in ARM_ORDER else 99, b))
        missing = [b for b in ARM_ORDER if b not in arms]
        if missing and order and all(b in ARM_ORDER for b in order):
            log.warning("moons1d object %s: arm file(s) %s not given; those channels have no data",
                        self.group_key(paths[0]), missing)
        headers = [arms[b][1]["header"] for b in order]
        zs = {round(header_float([h], "Z"), 8) for h in headers if np.isfinite(header_float([h], "Z"))}
        if len(zs) > 1:
            raise ReaderError(paths, f"arm files disagree on the redshift Z: {sorted(zs)}")
        z = header_float(headers, "Z")
        ndit, dit = header_float(headers, "NDIT"), header_float(headers, "DIT")
        texp = header_float(headers, "TEXP")
        if not np.isfinite(texp) and np.isfinite(ndit) and np.isfinite(dit):
            texp = ndit * dit
        mag_h = header_float(headers, "MAG_H")
        if not np.isfinite(mag_h) and header_str(headers, "WAVE").lower() in ("h", "bessel_h", "2mass_h", "h_ab"):
            mag_h = header_float(headers, "MAG")
        key = self.group_key(paths[0])
        name = header_str(headers, "OBJNAME") or Path(key).name
        tid = as_int_id(headers[0].get("TARGID"), paths[0], "TARGID")
        columns = {"z_true": z}
        if np.isfinite(mag_h):
            columns["mag_h"] = mag_h
        for key, col in (("LOGM_T", "logmstar_true"), ("LSFR_T", "logsfr_true")):
            v = header_float(headers, key)
            if np.isfinite(v):
                columns[col] = v
        spec = Spectrum(
            arms=[arms[b][0] for b in order],
            source_files=tuple(str(arms[b][2]) for b in order),
            reader=self.name,
            name=name,
            ra=header_float(headers, "RA"),
            dec=header_float(headers, "DEC"),
            target_id=tid if tid is not None else stable_id(name),
            z_catalog=z,
            t_exp=texp,
            columns=columns,
            meta={"sky_mask": {b: arms[b][1]["sky_mask"] for b in order}, "template": header_str(headers, "TEMPLATE")},
        )
        return [spec]
