"""Generic spectrum tables in FITS or HDF5 (the fallback reader; tried after every specific format).

What it accepts (column / dataset names are case-insensitive):

==========  ==========================================================================================
role        accepted names
==========  ==========================================================================================
wavelength  ``wave``, ``wavelength``, ``lambda``, ``lam``, ``loglam`` (log10 of lambda)
flux        ``flux``, ``f_lambda``, ``flam``, ``fnu``
weight      ``ivar`` / ``inverse_variance``, or a 1 sigma error ``error``, ``err``, ``sigma``, ``flux_err``,
            ``noise``, ``uncertainty``
mask        optional: ``mask``, ``and_mask``, ``qual``, ``quality``, ``dq`` (non-zero = bad); or ``valid``/``good``
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

Several spectra: every table HDU (FITS) and every group (HDF5) holding those names is read; several ``FLUX``
images in one file are refused with their count. FITS null markers (``TNULLn``, ``BLANK``) and HDF5
``_FillValue``/``missing_value`` mark missing values. Logarithmic wavelength units (``dex(Angstrom)``,
``log(um)``, ``ln(Angstrom)``) are converted to the length inside.

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

from .base import (
    FLUX_UNIT_STR,
    FileProbe,
    ReaderError,
    Spectrum,
    SpectrumReader,
    as_int_id,
    astropy_table,
    attr_str,
    build_arms,
    flux_factor,
    image_data,
    is_log_unit,
    ivar_from_error,
    log,
    open_fits,
    parse_unit,
    stable_id,
    wave_to_angstrom,
)

WAVE_NAMES = ("WAVE", "WAVELENGTH", "LAMBDA", "LAM", "LOGLAM")
FLUX_NAMES = ("FLUX", "F_LAMBDA", "FLAM", "FNU")
IVAR_NAMES = ("IVAR", "INVERSE_VARIANCE", "INV_VAR")
ERR_NAMES = ("ERROR", "ERR", "SIGMA", "FLUX_ERR", "FLUX_ERROR", "NOISE", "UNCERTAINTY")
MASK_NAMES = ("MASK", "AND_MASK", "QUAL", "QUALITY", "DQ")
GOOD_NAMES = ("VALID", "GOOD")
META_KEYS = {
    "ra": ("RA", "TARGET_RA"),
    "dec": ("DEC", "TARGET_DEC"),
    "z": ("Z", "REDSHIFT", "Z_CATALOG", "ZSPEC", "Z_SPEC"),
    "target_id": ("TARGETID", "TARGET_ID", "OBJID", "OBJECT_ID", "SOURCE_ID", "SOURCEID", "SRCID"),
    "name": ("NAME", "OBJECT", "OBJNAME", "SRCNAME"),
    "t_exp": ("T_EXP", "EXPTIME", "TEXPTIME"),
}


def _pick(names, cands) -> str | None:
    up = {str(n).upper(): n for n in names}
    for c in cands:
        if c in up:
            return up[c]
    return None


def _is_air(*dicts) -> bool:
    """True when a header / attribute set says the wavelengths are in air (string attributes in any form:
    str, bytes, numpy strings, one-element arrays)."""
    for d in dicts:
        if d is None:
            continue
        up = {str(k).upper(): v for k, v in dict(d).items()}
        for k in ("AIRORVAC", "WAVE_MEDIUM"):
            if k in up and attr_str(up[k]).lower().startswith("air"):
                return True
        if "VACUUM" in up:
            v = up["VACUUM"]
            if isinstance(v, np.ndarray) and v.size == 1:
                v = v.ravel()[0]
            if isinstance(v, (bool, np.bool_, int, np.integer)) and not isinstance(v, str):
                if not bool(v):
                    return True
            elif attr_str(v).lower() in ("f", "false", "0", "no"):
                return True
    return False


def _meta_lookup(key: str, *sources) -> tuple[str | None, object]:
    """The first usable value of metadata ``key`` in ``sources`` (dicts, headers, rows; None skipped).

    Returns
    -------
    (name, value)
        ``name`` is the column / keyword / attribute as written, ``value`` a str or number; a masked cell (FITS
        TNULLn / HDF5 _FillValue) gives ``(name, None)`` (unknown); nothing usable gives ``(None, None)``.
    """
    for src in sources:
        if src is None:
            continue
        for k in META_KEYS[key]:
            for kk in (k, k.lower()):
                if kk in src:
                    v = src[kk]
                    if v is np.ma.masked or isinstance(v, np.ma.core.MaskedConstant):
                        return kk, None
                    if isinstance(v, (bytes, np.bytes_, np.str_)) or (isinstance(v, np.ndarray) and v.dtype.kind in "SU"):
                        v = attr_str(v)
                    if v is None or (isinstance(v, str) and not v.strip()):
                        continue
                    return kk, v
    return None, None


def _meta_value(key: str, *sources):
    """The value of :func:`_meta_lookup` (None when unknown)."""
    return _meta_lookup(key, *sources)[1]


def _to_float(v) -> float:
    if v is np.ma.masked or isinstance(v, np.ma.core.MaskedConstant):
        return float("nan")
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def _filled(a, fill) -> np.ndarray:
    """A plain array from a possibly masked one (masked cells -> ``fill``)."""
    if isinstance(a, np.ma.MaskedArray):
        m = np.ma.getmaskarray(a)
        if m.any():
            kind = a.dtype.kind
            if isinstance(fill, float) and np.isnan(fill) and kind not in "fc":
                a = a.astype(np.float64)
            return np.ma.filled(a, fill)
        return np.asarray(a.data)
    return np.asarray(a)


def _h5_read(ds) -> np.ndarray:
    """An HDF5 dataset's values, with cells equal to its ``_FillValue`` / ``missing_value`` attribute masked
    (netCDF/CF null markers)."""
    a = ds[()]
    for key in ("_FillValue", "missing_value"):
        if key in ds.attrs and np.asarray(a).dtype.kind in "iuf":
            fv = np.asarray(ds.attrs[key]).ravel()
            if fv.size:
                miss = np.isin(a, fv)
                if np.any(miss):
                    return np.ma.masked_array(a, mask=miss)
    return a


class GenericTableReader(SpectrumReader):
    """Fallback reader for FITS tables / FITS images / HDF5 files holding wave, flux, ivar-or-error (+ mask).

    Every table HDU (FITS) and every group (HDF5) holding the wave / flux / weight names is read, so a container
    with several spectra (e.g. a JWST x1d file with several ``EXTRACT1D`` tables) gives all of them.
    """

    name = "generic"
    priority = 90

    # ----------------------------------------------------------------- sniffing
    @staticmethod
    def _table_hdus(probe: FileProbe) -> list[int]:
        out = []
        for i, (n, t, h) in enumerate(probe.hdus):
            if t == "table":
                cols = probe.table_columns(i)
                if _pick(cols, WAVE_NAMES) and _pick(cols, FLUX_NAMES) and (_pick(cols, IVAR_NAMES) or _pick(cols, ERR_NAMES)):
                    out.append(i)
        return out

    def _fits_layout(self, probe: FileProbe):
        tables = self._table_hdus(probe)
        if tables:
            return ("table", tables)
        names = probe.hdu_names()
        if _pick(names, WAVE_NAMES) and _pick(names, FLUX_NAMES) and (_pick(names, IVAR_NAMES) or _pick(names, ERR_NAMES)):
            return ("images", None)
        return None

    @staticmethod
    def _hdf5_groups(probe: FileProbe) -> list[str]:
        groups: dict[str, list[str]] = {}
        for k in probe.hdf5_keys:
            parent, _, leaf = k.rpartition("/")
            groups.setdefault(parent, []).append(leaf)
        return [parent for parent, leaves in sorted(groups.items(), key=lambda kv: (kv[0].count("/"), kv[0]))
                if _pick(leaves, WAVE_NAMES) and _pick(leaves, FLUX_NAMES)
                and (_pick(leaves, IVAR_NAMES) or _pick(leaves, ERR_NAMES))]

    def _hdf5_layout(self, probe: FileProbe):
        groups = self._hdf5_groups(probe)
        return groups[0] if groups else None

    def can_read_probe(self, probe: FileProbe) -> bool:
        """Content test on an already sniffed file (see :meth:`.SpectrumReader.can_read_probe`)."""
        if probe.kind == "fits":
            return self._fits_layout(probe) is not None
        if probe.kind == "hdf5":
            return bool(self._hdf5_groups(probe))
        return False

    # ----------------------------------------------------------------- reading
    def read(self, path: str | os.PathLike) -> list[Spectrum]:
        """Every spectrum in ``path`` (see :meth:`.SpectrumReader.read`; raises :class:`ReaderError`)."""
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
                groups = self._hdf5_groups(probe)
                if not groups:
                    raise ReaderError(path, f"no wave/flux/ivar|error datasets ({probe.describe()})")
                out = []
                for g in groups:
                    out += self._read_hdf5(path, g, tag=(g or "/") if len(groups) > 1 else "")
                return out
        except ReaderError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ReaderError(path, f"cannot read generic spectrum table ({type(exc).__name__}: {exc})") from exc
        raise ReaderError(path, "not a FITS or HDF5 file")

    def _build(self, path: Path, wave, flux, weight, is_err: bool, mask, wunit, funit, eunit, air: bool,
               loglam: bool, metas: list[dict], hdr_meta, tag: str = "") -> list[Spectrum]:
        from ..resample import air_to_vacuum

        wave = _filled(wave, np.nan)
        flux = _filled(flux, np.nan)
        weight = _filled(weight, np.nan)
        if mask is not None:
            mask = _filled(mask, 1)
        where = f"{tag}: " if tag else ""
        if np.asarray(flux).size == 0 or np.asarray(wave).size == 0:
            raise ReaderError(path, f"{where}empty spectrum: no pixels (the table / datasets hold zero rows)")
        flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
        weight = np.atleast_2d(np.asarray(weight, dtype=np.float64))
        nspec, npix = flux.shape
        if npix == 0:
            raise ReaderError(path, f"{where}empty spectrum: no pixels")
        wave = np.asarray(wave, dtype=np.float64)
        wave = np.broadcast_to(wave if wave.ndim == 2 else wave[None, :], (nspec, npix)) if wave.size in (npix, nspec * npix) else None
        if wave is None or weight.shape != flux.shape:
            raise ReaderError(path, f"{where}wave, flux {flux.shape} and {'error' if is_err else 'ivar'} {weight.shape} shapes do not match")
        if mask is not None:
            mask = np.broadcast_to(np.atleast_2d(np.asarray(mask)), flux.shape)
        wunit = attr_str(wunit)
        funit = attr_str(funit)
        eunit = attr_str(eunit)
        if loglam and not (wunit and is_log_unit(wunit)):
            # a log10(lambda) column: its unit (if any) is that of lambda
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
            label = f"{where}spectrum {k}: " if (nspec > 1 or where) else ""
            try:
                w = wave_to_angstrom(wave[k], wunit)
                if air:
                    w = air_to_vacuum(w)
                ff = flux_factor(parse_unit(funit, "flux"), np.where(np.isfinite(w) & (w > 0), w, 1.0))
                if is_err:
                    iv = ivar_from_error(weight[k] * flux_factor(parse_unit(eunit, "flux"),
                                                                 np.where(np.isfinite(w) & (w > 0), w, 1.0)))
                else:
                    # ivar given in funit**-2 (an explicit unit for ivar is rarely written correctly; we trust funit)
                    iv = weight[k] / np.asarray(ff) ** 2
            except ValueError as exc:
                raise ReaderError(path, f"{label}{exc}") from exc
            f = flux[k] * ff
            arms = build_arms(path, w, f, iv, None if mask is None else mask[k], label=label)
            m = metas[k] if k < len(metas) else {}
            name = _meta_value("name", m, hdr_meta)
            default_name = path.stem + (f":{tag}" if tag else "") + (f":{k}" if nspec > 1 else "")
            name = str(name).strip() if name is not None else default_name
            tid_name, tid_value = _meta_lookup("target_id", m, hdr_meta)
            tid = as_int_id(tid_value, path, f"{where}target id {tid_name}")
            out.append(Spectrum(
                arms=arms,
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
        kind, tables = layout
        with open_fits(path) as hdul:
            hdr0 = dict(hdul[0].header)
            if kind == "table":
                out: list[Spectrum] = []
                for idx in tables:
                    tab = hdul[idx]
                    tag = ""
                    if len(tables) > 1:
                        ver = tab.header.get("EXTVER")
                        tag = f"HDU {idx}" + (f" ({tab.name or 'table'}" + (f" ver {ver})" if ver is not None else ")"))
                    out += self._read_fits_table(path, tab, hdr0, tag)
                return out
            names = [h.name.upper() for h in hdul]
            ew, ef = _pick(names, WAVE_NAMES), _pick(names, FLUX_NAMES)
            eiv, ee, em = _pick(names, IVAR_NAMES), _pick(names, ERR_NAMES), _pick(names, MASK_NAMES)
            eweight = eiv or ee
            for role in (ew, ef, eweight):
                n_role = names.count(role)
                if n_role > 1:
                    raise ReaderError(path, f"holds {n_role} {role} images (several spectra, e.g. one per EXTVER); "
                                            f"this reader takes one set of WAVE/FLUX/IVAR images per file: split the "
                                            f"file or write the spectra as rows of 2-D images")
            hw, hf = hdul[ew].header, hdul[ef].header
            wave = image_data(hdul[ew])
            flux = image_data(hdul[ef])
            weight = image_data(hdul[eweight])
            mask = image_data(hdul[em]) if em else None
            if mask is not None:
                mask = np.where(np.isfinite(mask), mask, 1)
            air = _is_air(dict(hw), dict(hf), hdr0)
            hdr_meta = {**hdr0, **dict(hf)}
            nspec = np.atleast_2d(flux).shape[0] if flux.size else 0
            return self._build(path, wave, flux, weight, eiv is None, mask, str(hw.get("BUNIT", "") or ""),
                               str(hf.get("BUNIT", "") or ""), str(hdul[eweight].header.get("BUNIT", "") or "") if eiv is None else "",
                               air, ew == "LOGLAM", [{}] * nspec, hdr_meta)

    def _read_fits_table(self, path: Path, tab, hdr0: dict, tag: str) -> list[Spectrum]:
        h = tab.header
        names = list(tab.columns.names)
        num = {n: k + 1 for k, n in enumerate(names)}
        cw, cf = _pick(names, WAVE_NAMES), _pick(names, FLUX_NAMES)
        civ, ce = _pick(names, IVAR_NAMES), _pick(names, ERR_NAMES)
        cm, cg = _pick(names, MASK_NAMES), _pick(names, GOOD_NAMES)
        cweight = civ or ce
        where = f"{tag}: " if tag else ""
        # astropy's Table honours the FITS null markers: TNULLn integer cells come back masked (unknown)
        d = astropy_table(tab)
        if len(d) == 0:
            raise ReaderError(path, f"{where}empty spectrum table: no rows (no pixels, no spectrum)")
        unit = lambda c: str(h.get(f"TUNIT{num[c]}", "") or "").strip()  # noqa: E731
        air = _is_air(dict(h), hdr0) or "obs.atmos" in str(h.get(f"TUCD{num[cw]}", "")).lower()
        col = lambda c: np.ma.asarray(d[c]) if getattr(d[c], "mask", None) is not None else np.asarray(d[c])  # noqa: E731
        array_cells = np.asarray(d[cf]).ndim == 2
        if array_cells:
            wave, flux, weight = col(cw), col(cf), col(cweight)
            mask = col(cm) if cm else ((_filled(col(cg), 0) == 0).astype(np.uint8) if cg else None)
            scalars = [c for c in names if np.asarray(d[c]).ndim == 1]
            metas = [{c: d[c][r] for c in scalars} for r in range(len(d))]
        else:
            wave, flux, weight = col(cw), col(cf)[None, :], col(cweight)[None, :]
            mask = (col(cm)[None, :] if cm else ((_filled(col(cg), 0) == 0).astype(np.uint8)[None, :] if cg else None))
            metas = [{}]
        hdr_meta = {**hdr0, **dict(h)}
        return self._build(path, wave, flux, weight, civ is None, mask, unit(cw), unit(cf),
                           unit(cweight) if civ is None else "", air, cw.upper() == "LOGLAM", metas, hdr_meta, tag)

    def _read_hdf5(self, path: Path, group: str, tag: str = "") -> list[Spectrum]:
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
                return attr_str(a.get("units", a.get("unit", a.get("UNIT", a.get("UNITS", "")))))

            wave, flux, weight = _h5_read(g[kw]), _h5_read(g[kf]), _h5_read(g[kweight])
            mask = _filled(_h5_read(g[km]), 1) if km else ((_filled(_h5_read(g[kg]), 0) == 0).astype(np.uint8) if kg else None)
            # file attributes, then those of the groups down to this one (nearest wins)
            attrs = dict(f.attrs)
            if group:
                parts = group.split("/")
                for i in range(1, len(parts) + 1):
                    attrs.update(dict(f["/".join(parts[:i])].attrs))
            attrs = {k: (attr_str(v) if isinstance(v, (bytes, np.bytes_, np.str_)) or
                         (isinstance(v, np.ndarray) and v.dtype.kind in "SUO" and v.size == 1) else v)
                     for k, v in attrs.items()}
            nspec = np.atleast_2d(flux).shape[0] if np.asarray(flux).size else 0
            metas = [{} for _ in range(nspec)]
            for key, cands in META_KEYS.items():
                for c in cands:
                    k = _pick(leaves, (c,))
                    if k and g[k].ndim == 1 and g[k].shape[0] == nspec and k not in (kw, kf, kweight):
                        vals = _h5_read(g[k])
                        for r in range(nspec):
                            metas[r][c] = vals[r]
                        break
            air = _is_air(attrs, dict(g[kw].attrs))
            return self._build(path, wave, flux, weight, kiv is None, mask, units(kw), units(kf),
                               units(kweight) if kiv is None else "", air, kw.upper() == "LOGLAM", metas, attrs, tag)
