"""Capacity model: wall time and node-hours for a survey from measured per-block times and overheads.

The model of one ``survey-infer run`` of N spectra on W workers with blocks of B spectra (the runner's default
block size unless given):

    wall = t_fixed + makespan(N, W, B),   one block takes  a + c·B  on a worker,

where makespan is the greedy schedule the runner produces (each worker takes the next block when it is free;
the last block may be short), ``c`` is the measured worker time per spectrum inside tasks (all stages plus the
in-task work outside them), ``a`` the measured scheduler gap per block, and ``t_fixed`` the start-up and
finalisation (interpreter, cluster start, model loading, catalog creation, closing) — all three fitted on the
benchmark run (12,000 spectra, ``pipeline_efficiency``). The model is then checked against ``survey-infer run``
on stores and worker counts it was not fitted on (target: within 15%), and projected to 0.5 M (MOONS),
40 M (DESI) and 100 M spectra on W CPU workers (one per core; node-hours for 16-core nodes) and — when
``benchmarks/results/gpu.json`` holds a measurement from a GPU machine — on W GPU workers.

The projection assumes compute-bound workers: at large W the shared file system's bandwidth (read ≈ 100 kB
per spectrum) and the scheduler (≈ 1 task per B spectra) must keep up; the note in docs/benchmarks.md says
when they would not.

Run alone: ``python -m benchmarks.capacity``.
"""
from __future__ import annotations

import heapq
import json
import math
from pathlib import Path

import numpy as np

from . import (RESULTS, BenchConfig, Quiet, benchmark_model, cli_run, log, median, read_markers, row,
               simulated_store, standalone)

TARGET = 0.15
SURVEYS = {"MOONS 0.5 M": 500_000, "DESI 40 M": 40_000_000, "100 M": 100_000_000}
CPU_WORKERS = (2, 16, 64, 256, 1024)
GPU_WORKERS = (1, 4, 16, 64)
CORES_PER_NODE = 16


def block_objects(n: int, workers: int) -> int:
    from survey_infer.pipeline.runner import default_block_objects

    return default_block_objects(n, workers)


def makespan(n: int, workers: int, B: int, a: float, c: float) -> float:
    """Greedy schedule of ceil(n/B) blocks (a + c·size seconds each) on ``workers`` workers."""
    sizes = [B] * (n // B) + ([n % B] if n % B else [])
    if len(sizes) > 200_000:  # identical blocks: closed form
        k = math.ceil(len(sizes) / workers)
        return k * (a + c * B)
    free = [0.0] * workers
    heapq.heapify(free)
    end = 0.0
    for s in sizes:
        t = heapq.heappop(free) + a + c * s
        end = max(end, t)
        heapq.heappush(free, t)
    return end


def predict(n: int, workers: int, params: dict, B: int | None = None) -> float:
    B = B or block_objects(n, workers)
    return params["t_fixed"] + makespan(n, workers, B, params["a"], params["c"])


def fit(pipe: dict) -> dict:
    """``c``, ``a``, ``t_fixed`` from the benchmark run (``pipeline_efficiency`` details)."""
    inst = pipe["instrumented"]
    n, W = inst["n"], inst["workers"]
    c = inst["task_busy_s"] / n
    a = inst["gaps_s"] / max(1, inst["blocks"] - W)
    walls = [r["wall_s"] for r in pipe["end_to_end"]]
    B = inst["block_objects"]
    t_fixed = median(walls) - makespan(n, W, B, a, c)
    return {"c": c, "a": a, "t_fixed": t_fixed, "fit_n": n, "fit_workers": W, "fit_block_objects": B,
            "fit_wall_s": median(walls)}


def gpu_params(path: Path) -> dict | None:
    """Per-spectrum time and fixed cost of one GPU worker, from a gpu.py result (None when there is none)."""
    if not path.exists():
        return None
    try:
        g = json.loads(path.read_text())
        d = g.get("details", g)
        if d.get("smoke") or d.get("skipped"):
            return None
        e2e = d["end_to_end"]
        return {"c": 1.0 / e2e["sustained_spectra_per_s"], "a": 0.0, "t_fixed": e2e.get("startup_s", 10.0),
                "source": str(path), "hardware": g.get("hardware", {})}
    except (KeyError, ValueError, TypeError):
        return None


def plot(path: Path, params: dict, checks: list[dict], gpu: dict | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ns = np.logspace(4, 8, 40)
    for W in CPU_WORKERS:
        ax1.plot(ns, [predict(int(n), W, params) / 3600 for n in ns], label=f"{W} CPU workers")
    if gpu:
        for W in GPU_WORKERS[:3]:
            ax1.plot(ns, [predict(int(n), W, gpu) / 3600 for n in ns], "--", label=f"{W} GPU workers")
    ax1.set(xscale="log", yscale="log", xlabel="spectra", ylabel="wall time (h)", title="capacity model")
    ymin = ax1.get_ylim()[0]
    for name, n in SURVEYS.items():
        ax1.axvline(n, color="grey", lw=0.8, ls=":")
        ax1.text(n, ymin, name, rotation=90, fontsize=7, va="bottom", ha="right")
    ax1.grid(alpha=0.3, which="both")
    ax1.legend(fontsize=7)
    m = [c["measured_s"] for c in checks]
    p = [c["predicted_s"] for c in checks]
    lab = [("fit: " if c["fitted"] else "check: ") + f"N={c['n']:,}, W={c['workers']}" for c in checks]
    lo, hi = min(m + p) * 0.8, max(m + p) * 1.2
    ax2.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax2.fill_between([lo, hi], [lo * 0.85, hi * 0.85], [lo * 1.15, hi * 1.15], color="grey", alpha=0.2,
                     label="±15%")
    for mi, pi, li, c in zip(m, p, lab, checks):
        ax2.plot(mi, pi, "o" if c["fitted"] else "s", label=li)
    ax2.set(xlabel="measured wall (s)", ylabel="predicted wall (s)", title="prediction vs measured runs")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(cfg: BenchConfig, state: dict) -> dict:
    mdir, kind = benchmark_model(cfg)
    pipe = state.get("pipeline")
    if pipe is None:
        from .pipeline_efficiency import instrumented_run

        store = simulated_store(cfg, cfg.n_store)
        inst = instrumented_run(store, cfg.cache / "cat-instrumented.zarr", mdir, cfg.workers, cfg.mc_samples)
        walls = [cli_run(store, cfg.cache / "cat-e2e.zarr", mdir, cfg.workers, cfg.mc_samples)
                 for _ in range(cfg.repeats)]
        pipe = {"instrumented": inst, "end_to_end": walls}
    params = fit(pipe)
    checks = [{"n": params["fit_n"], "workers": params["fit_workers"], "measured_s": params["fit_wall_s"],
               "predicted_s": predict(params["fit_n"], params["fit_workers"], params, params["fit_block_objects"]),
               "fitted": True}]
    # runs the model was not fitted on: another store size (so another block size and count), 1 and 2 workers
    n_check = 300 if cfg.quick else int(cfg.options.get("n_check") or 4000)
    check_workers = [cfg.workers] if cfg.quick else sorted({1, cfg.workers})
    store_c = simulated_store(cfg, n_check, seed=cfg.seed + 1)
    for W in check_workers:
        walls = []
        for _ in range(1 if cfg.quick else 2):
            with Quiet(cfg, f"capacity check W={W}") as q:
                r = cli_run(store_c, cfg.cache / "cat-capacity.zarr", mdir, W, cfg.mc_samples)
            walls.append(r["wall_s"])
        B = int(np.median([m["hi"] - m["lo"] for m in read_markers(cfg.cache / "cat-capacity.zarr")]))
        pred = predict(n_check, W, params)
        checks.append({"n": n_check, "workers": W, "block_objects": B, "measured_s": median(walls),
                       "predicted_s": pred, "fitted": False, "walls": walls, "quiet": q.record})
        log(f"  capacity check N={n_check} W={W}: measured {median(walls):.1f} s, predicted {pred:.1f} s")
    for c in checks:
        c["error"] = c["predicted_s"] / c["measured_s"] - 1
    gpu = gpu_params(cfg.out / "gpu.json") or gpu_params(RESULTS / "gpu.json")
    proj = []
    for name, n in SURVEYS.items():
        for W in CPU_WORKERS:
            wall = predict(n, W, params)
            nodes = math.ceil(W / CORES_PER_NODE)
            proj.append({"survey": name, "n": n, "kind": "cpu", "workers": W, "block_objects": block_objects(n, W),
                         "wall_h": wall / 3600, "core_h": W * wall / 3600, "nodes": nodes,
                         "node_h": nodes * wall / 3600})
        if gpu:
            for W in GPU_WORKERS:
                wall = predict(n, W, gpu)
                proj.append({"survey": name, "n": n, "kind": "gpu", "workers": W, "wall_h": wall / 3600,
                             "gpu_h": W * wall / 3600, "node_h": W * wall / 3600})
    cfg.out.mkdir(parents=True, exist_ok=True)
    plot(cfg.out / "capacity.png", params, checks, gpu)
    res = {"params": params, "checks": checks, "projection": proj, "gpu_params": gpu, "model_kind": kind,
           "figures": ["capacity.png"]}
    state["capacity"] = res
    worst = max((c for c in checks if not c["fitted"]), key=lambda c: abs(c["error"]))
    rows = [row("6 capacity", "model vs runs not fitted on: worst |error|", abs(worst["error"]), "",
                f"≤ {TARGET:.0%}", abs(worst["error"]) <= TARGET,
                "; ".join(f"N={c['n']:,} W={c['workers']}: {c['predicted_s']:.1f} s predicted vs "
                          f"{c['measured_s']:.1f} s measured" for c in checks if not c["fitted"])
                + f"; fitted: c={params['c'] * 1e3:.2f} ms/spectrum, a={params['a'] * 1e3:.0f} ms/block, "
                  f"t_fixed={params['t_fixed']:.1f} s")]
    for name, n in SURVEYS.items():
        p = {x["workers"]: x for x in proj if x["survey"] == name and x["kind"] == "cpu"}
        rows.append(row("6 capacity", f"{name}: predicted wall on 256 CPU workers", p[256]["wall_h"], "h", "", None,
                        f"{p[256]['node_h']:.1f} node-h (16-core nodes); {p[16]['wall_h']:.1f} h on one 16-core node; "
                        f"{p[2]['wall_h']:.0f} h on this 2-core VM"))
    if not gpu:
        rows.append(row("6 capacity", "GPU projection", None, "", "", None,
                        "needs benchmarks/results/gpu.json from a GPU machine (python -m benchmarks.gpu)"))
    return {"rows": rows, "details": res}


def _args(p):
    p.add_argument("--n-check", type=int, default=None, help="spectra in the check store (4000)")


def main(argv=None) -> int:
    return standalone(run, __doc__.split("\n\n")[0], argv, _args)


if __name__ == "__main__":
    raise SystemExit(main())
