"""``survey-infer evaluate CATALOG``: accuracy, calibration and screening metrics against truth columns.

Everything uses the one reliability selection ``z_reliable`` (``(zwarn & BAD_MASK) == 0``). Galaxies in range
are rows with ``kind == 0``; interlopers (stars, galaxies below or above the range) must be marked not
reliable. Metrics: |Δz| < 0.01 before screening and among ``z_reliable`` with the fraction set aside (overall,
per exposure time, per m_H bin); NMAD of Δz/(1+z) and the outlier fraction (|Δz|/(1+z) > 0.05); coverage of
the 68% / 95% intervals; a PIT histogram (from ``pz``); bias, NMAD, outliers (> 0.5 dex) and 68% coverage of
log M★ and log SFR. Plots: z_pred vs z_true, PIT, the screening curve (accuracy vs fraction kept).

Every redshift metric (accuracy before screening, among ``z_reliable``, set aside, 68% / 95% interval coverage)
is also reported by galaxy type (``is_passive``: passive / star-forming), by rest-frame Hα equivalent-width bin
(weak-line galaxies; ``ew_halpha_rest_true`` when the input has it), by template family (``template_family``
when present), by exposure time and by m_H bin, and by type × m_H bin; interlopers by kind. The figure
``evaluate_groups.png`` shows accuracy, accuracy among reliable and coverage per group.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

DZ_OK = 0.01
MAG_BINS = ((21.0, 22.0), (22.0, 23.0), (23.0, 24.0), (24.0, 25.0))


def _nmad(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if x.size else float("nan")


EW_BINS = ((-np.inf, 5.0), (5.0, 20.0), (20.0, 100.0), (100.0, np.inf))  # rest-frame Hα EW (Å)


def _zblock(z, zt, rel, sel, iv: dict | None = None) -> dict:
    """Redshift metrics of the rows ``sel``; with ``iv`` (``z_lo68``… arrays) the interval coverages too."""
    s = sel & np.isfinite(zt)
    n = int(s.sum())
    if n == 0:
        return {"n": 0}
    ok = np.abs(z - zt) < DZ_OK
    ok = np.where(np.isfinite(z), ok, False)
    kept = s & rel
    out = {"n": n, "acc_all": float(ok[s].mean()), "acc_reliable": float(ok[kept].mean()) if kept.any() else float("nan"),
           "set_aside": float(1.0 - kept.sum() / n)}
    if iv is not None and "z_lo68" in iv:
        out["coverage68"] = float(((zt >= iv["z_lo68"]) & (zt <= iv["z_hi68"]))[s].mean())
        out["coverage95"] = float(((zt >= iv["z_lo95"]) & (zt <= iv["z_hi95"]))[s].mean())
    return out


def _group_masks(cat, n: int) -> dict[str, dict[str, np.ndarray]]:
    """Selections by galaxy type, Hα EW bin and template family (those the catalog's truth columns allow)."""
    groups: dict[str, dict[str, np.ndarray]] = {}
    if "is_passive" in cat:
        p = np.asarray(cat["is_passive"].values).astype(bool)
        groups["by_type"] = {"passive": p, "star-forming": ~p}
    if "ew_halpha_rest_true" in cat:
        ew = np.asarray(cat["ew_halpha_rest_true"].values, np.float64)
        groups["by_ew_halpha"] = {(f"<{b:g}" if not np.isfinite(a) else f">{a:g}" if not np.isfinite(b) else f"{a:g}-{b:g}"):
                                  (ew >= a) & (ew < b) for a, b in EW_BINS}
    if "template_family" in cat:
        fam = np.asarray(cat["template_family"].values)
        names = None
        attrs = cat["template_family"].attrs
        if fam.dtype.kind in "iu" and "flag_meanings" in attrs:
            names = dict(zip(np.atleast_1d(attrs.get("flag_values", [])).tolist(), str(attrs["flag_meanings"]).split()))
        groups["by_family"] = {str(names.get(int(f), f) if names else (f.decode() if isinstance(f, bytes) else f)):
                               fam == f for f in np.unique(fam)}
    return groups


def _prop(pred, err, true, sel) -> dict:
    s = sel & np.isfinite(pred) & np.isfinite(true)
    if not s.any():
        return {"n": 0}
    d = pred[s] - true[s]
    return {"n": int(s.sum()), "bias": float(np.median(d)), "nmad": _nmad(d), "outliers_0.5dex": float((np.abs(d) > 0.5).mean()),
            "coverage68": float((np.abs(d) <= err[s]).mean())}


TRUTH_EXTRA = ("template_family", "ew_halpha_rest_true", "sfh_kind", "is_passive", "mag_h", "t_exp", "kind")


def _join_truth(cat, truth):
    """The catalog with the truth columns it lacks (``TRUTH_EXTRA``) taken from the input survey, row by row.

    Raises :class:`~survey_infer.errors.UserError` when the survey's objects are not the catalog's rows.
    """
    if truth.sizes["object"] != cat.sizes["object"] or not np.array_equal(truth["object_id"].values,
                                                                          cat["object_id"].values):
        from .errors import UserError

        raise UserError(f"evaluate --truth {_source(truth)}: its objects are not the catalog's rows "
                        "(object_id differs)")
    extra = {c: ("object", truth[c].values, dict(truth[c].attrs)) for c in TRUTH_EXTRA if c in truth and c not in cat}
    return cat.assign(**extra)


def _source(ds) -> str:
    """The store a dataset was opened from (xarray's ``encoding["source"]``), for messages."""
    return str(ds.encoding.get("source", "<dataset>"))


def _pit_hist(cat, zt: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """PIT values of the selected galaxies inside the grid (CDF of ``pz`` at the truth, linear within the bin)
    and their histogram in 10 bins (fractions)."""
    pz = cat["pz"].values.astype(np.float64)
    zg = cat["z_grid"].values
    dz = float(zg[1] - zg[0])
    cdf = np.cumsum(pz, axis=1)
    idx = np.clip(np.floor((zt - (zg[0] - dz / 2)) / dz).astype(int), 0, len(zg) - 1)
    frac = np.clip((zt - (zg[idx] - dz / 2)) / dz, 0, 1)
    rows = np.arange(len(zt))
    prev = np.where(idx > 0, cdf[rows, np.maximum(idx - 1, 0)], 0.0)
    pit = prev + frac * pz[rows, idx]
    pit = pit[g & (zt >= zg[0] - dz / 2) & (zt <= zg[-1] + dz / 2)]
    hist, _ = np.histogram(pit, bins=10, range=(0, 1))
    return pit, (hist / max(1, hist.sum())).round(4).tolist()


def _redshift_groups(out: dict, cat, z, zt, rel, gal, iv: dict, texp, mag) -> None:
    """Accuracy blocks (:func:`_zblock`) per group into ``out``: type, EW, family, exposure, m_H and crosses."""
    for gname, sels in _group_masks(cat, len(z)).items():
        out[gname] = {k: _zblock(z, zt, rel, gal & m, iv) for k, m in sels.items()}
    out["by_exposure_h"] = {f"{h:g}": _zblock(z, zt, rel, gal & np.isclose(texp, h * 3600.0), iv) for h in (2, 4, 8)}
    out["by_mag_h"] = {f"{a:g}-{b:g}": _zblock(z, zt, rel, gal & (mag >= a) & (mag < b), iv) for a, b in MAG_BINS}
    if "by_type" in out:
        out["by_type_mag_h"] = {f"{t}/{a:g}-{b:g}": _zblock(z, zt, rel, gal & m & (mag >= a) & (mag < b), iv)
                                for t, m in _group_masks(cat, len(z))["by_type"].items() for a, b in MAG_BINS}
    out["by_exposure_h_mag"] = {f"{h:g}h/{a:g}-{b:g}": _zblock(z, zt, rel, gal & np.isclose(texp, h * 3600.0) &
                                                               (mag >= a) & (mag < b))
                                for h in (2, 4, 8) for a, b in MAG_BINS}


def evaluate_catalog(catalog, plots: str | Path | None = None, truth=None) -> dict:
    """Metrics of a catalog against its truth columns (see the module docstring); PNGs into ``plots``.

    The science layer takes data, not files: the caller opens the stores
    (:func:`survey_infer.catalog.store.open_catalog`, :func:`survey_infer.io.survey_store.open_survey`), as
    ``survey-infer evaluate`` and the demo do.

    Parameters
    ----------
    catalog : xarray.Dataset
        An opened catalog (``object`` rows) with ``z_true`` (a simulated input); ``kind``, ``pz``, ``t_exp``,
        ``mag_h`` and the property truths are used when present.
    plots : path, optional
        Folder for ``evaluate*.png``.
    truth : xarray.Dataset, optional
        The survey the catalog was run on: truth columns the catalog does not carry (``template_family``,
        ``ew_halpha_rest_true``, …) are read from it, row by row (the object ids must match).

    Returns
    -------
    dict
        ``catalog`` (its source path), counts, ``redshift`` (:func:`_zblock` of all galaxies in range), the same
        per group (``by_type``, ``by_ew_halpha``, ``by_family``, ``by_exposure_h``, ``by_mag_h``, crosses),
        ``nmad_dz_1pz``, ``outlier_frac_0.05``, ``coverage68``/``95``, interloper rates, ``pit_hist``, property
        metrics (``logmstar``, ``logsfr``, ``logsfr_starforming``) and ``plots_written``.

    Raises
    ------
    UserError
        Not a catalog (no ``z``/``z_reliable``), no ``z_true``, or ``truth``'s objects are not the catalog's rows.
    """
    cat = catalog if truth is None else _join_truth(catalog, truth)
    if "z" not in cat or "z_reliable" not in cat:
        from .errors import UserError

        raise UserError(f"{_source(catalog)} has no z / z_reliable column: not a catalog made by survey-infer run")
    if "z_true" not in cat:
        from .errors import UserError

        raise UserError(f"catalog {_source(catalog)} has no truth column(s) z_true: evaluate needs a simulated "
                        f"input")
    v = {k: cat[k].values for k in ("z", "z_true", "z_reliable", "kind", "z_lo68", "z_hi68", "z_lo95", "z_hi95",
                                   "logmstar", "logmstar_err", "logsfr", "logsfr_err", "quality") if k in cat}
    z, zt, rel = v["z"].astype(np.float64), v["z_true"].astype(np.float64), v["z_reliable"].astype(bool)
    if "kind" in v:
        kind = v["kind"].astype(int)
    else:  # e.g. ingested moons1d spectra: classify by the true redshift
        zg = cat["z_grid"].values
        kind = np.where(zt < zg[0] - 0.0015, 2, np.where(zt > zg[-1] + 0.0015, 3, 0))
    gal = kind == 0
    has = np.isfinite(z)
    texp = cat["t_exp"].values if "t_exp" in cat else np.full(len(z), np.nan)
    mag = cat["mag_h"].values if "mag_h" in cat else np.full(len(z), np.nan)
    out: dict = {"catalog": _source(catalog), "n_objects": int(len(z)), "n_galaxies_in_range": int(gal.sum()),
                 "n_interlopers": int((~gal).sum()), "n_nodata": int((~has).sum())}
    iv = {k: v[k].astype(np.float64) for k in ("z_lo68", "z_hi68", "z_lo95", "z_hi95") if k in v}
    out["redshift"] = _zblock(z, zt, rel, gal, iv)
    _redshift_groups(out, cat, z, zt, rel, gal, iv, texp, mag)
    dzn = (z - zt) / (1 + zt)
    g = gal & has
    out["nmad_dz_1pz"] = _nmad(dzn[g])
    out["outlier_frac_0.05"] = float((np.abs(dzn[g]) > 0.05).mean()) if g.any() else float("nan")
    out["coverage68"] = float(((zt >= v["z_lo68"]) & (zt <= v["z_hi68"]))[g].mean()) if g.any() else float("nan")
    out["coverage95"] = float(((zt >= v["z_lo95"]) & (zt <= v["z_hi95"]))[g].mean()) if g.any() else float("nan")
    inter = ~gal
    out["interlopers_not_reliable"] = float((~rel[inter]).mean()) if inter.any() else float("nan")
    out["interlopers_by_kind"] = {name: float((~rel[kind == k]).mean()) for k, name in
                                  ((1, "star"), (2, "below_range"), (3, "above_range")) if (kind == k).any()}
    pit = None
    if "pz" in cat:
        pit, out["pit_hist"] = _pit_hist(cat, zt, g)
    out["logmstar"] = _prop(v["logmstar"], v["logmstar_err"], cat["logmstar_true"].values, gal) if "logmstar_true" in cat else {}
    out["logsfr"] = _prop(v["logsfr"], v["logsfr_err"], cat["logsfr_true"].values, gal) if "logsfr_true" in cat else {}
    if "by_type" in out and "logsfr_true" in cat:  # SFR matters for star-forming galaxies
        sf = gal & ~np.asarray(cat["is_passive"].values).astype(bool)
        out["logsfr_starforming"] = _prop(v["logsfr"], v["logsfr_err"], cat["logsfr_true"].values, sf)
    if plots:
        import time as _time

        t_plots = _time.time() - 1.0
        _plots(Path(plots), z, zt, rel, gal, has, v["quality"], pit)
        _property_plot(Path(plots), cat, v, gal)
        _group_plot(Path(plots), out)
        out["plots"] = str(plots)
        out["plots_written"] = [str(p) for p in sorted(Path(plots).glob("evaluate*.png"))
                                if p.stat().st_mtime >= t_plots]
    return out


def _property_plot(d: Path, cat, v: dict, gal: np.ndarray) -> None:
    """``evaluate_mstar_sfr.png``: log M* and log SFR against truth, and their error-normalised residuals."""
    props = [p for p in ("logmstar", "logsfr") if f"{p}_true" in cat and p in v]
    if not props:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d.mkdir(parents=True, exist_ok=True)
    rel = v["z_reliable"].astype(bool)
    fig, ax = plt.subplots(1, len(props) + 1, figsize=(5 * (len(props) + 1), 4.6))
    label = {"logmstar": "log M* [dex(solMass)]", "logsfr": "log SFR [dex(solMass / yr)]"}
    for i, p in enumerate(props):
        pred, true = v[p].astype(np.float64), np.asarray(cat[f"{p}_true"].values, np.float64)
        s = gal & np.isfinite(pred) & np.isfinite(true)
        ax[i].scatter(true[s & ~rel], pred[s & ~rel], s=3, c="0.6", label="not reliable")
        ax[i].scatter(true[s & rel], pred[s & rel], s=3, c="C0", label="z_reliable")
        if s.any():
            lo, hi = np.percentile(true[s], [0.5, 99.5])
            ax[i].plot([lo, hi], [lo, hi], "k-", lw=0.5)
            dd = pred[s] - true[s]
            ax[i].set_title(f"{p}: bias {np.median(dd):+.3f}, NMAD {_nmad(dd):.3f} dex")
        ax[i].set(xlabel=f"true {label[p]}", ylabel=label[p])
        ax[i].legend(markerscale=3, fontsize=8)
        err = v.get(f"{p}_err")
        if err is not None:
            r = ((pred - true) / err.astype(np.float64))[s]
            ax[-1].hist(r[np.isfinite(r)], bins=40, range=(-5, 5), histtype="step", density=True, label=p)
    x = np.linspace(-5, 5, 201)
    ax[-1].plot(x, np.exp(-0.5 * x**2) / np.sqrt(2 * np.pi), "k:", lw=1, label="N(0, 1)")
    ax[-1].set(xlabel="(estimate - truth) / error", ylabel="density", title="error calibration (galaxies in range)")
    ax[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(d / "evaluate_mstar_sfr.png", dpi=110)
    plt.close(fig)


def _plots(d: Path, z, zt, rel, gal, has, quality, pit) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.6))
    s = has & gal
    ax[0].scatter(zt[s & ~rel], z[s & ~rel], s=3, c="0.6", label="not reliable")
    ax[0].scatter(zt[s & rel], z[s & rel], s=3, c="C0", label="z_reliable")
    ax[0].plot([0.9, 2.6], [0.9, 2.6], "k-", lw=0.5)
    ax[0].set(xlabel="z_true", ylabel="z (mode)", title="redshift", xlim=(0.85, 2.65), ylim=(0.85, 2.65))
    ax[0].legend(markerscale=3, fontsize=8)
    if pit is not None:
        ax[1].hist(pit, bins=20, range=(0, 1), color="C1")
        ax[1].axhline(len(pit) / 20, color="k", lw=0.8)
    ax[1].set(xlabel="PIT", ylabel="count", title="PIT (flat = calibrated)")
    order = np.argsort(-np.nan_to_num(quality[s], nan=-1))
    ok = (np.abs(z[s] - zt[s]) < DZ_OK)[order]
    kept = np.arange(1, len(ok) + 1) / max(1, len(ok))
    ax[2].plot(kept, np.cumsum(ok) / np.arange(1, len(ok) + 1), "C2")
    ax[2].axhline(0.99, color="k", ls=":", lw=0.8)
    ax[2].axvline(0.88, color="k", ls=":", lw=0.8)
    ax[2].set(xlabel="fraction kept (sorted by quality)", ylabel="|dz| < 0.01 among kept", title="screening curve",
              ylim=(max(0.0, min(0.8, ok.mean() - 0.05)) if len(ok) else 0, 1.001))
    fig.tight_layout()
    fig.savefig(d / "evaluate.png", dpi=110)
    plt.close(fig)


GROUPS = (("by_type", ""), ("by_ew_halpha", "EW(Ha) "), ("by_family", ""), ("by_exposure_h", "h"),
          ("by_mag_h", "m_H "), ("by_type_mag_h", ""))


def _group_plot(d: Path, m: dict) -> None:
    """Bar chart: accuracy before screening, among reliable, and 68% coverage for every group with N ≥ 30."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, acc, accr, c68 = [], [], [], []
    for g, pre in GROUPS:
        for k, b in (m.get(g) or {}).items():
            if b.get("n", 0) >= 30:
                labels.append(f"{k} {pre.strip()}" if pre == "h" else f"{pre}{k}")
                acc.append(b["acc_all"])
                accr.append(b["acc_reliable"])
                c68.append(b.get("coverage68", np.nan))
    if not labels:
        return
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(labels) + 2), 4.6))
    ax.bar(x - 0.27, acc, 0.27, label="|dz|<0.01 (all)")
    ax.bar(x, accr, 0.27, label="among z_reliable")
    ax.bar(x + 0.27, c68, 0.27, label="truth in 68% interval")
    ax.axhline(0.68, color="k", ls=":", lw=0.8)
    ax.axhline(0.99, color="k", ls="--", lw=0.6)
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.02), ylabel="fraction", title="redshift metrics by group (galaxies in range)")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(d / "evaluate_groups.png", dpi=110)
    plt.close(fig)


def format_report(m: dict) -> str:
    r = m["redshift"]
    lines = [f"catalog {m['catalog']}: {m['n_objects']:,} objects ({m['n_galaxies_in_range']:,} galaxies in 0.9-2.6, "
             f"{m['n_interlopers']:,} interlopers, {m['n_nodata']} without data)",
             f"{'selection':<18}{'N':>7}{'|dz|<0.01':>11}{'reliable':>10}{'set aside':>11}",
             f"{'all':<18}{r.get('n', 0):>7}{r.get('acc_all', np.nan):>11.3f}{r.get('acc_reliable', np.nan):>10.3f}"
             f"{r.get('set_aside', np.nan):>11.3f}"]
    lines[-2] += f"{'cov68':>8}{'cov95':>8}"
    lines[-1] += f"{r.get('coverage68', np.nan):>8.3f}{r.get('coverage95', np.nan):>8.3f}"
    for group, pre in GROUPS:
        for k, b in (m.get(group) or {}).items():
            if b.get("n"):
                label = f"{k} h" if pre == "h" else f"{pre}{k}"
                lines.append(f"{label:<18}{b['n']:>7}{b['acc_all']:>11.3f}{b['acc_reliable']:>10.3f}{b['set_aside']:>11.3f}"
                             f"{b.get('coverage68', np.nan):>8.3f}{b.get('coverage95', np.nan):>8.3f}")
    lines.append(f"NMAD dz/(1+z) {m['nmad_dz_1pz']:.5f}   outliers (>0.05) {m['outlier_frac_0.05']:.3f}   "
                 f"coverage 68% {m['coverage68']:.3f}  95% {m['coverage95']:.3f}")
    by_kind = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in (m["interlopers_by_kind"] or {}).items())
    lines.append(f"interlopers marked not reliable: {m['interlopers_not_reliable']:.3f}"
                 + (f" ({by_kind})" if by_kind else ""))
    for p in ("logmstar", "logsfr", "logsfr_starforming"):
        q = m.get(p) or {}
        if q.get("n"):
            lines.append(f"{p:<9} bias {q['bias']:+.3f}  NMAD {q['nmad']:.3f} dex  outliers(>0.5) {q['outliers_0.5dex']:.3f}  "
                         f"68% coverage {q['coverage68']:.3f}")
    if "pit_hist" in m:
        lines.append("PIT deciles: " + " ".join(f"{x:.3f}" for x in m["pit_hist"]))
    return "\n".join(lines)
