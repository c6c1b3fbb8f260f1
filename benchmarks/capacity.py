"""Capacity model: wall time and node-hours for a survey from measured per-block times and overheads.

The model of one ``survey-infer run`` of N spectra on W workers with blocks of B spectra (the runner's default
block size unless given):

    wall = t_fixed + makespan(N, W, B),   one block takes  a + c·B  on a worker (+ w for its first block),

where makespan is the greedy schedule the runner produces (each worker takes the next block when it is free;
the last block may be short), ``c`` is the measured worker time per spectrum inside tasks (all stages plus the
in-task work outside them) with every core busy, ``a`` the measured scheduler gap per block, ``w`` the
first-block warm-up and ``t_fixed`` the start-up and finalisation (interpreter, cluster start, model loading,
catalog creation, closing) — all fitted on the benchmark runs (12,000 spectra, ``pipeline_efficiency``). On a
node with idle cores a worker runs faster; that factor is measured in memory (1 process vs W) and applied
when W is below the core count. The model is then checked against ``survey-infer run``
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
    from survey_infer.pipeline.plan import default_block_objects

    return default_block_objects(n, workers)


def makespan(n: int, workers: int, B: int, a: float, c: float, w: float = 0.0) -> float:
    """Greedy schedule of ceil(n/B) blocks (a + c·size seconds each; a worker's first block takes ``w`` more)
    on ``workers`` workers."""
    sizes = [B] * (n // B) + ([n % B] if n % B else [])
    if len(sizes) > 200_000:  # identical blocks: closed form
        k = math.ceil(len(sizes) / workers)
        return w + k * (a + c * B)
    free = [(0.0, i) for i in range(workers)]
    heapq.heapify(free)
    started: set = set()
    end = 0.0
    for s in sizes:
        t0, i = heapq.heappop(free)
        t = t0 + a + c * s + (w if i not in started else 0.0)
        started.add(i)
        end = max(end, t)
        heapq.heappush(free, (t, i))
    return end


def predict(n: int, workers: int, params: dict, B: int | None = None) -> float:
    """Predicted wall time (s) of ``survey-infer run`` on ``n`` spectra and ``workers`` workers."""
    B = B or block_objects(n, workers)
    c = params["c"]
    if workers < params.get("cores_per_node", workers) and params.get("c_scale_partial"):
        c = c * params["c_scale_partial"]  # a node with idle cores runs each worker faster (measured)
    return params["t_fixed"] + makespan(n, workers, B, params["a"], c, params.get("w", 0.0))


def fit(pipe: dict, c_scale_partial: float | None = None, cores: int | None = None) -> dict:
    """``c``, ``a``, ``w``, ``t_fixed`` from the benchmark runs (``pipeline_efficiency`` details).

    ``c`` (worker seconds per spectrum) from the stage timings of the ``survey-infer run`` repeats plus the
    in-task time outside the stages (instrumented run), ``a`` (scheduler gap per block) and ``w`` (first-block
    warm-up per worker) from the instrumented run's task stream, ``t_fixed`` = wall − makespan of the same runs
    (medians over the repeats).
    """
    inst = pipe["instrumented"]
    runs = pipe["end_to_end"]
    n, W, B = inst["n"], inst["workers"], inst["block_objects"]
    untimed = inst["in_task_untimed_s"] / max(1e-9, inst["stage_s"])
    a = inst["gaps_s"] / max(1, inst["blocks"] - W)
    w = inst.get("first_block_penalty_s", 0.0)
    cs, fixed = [], []
    for r in runs:
        busy = sum(r["summary"]["timings"].values()) * (1 + untimed)
        c = max(1e-9, (busy - W * w) / n)
        cs.append(c)
        fixed.append(r["wall_s"] - makespan(n, W, B, a, c, w))
    return {"c": median(cs), "a": a, "w": w, "t_fixed": median(fixed), "fit_n": n, "fit_workers": W,
            "fit_block_objects": B, "fit_wall_s": median([r["wall_s"] for r in runs]), "c_runs": cs,
            "t_fixed_runs": fixed, "untimed_fraction": untimed, "c_scale_partial": c_scale_partial,
            "cores_per_node": cores or W}


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
        from .pipeline_efficiency import first_block_penalty, instrumented_run

        store = simulated_store(cfg, cfg.n_store)
        inst = instrumented_run(store, cfg.cache / "cat-instrumented.zarr", mdir, cfg.workers, cfg.mc_samples)
        inst["first_block_penalty_s"] = first_block_penalty(inst)
        walls = [cli_run(store, cfg.cache / "cat-e2e.zarr", mdir, cfg.workers, cfg.mc_samples)
                 for _ in range(cfg.repeats)]
        pipe = {"instrumented": inst, "end_to_end": walls}
    # a worker alone on a node with idle cores is faster than one of W busy workers: measured in memory
    # (1 process vs the pipeline's W processes), so the model can predict runs with fewer workers than cores
    from .pipeline_efficiency import in_memory_rate

    store = simulated_store(cfg, cfg.n_store)
    n1 = 256 if cfg.quick else 2048
    one = [in_memory_rate(mdir, store, n1, 1, cfg.mc_samples)["wall_s"] / n1 for _ in range(1 if cfg.quick else 2)]
    full = [in_memory_rate(mdir, store, n1 * cfg.workers, cfg.workers, cfg.mc_samples)["wall_s"] / n1
            for _ in range(1 if cfg.quick else 2)]
    scale = median(one) / median(full)
    params = fit(pipe, c_scale_partial=scale, cores=cfg.workers)
    params["in_memory_s_per_spectrum"] = {"1 process": one, f"{cfg.workers} processes": full}
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
                + f"; fitted on N={params['fit_n']:,}: c={params['c'] * 1e3:.2f} ms/spectrum, a="
                  f"{params['a'] * 1e3:.0f} ms/block, w={params['w']:.1f} s, t_fixed={params['t_fixed']:.1f} s, "
                  f"1-worker speed-up {1 / params['c_scale_partial']:.2f}×")]
    for name, n in SURVEYS.items():
        p = {x["workers"]: x for x in proj if x["survey"] == name and x["kind"] == "cpu"}
        rows.append(row("6 capacity", f"{name}: predicted wall on 256 CPU workers", p[256]["wall_h"], "h", "", None,
                        f"{p[256]['node_h']:.1f} node-h (16-core nodes); {p[16]['wall_h']:.1f} h on one 16-core node; "
                        f"{p[2]['wall_h']:.0f} h on this 2-core VM"))
    pipe_mem = state.get("pipeline", {}).get("in_memory_spectra_per_s")
    if pipe_mem:
        proj_eff = {n: (n / pipe_mem) / predict(n, cfg.workers, params) for n in (12_000, 100_000, 1_000_000)}
        res["projected_efficiency"] = proj_eff
        rows.append(row("6 capacity", f"projected pipeline efficiency, {cfg.workers} workers, larger stores",
                        proj_eff[100_000], "", "", None, "model projection, not a measurement: " + ", ".join(
                            f"N={n:,}: {e:.2f}" for n, e in proj_eff.items())
                        + " (start-up amortised; read, write, hashing and warm-up remain)"))
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
