"""Post-hoc calibration of a trained model on a validation store: PDF temperature and screening thresholds.

The temperature divides the logits of every MC pass; it is chosen so that the truth falls inside the 68% and 95%
intervals for 68% and 95% of in-range validation galaxies (each miss weighted by its tolerance, see ``loss`` in
:func:`calibrate_model`). Then the SCREENED threshold is set by
:func:`survey_infer.screening.calibrate_thresholds`, aiming two binomial standard errors above the accuracy target
so that the target holds on a new survey and not only on the validation sample. Both go into ``model.json``
(``calibration``), which changes the model's sha256: a calibrated model is a different model.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .model.checkpoint import load_model, update_meta
from .model.inference import infer_block
from .screening import calibrate_thresholds
from .errors import CalibrationError, SurveyStoreError

log = logging.getLogger(__name__)

MIN_GALAXIES = 50  # fewer in-range validation galaxies than this cannot fit anything: refused
FEW_GALAXIES = 2000  # below this the threshold's sampling error is large: warned


def _check_settings(n: int, mc_samples: int, target_accuracy: float, max_set_aside: float,
                    margin_sigmas: float) -> None:
    problems = []
    if n < MIN_GALAXIES:
        problems.append(f"n = {n}: at least {MIN_GALAXIES} validation objects are needed (default 5000)")
    if mc_samples < 1:
        problems.append(f"mc_samples = {mc_samples}: at least 1 MC sample is needed (default 50, as run)")
    if not 0.0 < target_accuracy < 1.0:
        problems.append(f"target accuracy {target_accuracy}: must be between 0 and 1 (default 0.99)")
    if not 0.0 <= max_set_aside < 1.0:
        problems.append(f"max set-aside {max_set_aside}: must be in [0, 1) (default 0.12)")
    if margin_sigmas < 0:
        problems.append(f"margin {margin_sigmas} sigma: must be >= 0 (default 2)")
    if problems:
        raise CalibrationError("calibrate: " + "; ".join(problems))


def _coverage(cat: dict, zt: np.ndarray, ok: np.ndarray) -> tuple[float, float]:
    c68 = ((zt >= cat["z_lo68"]) & (zt <= cat["z_hi68"]))[ok].mean()
    c95 = ((zt >= cat["z_lo95"]) & (zt <= cat["z_hi95"]))[ok].mean()
    return float(c68), float(c95)


def _group_coverage(ds, n: int, cat: dict, zt: np.ndarray, inr: np.ndarray) -> dict:
    """68% / 95% interval coverage per galaxy type, exposure and m_H bin (groups with ≥ 30 galaxies)."""
    groups: dict[str, np.ndarray] = {}
    if "is_passive" in ds:
        p = ds["is_passive"][:n].values.astype(bool)
        groups.update({"passive": p, "star-forming": ~p})
    if "t_exp" in ds:
        te = ds["t_exp"][:n].values
        groups.update({f"{h:g}h": np.isclose(te, h * 3600.0) for h in np.unique(np.round(te / 3600.0, 3))})
    if "mag_h" in ds:
        m = ds["mag_h"][:n].values
        groups.update({f"m_H {a}-{a + 1}": (m >= a) & (m < a + 1) for a in (21, 22, 23, 24)})
    out = {}
    for name, sel in groups.items():
        s = sel & inr
        if s.sum() >= 30:
            c68, c95 = _coverage(cat, zt, s)
            out[name] = {"n": int(s.sum()), "coverage68": round(c68, 4), "coverage95": round(c95, 4)}
    return out


def _read_validation(ds, n: int):
    """The first ``n`` objects of the validation survey: ``(n, flux, ivar, object_id, z_true, in_range)``.

    Raises :class:`SurveyStoreError` if truth columns are missing, :class:`CalibrationError` with fewer than
    :data:`MIN_GALAXIES` galaxies in range; warns below :data:`FEW_GALAXIES`.
    """
    val_store = ds.encoding.get("source", "the validation survey")
    missing = [k for k in ("z_true", "kind", "logmstar_true", "logsfr_true") if k not in ds]
    if missing:
        raise SurveyStoreError(f"{val_store}: calibration needs truth columns; missing {', '.join(missing)} "
                               "(use a store made by `survey-infer simulate`)")
    n = min(n, ds.sizes["object"])
    flux, ivar = ds["flux"][:n].values, ds["ivar"][:n].values
    oid = ds["object_id"][:n].values
    zt = ds["z_true"][:n].values.astype(np.float64)
    kind = ds["kind"][:n].values
    inr = kind == 0
    if inr.sum() < MIN_GALAXIES:
        raise CalibrationError(f"calibrate: {val_store} has {int(inr.sum())} galaxies in the model's z range among "
                               f"its first {n} objects; at least {MIN_GALAXIES} are needed")
    if inr.sum() < FEW_GALAXIES:
        log.warning("calibrating on %d galaxies: the screening threshold's sampling error is large "
                    "(use ≥ %d, e.g. `survey-infer simulate --n 5000`)", int(inr.sum()), FEW_GALAXIES)
    return n, flux, ivar, oid, zt, inr


def _coverage_loss(c68: float, c95: float) -> float:
    """Misses in units of the DESIGN §10 tolerances (68 ± 3%, 95 ± 2%); the intervals are resolved below the
    bin width (screening.hpd_interval), so both levels can be honoured by one temperature."""
    return abs(c68 - 0.68) / 0.03 + abs(c95 - 0.95) / 0.02


def _fit_temperature(model, flux, ivar, oid, zt: np.ndarray, inr: np.ndarray, mc_samples: int, seed: int):
    """The PDF temperature minimising :func:`_coverage_loss` on the in-range galaxies.

    Log-spaced scan (0.1 … 1.2), extended by factors of 2 while the best is at an edge (at most 4 times, within
    0.02 … 20), then refined twice at the geometric midpoints between the best and its neighbours. The network
    runs once; each trial temperature only re-normalises its cached outputs. Returns
    ``(temperature, coverage68, coverage95, catalog columns at that temperature)``.
    """
    cache: dict = {}
    tried: dict[float, tuple] = {}

    def trial(temp: float) -> None:
        temp = round(float(temp), 4)
        if temp not in tried:
            model.calibration["temperature"] = float(temp)
            cat = infer_block(model, flux, ivar, oid, 0, mc_samples=mc_samples, seed=seed, keep_pz=False,
                              cache=cache)
            tried[temp] = (*_coverage(cat, zt, inr), cat)
            log.info("temperature %.3f: coverage 68%%=%.3f 95%%=%.3f", temp, tried[temp][0], tried[temp][1])

    for temp in (0.1, 0.2, 0.4, 0.7, 1.2):  # log-spaced scan, extended while the best is at an edge
        trial(temp)
    for _ in range(4):
        temps = sorted(tried)
        best = min(temps, key=lambda t: _coverage_loss(*tried[t][:2]))
        if best == temps[0] and best > 0.02:
            trial(best / 2)
        elif best == temps[-1] and best < 20:
            trial(best * 2)
        else:
            break
    for _ in range(2):  # refine between the best and its neighbours (geometric midpoints)
        temps = sorted(tried)
        best = min(temps, key=lambda t: _coverage_loss(*tried[t][:2]))
        i = temps.index(best)
        for nb in (temps[max(i - 1, 0)], temps[min(i + 1, len(temps) - 1)]):
            if nb != best:
                trial(np.sqrt(best * nb))
    best = min(tried, key=lambda t: _coverage_loss(*tried[t][:2]))
    return (best, *tried[best])


def _fit_threshold(cat: dict, zt: np.ndarray, inr: np.ndarray, target_accuracy: float, max_set_aside: float,
                   margin_sigmas: float) -> dict:
    """The SCREENED quality threshold (:func:`calibrate_thresholds`), aimed ``margin_sigmas`` binomial standard
    errors above the target; returns its report with ``aimed_accuracy``, ``aim_met``, ``target_met``."""
    correct = inr & (np.abs(cat["z"] - zt) < 0.01)
    # the set-aside budget is counted among galaxies in range (interlopers are flagged on their own, mostly by
    # OUT_OF_RANGE, and must not eat the budget)
    # aim ``margin_sigmas`` binomial standard errors above the target: the threshold is fitted on a sample, and
    # a threshold that just reaches the target there falls short on a new survey half of the time (with 2 σ of a
    # 5,000-object validation set and a survey of ≳ 10,000 objects, it holds ~95% of the time)
    n_kept = max(int(inr.sum() * (1.0 - max_set_aside)), 1)
    sigma = float(np.sqrt(target_accuracy * (1.0 - target_accuracy) / n_kept))
    aim = min(target_accuracy + margin_sigmas * sigma, 0.9999)
    thr = calibrate_thresholds(np.nan_to_num(cat["quality"][inr]), correct[inr], aim, max_set_aside)
    thr["aimed_accuracy"], thr["aim_met"] = aim, thr["target_met"]
    thr["target_accuracy"] = target_accuracy
    thr["target_met"] = bool(thr["val_accuracy_kept"] >= target_accuracy)
    if not thr["target_met"]:
        log.warning("the validation accuracy among kept galaxies is %.4f, below the target %.2f, with %.1f%% set "
                    "aside (the cap): this model cannot reach the target within the set-aside budget",
                    thr["val_accuracy_kept"], target_accuracy, 100 * thr["val_set_aside"])
    elif not thr["aim_met"]:
        log.warning("the validation accuracy among kept galaxies is %.4f: the target %.2f is met but not the "
                    "aimed %.4f (target + %.1f sigma), because %.1f%% set aside is the cap; expect about the target "
                    "on a new survey", thr["val_accuracy_kept"], target_accuracy, aim, margin_sigmas,
                    100 * thr["val_set_aside"])
    return thr


def _err_scales(ds, n: int, cat: dict, inr: np.ndarray) -> dict[str, float]:
    """Factors on the log M* / log SFR errors so that they cover 68% of the validation truths (1 with ≤ 20)."""
    err_scale = {}
    for key in ("logmstar", "logsfr"):
        truth = ds[f"{key}_true"][:n].values.astype(np.float64)
        ok = inr & np.isfinite(cat[key]) & np.isfinite(truth) & (cat[key + "_err"] > 0)
        ratio = np.abs(cat[key][ok] - truth[ok]) / cat[key + "_err"][ok]
        err_scale[key] = float(np.quantile(ratio, 0.68)) if ok.sum() > 20 else 1.0
    return err_scale


def calibrate_model(model_dir: str | Path, val, n: int = 5000, mc_samples: int = 50,
                    seed: int = 12345, target_accuracy: float = 0.99, max_set_aside: float = 0.12,
                    margin_sigmas: float = 2.0) -> dict:
    """Fit the temperature, the screening threshold and the error scales; write them into ``model.json``.

    Parameters
    ----------
    model_dir : path
        Model directory (``model.json`` + ``model.safetensors``); its ``model.json`` is rewritten.
    val : xarray.Dataset
        The validation survey, opened (:func:`survey_infer.io.survey_store.open_survey`: the science layer
        takes data, not files), with truth columns (``z_true``, ``kind``, ``logmstar_true``, ``logsfr_true``).
    n : int
        Validation objects used (the first ``n``; held in memory, ~0.1 GB per 1,000).
    mc_samples, seed : int
        MC-dropout samples and seed of the inference (as ``run``: the PDF's shape depends on T).
    target_accuracy : float
        Fraction with |Δz| < 0.01 among kept galaxies.
    max_set_aside : float
        Largest fraction of in-range galaxies set aside.
    margin_sigmas : float
        Aim this many binomial standard errors above the target.

    Returns
    -------
    dict
        ``temperature``, ``coverage68``, ``coverage95``, ``quality_threshold``, ``err_scale``, the threshold
        report (``val_accuracy_kept``, ``val_set_aside``, ``target_met``, ...) and the new ``model_sha256``.

    Raises
    ------
    CalibrationError
        Settings out of range, or too few galaxies in range.
    SurveyStoreError
        The survey lacks truth columns.
    CheckpointError
        The model cannot be loaded.
    """
    _check_settings(n, mc_samples, target_accuracy, max_set_aside, margin_sigmas)
    model = load_model(model_dir)
    ds = val
    n, flux, ivar, oid, zt, inr = _read_validation(ds, n)
    # calibrate from the raw network: a previous calibration's error scale must not compound with the new one
    model.calibration.pop("err_scale", None)
    best, c68, c95, cat = _fit_temperature(model, flux, ivar, oid, zt, inr, mc_samples, seed)
    thr = _fit_threshold(cat, zt, inr, target_accuracy, max_set_aside, margin_sigmas)
    err_scale = _err_scales(ds, n, cat, inr)
    calib = dict(model.calibration)
    calib["temperature"] = float(best)
    th = dict(calib.get("thresholds", {}))
    th["quality"] = thr["quality"]
    calib["thresholds"] = th
    calib["err_scale"] = err_scale
    calib["report"] = {"coverage68": c68, "coverage95": c95, "n_val": int(n), "mc_samples": mc_samples,
                       **{k: v for k, v in thr.items() if k != "quality"},
                       "coverage_by_group": _group_coverage(ds, n, cat, zt, inr)}
    sha = update_meta(model_dir, calibration=calib)
    return {"temperature": best, "coverage68": c68, "coverage95": c95, "quality_threshold": thr["quality"],
            "err_scale": err_scale,
            **thr, "model_sha256": sha}
