"""DESI spectra files: ``coadd-*.fits`` (and ``spectra-*.fits``, same layout).

Layout: per arm ``X`` in B, R, Z (or a combined ``BRZ``): image HDUs ``X_WAVELENGTH`` (n_pix, vacuum Angstrom),
``X_FLUX``, ``X_IVAR``, ``X_MASK`` (n_spec, n_pix) and ``X_RESOLUTION``; a ``FIBERMAP`` table row per spectrum
(``TARGETID``, ``TARGET_RA``, ``TARGET_DEC``, ``COADD_EXPTIME``...). Flux is 1e-17 erg/s/cm2/A (``BUNIT`` of
``X_FLUX``; converted if it ever differs).

Catalog redshift: a companion Redrock file beside the coadd (``redrock-<same suffix>.fits``, older
``zbest-<suffix>.fits``) gives ``Z`` in its ``REDSHIFTS`` (``ZBEST``) HDU, matched to spectra by ``TARGETID``.
Those companion files hold no spectrum: ingest recognises and skips them.

Quirks: the arms overlap (B/R near 5760-5800 A, R/Z near 7520-7620 A), merged later by inverse-variance weighting;
``X_MASK != 0`` marks bad pixels; the resolution matrices are not used (the grid change is a flux-conserving
resampling, not a resolution match).
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
    as_int_id,
    astropy_table,
    build_arms,
    flux_factor,
    image_data,
    log,
    open_fits,
    parse_unit,
    wave_to_angstrom,
)

_ARM_RE = re.compile(r"^([A-Z]+)_WAVELENGTH$")


def companion_redshift_files(path: Path) -> list[Path]:
    """Candidate Redrock/zbest files for a DESI coadd/spectra file, most likely first."""
    name = path.name
    out = []
    for prefix in ("coadd-", "spectra-"):
        if name.startswith(prefix):
            suffix = name[len(prefix):]
            out += [path.with_name("redrock-" + suffix), path.with_name("zbest-" + suffix)]
    return out


def read_companion_redshifts(path: Path) -> dict[int, float]:
    """TARGETID -> Z from a Redrock ``REDSHIFTS`` (or ``ZBEST``) HDU; {} if there is no usable file."""
    for cand in companion_redshift_files(path):
        if not cand.exists():
            continue
        try:
            with open_fits(cand) as h:
                ext = "REDSHIFTS" if "REDSHIFTS" in h else ("ZBEST" if "ZBEST" in h else None)
                if ext is None:
                    log.warning("%s: companion %s has no REDSHIFTS/ZBEST HDU; no catalog redshifts", path, cand)
                    continue
                d = astropy_table(h[ext])  # TNULLn ids come back masked: skipped
                return {int(t): float(z) for t, z in zip(d["TARGETID"], d["Z"]) if not np.ma.is_masked(t)}
        except Exception as exc:  # noqa: BLE001 - a bad companion must not stop the spectra
            log.warning("%s: cannot read companion redshift file %s (%s); no catalog redshifts", path, cand, exc)
    return {}


class DESIReader(SpectrumReader):
    """Reader for DESI coadd / spectra files (B/R/Z arms; catalog z from a companion Redrock file)."""

    name = "desi"
    priority = 10

    @staticmethod
    def _arms(probe: FileProbe) -> list[str]:
        names = set(probe.hdu_names())
        arms = []
        for n in probe.hdu_names():
            m = _ARM_RE.match(n)
            if m and f"{m.group(1)}_FLUX" in names and f"{m.group(1)}_IVAR" in names:
                arms.append(m.group(1))
        return arms

    def can_read_probe(self, probe: FileProbe) -> bool:
        """Content test on an already sniffed file (see :meth:`.SpectrumReader.can_read_probe`)."""
        return probe.kind == "fits" and "FIBERMAP" in probe.hdu_names() and bool(self._arms(probe))

    def is_companion(self, probe: FileProbe) -> bool:
        """True for a companion file holding no spectrum (see :meth:`.SpectrumReader.is_companion`)."""
        if probe.kind != "fits":
            return False
        names = probe.hdu_names()
        has_z = ("REDSHIFTS" in names or "ZBEST" in names) and "TARGETID" in [c.upper() for c in probe.table_columns(
            "REDSHIFTS" if "REDSHIFTS" in names else "ZBEST")]
        return has_z and not self._arms(probe)

    def read(self, path: str | os.PathLike) -> list[Spectrum]:
        """Every spectrum in ``path`` (see :meth:`.SpectrumReader.read`; raises :class:`ReaderError`)."""
        path = Path(path)
        try:
            with open_fits(path) as hdul:
                hdu_names = [h.name.upper() for h in hdul]
                arm_names = [m.group(1) for n in hdu_names if (m := _ARM_RE.match(n))
                             and f"{m.group(1)}_FLUX" in hdu_names and f"{m.group(1)}_IVAR" in hdu_names]
                if not arm_names:
                    raise ReaderError(path, "DESI file without X_WAVELENGTH/X_FLUX/X_IVAR HDUs")
                fm = astropy_table(hdul["FIBERMAP"])  # TNULLn cells come back masked
                arm_data = []
                nspec = None
                for a in arm_names:
                    wave = np.asarray(image_data(hdul[f"{a}_WAVELENGTH"]), dtype=np.float64)
                    flux = np.atleast_2d(np.asarray(image_data(hdul[f"{a}_FLUX"]), dtype=np.float64))
                    ivar = np.atleast_2d(np.asarray(image_data(hdul[f"{a}_IVAR"]), dtype=np.float64))
                    mask = None
                    if f"{a}_MASK" in hdu_names:
                        mask = np.atleast_2d(image_data(hdul[f"{a}_MASK"]))
                        mask = np.where(np.isfinite(mask), mask, 1) if mask.dtype.kind == "f" else mask
                    if wave.size == 0 or flux.size == 0:
                        raise ReaderError(path, f"arm {a}: empty spectrum: no pixels ({a}_WAVELENGTH / {a}_FLUX "
                                                f"hold no data)")
                    bunit = hdul[f"{a}_FLUX"].header.get("BUNIT")
                    wunit = hdul[f"{a}_WAVELENGTH"].header.get("BUNIT")
                    if flux.shape != ivar.shape or flux.shape[1] != wave.size:
                        raise ReaderError(path, f"arm {a}: FLUX {flux.shape}, IVAR {ivar.shape}, WAVELENGTH "
                                                f"{wave.shape} do not match")
                    if nspec is None:
                        nspec = flux.shape[0]
                    elif flux.shape[0] != nspec:
                        raise ReaderError(path, f"arm {a} has {flux.shape[0]} spectra, other arms {nspec}")
                    if wunit:
                        wave = wave_to_angstrom(wave, str(wunit))
                    fac = (flux_factor(parse_unit(bunit, "flux"), np.where(np.isfinite(wave) & (wave > 0), wave, 1.0))
                           if bunit else 1.0)
                    arm_data.append((a, wave, flux * fac, ivar / np.asarray(fac) ** 2, mask))
                cols = {c.upper(): c for c in fm.colnames}
                if nspec == 0 or len(fm) == 0:
                    raise ReaderError(path, "holds no spectrum: the arms / FIBERMAP have zero rows (empty file)")
                if len(fm) != nspec:
                    raise ReaderError(path, f"FIBERMAP has {len(fm)} rows but the arms hold {nspec} spectra")

                def col(name, default=np.nan):
                    if name not in cols:
                        return np.full(nspec, default)
                    c = fm[cols[name]]
                    if getattr(c, "mask", None) is not None and np.any(c.mask):
                        if c.dtype.kind in "iu":  # masked ids (TNULLn) -> None: unknown
                            return np.array([None if m else v for v, m in zip(np.asarray(c.data).tolist(),
                                                                              np.asarray(c.mask).tolist())], object)
                        return np.ma.filled(np.ma.asarray(c, dtype=float), np.nan)
                    return np.asarray(c)

                tids = col("TARGETID", -1)
                ra = col("TARGET_RA")
                dec = col("TARGET_DEC")
                texp = col("COADD_EXPTIME") if "COADD_EXPTIME" in cols else col("EXPTIME")
                names = col("DESINAME", "") if "DESINAME" in cols else None
        except ReaderError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ReaderError(path, f"cannot read DESI file ({type(exc).__name__}: {exc})") from exc
        zmap = read_companion_redshifts(path)
        if not zmap:
            log.info("%s: no companion redrock file; z_catalog left unknown", path)
        out = []
        for k in range(nspec):
            tid = as_int_id(tids[k], path, "FIBERMAP TARGETID")
            arms = []
            for a, w, f, iv, m in arm_data:
                arms += build_arms(path, w, f[k], iv[k], None if m is None else m[k], name=a,
                                   label=f"spectrum {k} arm {a}: ")
            nm = str(names[k]).strip() if names is not None else ""
            out.append(Spectrum(
                arms=arms,
                source_files=(str(path),),
                reader=self.name,
                name=nm or f"{path.stem}:{tid}",
                ra=float(ra[k]),
                dec=float(dec[k]),
                target_id=tid if tid is not None and tid >= 0 else None,
                z_catalog=float(zmap.get(tid, np.nan)) if tid is not None else float("nan"),
                t_exp=float(texp[k]),
                meta={"row": k},
            ))
        return out
