"""Generic spectrum tables in FITS or HDF5 (the fallback reader; tried after every specific format).

What it accepts (column / dataset names are case-insensitive):

==========  ==========================================================================================
role        accepted names
==========  ==========================================================================================
wavelength  ``wave``, ``wavelength``, ``lambda``, ``lam``, ``loglam`` (log10 Angstrom)
flux        ``flux``, ``f_lambda``, ``flam``, ``fnu``
weight      ``ivar`` / ``inverse_variance``, or a 1 sigma error ``error``, ``err``, ``sigma``, ``flux_err``,
            ``noise``, ``uncertainty``
mask        optional: ``mask``, ``and_mask``, ``qual``, ``quality`` (non-zero = bad); or ``valid``/``good``
            (non-zero = good)
==========  ==========================================================================================

Layouts:

* **FITS binary table**: one row per pixel (scalar columns: one spectrum), or one row per spectrum (array
  cells). Per-row ``RA``, ``DEC``, ``Z``/``REDSHIFT``, ``TARGETID``/``OBJID``, ``NAME`` columns are used when
  present. Units from ``TUNITn``.
* **FITS images**: HDUs named ``WAVE``/``WAVELENGTH``, ``FLUX``, ``IVAR`` or ``ERR``/``ERROR`` (and ``MASK``);
  ``FLUX`` may be 2-D (one spectrum per row). Units from each HDU's ``BUNIT``.
* **HDF5**: datasets with those names at the root or in one group; ``flux`` 1-D or 2-D (n_spec, n_pix), ``wave``
  1-D or the same shape. Units from the dataset attribute ``units`` (or ``unit``); per-spectrum metadata from 1-D
  datasets ``ra``, ``dec``, ``z``, ``target_id``, ``t_exp`` or from group attributes of those names.

Units and conventions: wavelength unit default Angstrom, flux default 1e-17 erg/s/cm2/A (a warning is logged when
a unit is absent). f_nu units (Jy, uJy, erg/s/cm2/Hz) are converted. Wavelengths are vacuum unless the header /
attributes say air: ``AIRORVAC = 'air'``, ``VACUUM = F``, ``WAVE_MEDIUM = 'air'`` (attribute ``wave_medium`` in
HDF5) or a ``TUCDn`` containing ``obs.atmos``. Metadata keywords read from headers/attributes: ``RA``, ``DEC``,
``Z``/``REDSHIFT``/``Z_CATALOG``, ``TARGETID``/``TARGET_ID``/``OBJID``, ``OBJECT``/``NAME``, ``EXPTIME``/``T_EXP``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import (FLUX_UNIT_STR, FileProbe, ReaderError, Spectrum, SpectrumArm, SpectrumReader, as_int_id,
                   flux_factor, ivar_from_error, log, parse_unit, stable_id, wave_to_angstrom)

WAVE_NAMES = ("WAVE", "WAVELENGTH", "LAMBDA", "LAM", "LOGLAM")
FLUX_NAMES = ("FLUX", "F_LAMBDA", "FLAM", "FNU")
IVAR_NAMES = ("IVAR", "INVERSE_VARIANCE", "INV_VAR")
ERR_NAMES = ("ERROR", "ERR", "SIGMA", "FLUX_ERR", "FLUX_ERROR", "NOISE", "UNCERTAINTY")
MASK_NAMES = ("MASK", "AND_MASK", "QUAL", "QUALITY")
GOOD_NAMES = ("VALID", "GOOD")
META_KEYS = {
    "ra": ("RA", "TARGET_RA"),
    "dec": ("DEC", "TARGET_DEC"),
    "z": ("Z", "REDSHIFT", "Z_CATALOG", "ZSPEC", "Z_SPEC"),
    "target_id": ("TARGETID", "TARGET_ID", "OBJID", "OBJECT_ID"),
    "name": ("NAME", "OBJECT", "OBJNAME"),
    "t_exp": ("T_EXP", "EXPTIME", "TEXPTIME"),
}


def _pick(names, cands) -> str | None:
    up = {str(n).upper(): n for n in names}
    for c in cands:
        if c in up:
            return up[c]
    return None


def _is_air(*dicts) -> bool:
    for d in dicts:
        if d is None:
            continue
        for k in ("AIRORVAC", "WAVE_MEDIUM", "airorvac", "wave_medium"):
            if k in d and str(d[k]).strip().lower().startswith("air"):
                return True
        for k in ("VACUUM", "vacuum"):
            if k in d and d[k] in (False, 0, "F", "false", "False"):
                return True
    return False


def _meta_value(key: str, *sources):
    for src in sources:
        if src is None:
            continue
        for k in META_KEYS[key]:
            for kk in (k, k.lower()):
                if kk in src:
                    v = src[kk]
                    if isinstance(v, (bytes, np.bytes_)):
                        v = v.decode("utf-8", "replace")
                    if v is None or (isinstance(v, str) and not v.strip()):
                        continue
                    return v
    return None


def _to_float(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


class GenericTableReader(SpectrumReader):
    """Fallback reader for FITS tables / FITS images / HDF5 files holding wave, flux, ivar-or-error (+ mask)."""

    name = "generic"
    priority = 90

    # ----------------------------------------------------------------- sniffing
    def _fits_layout(self, probe: FileProbe):
        names = probe.hdu_names()
        for i, (n, t, h) in enumerate(probe.hdus):
            if t == "table":
                cols = probe.table_columns(i)
                if _pick(cols, WAVE_NAMES) and _pick(cols, FLUX_NAMES) and (_pick(cols, IVAR_NAMES) or _pick(cols, ERR_NAMES)):
                    return ("table", i)
        if _pick(names, WAVE_NAMES) and _pick(names, FLUX_NAMES) and (_pick(names, IVAR_NAMES) or _pick(names, ERR_NAMES)):
            return ("images", None)
        return None

    def _hdf5_layout(self, probe: FileProbe):
        groups: dict[str, list[str]] = {}
        for k in probe.hdf5_keys:
            parent, _, leaf = k.rpartition("/")
            groups.setdefault(parent, []).append(leaf)
        for parent, leaves in sorted(groups.items(), key=lambda kv: kv[0].count("/")):
            if _pick(leaves, WAVE_NAMES) and _pick(leaves, FLUX_NAMES) and (_pick(leaves, IVAR_NAMES) or _pick(leaves, ERR_NAMES)):
                return parent
        return None

    def can_read_probe(self, probe: FileProbe) -> bool:
        if probe.kind == "fits":
            return self._fits_layout(probe) is not None
        if probe.kind == "hdf5":
            return self._hdf5_layout(probe) is not None
        return False

    # ----------------------------------------------------------------- reading
    def read(self, path: str | os.PathLike) -> list[Spectrum]:
        from .base import probe_file

        path = Path(path)
        probe = probe_file(path)
        try:
            if probe.kind == "fits":
                layout = self._fits_layout(probe)
                if layout is None:
                    raise ReaderError(path, f"no wave/flux/ivar|error table or images ({probe.describe()})")
                return self._read_fits(path, layout)
            if probe.kind == "hdf5":
                group = self._hdf5_layout(probe)
                if group is None:
                    raise ReaderError(path, f"no wave/flux/ivar|error datasets ({probe.describe()})")
                return self._read_hdf5(path, group)
        except ReaderError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ReaderError(path, f"cannot read generic spectrum table ({type(exc).__name__}: {exc})") from exc
        raise ReaderError(path, "not a FITS or HDF5 file")

    def _build(self, path: Path, wave, flux, weight, is_err: bool, mask, wunit, funit, eunit, air: bool,
               loglam: bool, metas: list[dict], hdr_meta) -> list[Spectrum]:
        from ..resample import air_to_vacuum

        flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
        weight = np.atleast_2d(np.asarray(weight, dtype=np.float64))
        nspec, npix = flux.shape
        wave = np.asarray(wave, dtype=np.float64)
        wave = np.broadcast_to(wave if wave.ndim == 2 else wave[None, :], (nspec, npix)) if wave.size in (npix, nspec * npix) else None
        if wave is None or weight.shape != flux.shape:
            raise ReaderError(path, f"wave, flux {flux.shape} and {'error' if is_err else 'ivar'} {weight.shape} shapes do not match")
        if mask is not None:
            mask = np.broadcast_to(np.atleast_2d(np.asarray(mask)), flux.shape)
        if loglam:
            wave = 10.0**wave
            wunit = wunit or "Angstrom"
        if not wunit:
            log.warning("%s: wavelength unit not given; assuming Angstrom", path)
            wunit = "Angstrom"
        if not funit:
            log.warning("%s: flux unit not given; assuming %s", path, FLUX_UNIT_STR)
            funit = FLUX_UNIT_STR
        eunit = eunit or funit
        out = []
        for k in range(nspec):
            try:
                w = wave_to_angstrom(wave[k], wunit)
                if air:
                    w = air_to_vacuum(w)
                ff = flux_factor(parse_unit(funit, "flux"), w)
                if is_err:
                    iv = ivar_from_error(weight[k] * flux_factor(parse_unit(eunit, "flux"), w))
                else:
                    # ivar given in funit**-2 (an explicit unit for ivar is rarely written correctly; we trust funit)
                    iv = weight[k] / np.asarray(ff) ** 2
            except ValueError as exc:
                raise ReaderError(path, str(exc)) from exc
            f = flux[k] * ff
            if not np.all(np.diff(w) > 0):
                if np.all(np.diff(w) < 0):
                    w, f, iv = w[::-1], f[::-1], iv[::-1]
                    mk = None if mask is None else mask[k][::-1]
                else:
                    raise ReaderError(path, f"spectrum {k}: wavelengths are not monotonic")
            else:
                mk = None if mask is None else mask[k]
            m = metas[k] if k < len(metas) else {}
            name = _meta_value("name", m, hdr_meta)
            name = str(name).strip() if name is not None else (path.stem + (f":{k}" if nspec > 1 else ""))
            tid = as_int_id(_meta_value("target_id", m, hdr_meta))
            out.append(Spectrum(
                arms=[SpectrumArm(wave=w, flux=f, ivar=iv, mask=mk)],
                source_files=(str(path),),
                reader=self.name,
                name=name,
                ra=_to_float(_meta_value("ra", m, hdr_meta)),
                dec=_to_float(_meta_value("dec", m, hdr_meta)),
                target_id=tid if tid is not None else (stable_id(name) if _meta_value("name", m, hdr_meta) else None),
                z_catalog=_to_float(_meta_value("z", m, hdr_meta)),
                t_exp=_to_float(_meta_value("t_exp", m, hdr_meta)),
            ))
        return out

    def _read_fits(self, path: Path, layout) -> list[Spectrum]:
        from astropy.io import fits

        kind, idx = layout
        with fits.open(path, memmap=False) as hdul:
            hdr0 = dict(hdul[0].header)
            if kind == "table":
                tab = hdul[idx]
                h = tab.header
                names = list(tab.columns.names)
                num = {n: k + 1 for k, n in enumerate(names)}
                cw, cf = _pick(names, WAVE_NAMES), _pick(names, FLUX_NAMES)
                civ, ce = _pick(names, IVAR_NAMES), _pick(names, ERR_NAMES)
                cm, cg = _pick(names, MASK_NAMES), _pick(names, GOOD_NAMES)
                cweight = civ or ce
                d = tab.data
                unit = lambda c: str(h.get(f"TUNIT{num[c]}", "") or "").strip()  # noqa: E731
                air = _is_air(dict(h), hdr0) or "obs.atmos" in str(h.get(f"TUCD{num[cw]}", "")).lower()
                array_cells = np.asarray(d[cf]).ndim == 2
                if array_cells:
                    wave, flux, weight = np.asarray(d[cw]), np.asarray(d[cf]), np.asarray(d[cweight])
                    mask = np.asarray(d[cm]) if cm else ((np.asarray(d[cg]) == 0).astype(np.uint8) if cg else None)
                    metas = []
                    for r in range(len(d)):
                        metas.append({c: d[c][r] for c in names if np.asarray(d[c][r]).ndim == 0})
                else:
                    wave, flux, weight = np.asarray(d[cw]), np.asarray(d[cf])[None, :], np.asarray(d[cweight])[None, :]
                    mask = (np.asarray(d[cm])[None, :] if cm
                            else ((np.asarray(d[cg]) == 0).astype(np.uint8)[None, :] if cg else None))
                    metas = [{}]
                hdr_meta = {**hdr0, **dict(h)}
                return self._build(path, wave, flux, weight, civ is None, mask, unit(cw), unit(cf),
                                   unit(cweight) if civ is None else "", air, cw.upper() == "LOGLAM", metas, hdr_meta)
            names = [h.name.upper() for h in hdul]
            ew, ef = _pick(names, WAVE_NAMES), _pick(names, FLUX_NAMES)
            eiv, ee, em = _pick(names, IVAR_NAMES), _pick(names, ERR_NAMES), _pick(names, MASK_NAMES)
            eweight = eiv or ee
            hw, hf = hdul[ew].header, hdul[ef].header
            wave = np.asarray(hdul[ew].data)
            flux = np.asarray(hdul[ef].data)
            weight = np.asarray(hdul[eweight].data)
            mask = np.asarray(hdul[em].data) if em else None
            air = _is_air(dict(hw), dict(hf), hdr0)
            hdr_meta = {**hdr0, **dict(hf)}
            nspec = np.atleast_2d(flux).shape[0]
            return self._build(path, wave, flux, weight, eiv is None, mask, str(hw.get("BUNIT", "") or ""),
                               str(hf.get("BUNIT", "") or ""), str(hdul[eweight].header.get("BUNIT", "") or "") if eiv is None else "",
                               air, ew == "LOGLAM", [{}] * nspec, hdr_meta)

    def _read_hdf5(self, path: Path, group: str) -> list[Spectrum]:
        import h5py

        with h5py.File(path, "r") as f:
            g = f[group] if group else f
            leaves = list(g.keys())
            kw, kf = _pick(leaves, WAVE_NAMES), _pick(leaves, FLUX_NAMES)
            kiv, ke = _pick(leaves, IVAR_NAMES), _pick(leaves, ERR_NAMES)
            km, kg = _pick(leaves, MASK_NAMES), _pick(leaves, GOOD_NAMES)
            kweight = kiv or ke

            def units(k):
                a = g[k].attrs
                v = a.get("units", a.get("unit", a.get("UNIT", "")))
                return v.decode() if isinstance(v, bytes) else str(v)

            wave, flux, weight = g[kw][()], g[kf][()], g[kweight][()]
            mask = g[km][()] if km else ((g[kg][()] == 0).astype(np.uint8) if kg else None)
            attrs = {**dict(f.attrs), **dict(g.attrs)}
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
            nspec = np.atleast_2d(flux).shape[0]
            metas = [{} for _ in range(nspec)]
            for key, cands in META_KEYS.items():
                for c in cands:
                    k = _pick(leaves, (c,))
                    if k and g[k].ndim == 1 and g[k].shape[0] == nspec and k not in (kw, kf, kweight):
                        vals = g[k][()]
                        for r in range(nspec):
                            metas[r][c] = vals[r]
                        break
            air = _is_air(attrs, dict(g[kw].attrs))
            return self._build(path, wave, flux, weight, kiv is None, mask, units(kw), units(kf),
                               units(kweight) if kiv is None else "", air, kw.upper() == "LOGLAM", metas, attrs)
