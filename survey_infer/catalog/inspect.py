"""One-object inspection figure: spectrum with masked channels and expected lines, redshift PDF, flags.

``survey-infer inspect CATALOG --object ID [--input STORE] --out PNG`` (:mod:`survey_infer.cli.inspect`) or
:func:`inspect_object` draws

* the spectrum from the input survey store (``--input``, else the catalog's ``input_store`` attribute):
  flux (grey), a 9-channel inverse-variance-weighted smoothing (black) and the 1-sigma noise (red); channels in
  the store's ``sky_mask`` are shaded blue, channels with ``ivar = 0`` or a reduction ``mask`` grey; the
  rest-frame lines of :mod:`survey_infer.lines` are marked at the estimated ``z`` (emission blue, absorption red);
* the MC-averaged PDF ``pz`` over the whole grid and zoomed on the 95% interval, with the 68%/95% intervals
  shaded, the estimate ``z`` and ``z_true`` when the catalog has it;
* the estimates and the zwarn flags decoded (:func:`survey_infer.flags.describe`), bad bits marked.

Only the catalog row and the one spectrum are read (the ``object_id`` columns are scanned block by block).
Matplotlib is used through the Agg canvas directly, so no global backend is changed.
"""
from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import numpy as np

from .. import flags
from ..atomic import atomic_path
from ..errors import UserError
from ..lines import lines_in_range

__all__ = ["inspect_object", "find_row", "flag_lines"]

log = logging.getLogger(__name__)

_SCAN_ROWS = 1 << 20


def find_row(ids, object_id: int, hint: int | None = None) -> int | None:
    """Row index of ``object_id`` in a lazily indexable 1-D array of ids, read ``_SCAN_ROWS`` rows at a time.

    Parameters
    ----------
    ids : xarray.Variable, dask array or ndarray, shape (N,)
        The ``object_id`` column (integers).
    object_id : int
        The id to find.
    hint : int, optional
        A row checked first (e.g. the object's row in another store of the same order).

    Returns
    -------
    int or None
        The first row holding ``object_id`` (a warning when there are several), None when absent.
    """
    n = int(ids.shape[0])
    if hint is not None and 0 <= hint < n and int(np.asarray(_values(ids[hint : hint + 1]))[0]) == object_id:
        return int(hint)
    for a in range(0, n, _SCAN_ROWS):
        block = np.asarray(_values(ids[a : a + _SCAN_ROWS]))
        hit = np.flatnonzero(block == object_id)
        if hit.size:
            if hit.size > 1:
                log.warning("object_id %d appears %d times; using the first row", object_id, hit.size)
            return a + int(hit[0])
    return None


def _values(x):
    if hasattr(x, "values"):
        return x.values
    if hasattr(x, "compute"):
        return x.compute()
    return x


def _catalog_record(ds, row: int) -> dict:
    rec = {}
    for name in ds.variables:
        if ds[name].dims == ("object",):
            rec[name] = np.asarray(ds[name].variable[row : row + 1].values)[0]
    return rec


def _resolve_store(catalog: Path, input_store, attrs: dict) -> Path:
    if input_store is not None:
        p = Path(input_store)
        if not p.exists():
            raise FileNotFoundError(f"input store {p} does not exist")
        return p
    rec = attrs.get("input_store")
    if not rec:
        raise UserError(f"catalog {catalog} does not record its input store; pass --input STORE")
    for p in (Path(rec), catalog.parent / rec):
        if p.exists():
            return p
    raise UserError(f"the input store recorded in catalog {catalog} ({rec}) is not there; pass --input STORE")


_SPECTRUM_VARS = ("flux", "ivar", "wave", "object_id")


def _open_store(store: Path):
    """The survey store's committed rows, read with xarray from its documented Zarr layout (DESIGN §2).

    The output room may not import the input room (layer contracts in ``pyproject.toml``), so the figure reads
    the few variables it draws directly; a store that lacks one is named in one line.
    """
    import warnings

    import xarray as xr

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = xr.open_zarr(str(store), consolidated=False, zarr_format=3, chunks=None)
    except Exception as exc:  # noqa: BLE001 - name the store whatever zarr/xarray says
        raise UserError(f"{store} is not a readable survey store: {exc}") from exc
    if missing := [v for v in _SPECTRUM_VARS if v not in ds.variables]:
        raise UserError(f"survey store {store} lacks variable(s) {', '.join(missing)}")
    n = int(ds.attrs.get("n_objects", ds.sizes.get("object", 0)))
    return ds.isel(object=slice(0, n)) if ds.sizes.get("object", 0) != n else ds


def _load_spectrum(store: Path, object_id: int, hint: int | None) -> dict:
    ds = _open_store(store)
    row = find_row(ds["object_id"].variable, object_id, hint)
    if row is None:
        raise UserError(f"object {object_id} is in the catalog but not in the input store {store}")
    sel = ds.isel(object=row)
    spec = {
        "row": row,
        "wave": np.asarray(ds["wave"].values, dtype=np.float64),
        "flux": np.asarray(sel["flux"].values, dtype=np.float64),
        "ivar": np.asarray(sel["ivar"].values, dtype=np.float64),
        "flux_unit": str(ds["flux"].attrs.get("units", ds.attrs.get("flux_unit", ""))),
    }
    spec["bad"] = ~(spec["ivar"] > 0) | ~np.isfinite(spec["flux"])
    if "mask" in ds:
        spec["bad"] |= np.asarray(sel["mask"].values) != 0
    spec["sky"] = (np.asarray(ds["sky_mask"].values) != 0) if "sky_mask" in ds else np.zeros_like(spec["bad"])
    return spec


def _smooth(flux: np.ndarray, ivar: np.ndarray, good: np.ndarray, width: int = 9) -> np.ndarray:
    w = np.where(good, ivar, 0.0)
    k = np.ones(width)
    num = np.convolve(np.where(good, flux, 0.0) * w, k, mode="same")
    den = np.convolve(w, k, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[~good] = np.nan
    return out


def _with_gaps(wave: np.ndarray, *ys: np.ndarray):
    """Insert NaN between arms (wavelength jumps > 5 median steps) so lines are not drawn across gaps."""
    d = np.diff(wave)
    step = np.median(d) if d.size else 1.0
    cut = np.flatnonzero((d > 5 * step) | (d <= 0)) + 1
    if not cut.size:
        return (wave, *ys)
    return tuple(np.insert(np.asarray(a, dtype=np.float64), cut, np.nan) for a in (wave, *ys))


def _fmt(v, nd=4) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not np.isfinite(f):
        return "nan"
    return f"{f:.{nd}f}"


def _draw_spectrum(ax, spec: dict, z: float, object_id: int) -> None:
    wave, flux, ivar, bad, sky = spec["wave"], spec["flux"], spec["ivar"], spec["bad"], spec["sky"]
    good = ~bad & ~sky
    trans = ax.get_xaxis_transform()
    ax.fill_between(wave, 0, 1, where=sky, transform=trans, step="mid", color="tab:blue", alpha=0.12, lw=0,
                    label="sky_mask")
    ax.fill_between(wave, 0, 1, where=bad, transform=trans, step="mid", color="0.55", alpha=0.35, lw=0,
                    label="ivar = 0 / masked")
    f_plot = np.where(~bad, flux, np.nan)
    sm = _smooth(flux, ivar, good)
    with np.errstate(divide="ignore", invalid="ignore"):
        noise = np.where(ivar > 0, 1.0 / np.sqrt(ivar), np.nan)
    w2, f2, s2, n2 = _with_gaps(wave, f_plot, sm, noise)
    ax.plot(w2, f2, color="0.72", lw=0.4, label="flux")
    ax.plot(w2, s2, color="k", lw=0.7, label="smoothed (9 ch)")
    ax.plot(w2, n2, color="tab:red", lw=0.5, alpha=0.7, label="1-sigma noise")
    ref = sm[np.isfinite(sm)]
    if ref.size > 10:
        lo, hi = np.percentile(ref, [0.5, 99.5])
        pad = 0.25 * (hi - lo) + 1e-12
        # room for the line labels, and for strong emission lines (not for wild spikes)
        top = max(hi + 2.5 * pad, min(1.08 * float(ref.max()), hi + 12 * (hi - lo)))
        ax.set_ylim(lo - pad, top)
    ax.set_xlim(np.nanmin(wave), np.nanmax(wave))
    if np.isfinite(z):
        shown = lines_in_range(z, float(np.nanmin(wave)), float(np.nanmax(wave)))
        last_x, last_label, level = -np.inf, None, 0
        for ln in sorted(shown, key=lambda l: l.observed(z)):
            x = ln.observed(z)
            color = "tab:blue" if ln.kind == "emission" else "tab:red"
            ax.axvline(x, color=color, ls="--", lw=0.7, alpha=0.7)
            close = (x - last_x) < 0.012 * x
            if close and ln.label == last_label:
                continue  # doublet: one label
            level = (level + 1) % 2 if close else 0
            ax.text(x, 0.97 - 0.07 * level, ln.label, transform=trans, rotation=90, ha="right", va="top",
                    fontsize=7, color=color)
            last_x, last_label = x, ln.label
        title_z = f"lines at z = {z:.4f}"
    else:
        title_z = "no redshift estimate: lines not marked"
    ax.set_title(f"object {object_id}: spectrum (store row {spec['row']}); {title_z}", fontsize=9)
    ax.set_xlabel("observed vacuum wavelength [Angstrom]")
    unit = spec["flux_unit"]
    ax.set_ylabel(f"flux [{unit}]" if unit else "flux")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=6, framealpha=0.7, borderaxespad=0.3)


def _draw_pdf(ax, rec: dict, zg, pz, zoom: bool) -> None:
    z = float(rec.get("z", np.nan))
    lo68, hi68 = float(rec.get("z_lo68", np.nan)), float(rec.get("z_hi68", np.nan))
    lo95, hi95 = float(rec.get("z_lo95", np.nan)), float(rec.get("z_hi95", np.nan))
    z_true = float(rec["z_true"]) if "z_true" in rec else np.nan
    if np.isfinite(lo95) and np.isfinite(hi95):
        ax.axvspan(lo95, hi95, color="tab:orange", alpha=0.15, lw=0, label="95%")
    if np.isfinite(lo68) and np.isfinite(hi68):
        ax.axvspan(lo68, hi68, color="tab:orange", alpha=0.35, lw=0, label="68%")
    if pz is not None and zg is not None and np.isfinite(pz).any():
        ax.step(zg, pz, where="mid", color="k", lw=0.8, label="p(z) per bin")
        ax.set_ylim(0, 1.1 * np.nanmax(pz) + 1e-12)
    elif zoom:
        pass
    else:
        ax.text(0.5, 0.5, "pz not stored in this catalog" if pz is None else "pz is NaN (no data)",
                transform=ax.transAxes, ha="center", va="center", fontsize=8, color="0.4")
    if np.isfinite(z):
        ax.axvline(z, color="tab:blue", lw=1.0, label=f"z = {z:.4f}")
    if np.isfinite(z_true):
        ax.axvline(z_true, color="tab:green", lw=1.0, ls="--", label=f"z_true = {z_true:.4f}")
    if zg is not None and len(zg):
        ax.set_xlim(float(zg[0]), float(zg[-1]))
    if zoom:
        pts = [v for v in (lo95, hi95, z, z_true) if np.isfinite(v)]
        if pts:
            a, b = min(pts), max(pts)
            pad = max(0.02, 0.5 * (b - a))
            ax.set_xlim(a - pad, b + pad)
        ax.set_title("zoom on the 95% interval", fontsize=9)
    else:
        ax.set_title("redshift PDF (MC-averaged)", fontsize=9)
        ax.legend(fontsize=6, loc="upper right")
    ax.set_xlabel("z")


def _summary_text(rec: dict, object_id: int, row: int, table: list[dict] | None = None) -> str:
    zw = int(rec.get("zwarn", 0))
    lines = [f"object_id {object_id}   (catalog row {row})"]
    if "run_id" in rec:
        lines[-1] += f"   run_id {int(rec['run_id'])}"
    lines.append(f"z = {_fmt(rec.get('z'))} +- {_fmt(rec.get('z_err'))}   z_mean {_fmt(rec.get('z_mean'))}")
    lines.append(f"68%: [{_fmt(rec.get('z_lo68'))}, {_fmt(rec.get('z_hi68'))}]   "
                 f"95%: [{_fmt(rec.get('z_lo95'))}, {_fmt(rec.get('z_hi95'))}]")
    lines.append(f"z_mc_std {_fmt(rec.get('z_mc_std'))}   pz_conf {_fmt(rec.get('pz_conf'), 3)}   "
                 f"pz_npeaks {rec.get('pz_npeaks', '-')}   quality {_fmt(rec.get('quality'), 3)}")
    if "logmstar" in rec:
        lines.append(f"log M* = {_fmt(rec.get('logmstar'), 2)} +- {_fmt(rec.get('logmstar_err'), 2)} dex(solMass)")
    if "logsfr" in rec:
        lines.append(f"log SFR = {_fmt(rec.get('logsfr'), 2)} +- {_fmt(rec.get('logsfr_err'), 2)} dex(solMass / yr)")
    lines.append(f"S/N {_fmt(rec.get('snr'), 2)}   masked fraction {_fmt(rec.get('masked_fraction'), 3)}")
    truth = [f"{k} {_fmt(rec[k], 4 if k == 'z_true' else 2)}" for k in ("z_true", "logmstar_true", "logsfr_true")
             if k in rec]
    if truth:
        lines.append("truth: " + "   ".join(truth))
    lines.append("")
    if zw < 0 or (zw == 0 and not np.isfinite(float(rec.get("z", np.nan)))):
        lines.append(f"zwarn = {zw} and no estimate: row not computed yet")
        return "\n".join(lines)
    lines += flag_lines(zw, table)
    return "\n".join(lines)


def flag_lines(zwarn: int, table: list[dict] | None = None, width: int = 64) -> list[str]:
    """``zwarn`` decoded with a catalog's bit table, one wrapped line per set bit.

    Parameters
    ----------
    zwarn : int
        The bitmask.
    table : list of dict, optional
        The catalog's ``zwarn_bits`` attribute (its descriptions state its model's thresholds, and an old
        catalog keeps the meanings its bits had); default: :func:`survey_infer.flags.bit_table`.
    width : int
        Characters per line.

    Returns
    -------
    list of str
        ``zwarn = V (0xV)   z_reliable = ...``, then ``BAD``/``info`` NAME: description per set bit (user bits
        as ``USERnn``, bits the table does not name as ``BITnn``).
    """
    from .export.metadata import bit_table_of

    rows = [r for r in bit_table_of({"zwarn_bits": table} if table else None)
            if isinstance(r.get("bit"), int) and not r.get("alias_of")]
    zw = int(zwarn)
    bad_mask = sum(int(r["value"]) for r in rows if r["bad"] and r.get("used", True))
    out = [f"zwarn = {zw} (0x{zw:x})   z_reliable = {(zw & bad_mask) == 0}"]
    by_bit = {int(r["bit"]): r for r in rows}
    set_bits = [i for i in range(32) if zw & (1 << i)]
    if not set_bits:
        out.append("  no flags set")
    for i in set_bits:
        r = by_bit.get(i)
        if r is None:
            out.append(f"  {'USER' if i in flags.USER_BITS else 'BIT'}{i}  "
                       f"({'user bit' if i in flags.USER_BITS else 'not in the bit table'})")
        else:
            out += textwrap.wrap(f"{'BAD ' if r['bad'] else 'info'} {r['name']} ({i}): {r['description']}",
                                 width=width, initial_indent="  ", subsequent_indent="        ")
    return out


def inspect_object(catalog: str | Path, object_id: int, out_png: str | Path, input_store: str | Path | None = None,
                   *, dpi: int = 110) -> Path:
    """Draw the inspection figure of one object and write it as a PNG.

    Parameters
    ----------
    catalog : str or Path
        The Zarr catalog.
    object_id : int
        The object's ``object_id``.
    out_png : str or Path
        Output PNG, 13 x 8.5 inches (replaced if it exists; written to a temporary name, then renamed).
    input_store : str or Path, optional
        Survey store with the spectrum; default: the catalog's ``input_store`` attribute.
    dpi : int
        Resolution in dots per inch.

    Returns
    -------
    Path
        ``out_png``.

    Raises
    ------
    CatalogError
        When the catalog does not exist or is not a catalog.
    UserError
        When ``object_id`` is not in the catalog or the store, or no input store is known.
    FileNotFoundError
        When the given input store does not exist.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .store import open_catalog

    catalog = Path(catalog)
    object_id = int(object_id)
    ds = open_catalog(catalog, dask=False)
    if "object_id" not in ds.variables:
        raise UserError(f"catalog {catalog} has no object_id variable")
    row = find_row(ds["object_id"].variable, object_id)
    if row is None:
        n = int(ds.sizes["object"])
        raise UserError(f"object {object_id} is not in catalog {catalog} ({n} objects; rows of blocks not computed "
                        f"yet carry no object_id: see 'survey-infer status')")
    rec = _catalog_record(ds, row)
    zg = np.asarray(ds["z_grid"].values, dtype=np.float64) if "z_grid" in ds.variables else None
    pz = np.asarray(ds["pz"].variable[row].values, dtype=np.float64) if "pz" in ds.variables else None
    store = _resolve_store(catalog, input_store, dict(ds.attrs))
    spec = _load_spectrum(store, object_id, hint=row)

    fig = Figure(figsize=(13, 8.5), layout="constrained")
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2, 3, height_ratios=[1.25, 1], width_ratios=[1.1, 0.8, 1.1])
    _draw_spectrum(fig.add_subplot(gs[0, :]), spec, float(rec.get("z", np.nan)), object_id)
    _draw_pdf(fig.add_subplot(gs[1, 0]), rec, zg, pz, zoom=False)
    _draw_pdf(fig.add_subplot(gs[1, 1]), rec, zg, pz, zoom=True)
    axt = fig.add_subplot(gs[1, 2])
    axt.axis("off")
    axt.text(0.0, 1.0, _summary_text(rec, object_id, row, ds.attrs.get("zwarn_bits")), transform=axt.transAxes, va="top", ha="left",
             family="monospace", fontsize=7.5)
    fig.suptitle(f"survey-infer inspect: {catalog.name}  object {object_id}", fontsize=10)

    out = Path(out_png)
    with atomic_path(out, fsync=False) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return out
