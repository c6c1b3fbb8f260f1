"""Model compute: FLOPs per spectrum (``torch.utils.flop_counter``) and parameter count of the model.

FLOPs are counted by torch's ``FlopCounterMode`` on one inference micro-batch (``MICRO_BATCH`` spectra, the
shape the pipeline runs): the trunk once, the MC head with T samples and with T = 1, and — for the naive MC
reference — T full passes. Only matrix products and convolutions are counted (torch's convention: one
multiply-add = 2 FLOPs); element-wise work (ReLU, softmax, gathers) is not, so the FLOP count is a floor and
the measured time per spectrum is the honest figure (see ``mc_cost``).

Run alone: ``python -m benchmarks.model_compute``.
"""
from __future__ import annotations

import numpy as np

from . import BenchConfig, benchmark_model, row, standalone


def count_flops(model, T: int, B: int | None = None) -> dict:
    """FLOPs of one micro-batch: ``trunk``, ``head_T`` (T samples), ``head_1`` and per-spectrum totals."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from survey_infer.model.inference import MICRO_BATCH, make_masks
    from survey_infer.preprocess import N_CHANNELS

    B = B or MICRO_BATCH
    net = model.net
    W = model.instrument.n_wave
    x = torch.randn(B, N_CHANNELS, W)
    sc = torch.randn(B, net.cfg.n_scalars)
    oid = np.arange(B, dtype=np.int64)
    valid = np.ones(B, bool)
    out = {}
    with torch.inference_mode():
        with FlopCounterMode(display=False) as fc:
            tr = net.trunk(x, sc)
        out["trunk"] = fc.get_total_flops()
        for name, t, seed in (("head_T", T, 0), ("head_1", 1, -1)):
            masks = make_masks(model, oid, valid, t, seed)
            with FlopCounterMode(display=False) as fc:
                net.head(tr["a"], tr["ctx"], masks, tr.get("zadd"))
            out[name] = fc.get_total_flops()
    per = {k: v / B for k, v in out.items()}
    if getattr(net.cfg, "xc_templates", 0):  # FFTs and solves are not counted by FlopCounterMode: analytic
        per["template_scan"] = net.xc.flops_per_spectrum(B)
        per["trunk"] += per["template_scan"]
    per["mc_T"] = per["trunk"] + per["head_T"]
    per["deterministic"] = per["trunk"] + per["head_1"]
    per["naive_T"] = T * per["deterministic"]
    return {"micro_batch": B, "T": T, "per_microbatch": out, "per_spectrum": per}


def run(cfg: BenchConfig, state: dict) -> dict:
    from survey_infer.model.checkpoint import load_model

    mdir, kind = benchmark_model(cfg)
    model = load_model(mdir)
    n_params = int(sum(p.numel() for p in model.net.parameters()))
    by_module = {}
    for name, p in model.net.named_parameters():
        top = name.split(".")[0]
        by_module[top] = by_module.get(top, 0) + int(p.numel())
    fl = count_flops(model, cfg.mc_samples)
    per = fl["per_spectrum"]
    res = {"model_dir": mdir, "model_kind": kind, "architecture": model.cfg.to_dict(), "n_parameters": n_params,
           "parameters_by_module": by_module, "flops": fl, "z_bins": model.zgrid.n,
           "n_wave": model.instrument.n_wave}
    state["model_compute"] = res
    T = cfg.mc_samples
    rows = [
        row("7 compute", "parameters", n_params, "", "", None, kind),
        row("7 compute", f"GFLOP/spectrum, T={T} (trunk + MC head)", per["mc_T"] / 1e9, "GFLOP", "", None,
            f"trunk {per['trunk'] / 1e9:.3f} + head {per['head_T'] / 1e9:.3f}"),
        row("7 compute", "GFLOP/spectrum, deterministic (T=1)", per["deterministic"] / 1e9, "GFLOP", "", None,
            f"naive MC T={T}: {per['naive_T'] / 1e9:.2f} GFLOP"),
    ]
    return {"rows": rows, "details": res}


def main(argv=None) -> int:
    return standalone(run, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
