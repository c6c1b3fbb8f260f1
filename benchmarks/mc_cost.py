"""MC-dropout cost: T batched head passes vs one deterministic pass vs naive MC (T full forward passes).

All three run the network on the same preprocessed spectra, in this process, with one torch thread:

* **deterministic**: ``run_network(T=1, seed=-1)`` — trunk + head once, no dropout (the pipeline's own
  deterministic mode);
* **MC, T batched**: ``run_network(T, seed)`` — trunk once, T head passes batched (what ``survey-infer run``
  does);
* **naive MC**: T full passes (trunk + head with sample t's dropout masks), the same statistics at the end —
  what MC dropout costs when the dropout sits in the trunk or the head is not batched.

* **MC, one temperature**: the same with the per-object temperature switched off (b = 0, issue 12's session-5
  calibration): what the entropy-dependent temperature (:func:`survey_infer.model.microbatch.object_temperature`)
  costs, measured side by side.

Target (DESIGN §9): T = 50 costs ≤ 1.3× the deterministic pass. A breakdown of the MC pass (mask hashing,
trunk, head, statistics), timed on a replica of ``run_network``'s loop, says where the extra time goes.

Run alone: ``python -m benchmarks.mc_cost``.
"""
from __future__ import annotations

import time

import numpy as np

from . import BenchConfig, Quiet, benchmark_model, log, median, row, simulated_store, standalone

TARGET_RATIO = 1.3


def load_preprocessed(store, n: int, model):
    """First ``n`` spectra of ``store``, preprocessed: ``(x, scalars, object_id)``."""
    import zarr

    from survey_infer.preprocess import preprocess

    g = zarr.open_group(str(store), mode="r", zarr_format=3)
    flux, ivar, oid = g["flux"][:n], g["ivar"][:n], g["object_id"][:n]
    xs, ss = [], []
    for s in range(0, n, 256):
        pp = preprocess(flux[s:s + 256], ivar[s:s + 256], model.instrument, model.sky_mask)
        xs.append(pp.x)
        ss.append(pp.scalars)
    return np.concatenate(xs), np.concatenate(ss), oid


def naive_mc(model, x, sc, oid, T: int, seed: int) -> np.ndarray:
    """T full forward passes per micro-batch (trunk recomputed for every sample); returns the mean PDF."""
    import torch

    from survey_infer.model.inference import MICRO_BATCH, make_masks, pack_micro_batch

    B = MICRO_BATCH
    n = len(x)
    out = np.empty((n, model.zgrid.n))
    with torch.inference_mode():
        for s in range(0, n, B):
            e = min(n, s + B)
            xb, sb, ob, valid = pack_micro_batch(x, sc, oid, np.arange(s, e), np.arange(e - s))
            masks = make_masks(model, ob, valid, T, seed)
            acc = torch.zeros(B, model.zgrid.n + 1, dtype=torch.float64)
            xt, st = torch.from_numpy(xb), torch.from_numpy(sb)
            for t in range(T):
                tr = model.net.trunk(xt, st)
                hd = model.net.head(tr["a"], tr["ctx"], {k: v[:, t:t + 1] for k, v in masks.items()}, tr.get("zadd"))
                logits = torch.cat([hd["logits_z"], hd["logit_out"][..., None]], dim=-1)[:, 0]
                acc += torch.softmax(logits.double(), dim=-1)
            p = (acc / T)[:, :-1]
            out[s:e] = (p / p.sum(1, keepdim=True)).numpy()[:e - s]
    return out


def mc_breakdown(model, x, sc, oid, T: int, seed: int) -> dict:
    """Seconds per stage of the batched MC pass, on a replica of ``run_network``'s per-micro-batch steps."""
    import torch

    from survey_infer.model.inference import MICRO_BATCH, make_masks, pack_micro_batch

    B = MICRO_BATCH
    n = len(x)
    tm = {"masks": 0.0, "trunk": 0.0, "head": 0.0, "statistics": 0.0, "batching": 0.0}
    zc = torch.from_numpy(model.zgrid.centres.astype(np.float32))
    with torch.inference_mode():
        for s in range(0, n, B):
            t0 = time.perf_counter()
            e = min(n, s + B)
            xb, sb, ob, valid = pack_micro_batch(x, sc, oid, np.arange(s, e), np.arange(e - s))
            t1 = time.perf_counter()
            masks = make_masks(model, ob, valid, T, seed)
            t2 = time.perf_counter()
            tr = model.net.trunk(torch.from_numpy(xb), torch.from_numpy(sb))
            t3 = time.perf_counter()
            hd = model.net.head(tr["a"], tr["ctx"], masks, tr.get("zadd"))
            t4 = time.perf_counter()
            logits = torch.cat([hd["logits_z"], hd["logit_out"][..., None]], dim=-1)
            prob = torch.softmax(logits.double(), dim=-1)
            pbar = prob.mean(dim=1)
            pz_t = torch.softmax(hd["logits_z"].double(), dim=-1)
            zmean_t = (pz_t * zc.double()).sum(-1)
            zmean_t.std(dim=1, unbiased=False)
            for name in ("mstar", "sfr"):
                mu = hd[name][..., 0].double()
                torch.exp(hd[name][..., 1].double()).mean(1)
                mu.mean(1), mu.var(1, unbiased=False)
            (pbar[:, :-1] / pbar[:, :-1].sum(1, keepdim=True)).numpy()
            t5 = time.perf_counter()
            for k, a, b in (("batching", t0, t1), ("masks", t1, t2), ("trunk", t2, t3), ("head", t3, t4),
                            ("statistics", t4, t5)):
                tm[k] += b - a
    return {k: v / n for k, v in tm.items()}


def run(cfg: BenchConfig, state: dict) -> dict:
    import torch

    from survey_infer.model.checkpoint import load_model
    from survey_infer.model.inference import run_network

    torch.set_num_threads(1)
    T = cfg.mc_samples
    mdir, kind = benchmark_model(cfg)
    model = load_model(mdir)
    store = simulated_store(cfg, cfg.n_store)
    n = 64 if cfg.quick else int(cfg.options.get("n_spectra") or 512)
    n_naive = 32 if cfg.quick else int(cfg.options.get("n_naive") or 96)
    x, sc, oid = load_preprocessed(store, n, model)
    rows_idx = np.arange(n)
    run_network(model, x[:32], sc[:32], oid[:32], rows_idx[:32], T, 0)  # warm-up
    times = {"deterministic": [], "mc": [], "mc_one_temperature": [], "naive": []}
    slope = model.calibration.get("temperature_entropy_slope", 0.0)
    quiet = []
    for rep in range(cfg.repeats):
        with Quiet(cfg, "mc_cost") as q:
            t0 = time.perf_counter()
            run_network(model, x, sc, oid, rows_idx, 1, -1)
            times["deterministic"].append((time.perf_counter() - t0) / n)
            t0 = time.perf_counter()
            run_network(model, x, sc, oid, rows_idx, T, 0)
            times["mc"].append((time.perf_counter() - t0) / n)
            model.calibration["temperature_entropy_slope"] = 0.0
            t0 = time.perf_counter()
            run_network(model, x, sc, oid, rows_idx, T, 0)
            times["mc_one_temperature"].append((time.perf_counter() - t0) / n)
            model.calibration["temperature_entropy_slope"] = slope
        quiet.append(q.record)
    with Quiet(cfg, "mc_cost naive") as q:
        t0 = time.perf_counter()
        pz_naive = naive_mc(model, x[:n_naive], sc[:n_naive], oid[:n_naive], T, 0)
        times["naive"].append((time.perf_counter() - t0) / n_naive)
    quiet.append(q.record)
    # the naive passes use the same masks as the batched head: same PDFs (to float rounding)
    pz_batched = run_network(model, x[:n_naive], sc[:n_naive], oid[:n_naive], rows_idx[:n_naive], T, 0)["pz"]
    naive_maxdiff = float(np.abs(pz_naive - pz_batched).max())
    bd = mc_breakdown(model, x, sc, oid, T, 0)
    bd1 = mc_breakdown(model, x, sc, oid, 1, -1)
    med = {k: median(v) for k, v in times.items()}
    ratio = med["mc"] / med["deterministic"]
    temp_ratio = med["mc"] / med["mc_one_temperature"]
    naive_ratio = med["naive"] / med["deterministic"]
    busy = any(max(r.get("foreign_cores_before", 0), r.get("foreign_cores_after", 0)) > cfg.max_foreign_cores
               for r in quiet)
    res = {"model_kind": kind, "T": T, "n_spectra": n, "n_naive": n_naive, "seconds_per_spectrum": times,
           "median_s_per_spectrum": med, "ratio_mc_vs_deterministic": ratio, "ratio_naive_vs_deterministic":
           naive_ratio, "speedup_vs_naive": med["naive"] / med["mc"], "naive_vs_batched_pdf_maxdiff": naive_maxdiff,
           "breakdown_T_s_per_spectrum": bd, "breakdown_1_s_per_spectrum": bd1, "quiet": quiet, "busy": busy,
           "mc_added_s_per_spectrum": {k: bd[k] - bd1[k] for k in ("masks", "head", "statistics")},
           "entropy_slope": slope, "ratio_object_temperature_vs_one": temp_ratio}
    state["mc_cost"] = res
    log(f"  mc_cost: det {med['deterministic'] * 1e3:.2f} ms, T={T} {med['mc'] * 1e3:.2f} ms, naive "
        f"{med['naive'] * 1e3:.1f} ms per spectrum")
    mc_parts = {k: bd[k] - bd1[k] for k in ("masks", "head", "statistics")}  # the trunk is the same work
    rows = [
        row("2 MC cost", f"T={T} batched / deterministic (network, per spectrum)", ratio, "×", f"≤ {TARGET_RATIO}",
            ratio <= TARGET_RATIO, f"{med['mc'] * 1e3:.2f} vs {med['deterministic'] * 1e3:.2f} ms/spectrum, 1 thread;"
            f" MC adds " + ", ".join(f"{k} +{v * 1e3:.2f}" for k, v in mc_parts.items()) +
            f" ms to trunk {bd1['trunk'] * 1e3:.2f} ms" + ("; BUSY machine" if busy else "")),
        row("2 MC cost", f"naive MC (T={T} full passes) / deterministic", naive_ratio, "×", "", None,
            f"batched MC is {med['naive'] / med['mc']:.0f}× faster than naive"),
        row("2 MC cost", f"T={T}: per-object temperature / one temperature", temp_ratio, "×", "", None,
            f"{(med['mc'] - med['mc_one_temperature']) * 1e3:+.2f} ms/spectrum (entropy slope b = {slope:g}; "
            "0 means the model has none and both runs are the same)"),
    ]
    return {"rows": rows, "details": res}


def _args(p):
    p.add_argument("--n-spectra", type=int, default=None, help="spectra for the T=1 / T batched timings (512)")
    p.add_argument("--n-naive", type=int, default=None, help="spectra for naive MC (96)")


def main(argv=None) -> int:
    return standalone(run, __doc__.split("\n\n")[0], argv, _args)


if __name__ == "__main__":
    raise SystemExit(main())
