"""Post-hoc calibration of a trained model on a validation store: PDF temperature and screening thresholds.

The temperature divides the logits of every MC pass; it is chosen so that the truth falls inside the 95% intervals
for 95% of in-range validation galaxies (the 68% coverage is a secondary term, see ``loss`` in
:func:`calibrate_model`). Then the SCREENED threshold is set by
:func:`survey_infer.screening.calibrate_thresholds`. Both go into ``model.json`` (``calibration``), which
changes the model's sha256: a calibrated model is a different model.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .io.survey_store import open_survey
from .model.checkpoint import load_model, update_meta
from .model.inference import infer_block
from .screening import calibrate_thresholds

log = logging.getLogger(__name__)


def _coverage(cat: dict, zt: np.ndarray, ok: np.ndarray) -> tuple[float, float]:
    c68 = ((zt >= cat["z_lo68"]) & (zt <= cat["z_hi68"]))[ok].mean()
    c95 = ((zt >= cat["z_lo95"]) & (zt <= cat["z_hi95"]))[ok].mean()
    return float(c68), float(c95)


def calibrate_model(model_dir: str | Path, val_store: str | Path, n: int = 4000, mc_samples: int = 20,
                    seed: int = 12345, target_accuracy: float = 0.99, max_set_aside: float = 0.12) -> dict:
    """Fit the temperature and the screening threshold; write them into ``model.json``; return a report."""
    model = load_model(model_dir)
    ds = open_survey(val_store)
    n = min(n, ds.sizes["object"])
    flux, ivar = ds["flux"][:n].values, ds["ivar"][:n].values
    oid = ds["object_id"][:n].values
    zt = ds["z_true"][:n].values.astype(np.float64)
    kind = ds["kind"][:n].values
    inr = kind == 0

    def run(temp: float) -> dict:
        model.calibration["temperature"] = float(temp)
        return infer_block(model, flux, ivar, oid, 0, mc_samples=mc_samples, seed=seed, keep_pz=False)

    def loss(c68: float, c95: float) -> float:
        # the 95% coverage leads: with dz = 0.003 bins and sub-bin true errors, the 68% intervals of a PDF
        # that is right cannot shrink below about one bin, so chasing 68% drives the temperature towards
        # one-hot PDFs and destroys the screening information; 68% is reported as it falls
        return abs(c95 - 0.95) + 0.25 * abs(c68 - 0.68)

    tried: dict[float, tuple] = {}

    def trial(temp: float) -> None:
        temp = round(float(temp), 4)
        if temp not in tried:
            cat = run(temp)
            tried[temp] = (*_coverage(cat, zt, inr), cat)
            log.info("temperature %.3f: coverage 68%%=%.3f 95%%=%.3f", temp, tried[temp][0], tried[temp][1])

    for temp in (0.1, 0.2, 0.4, 0.7, 1.2):  # log-spaced scan, extended while the best is at an edge
        trial(temp)
    for _ in range(4):
        temps = sorted(tried)
        best = min(temps, key=lambda t: loss(*tried[t][:2]))
        if best == temps[0] and best > 0.02:
            trial(best / 2)
        elif best == temps[-1] and best < 20:
            trial(best * 2)
        else:
            break
    for _ in range(2):  # refine between the best and its neighbours (geometric midpoints)
        temps = sorted(tried)
        best = min(temps, key=lambda t: loss(*tried[t][:2]))
        i = temps.index(best)
        for nb in (temps[max(i - 1, 0)], temps[min(i + 1, len(temps) - 1)]):
            if nb != best:
                trial(np.sqrt(best * nb))
    best = min(tried, key=lambda t: loss(*tried[t][:2]))
    c68, c95, cat = tried[best]
    correct = inr & (np.abs(cat["z"] - zt) < 0.01)
    # the set-aside budget is counted among galaxies in range (interlopers are flagged on their own, mostly by
    # OUT_OF_RANGE, and must not eat the budget)
    thr = calibrate_thresholds(np.nan_to_num(cat["quality"][inr]), correct[inr], target_accuracy, max_set_aside)
    # scale the log M* / log SFR errors so that they cover 68% of the validation truths
    err_scale = {}
    for key in ("logmstar", "logsfr"):
        truth = ds[f"{key}_true"][:n].values.astype(np.float64)
        ok = inr & np.isfinite(cat[key]) & np.isfinite(truth) & (cat[key + "_err"] > 0)
        ratio = np.abs(cat[key][ok] - truth[ok]) / cat[key + "_err"][ok]
        err_scale[key] = float(np.quantile(ratio, 0.68)) if ok.sum() > 20 else 1.0
    calib = dict(model.calibration)
    calib["temperature"] = float(best)
    th = dict(calib.get("thresholds", {}))
    th["quality"] = thr["quality"]
    calib["thresholds"] = th
    calib["err_scale"] = err_scale
    calib["report"] = {"coverage68": c68, "coverage95": c95, "n_val": int(n), "mc_samples": mc_samples,
                       **{k: v for k, v in thr.items() if k != "quality"}}
    sha = update_meta(model_dir, calibration=calib)
    return {"temperature": best, "coverage68": c68, "coverage95": c95, "quality_threshold": thr["quality"],
            "err_scale": err_scale,
            **thr, "model_sha256": sha}
