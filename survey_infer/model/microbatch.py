"""The micro-batch contract shared by the CPU path (:mod:`survey_infer.model.inference`) and the device path
(:mod:`survey_infer.model.hotpath`): the micro-batch size, the dropout-mask streams of the network's dropout
sites, and the MC statistics of one micro-batch of network outputs. Both paths import them from here, so neither
imports the other's module for them.
"""
from __future__ import annotations

import numpy as np
import torch

from .checkpoint import Model

MICRO_BATCH = 32
STREAMS = {"h1": 1, "h2": 2, "mlp_in": 3, "mlp_hidden": 4}
ENTROPY_PIVOT = 0.5  # normalised entropy at which the per-object temperature equals the calibrated one


def object_temperature(model: Model, logits_z: torch.Tensor) -> float | torch.Tensor:
    """The PDF temperature of each object: T_i = T₀ · exp(b · (H_i − ½)).

    H_i is the normalised entropy (0 … 1, divided by ln Z) of softmax(mean over the T passes of the redshift
    logits), at temperature 1: a property of the network's outputs alone, so it needs no truth and no second
    network pass. T₀ (``calibration["temperature"]``) and b (``calibration["temperature_entropy_slope"]``) are
    fitted by :func:`survey_infer.calibrate.calibrate_model` so that the 68% / 95% intervals hold per galaxy type,
    exposure and magnitude, not only overall: one temperature leaves confident (bright, emission-line) PDFs too
    broad and unsure (faint, passive) ones too narrow. This is input-dependent temperature scaling (Ding et al.
    2021, ICCV, "Local temperature scaling"; Joy et al. 2023, AAAI, "Sample-dependent adaptive temperature
    scaling") with the PDF's own entropy as the input.

    Parameters
    ----------
    model : Model
        Supplies ``calibration``.
    logits_z : (B, T, Z) tensor
        The head's redshift logits.

    Returns
    -------
    float (b = 0 or absent: the one calibrated temperature, the previous numerics bit for bit) or (B, 1, 1)
    float64 tensor.
    """
    cal = model.calibration
    temp = float(cal.get("temperature", 1.0))
    slope = float(cal.get("temperature_entropy_slope", 0.0))
    if slope == 0.0:
        return temp
    lm = logits_z.double().mean(dim=1)  # (B, Z)
    logp = torch.log_softmax(lm, dim=-1)
    h = -(logp.exp() * logp).sum(dim=-1) / float(np.log(logits_z.shape[-1]))
    return (temp * torch.exp(slope * (h - ENTROPY_PIVOT)))[:, None, None]


def window_stats(model: Model, hd: dict, mc_samples: int, B: int, zc: torch.Tensor) -> dict[str, torch.Tensor]:
    """MC statistics of one micro-batch of network outputs, on the outputs' device.

    Parameters
    ----------
    model : Model
        Supplies the temperature, target normalisation and error scales (``model.calibration``).
    hd : dict of tensors
        :meth:`SpectrumNet.head` outputs for B objects and T = ``mc_samples`` passes.
    mc_samples : int
        T (1: deterministic pass, MC spreads are 0).
    B : int
        Micro-batch size.
    zc : (Z,) tensor
        Redshift bin centres.

    Returns
    -------
    dict of (B,) float64 tensors (``pz`` is (B, Z)): ``pz``, ``p_outside``, ``z_mc_std``, ``logmstar``,
    ``logmstar_err``, ``logmstar_err_mc``, ``logsfr``, ``logsfr_err``, ``logsfr_err_mc``. The error is the
    square root of the mean heteroscedastic variance plus the MC variance (Kendall & Gal 2017), times the
    calibrated scale.
    """
    Z = model.zgrid.n
    cal = model.calibration
    temp = object_temperature(model, hd["logits_z"])
    tn = cal.get("target_norm", {"logmstar": [10.0, 1.0], "logsfr": [1.0, 1.0]})
    logits = torch.cat([hd["logits_z"], hd["logit_out"][..., None]], dim=-1)  # (B, T, Z+1)
    if isinstance(temp, float):  # one temperature: float32 division, as before per-object temperatures
        prob = torch.softmax((logits / temp).double(), dim=-1)
    else:
        prob = torch.softmax(logits.double() / temp, dim=-1)
    pbar = prob.mean(dim=1)
    p_out = pbar[:, Z]
    pz = pbar[:, :Z] / pbar[:, :Z].sum(dim=1, keepdim=True)
    pz_t = torch.softmax(hd["logits_z"].double() / temp, dim=-1)
    zmean_t = (pz_t * zc.double()).sum(-1)  # (B, T)
    res = {"pz": pz, "p_outside": p_out,
           "z_mc_std": zmean_t.std(dim=1, unbiased=False) if mc_samples > 1
           else torch.zeros(B, dtype=torch.float64, device=pz.device)}
    for name in ("mstar", "sfr"):
        key = "logmstar" if name == "mstar" else "logsfr"
        mu0, sd0 = tn[key]
        mu = hd[name][..., 0].double() * sd0 + mu0
        var = torch.exp(hd[name][..., 1].double()) * sd0 ** 2
        mean = mu.mean(dim=1)
        var_mc = mu.var(dim=1, unbiased=False) if mc_samples > 1 else torch.zeros_like(mean)
        scale = float(cal.get("err_scale", {}).get(key, 1.0))
        res[key] = mean
        res[key + "_err"] = torch.sqrt(var.mean(dim=1) + var_mc) * scale
        res[key + "_err_mc"] = torch.minimum(torch.sqrt(var_mc), res[key + "_err"])
    return res
